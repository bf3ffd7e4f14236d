"""The task-axis replay buffer: one ring of capacity C per task, task-balanced uniform sampling.

Storage is a pytree of `[T, C, ...]` arrays (any pytree: a `Transition`, a dict, ...), written E items per task at a
time by `add` and read as a flat `[B, ...]` batch with a `task_id [B]` by `sample` (task-balanced: `B // T` items
of every task, the remainder spread over the tasks at random). Leaves keep the dtype of the example they were built
from, so binary observations stored as uint8/bool cost one byte each. Rewards are meant to be stored raw: the
per-task normaliser changes during training and is applied at sampling time.

All functions are pure and jittable (donate the state to `add` so XLA writes in place) and vmap over a leading seed
axis; the checks here use static shapes only, so they run once, at trace time.
"""

from __future__ import annotations

import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import struct

PyTree = Any

# Slots and indices are int32; slots are drawn as integers (`jax.random.randint`), so every slot of a ring of any
# size up to this is drawn with equal probability (a float32 uniform has only 2**23 levels in [0.5, 1)).
MAX_CAPACITY = 2**30


@struct.dataclass
class ReplayState:
    """Ring buffers of all tasks; `pointer` is the next slot to write, `size` the number of written slots."""

    data: PyTree  # leaves [T, C, ...]
    pointer: jax.Array  # int32[T]
    size: jax.Array  # int32[T], at most C


def init(example: PyTree, capacity: int) -> ReplayState:
    """An empty buffer of `capacity` items per task, shaped and typed like `example` (leaves `[T, ...]`, one env).

    `example` may hold arrays or `jax.ShapeDtypeStruct`s; only shapes and dtypes are read. Storage is zeros.
    """
    num_tasks = _num_tasks_of_example(example)
    _check_capacity(capacity)
    data = jax.tree.map(
        lambda leaf: jnp.zeros((num_tasks, capacity, *leaf.shape[1:]), dtype=leaf.dtype), example
    )
    # Two separate buffers, not one shared zeros array: a donated state must not hold the same buffer twice.
    return ReplayState(
        data=data,
        pointer=jnp.zeros((num_tasks,), dtype=jnp.int32),
        size=jnp.zeros((num_tasks,), dtype=jnp.int32),
    )


def add(state: ReplayState, batch: PyTree) -> ReplayState:
    """Write the E items of each task (leaves `[T, E, ...]`) at that task's pointer, wrapping around the ring.

    Once a ring is full the oldest items are overwritten first. E may be any number from 1 to C.
    """
    num_tasks, capacity = _dims(state)
    leaves = jax.tree.leaves(batch)
    if not leaves or any(leaf.ndim < 2 for leaf in leaves):
        raise ValueError(
            f"add expects a batch with leaves of shape [T, E, ...]; got shapes {[leaf.shape for leaf in leaves]}"
        )
    envs_per_task = leaves[0].shape[1]
    if envs_per_task > capacity:
        raise ValueError(
            f"add got {envs_per_task} items per task but the replay capacity is {capacity} per task: one write "
            f"would overwrite itself. Use a capacity of at least the number of envs per task ({envs_per_task})."
        )
    _check_batch(state.data, batch, num_tasks, envs_per_task)

    # E <= C, so the E slots of one task are distinct and the scatter writes each slot once.
    slots = (state.pointer[:, None] + jnp.arange(envs_per_task, dtype=jnp.int32)) % capacity  # [T, E]
    tasks = jnp.arange(num_tasks, dtype=jnp.int32)[:, None]  # [T, 1]
    data = jax.tree.map(
        lambda stored, new: stored.at[tasks, slots].set(new, unique_indices=True), state.data, batch
    )
    return state.replace(
        data=data,
        pointer=(state.pointer + envs_per_task) % capacity,
        size=jnp.minimum(state.size + envs_per_task, capacity),
    )


def sample(state: ReplayState, key: jax.Array, batch_size: int) -> tuple[PyTree, jax.Array]:
    """Draw `batch_size` items, task-balanced and uniform over each task's written slots.

    Returns `(items, task_id)`: leaves `[B, ...]` and int32 `task_id [B]` (see `balanced_task_ids` for how the B rows
    are shared between tasks). `batch_size` is static (a Python int) and at least the number of tasks. Sample only
    after the first `add`: a task with no written slot has nothing to draw from (it would get its slot 0, which
    holds zeros).
    """
    num_tasks, _ = _dims(state)
    task_key, index_key = jax.random.split(key)
    task_id = balanced_task_ids(task_key, num_tasks, batch_size)  # [B]
    slots = jax.random.randint(index_key, (batch_size,), 0, jnp.maximum(state.size[task_id], 1))
    return jax.tree.map(lambda stored: stored[task_id, slots], state.data), task_id


def sample_windows(state: ReplayState, key: jax.Array, batch_size: int, length: int, stride: int
                   ) -> tuple[PyTree, jax.Array]:
    """Draw `batch_size` windows of `length` consecutive items of one env, task-balanced as `sample`: returns
    `(windows, task_id)` with leaves `[B, length, ...]`, oldest first (for n-step returns), and `task_id [B]`.

    `stride` is the number of items each `add` writes per task (E, the envs per task): one env's consecutive items
    lie `stride` slots apart, and stay so across the wrap when the capacity is a multiple of `stride`. A window's
    start is uniform over the windows that lie wholly in written slots without crossing the write pointer (the
    newest `(length - 1) * stride` items start none). Episode ends inside a window are left to the caller. With
    `length=1` this draws from the same distribution as `sample`. Sample only once every task has at least `length`
    items per env.
    """
    num_tasks, capacity = _dims(state)
    if length < 1 or stride < 1:
        raise ValueError(f"sample_windows: length={length} and stride={stride} must both be >= 1")
    span = (length - 1) * stride  # slots from a window's first item to its last
    if length > 1 and (capacity % stride or span >= capacity):
        raise ValueError(
            f"sample_windows: a replay capacity of {capacity} per task cannot hold windows of {length} items "
            f"{stride} slots apart: the capacity must be a multiple of the stride ({stride}, the envs per task) so "
            f"that one env's items stay {stride} apart across the wrap, and larger than {span}"
        )
    task_key, index_key = jax.random.split(key)
    task_id = balanced_task_ids(task_key, num_tasks, batch_size)  # [B]
    # Ages count back from the newest item (age 0); a window starting at age a ends at age a - span >= 0.
    num_starts = jnp.maximum(state.size[task_id] - span, 1)  # [B]
    start_age = span + jax.random.randint(index_key, (batch_size,), 0, num_starts)  # [B]
    first_slot = (state.pointer[task_id] - 1 - start_age) % capacity
    slots = (first_slot[:, None] + stride * jnp.arange(length, dtype=jnp.int32)) % capacity  # [B, length]
    chex.assert_shape(slots, (batch_size, length))
    return jax.tree.map(lambda stored: stored[task_id[:, None], slots], state.data), task_id


def balanced_task_ids(key: jax.Array, num_tasks: int, batch_size: int) -> jax.Array:
    """int32 `[batch_size]`: which task each row of a batch is drawn from.

    Every task gets `batch_size // T` rows (task-major, in task order); the remaining `batch_size % T` rows go to
    that many distinct tasks drawn uniformly at random per call, so that over updates every task gets the same
    expected share. Any batch of at least one row per task works: the paper's batch of 1024 on 3 tasks is 341 + 1/3
    rows per task on average. With `batch_size % T == 0` the ids are fixed and the key is not used.
    """
    if not isinstance(batch_size, int) or batch_size < num_tasks:
        raise ValueError(
            f"batch_size={batch_size!r} must be an int of at least the number of tasks ({num_tasks}): every task "
            "gets batch_size // T rows of each batch, the remainder goes to tasks chosen at random"
        )
    per_task, remainder = divmod(batch_size, num_tasks)
    balanced = jnp.repeat(jnp.arange(num_tasks, dtype=jnp.int32), per_task)
    if remainder == 0:
        return balanced
    extra = jax.random.permutation(key, num_tasks)[:remainder].astype(jnp.int32)
    return jnp.concatenate([balanced, extra])


def nbytes(example: PyTree, capacity: int) -> int:
    """The bytes `init(example, capacity)` allocates: storage plus the pointer and size counters."""
    num_tasks = _num_tasks_of_example(example)
    _check_capacity(capacity)
    storage = sum(
        num_tasks * capacity * math.prod(leaf.shape[1:]) * jnp.dtype(leaf.dtype).itemsize
        for leaf in jax.tree.leaves(example)
    )
    counters = 2 * num_tasks * jnp.dtype(jnp.int32).itemsize
    return int(storage + counters)


def _num_tasks_of_example(example: PyTree) -> int:
    """T, the shared leading axis of the example's leaves."""
    leaves = jax.tree.leaves(example)
    if not leaves:
        raise ValueError("replay example has no array leaves; expected a pytree of [T, ...] arrays")
    leading = {leaf.shape[0] if leaf.ndim else None for leaf in leaves}
    if len(leading) != 1 or None in leading:
        raise ValueError(
            f"replay example leaves must share a leading task axis [T, ...]; got shapes "
            f"{[leaf.shape for leaf in leaves]}"
        )
    return leading.pop()


def _check_capacity(capacity: int) -> None:
    if not isinstance(capacity, int) or not 1 <= capacity <= MAX_CAPACITY:
        raise ValueError(f"replay capacity must be an int in [1, {MAX_CAPACITY}] per task; got {capacity!r}")


def _dims(state: ReplayState) -> tuple[int, int]:
    """(T, C) of an unbatched state (inside a vmap over seeds the leaves are unbatched too)."""
    chex.assert_rank(state.pointer, 1)
    num_tasks = state.pointer.shape[0]
    capacity = jax.tree.leaves(state.data)[0].shape[1]
    return num_tasks, capacity


def _check_batch(data: PyTree, batch: PyTree, num_tasks: int, envs_per_task: int) -> None:
    """Each batch leaf must match its storage leaf: shape `[T, E, *item]` and the same dtype (nothing is cast)."""
    if jax.tree.structure(data) != jax.tree.structure(batch):
        raise ValueError(
            f"replay batch structure differs from the stored one:\n  stored {jax.tree.structure(data)}\n"
            f"  batch  {jax.tree.structure(batch)}"
        )

    def check(path, stored, new):
        where = f"replay leaf {jax.tree_util.keystr(path) or '<root>'}"
        chex.assert_shape(new, (num_tasks, envs_per_task, *stored.shape[2:]), custom_message=where)
        chex.assert_type(new, stored.dtype, custom_message=where)

    jax.tree_util.tree_map_with_path(check, data, batch)

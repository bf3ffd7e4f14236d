"""The task-axis replay buffer: one ring of capacity C per task, task-balanced uniform sampling.

Storage is a pytree of `[T, C, ...]` arrays (any pytree: a `Transition`, a dict, ...), written E items per task at a
time by `add` and read as a flat `[B, ...]` batch with a `task_id [B]` by `sample` (task-balanced: `B // T` items
of every task, the remainder spread over the tasks at random). Leaves keep the dtype of the example they were built
from, so binary observations stored as uint8/bool cost one byte each. Rewards are meant to be stored raw: the
per-task normaliser changes during training and is applied at sampling time.

Transitions, each observation stored once (`init(..., envs_per_task=E)`): a buffer of transitions (an example with
`obs`, `next_obs`, `terminal` and `truncated`) keeps `next_obs` only where it is not the next item's `obs`.
- Env e's items of consecutive adds lie E slots apart (item k * E + e of a task is at slot `(k * E + e) % C`), so the
  `next_obs` of the item at slot s is the `obs` at slot `(s + E) % C` wherever its episode went on (the env contract:
  `Transition.next_obs` is the next observation acted on unless the episode ended) and that slot was written after
  it. The newest E items have no successor yet: `Finals.next_obs [T, E, ...]` holds the last add's `next_obs`.
- An item whose episode ended (terminal or truncated) keeps its true final observation in a ring of `final_capacity`
  finals per task (`Finals.obs [T, F, ...]`), in the order the episodes ended. Its `terminal` and `truncated` flags
  and the index of its final are one int32 per item (`end`: 0 where the episode went on, else
  `index << 2 | terminal << 1 | truncated`).
- `sample` and `sample_windows` return exactly the transitions the plain layout (every field stored) returns for the
  same key: same rows, same fields, same bits, as long as the finals ring holds every ended item still in the ring.
  When more than F ended items are in the ring the oldest finals are overwritten: `Finals.lost` counts each final
  overwritten while its item was still stored, and such an item's `next_obs` is its successor's `obs` (its env's
  reset observation). Size F above the ring's episode ends (C / the shortest episode length + E); a terminal
  item's `next_obs` is multiplied by 0 in every target, a truncated item's is bootstrapped from.

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


# Where a transition's `end` field keeps its flags (the rest of the bits: the index of its final observation).
_TERMINAL, _TRUNCATED = 2, 1
# The fields the observation-once layout derives instead of storing.
_DERIVED = ("next_obs", "terminal", "truncated")


@struct.dataclass
class Finals:
    """What the observation-once layout keeps beside the ring (module docstring)."""

    next_obs: jax.Array  # [T, E, ...] the newest E items' next_obs (the last add's)
    obs: jax.Array  # [T, F, ...] true final observations, a ring in the order the episodes ended
    owner: jax.Array  # int32[T, F] the slot of the item each final belongs to (-1: none yet)
    pointer: jax.Array  # int32[T] the next final to write
    lost: jax.Array  # int32[T] finals overwritten while their item was still stored


@struct.dataclass
class ReplayState:
    """Ring buffers of all tasks; `pointer` is the next slot to write, `size` the number of written slots."""

    data: PyTree  # leaves [T, C, ...]
    pointer: jax.Array  # int32[T]
    size: jax.Array  # int32[T], at most C
    finals: Finals | None = None  # the observation-once layout's finals; None: every field stored


def init(example: PyTree, capacity: int, envs_per_task: int | None = None, final_capacity: int | None = None
         ) -> ReplayState:
    """An empty buffer of `capacity` items per task, shaped and typed like `example` (leaves `[T, ...]`, one env).

    `example` may hold arrays or `jax.ShapeDtypeStruct`s; only shapes and dtypes are read. Storage is zeros. With
    `envs_per_task` (E, the items of every `add`) a transition example (a dict with `obs`, `next_obs`, `terminal`,
    `truncated`) is stored in the observation-once layout (module docstring) with `final_capacity` finals per task
    (default: the capacity, every final kept).
    """
    num_tasks = _num_tasks_of_example(example)
    _check_capacity(capacity)
    stored = example if envs_per_task is None else _stored_example(example)
    data = jax.tree.map(
        lambda leaf: jnp.zeros((num_tasks, capacity, *leaf.shape[1:]), dtype=leaf.dtype), stored
    )
    # Separate buffers, not one shared zeros array: a donated state must not hold the same buffer twice.
    state = ReplayState(
        data=data,
        pointer=jnp.zeros((num_tasks,), dtype=jnp.int32),
        size=jnp.zeros((num_tasks,), dtype=jnp.int32),
    )
    if envs_per_task is None:
        return state
    final_capacity = capacity if final_capacity is None else final_capacity
    if not (isinstance(envs_per_task, int) and 1 <= envs_per_task <= capacity and isinstance(final_capacity, int)
            and envs_per_task <= final_capacity <= min(capacity, 2**29)):
        raise ValueError(f"replay: envs_per_task={envs_per_task!r} must be an int in [1, capacity={capacity}] and "
                         f"final_capacity={final_capacity!r} an int from envs_per_task to the capacity (one add may "
                         "end every env's episode)")
    obs = example["obs"]
    return state.replace(finals=Finals(
        next_obs=jnp.zeros((num_tasks, envs_per_task, *obs.shape[1:]), obs.dtype),
        obs=jnp.zeros((num_tasks, final_capacity, *obs.shape[1:]), obs.dtype),
        owner=jnp.full((num_tasks, final_capacity), -1, jnp.int32),
        pointer=jnp.zeros((num_tasks,), jnp.int32),
        lost=jnp.zeros((num_tasks,), jnp.int32)))


def _stored_example(example: dict) -> dict:
    """The fields the observation-once layout stores per item: all but `_DERIVED`, plus the int32 `end`."""
    missing = [name for name in ("obs", *_DERIVED) if name not in example]
    if not isinstance(example, dict) or missing:
        raise ValueError(f"the observation-once replay layout stores transitions: a dict with obs, next_obs, terminal "
                         f"and truncated; this example lacks {missing}")
    obs, next_obs = example["obs"], example["next_obs"]
    if (obs.shape, obs.dtype) != (next_obs.shape, next_obs.dtype):
        raise ValueError(f"replay: next_obs {next_obs.shape} {next_obs.dtype} must be shaped and typed as obs "
                         f"{obs.shape} {obs.dtype}")
    stored = {name: leaf for name, leaf in example.items() if name not in _DERIVED}
    return {**stored, "end": jax.ShapeDtypeStruct(example["terminal"].shape, jnp.int32)}


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
    # E <= C, so the E slots of one task are distinct and the scatter writes each slot once.
    slots = (state.pointer[:, None] + jnp.arange(envs_per_task, dtype=jnp.int32)) % capacity  # [T, E]
    tasks = jnp.arange(num_tasks, dtype=jnp.int32)[:, None]  # [T, 1]
    finals = state.finals
    if finals is not None:
        if envs_per_task != finals.next_obs.shape[1]:
            raise ValueError(f"add got {envs_per_task} items per task; this observation-once buffer was made for "
                             f"envs_per_task={finals.next_obs.shape[1]}")
        batch, finals = _store_finals(state, batch, slots, tasks)
    _check_batch(state.data, batch, num_tasks, envs_per_task)
    data = jax.tree.map(
        lambda stored, new: stored.at[tasks, slots].set(new, unique_indices=True), state.data, batch
    )
    return state.replace(
        data=data,
        finals=finals,
        pointer=(state.pointer + envs_per_task) % capacity,
        size=jnp.minimum(state.size + envs_per_task, capacity),
    )


def _store_finals(state: ReplayState, batch: dict, slots: jax.Array, tasks: jax.Array) -> tuple[dict, Finals]:
    """The observation-once layout's part of `add`: the batch's stored fields (with `end`) and the updated finals."""
    finals, capacity = state.finals, _dims(state)[1]
    envs_per_task, final_capacity = finals.next_obs.shape[1], finals.obs.shape[1]
    terminal, truncated = batch["terminal"], batch["truncated"]  # [T, E]
    ended = terminal | truncated
    # The ended items of this add take the next finals in env order: E <= F, so their indices are distinct.
    index = (finals.pointer[:, None] + jnp.cumsum(ended, axis=1, dtype=jnp.int32) - 1) % final_capacity  # [T, E]
    end = jnp.where(ended, index << 2 | terminal.astype(jnp.int32) * _TERMINAL | truncated.astype(jnp.int32),
                    0)
    # A final overwritten while its item is still stored (not overwritten by this add) is lost.
    owner = finals.owner[tasks, index]
    owner_end = state.data["end"][tasks, jnp.maximum(owner, 0)]
    still_stored = (owner >= 0) & ((owner - state.pointer[:, None]) % capacity >= envs_per_task)
    lost = ended & still_stored & (owner_end != 0) & (owner_end >> 2 == index)
    target = jnp.where(ended, index, final_capacity)  # out of range: dropped
    stored = {name: value for name, value in batch.items() if name not in _DERIVED}
    return {**stored, "end": end}, finals.replace(
        next_obs=batch["next_obs"],
        obs=finals.obs.at[tasks, target].set(batch["next_obs"], mode="drop"),
        owner=finals.owner.at[tasks, target].set(slots, mode="drop"),
        pointer=(finals.pointer + ended.sum(axis=1, dtype=jnp.int32)) % final_capacity,
        lost=finals.lost + lost.sum(axis=1, dtype=jnp.int32))


def _read(state: ReplayState, task_id: jax.Array, slots: jax.Array) -> PyTree:
    """The items at `slots` of tasks `task_id` (broadcast to one shape), every field of the example as it was added."""
    items = jax.tree.map(lambda stored: stored[task_id, slots], state.data)
    finals = state.finals
    if finals is None:
        return items
    capacity = _dims(state)[1]
    envs_per_task, final_capacity = finals.next_obs.shape[1], finals.obs.shape[1]
    items = dict(items)
    end = items.pop("end")
    age = (state.pointer[task_id] - 1 - slots) % capacity  # 0: the newest item
    newest = age < envs_per_task  # no successor written yet: the last add's next_obs (env E - 1 - age)
    pending = finals.next_obs[task_id, jnp.clip(envs_per_task - 1 - age, 0, envs_per_task - 1)]
    successor = state.data["obs"][task_id, (slots + envs_per_task) % capacity]
    index = jnp.clip(end >> 2, 0, final_capacity - 1)
    kept = (end != 0) & (finals.owner[task_id, index] == slots)
    final = finals.obs[task_id, index]

    def rows(mask: jax.Array) -> jax.Array:
        return mask.reshape(mask.shape + (1,) * (successor.ndim - mask.ndim))

    items["next_obs"] = jnp.where(rows(newest), pending, jnp.where(rows(kept), final, successor))
    items["terminal"] = (end & _TERMINAL) != 0
    items["truncated"] = (end & _TRUNCATED) != 0
    return items


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
    return _read(state, task_id, slots), task_id


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
    return _read(state, jnp.broadcast_to(task_id[:, None], slots.shape), slots), task_id


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


def nbytes(example: PyTree, capacity: int, envs_per_task: int | None = None, final_capacity: int | None = None
           ) -> int:
    """The bytes `init(example, capacity, envs_per_task, final_capacity)` allocates (traced, nothing allocated)."""
    shapes = jax.eval_shape(lambda: init(example, capacity, envs_per_task, final_capacity))
    return int(sum(math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(shapes)))


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

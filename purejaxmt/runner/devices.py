"""Seeds and devices: the runs axis (seeds, vmapped settings) of a `Program`, and its placement on the device mesh.

Runs are an outer `vmap` the agent never sees: every leaf of the batched `RunState` carries a leading runs axis but
the lockstep counters (`RunState.LOCKSTEP_FIELDS`), which are the same in every run and stay unbatched scalars. On
several devices the runs axis is sharded over a one-axis mesh (independent runs, no communication) and the lockstep
scalars are replicated: the same program runs on 1 CPU, 1 GPU or a pod slice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from purejaxmt.offpolicy import Hyper, Program


def seed_keys(seed: int, seeds: int) -> jax.Array:
    """`PRNGKey(seed + i)` for run i: vmapped run i equals a single run with that seed."""
    return jnp.stack([jax.random.PRNGKey(seed + i) for i in range(seeds)])


def seed_sharding(num_runs: int) -> NamedSharding | None:
    """Shards the runs axis over all devices when it divides evenly; None (one device) otherwise."""
    devices = jax.devices()
    if len(devices) == 1 or num_runs % len(devices):
        return None
    return NamedSharding(Mesh(np.array(devices), ("runs",)), PartitionSpec("runs"))


def _lockstep_fields(state: Any) -> tuple[str, ...]:
    return getattr(type(state), "LOCKSTEP_FIELDS", ())


def runs_axes(state: Any) -> Any:
    """The `vmap` axes of a batched run state: 0 for every leaf but the `LOCKSTEP_FIELDS`, which are None, so that a
    `lax.cond` on them (skip the updates during the random phase) stays a cond under `vmap`. Measured on the 2-core
    CPU: with the counter batched, the cond became a select and a random-phase iteration cost 91 ms instead of 14
    (docs/results.md). Works on concrete and abstract states alike."""
    axes = jax.tree.map(lambda _: 0, state)
    return axes.replace(**{name: None for name in _lockstep_fields(state)})


def repeat_hyper(hyper: Hyper, num_runs: int) -> Hyper:
    """One setting for every run: leaves `[R, ...]`."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_runs, *jnp.shape(x))), hyper)


def batched_init(program: Program, keys: jax.Array, hypers: Hyper) -> Any:
    """`program.init` vmapped over keys and settings, its lockstep fields taken from the first run (they are
    equal)."""
    state = jax.vmap(program.init)(keys, hypers)
    return state.replace(**{name: getattr(state, name)[0] for name in _lockstep_fields(state)})


def abstract_states(program: Program, keys: jax.Array) -> Any:
    """The shapes of `batched_init` with the program's settings for every run, traced, nothing run or allocated."""
    hypers = repeat_hyper(program.hyper, len(keys))
    return jax.eval_shape(lambda k, h: batched_init(program, k, h), keys, hypers)


def vmap_train_chunk(program: Program, state: Any) -> Callable:
    """`program.train_chunk` over the runs axis of `state` (lockstep fields unbatched; see `runs_axes`)."""
    axes = runs_axes(state)
    return jax.vmap(program.train_chunk, in_axes=(axes,), out_axes=(axes, 0))


def vmap_evaluate(program: Program, state: Any) -> Callable:
    """`program.evaluate(state, key)` over the runs axis of `state` and of the keys."""
    return jax.vmap(program.evaluate, in_axes=(runs_axes(state), 0))


def init_states(program: Program, keys: jax.Array, hypers: Hyper | None = None) -> Any:
    """The batched run state of all runs, placed on the devices: leaves `[R, ...]` sharded over the mesh when
    there are several devices, the lockstep fields unbatched and replicated. `hypers` defaults to the program's
    settings for every run."""
    hypers = repeat_hyper(program.hyper, len(keys)) if hypers is None else hypers
    # Not jitted as a whole: on XLA:CPU (jax 0.10.2) one program holding the network initialisers and an MJX reset
    # never completed its execution (a runtime deadlock, seen on 2 cores); op-by-op init costs a few seconds once,
    # and env.reset inside it is jitted on its own.
    state = batched_init(program, keys, hypers)
    # Op-by-op init can hand out one buffer twice (the target critic starts as the online critic): give every leaf
    # its own buffer, since the chunk donates them all.
    state = jax.tree.map(lambda x: jnp.array(x, copy=True), state)
    sharding = seed_sharding(len(keys))
    if sharding is None:
        return state
    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    shardings = jax.tree.map(lambda axis: replicated if axis is None else sharding, runs_axes(state),
                             is_leaf=lambda axis: axis is None)
    return jax.device_put(state, shardings)


def device_memory_bytes() -> int:
    """Memory the replay buffers may use: the accelerator's limit, or the host's available memory on CPU."""
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 2**62  # unknown: do not block the run


def check_replay_fits(program: Program, num_runs: int) -> int:
    """The replay buffer's bytes per run, estimated before allocating it; a clear error when they cannot fit."""
    per_run = program.replay_nbytes
    total, available = per_run * num_runs, device_memory_bytes()
    if total > 0.8 * available:
        raise MemoryError(
            f"replay buffers need {per_run / 2**30:.2f} GiB per run x {num_runs} runs = {total / 2**30:.2f} GiB, "
            f"but {jax.devices()[0].platform} memory available is {available / 2**30:.2f} GiB: lower "
            f"--loop.replay-capacity (now {program.loop_config.replay_capacity}) or --seeds")
    return per_run

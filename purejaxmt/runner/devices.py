"""Seeds and devices: the runs axis (settings x seeds) of a `Program`, and its placement on the device mesh.

Runs are an outer `vmap` the agent never sees: every leaf of the batched `RunState` carries a leading runs axis but
the lockstep counters (`RunState.LOCKSTEP_FIELDS`), which are the same in every run and stay unbatched scalars. On
several devices the runs axis is sharded over a one-axis mesh of all devices of all processes (independent runs, no
communication; padded to a multiple of the device count) and the lockstep scalars are replicated: the same program
runs on 1 CPU, 1 GPU or a pod slice. With several processes (`jax.distributed`), each process initialises, reads
back and logs only the runs on its own devices (`local_runs`, `local_values`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from purejaxmt.offpolicy import Hyper, Program


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Keeps compiled programs on disk, so a second run (or a resume) of the same config skips the compile, which
    dominates short runs on a CPU (an MJX humanoid chunk takes minutes to compile there). `PUREJAXMT_CACHE_DIR`
    overrides the location; set it to an empty string to disable. Every program is kept, however quick its compile:
    the op-by-op run-state init compiles a few hundred small ones in every process (a tiny Pendulum-v1 run took 18.0 s
    with only compiles over 1 s kept, 13.5 s with those over 0.1 s, 10.4 s with all: docs/results.md)."""
    path = os.environ.get("PUREJAXMT_CACHE_DIR", path or str(Path.home() / ".cache" / "purejaxmt" / "xla"))
    if not path:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def accelerator_present() -> bool:
    """Whether JAX runs on a GPU or TPU (the presets' default is `paper` there, `cpu` otherwise)."""
    return jax.default_backend() != "cpu"


def seed_keys(seed: int, seeds: int) -> jax.Array:
    """`PRNGKey(seed + i)` for run i: vmapped run i equals a single run with that seed."""
    return jnp.stack([jax.random.PRNGKey(seed + i) for i in range(seeds)])


def select_devices(num_devices: int | None = None) -> list[jax.Device]:
    """The devices the runs are spread over: all devices of all processes, or the first `num_devices`."""
    devices = jax.devices()
    if num_devices is None:
        return devices
    if not 1 <= num_devices <= len(devices):
        raise ValueError(f"--run.devices {num_devices}: this job has {len(devices)} device(s) "
                         f"({jax.process_count()} process(es)); choose 1 to {len(devices)}, or leave it unset for all")
    if jax.process_count() > 1 and num_devices != len(devices):
        raise ValueError(f"--run.devices {num_devices}: with {jax.process_count()} processes every device of every "
                         "process takes runs; leave --run.devices unset")
    return devices[:num_devices]


def devices_for_runs(num_runs: int, num_devices: int | None = None) -> tuple[list[jax.Device], str | None]:
    """The devices `num_runs` runs are sharded over (`select_devices`) and, when there are fewer runs than devices
    in a single process, only the first `num_runs` of them (a device with no run would only hold padding), with a
    line saying so (None otherwise). With several processes every process must hold runs: `padded_num_runs` refuses."""
    chosen = select_devices(num_devices)
    if num_runs < len(chosen) and jax.process_count() == 1:
        return chosen[:num_runs], (f"{num_runs} run(s) on {num_runs} of the {len(chosen)} devices (fewer runs than "
                                   "devices; add seeds or settings to use them all)")
    return chosen, None


def padded_num_runs(num_runs: int, num_devices: int) -> int:
    """Runs padded up to a multiple of the device count, so that every device holds as many runs; raises when
    there are fewer runs than devices (most of the machine would idle)."""
    if num_runs < num_devices:
        raise ValueError(f"{num_runs} run(s) (settings x seeds) cannot fill {num_devices} devices: add seeds or "
                         f"settings (at least {num_devices} runs), or use fewer devices with --run.devices "
                         f"{num_runs}")
    return -(-num_runs // num_devices) * num_devices


def runs_sharding(devices: list[jax.Device]) -> NamedSharding | None:
    """The runs axis split over a one-axis mesh of `devices`; None on a single device (no mesh needed)."""
    if len(devices) == 1:
        return None
    return NamedSharding(Mesh(np.array(devices), ("runs",)), PartitionSpec("runs"))


def local_runs(sharding: NamedSharding | None, num_runs: int) -> np.ndarray:
    """Indices of the runs whose data lives on this process's devices (all runs on one process)."""
    if sharding is None:
        return np.arange(num_runs)
    slices = sharding.addressable_devices_indices_map((num_runs,)).values()
    return np.unique(np.concatenate([np.arange(num_runs)[index[0]] for index in slices]))


def local_values(tree: Any, rows: np.ndarray) -> Any:
    """Rows `rows` (this process's runs, see `local_runs`) of a batched pytree (leaves `[R, ...]`, possibly spread
    over processes, some leaves replicated) as NumPy arrays `[len(rows), ...]`. No communication: each process reads
    the shards on its own devices."""
    def local(leaf: jax.Array) -> np.ndarray:
        if getattr(leaf, "is_fully_addressable", True):
            return np.asarray(jax.device_get(leaf))[rows]
        found: dict[int, np.ndarray] = {}
        for shard in leaf.addressable_shards:
            data = np.asarray(shard.data)
            for position, run in enumerate(np.arange(leaf.shape[0])[shard.index[0]]):
                found.setdefault(int(run), data[position])
        return np.stack([found[int(run)] for run in rows])

    return jax.tree.map(local, tree)


def global_runs_array(local: Any, sharding: NamedSharding | None, num_runs: int) -> jax.Array:
    """An array `[R, ...]` sharded over the runs axis from this process's rows `[local runs, ...]` (every process
    passes its own; see `local_runs`)."""
    if sharding is None:
        return jnp.asarray(local)
    return jax.make_array_from_process_local_data(sharding, local, (num_runs, *np.shape(local)[1:]))


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


def num_runs(state: Any) -> int:
    """The size of a batched state's runs axis (the leading axis of its PRNG key)."""
    return int(jax.tree.leaves(state.key)[0].shape[0])


# A single run is not vmapped at all: XLA:CPU (jax 0.10.2) runs reductions over arrays with a size-1 dimension through
# a YNNPACK path 10-30x slower (`sum([1, 2, 256, 256], axis=2)` 1.6 ms vs `sum([2, 256, 256], axis=1)` 0.07 ms on the
# 2-core CPU), and a size-1 vmap gives every reduction one (LayerNorm statistics, bias gradients, the ensemble mean):
# a BRC chunk vmapped over one run took ~1.4x as long as the same chunk un-vmapped. Its inputs are squeezed instead
# and its outputs expanded, which gives the single run bit for bit.
def _is_axis(axis: Any) -> bool:
    return axis is None


def _take_run(axes: Any, tree: Any) -> Any:
    return jax.tree.map(lambda axis, x: x if axis is None else x[0], axes, tree, is_leaf=_is_axis)


def _as_runs(axes: Any, tree: Any) -> Any:
    return jax.tree.map(lambda axis, x: x if axis is None else x[None], axes, tree, is_leaf=_is_axis)


def vmap_train_chunk(program: Program, state: Any) -> Callable:
    """`program.train_chunk` over the runs axis of `state` (lockstep fields unbatched; see `runs_axes`)."""
    axes = runs_axes(state)
    if num_runs(state) > 1:
        return jax.vmap(program.train_chunk, in_axes=(axes,), out_axes=(axes, 0))

    def one_run(state: Any) -> tuple[Any, Any]:
        new_state, metrics = program.train_chunk(_take_run(axes, state))
        return _as_runs(axes, new_state), jax.tree.map(lambda x: x[None], metrics)

    return one_run


def vmap_evaluate(program: Program, state: Any) -> Callable:
    """`program.evaluate(state, key)` over the runs axis of `state` and of the keys."""
    axes = runs_axes(state)
    if num_runs(state) > 1:
        return jax.vmap(program.evaluate, in_axes=(axes, 0))

    def one_run(state: Any, keys: jax.Array) -> Any:
        return jax.tree.map(lambda x: x[None], program.evaluate(_take_run(axes, state), keys[0]))

    return one_run


def init_states(program: Program, keys: jax.Array, hypers: Hyper | None = None,
                sharding: NamedSharding | None = None) -> Any:
    """The batched run state of all runs `[R, ...]`, the lockstep fields unbatched. `hypers` defaults to the
    program's settings for every run. With a `sharding` (see `runs_sharding`) the runs axis is spread over its mesh
    (of one or many processes) and the lockstep fields are replicated; each process initialises only its own runs."""
    num_runs = len(keys)
    hypers = repeat_hyper(program.hyper, num_runs) if hypers is None else hypers
    mine = local_runs(sharding, num_runs)
    if sharding is not None:
        keys, hypers = keys[mine], jax.tree.map(lambda x: x[mine], hypers)
    # Not jitted as a whole: on XLA:CPU (jax 0.10.2) one program holding the network initialisers (orthogonal: a QR
    # each) and an MJX reset can fail to complete its execution (a runtime deadlock on 2 cores: seen again on
    # 2026-12-07, the smoke transfer's 6-run init hung at 0% CPU inside the test suite, after passing alone). Op by op
    # the init compiles a few hundred small programs (8 s for a tiny Pendulum-v1 config, 23 s for MJX cartpole, 25 s
    # for the humanoid, from a cold cache; the jitted program took 4, 16 and 18 s to compile); the compilation cache
    # keeps them all (`enable_compilation_cache`), and env.reset inside it is jitted on its own.
    state = batched_init(program, keys, hypers)
    # Op-by-op init can hand out one buffer twice (the target critic starts as the online critic): give every leaf
    # its own buffer, since the chunk donates them all.
    state = jax.tree.map(lambda x: jnp.array(x, copy=True), state)
    if sharding is None:
        return state
    replicated = NamedSharding(sharding.mesh, PartitionSpec())

    def place(axis: int | None, leaf: jax.Array | None) -> jax.Array | None:
        if leaf is None:  # an empty node of the state (its axes tree has None there too)
            return None
        if axis is None:  # lockstep: the same value in every process
            return jax.make_array_from_process_local_data(replicated, np.asarray(leaf), np.shape(leaf))
        return global_runs_array(leaf, sharding, num_runs)

    return jax.tree.map(place, runs_axes(state), state, is_leaf=lambda axis: axis is None)


def device_memory_bytes() -> int:
    """Memory the runs of one device may use: the accelerator's limit, or the host's available memory on CPU."""
    device = jax.local_devices()[0]  # another process's devices cannot be asked
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 2**62  # unknown: do not block the run


MEMORY_FRACTION = 0.8
"""The share of `device_memory_bytes` the runs of one device may plan to use: the rest is headroom for what the
estimate leaves out (the env step's and the evaluation's working sets, metrics, XLA's fragmentation)."""


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per run, by part, and what the runs of one device need against what it has."""

    parts: dict[str, int]  # replay, learner (parameters, targets, optimiser states), env_state, other,
    # last_finite_learner (the divergence watch's copy), update
    runs_per_device: int
    available: int

    @property
    def per_run(self) -> int:
        return sum(self.parts.values())

    @property
    def total(self) -> int:
        return self.per_run * self.runs_per_device

    @property
    def runs_that_fit(self) -> int:
        """Runs of one device that fit `MEMORY_FRACTION` of its memory."""
        return int(MEMORY_FRACTION * self.available // max(self.per_run, 1))

    def line(self) -> str:
        parts = ", ".join(f"{name} {_gib(size)}" for name, size in self.parts.items())
        return (f"memory per run {_gib(self.per_run)} ({parts}) x {self.runs_per_device} run(s) per device = "
                f"{_gib(self.total)} of {_gib(self.available)} {jax.devices()[0].platform} memory")


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**26 else f"{nbytes / 2**20:.1f} MiB"


def _nbytes(tree: Any) -> int:
    return int(sum(np.prod(leaf.shape, dtype=np.int64) * np.dtype(leaf.dtype).itemsize
                   for leaf in jax.tree.leaves(tree)))


def state_bytes(program: Program) -> dict[str, int]:
    """One run's state by part, traced (`jax.eval_shape` of `init`): nothing compiled or allocated."""
    state = jax.eval_shape(program.init, jax.random.PRNGKey(0), program.hyper)
    parts = {name: _nbytes(getattr(state, name)) for name in ("replay", "learner", "env_state")}
    # The divergence watch (`runner.health`) keeps each run's last finite learner on the device beside its state.
    return {**parts, "other": _nbytes(state) - sum(parts.values()), "last_finite_learner": parts["learner"]}


def update_bytes(program: Program, compiler_options: dict | None = None) -> int:
    """The working set of one iteration's updates of one run beyond its state: XLA's memory analysis of the update
    compiled alone (its state donated, as in the chunk): temporaries plus outputs that do not reuse an input.
    `compiler_options`: the run's (a lower XLA:CPU optimisation level compiles faster; the analysis was the same at
    levels 0, 1 and 3 on the CPU)."""
    state = jax.eval_shape(program.init, jax.random.PRNGKey(0), program.hyper)
    lowered = jax.jit(program.update, donate_argnums=0).lower(state)
    analysis = lowered.compile(compiler_options=compiler_options or None).memory_analysis()
    if analysis is None:  # a backend without memory analysis
        return 0
    return int(analysis.temp_size_in_bytes + max(analysis.output_size_in_bytes - analysis.alias_size_in_bytes, 0))


def check_memory(program: Program, num_runs: int, num_devices: int = 1, seeds: int | None = None,
                 available: int | None = None, compiler_options: dict | None = None) -> MemoryEstimate:
    """Estimates the bytes of the runs of one device (`num_runs / num_devices`) before anything is allocated for the
    run, in three stages, each only when the one before fits: the replay buffer (arithmetic), the whole state
    (`state_bytes`, traced) and the update's working set (`update_bytes`: compiles one update of one run). Raises a
    `MemoryError` naming the sizes and the largest `--seeds` that fits (`seeds`: the run's seeds, the rest of
    `num_runs` being its settings) when the runs need more than `MEMORY_FRACTION` of the device's memory
    (`available`, default `device_memory_bytes`): a run whose replay alone cannot fit is refused at once.
    `compiler_options` are the update's compile options (the run's)."""
    runs_per_device = -(-num_runs // num_devices)
    available = device_memory_bytes() if available is None else available
    stages = (lambda parts: {"replay": program.replay_nbytes},
              lambda parts: state_bytes(program),
              lambda parts: {**parts, "update": update_bytes(program, compiler_options)})
    estimate = MemoryEstimate(parts={}, runs_per_device=runs_per_device, available=available)
    for stage in stages:
        estimate = dataclasses.replace(estimate, parts=stage(estimate.parts))
        if estimate.total > MEMORY_FRACTION * available:
            settings = max(num_runs // (seeds or num_runs), 1)
            fit = estimate.runs_that_fit * num_devices // settings
            advice = (f"at most --seeds {fit} fits" + (f" ({settings} settings each)" if settings > 1 else "")
                      if fit else "not one run fits")
            counted = "" if "update" in estimate.parts else " (and more: counted so far)"
            raise MemoryError(
                f"out of memory before the start: {estimate.line()}{counted}; the runs may use "
                f"{MEMORY_FRACTION:.0%} of it. {advice}: lower --seeds, or --loop.replay-capacity (now "
                f"{program.loop_config.replay_capacity}), or set --loop.compact-obs (float observations as "
                "bfloat16)")
    return estimate

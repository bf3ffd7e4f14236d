"""The host loop: compile once, advance the run in chunks, evaluate, log, checkpoint, resume.

A run is a pure function of its seeds' keys. The host never touches the train state except to checkpoint it: it calls
the compiled, vmapped `train_chunk` (the state donated), reads back the small metrics pytree, writes one
`metrics.jsonl` line per chunk and seed, and every few chunks evaluates and saves an orbax checkpoint of the whole
state. SIGINT/SIGTERM finish the chunk in flight, checkpoint, and exit cleanly; `resume` continues the identical run.

Works for any agent module with `Config`, `init(key, config, env)`, `train_chunk`, `evaluate` and `replay_nbytes`
(`purejaxmt.brc`, `purejaxmt.brc_discrete`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tqdm
import tyro
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from purejaxmt import envs, plotting

ProgressFn = Callable[[int, list[dict]], Any]


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What a run trains on and how the host drives it (the agent's own settings live in the agent's `Config`)."""

    tasks: str = "humanoid"
    """A task-set name or comma-separated task names (see `purejaxmt.envs.list_tasks()`)."""
    seeds: int = 1
    """Independent runs, vmapped in one program (and sharded over devices when there are several)."""
    seed: int = 0
    """Seed of the first run; run i uses `PRNGKey(seed + i)`, so vmapped seed i equals a single run with that seed."""
    episode_length: int | None = None
    """Override the tasks' episode length (None: the tasks' own, 1000 for DM Control)."""
    minimal_action_set: bool = False
    """MinAtar games: Gymnax's minimal action set per game, with a legal-action mask, instead of the full 6 actions."""
    eval_every: int = 10
    """Evaluate every this many chunks (and after the last)."""
    checkpoint_every: int = 10
    """Checkpoint every this many chunks (and at exit, including SIGINT/SIGTERM)."""
    save_replay: bool = True
    """Keep the replay buffer in checkpoints; without it a resumed run refills from empty and is not the same run."""
    xla_optimization_level: int = 3
    """XLA backend optimisation level (0-3) of the compiled programs. On a CPU, 1 compiles an MJX humanoid step in
    about half the time of 3 and runs it about 1.4x slower (docs/results.md): worth it for short runs."""

    def __post_init__(self) -> None:
        for name in ("seeds", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.episode_length is not None and self.episode_length < 1:
            raise ValueError(f"episode_length={self.episode_length} must be >= 1 (or None)")
        if self.xla_optimization_level not in (0, 1, 2, 3):
            raise ValueError(f"xla_optimization_level={self.xla_optimization_level} must be 0, 1, 2 or 3")


# ----------------------------------------------------------------------------------------------------------------------
# Run directories and configs
# ----------------------------------------------------------------------------------------------------------------------
def make_env(run_config: RunConfig) -> envs.TaskEnv:
    """The run's `TaskEnv`. Env options are passed only when set, as each applies to some providers' tasks only."""
    options = {"minimal_action_set": True} if run_config.minimal_action_set else {}
    return envs.make(run_config.tasks, episode_length=run_config.episode_length, **options)


def _config_record(experiment: str, agent: ModuleType, agent_config: Any, run_config: RunConfig,
                   preset: str | None) -> dict:
    record = {"experiment": experiment, "agent": agent.__name__, "preset": preset,
              "run": dataclasses.asdict(run_config), "agent_config": dataclasses.asdict(agent_config)}
    # As JSON has it (tuples become lists), so a record compares equal to the one saved in config.json on resume.
    return json.loads(json.dumps(record))


def _differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    diffs = []
    for name in sorted(set(saved) | set(wanted)):
        a, b = saved.get(name, "<missing>"), wanted.get(name, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{name}.")
        elif a != b:
            diffs.append(f"{prefix}{name}: saved {a!r}, requested {b!r}")
    return diffs


def new_run_dir(experiment: str, root: Path = Path("runs")) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return root / experiment / stamp


def load_saved_config(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume from {run_dir}: no config.json there (is it a purejaxmt run dir?)")
    return json.loads(path.read_text())


def _device_memory_bytes() -> int:
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


def check_replay_fits(agent: ModuleType, agent_config: Any, env: Any, seeds: int) -> int:
    """Estimates the buffer's bytes before allocating it; raises a clear error when it cannot fit."""
    per_seed = agent.replay_nbytes(agent_config, env)
    total, available = per_seed * seeds, _device_memory_bytes()
    if total > 0.8 * available:
        raise MemoryError(
            f"replay buffers need {per_seed / 2**30:.2f} GiB per seed x {seeds} seeds = {total / 2**30:.2f} GiB, "
            f"but {jax.devices()[0].platform} memory available is {available / 2**30:.2f} GiB: lower "
            f"--agent.replay-capacity (now {agent_config.replay_capacity}) or --seeds")
    return per_seed


# ----------------------------------------------------------------------------------------------------------------------
# Seeds and devices
# ----------------------------------------------------------------------------------------------------------------------
def seed_keys(run_config: RunConfig) -> jax.Array:
    return jnp.stack([jax.random.PRNGKey(run_config.seed + i) for i in range(run_config.seeds)])


def seed_sharding(num_seeds: int) -> NamedSharding | None:
    """Shards the seed axis over all devices when it divides evenly; None (one device) otherwise."""
    devices = jax.devices()
    if len(devices) == 1 or num_seeds % len(devices):
        return None
    return NamedSharding(Mesh(np.array(devices), ("seed",)), PartitionSpec("seed"))


def runs_axes(state: Any) -> Any:
    """The `vmap` axes of a batched run state: 0 (the runs axis) for every leaf but the agent's `LOCKSTEP_FIELDS`,
    which are None: iteration and update counters are the same in every run, so they stay unbatched scalars, and a
    `lax.cond` on them (skip the updates during the random phase) stays a cond under `vmap`. Measured on the 2-core
    CPU before this: with the counter batched, the cond became a select and a random-phase iteration cost 91 ms
    instead of 14 (docs/results.md). Works on concrete and abstract states alike."""
    axes = jax.tree.map(lambda _: 0, state)
    return axes.replace(**{name: None for name in _lockstep_fields(state)})


def _lockstep_fields(state: Any) -> tuple[str, ...]:
    return getattr(type(state), "LOCKSTEP_FIELDS", ())


def _batched_init(agent: ModuleType, agent_config: Any, env: Any, keys: jax.Array) -> Any:
    """`agent.init` vmapped over the seed keys, its lockstep fields taken from the first run (they are equal)."""
    state = jax.vmap(lambda key: agent.init(key, agent_config, env))(keys)
    return state.replace(**{name: getattr(state, name)[0] for name in _lockstep_fields(state)})


def vmap_train_chunk(agent: ModuleType, state: Any) -> Callable:
    """`agent.train_chunk` over the runs axis of `state` (lockstep fields unbatched; see `runs_axes`)."""
    axes = runs_axes(state)
    return jax.vmap(agent.train_chunk, in_axes=(axes,), out_axes=(axes, 0))


def vmap_evaluate(agent: ModuleType, state: Any) -> Callable:
    """`agent.evaluate(state, key)` over the runs axis of `state` and of the keys."""
    return jax.vmap(agent.evaluate, in_axes=(runs_axes(state), 0))


def init_states(agent: ModuleType, agent_config: Any, env: Any, run_config: RunConfig) -> Any:
    """The batched run state of all seeds: leaves `[S, ...]`, but the lockstep fields (`runs_axes`) unbatched."""
    # Not jitted as a whole: on XLA:CPU (jax 0.10.2) one program holding the network initialisers and an MJX reset
    # never completed its execution (a runtime deadlock, seen on 2 cores); op-by-op init costs a few seconds once,
    # and env.reset inside it is jitted on its own.
    state = _batched_init(agent, agent_config, env, seed_keys(run_config))
    # Op-by-op init can hand out one buffer twice (the target critic starts as the online critic): give every leaf
    # its own buffer, since the chunk donates them all.
    state = jax.tree.map(lambda x: jnp.array(x, copy=True), state)
    sharding = seed_sharding(run_config.seeds)
    if sharding is None:
        return state
    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    shardings = jax.tree.map(lambda axis: replicated if axis is None else sharding, runs_axes(state),
                             is_leaf=lambda axis: axis is None)
    return jax.device_put(state, shardings)


def abstract_run(agent: ModuleType, agent_config: Any, run_config: RunConfig, env: Any | None = None) -> dict:
    """Traces a run without running or allocating it: the batched init, one train chunk and one evaluation, as the
    runner compiles them, under `jax.eval_shape` (a W=4096 critic and a 1M-transition replay cost no memory).
    Returns the shapes `{"state", "metrics", "evaluation"}`; raises whatever a real run would raise at start."""
    env = make_env(run_config) if env is None else env
    keys = seed_keys(run_config)
    state = jax.eval_shape(lambda keys: _batched_init(agent, agent_config, env, keys), keys)
    state_out, metrics = jax.eval_shape(vmap_train_chunk(agent, state), state)
    evaluation = jax.eval_shape(vmap_evaluate(agent, state), state, keys)
    return {"state": state_out, "metrics": metrics, "evaluation": evaluation}


# ----------------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------------
def _to_python(value: np.ndarray) -> float | int | None:
    value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metrics_rows(metrics: dict, task_names: list[str], run_config: RunConfig, chunk: int, wall_time: float,
                 evaluation: dict | None) -> list[dict]:
    """One flat row per seed: per-task fields `<split>/<task>/<name>`, scalars by name."""
    metrics = jax.device_get(metrics)
    evaluation = jax.device_get(evaluation) if evaluation is not None else None
    rows = []
    for seed_index in range(run_config.seeds):
        row = {"chunk": chunk, "seed": run_config.seed + seed_index, "wall_time": round(wall_time, 3)}
        for name, value in metrics.items():
            value = np.asarray(value[seed_index])
            if value.ndim == 1:
                split_name = "return" if name == "episode_return" else name
                for task, v in zip(task_names, value):
                    row[f"train/{task}/{split_name}"] = _to_python(v)
            else:
                row[name] = _to_python(value)
        row["step"] = row.pop("env_steps")
        if evaluation is not None:
            for name, value in evaluation.items():
                for task, v in zip(task_names, np.asarray(value[seed_index])):
                    row[f"eval/{task}/{name}"] = _to_python(v)
        rows.append(row)
    return rows


def _truncate_metrics(path: Path, last_chunk: int) -> float:
    """Drops lines past the checkpoint being resumed (a run killed between its log and its checkpoint) and returns
    the wall time already spent."""
    if not path.exists():
        return 0.0
    kept = [row for row in plotting.read_metrics(path) if row["chunk"] <= last_chunk]
    path.write_text("".join(json.dumps(row) + "\n" for row in kept))
    return max((row["wall_time"] for row in kept), default=0.0)


# ----------------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------------
class _StopRequest:
    """SIGINT/SIGTERM set a flag: the chunk in flight finishes, then the run checkpoints and exits. A second
    SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n[purejaxmt] {signal.Signals(signum).name}: finishing this chunk, then checkpointing and exiting",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _checkpoint_leaves(state: Any) -> dict[str, jax.Array]:
    """The state's leaves by position, without the zero-size ones (MJX data has some; orbax cannot save them)."""
    return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(state)) if leaf.size}


STATE_LAYOUT = "state_layout.json"


def state_layout(state: Any) -> list[str]:
    """Every leaf of a saved state as `path shape dtype`, in order. Checkpoints hold leaves by position, so a resume
    checks that the checkpoint was written for exactly this layout: a state that gained, lost or reordered a field
    (a new purejaxmt version) must not load its arrays into the wrong places."""
    return [f"{jax.tree_util.keystr(path)} {tuple(leaf.shape)} {leaf.dtype}"
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]]


def _check_state_layout(run_dir: Path, state: Any) -> None:
    path = run_dir / STATE_LAYOUT
    if not path.is_file():
        raise ValueError(f"cannot resume {run_dir}: it has no {STATE_LAYOUT} (it was written by a purejaxmt older "
                         "than the state-layout check, whose train state had other fields), so its checkpoint's "
                         "arrays cannot be matched to this version's train state; start a new run")
    saved, expected = json.loads(path.read_text()), state_layout(state)
    if saved != expected:
        differences = [f"saved {s!r}, now {e!r}" for s, e in zip(saved, expected) if s != e]
        if len(saved) != len(expected):
            differences.append(f"saved {len(saved)} leaves, now {len(expected)}")
        raise ValueError(f"cannot resume {run_dir}: its checkpoint was written for another train-state layout (a "
                         f"different purejaxmt version); start a new run. First differences: {differences[:3]}")


def _from_checkpoint_leaves(saved: dict[str, jax.Array], template: Any) -> Any:
    leaves, treedef = jax.tree.flatten(template)
    restored = [saved[f"{i:05d}"] if leaf.size else jnp.zeros(leaf.shape, leaf.dtype) for i, leaf in enumerate(leaves)]
    return jax.tree.unflatten(treedef, restored)


def run(experiment: str, agent: ModuleType, agent_config: Any, run_config: RunConfig, *,
        run_dir: Path | None = None, resume: Path | None = None, preset: str | None = None,
        progress_fn: ProgressFn | None = None, runs_root: Path = Path("runs")) -> Path:
    """Trains `agent` on `run_config.tasks` and returns the run directory.

    `progress_fn(chunk, rows)` is called after each chunk with that chunk's metrics rows; returning False stops the
    run as SIGINT does (checkpoint, then return).
    """
    record = _config_record(experiment, agent, agent_config, run_config, preset)
    if resume is not None:
        run_dir = Path(resume)
        saved = load_saved_config(run_dir)
        diffs = _differences({k: saved.get(k) for k in ("experiment", "agent", "run", "agent_config")},
                             {k: record[k] for k in ("experiment", "agent", "run", "agent_config")})
        if diffs:
            raise ValueError(f"cannot resume {run_dir}: it was run with a different config; nothing was changed "
                             "there. Differences: " + "; ".join(diffs))
    else:
        run_dir = Path(run_dir) if run_dir is not None else new_run_dir(experiment, runs_root)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise FileExistsError(f"run dir {run_dir} already exists and is not empty: pass --resume {run_dir} to "
                                  "continue it, or choose a new --run-dir (runs are never overwritten)")

    env = make_env(run_config)
    task_names = list(env.task_names)
    num_chunks = math.ceil(agent_config.total_steps / agent_config.steps_per_chunk)
    replay_bytes = check_replay_fits(agent, agent_config, env, run_config.seeds)
    # Initialise before touching the disk: config errors that need the env (a batch not divisible by the task count,
    # discrete tasks for a continuous agent, ...) surface here, and nothing is written.
    print(f"[purejaxmt] initialising {run_config.seeds} seed(s) on {task_names} (compiles the env reset)", flush=True)
    state = init_states(agent, agent_config, env, run_config)

    def saveable(state: Any) -> Any:
        return state if run_config.save_replay else state.replace(replay=None)

    if resume is not None:
        _check_state_layout(run_dir, saveable(state))

    print(f"[purejaxmt] {experiment}: {len(task_names)} tasks {task_names}, {run_config.seeds} seed(s), "
          f"{num_chunks} chunks of {agent_config.steps_per_chunk} env steps per task, on "
          f"{jax.device_count()} x {jax.devices()[0].device_kind}")
    print("[purejaxmt] resolved config:\n" + json.dumps(record, indent=2))
    print(f"[purejaxmt] replay buffer: {replay_bytes / 2**20:.1f} MiB per seed")
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume is None:
        (run_dir / "config.json").write_text(json.dumps(record, indent=2) + "\n")
        (run_dir / STATE_LAYOUT).write_text(json.dumps(state_layout(saveable(state)), indent=0) + "\n")
    print(f"[purejaxmt] run dir: {run_dir}")

    manager = ocp.CheckpointManager(
        (run_dir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False))

    start_chunk, wall_offset = 0, 0.0
    if resume is not None:
        last = manager.latest_step()
        if last is None:
            raise FileNotFoundError(f"cannot resume {run_dir}: no checkpoint in {run_dir / 'checkpoints'}")
        template = saveable(state)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _checkpoint_leaves(template))
        restored = _from_checkpoint_leaves(manager.restore(last, args=ocp.args.StandardRestore(abstract)), template)
        state = restored if run_config.save_replay else restored.replace(replay=state.replay)
        start_chunk = last
        wall_offset = _truncate_metrics(run_dir / "metrics.jsonl", last)
        print(f"[purejaxmt] resumed from chunk {last} ({last * agent_config.steps_per_chunk} env steps per task)")

    compile_start = time.perf_counter()
    lowered = (jax.jit(vmap_train_chunk(agent, state), donate_argnums=0).lower(state),
               jax.jit(vmap_evaluate(agent, state)).lower(state, seed_keys(run_config)))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # XLA compiles the two programs in parallel
        options = {"xla_backend_optimization_level": run_config.xla_optimization_level}
        train_chunk, evaluate = pool.map(lambda program: program.compile(compiler_options=options), lowered)
    compile_seconds = time.perf_counter() - compile_start
    print(f"[purejaxmt] compiled train chunk and evaluation in {compile_seconds:.1f} s")

    steps_per_chunk_all = agent_config.steps_per_chunk * len(task_names) * run_config.seeds
    bar = tqdm.tqdm(total=num_chunks * agent_config.steps_per_chunk, initial=start_chunk * agent_config.steps_per_chunk,
                    unit="step", unit_scale=True, desc="env steps per task", dynamic_ncols=True)
    chunk = start_chunk
    loop_start = time.perf_counter()
    with _StopRequest() as stop, open(run_dir / "metrics.jsonl", "a") as log:
        while chunk < num_chunks and not stop.requested:
            chunk_start = time.perf_counter()
            with jax.transfer_guard("disallow"):
                state, metrics = train_chunk(state)
            jax.block_until_ready(metrics)
            chunk += 1
            chunk_seconds = time.perf_counter() - chunk_start
            evaluation = None
            if chunk % run_config.eval_every == 0 or chunk == num_chunks:
                eval_keys = jax.vmap(lambda k: jax.random.fold_in(k, chunk))(seed_keys(run_config))
                evaluation = evaluate(state, eval_keys)
            rows = metrics_rows(metrics, task_names, run_config, chunk,
                                wall_offset + time.perf_counter() - loop_start, evaluation)
            for row in rows:
                row["env_steps_per_second"] = round(steps_per_chunk_all / chunk_seconds, 1)
                log.write(json.dumps(row) + "\n")
            log.flush()
            bar.update(agent_config.steps_per_chunk)
            bar.set_postfix(sps=f"{steps_per_chunk_all / chunk_seconds:,.0f}",
                            ret=_mean_return(rows, task_names, "train"), refresh=False)
            if progress_fn is not None and progress_fn(chunk, rows) is False:
                stop.requested = True
            if chunk % run_config.checkpoint_every == 0 or chunk == num_chunks or stop.requested:
                manager.save(chunk, args=ocp.args.StandardSave(_checkpoint_leaves(saveable(state))))
    bar.close()
    manager.wait_until_finished()
    manager.close()
    plotting.plot_learning_curves(run_dir, task_names)
    if chunk < num_chunks:
        print(f"[purejaxmt] stopped after chunk {chunk}/{num_chunks}; continue with --resume {run_dir}")
    else:
        print(f"[purejaxmt] done: {run_dir} (metrics.jsonl, checkpoints/, plots/)")
    return run_dir


def _mean_return(rows: list[dict], task_names: list[str], split: str) -> str:
    values = [row.get(f"{split}/{task}/return") for row in rows for task in task_names]
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.1f}" if values else "-"


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------
def enable_compilation_cache(path: str | None = None) -> str | None:
    """Keeps compiled programs on disk, so a second run (or a resume) of the same config skips the compile, which
    dominates short runs on a CPU (an MJX humanoid chunk takes minutes to compile there). `PUREJAXMT_CACHE_DIR`
    overrides the location; set it to an empty string to disable."""
    path = os.environ.get("PUREJAXMT_CACHE_DIR", path or str(Path.home() / ".cache" / "purejaxmt" / "xla"))
    if not path:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path


@dataclasses.dataclass(frozen=True)
class Preset:
    agent: Any
    run: RunConfig
    description: str = ""


def accelerator_present() -> bool:
    return jax.default_backend() != "cpu"


@dataclasses.dataclass(frozen=True)
class Command:
    """A parsed command line: the resolved configs and paths `run` takes, plus the experiment's own `flags`."""

    preset: str
    agent: Any
    run: RunConfig
    run_dir: Path | None
    resume: Path | None
    flags: dict[str, Any]


def main(experiment: str, agent: ModuleType, presets: dict[str, Preset], argv: list[str] | None = None,
         description: str | None = None) -> Path:
    """The CLI every experiment script shares: `--preset`, `--tasks`, `--seeds`, `--steps`, `--run-dir`,
    `--resume`, and `--agent.<field>` / `--run.<field>` overrides of the preset's dataclasses."""
    command = parse_command(presets, argv, description)
    return run(experiment, agent, command.agent, command.run, run_dir=command.run_dir, resume=command.resume,
               preset=command.preset)


def parse_command(presets: dict[str, Preset], argv: list[str] | None = None, description: str | None = None,
                  flags: tuple[tuple[str, type, Any, str], ...] = ()) -> Command:
    """`main`'s command line without the run: for experiments that add flags of their own, given as
    `(name, type, default, help)` (`("single_task_baselines", bool, False, "...")` becomes
    `--single-task-baselines`), and read back from `Command.flags`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    enable_compilation_cache()
    preset_name = _peek_flag(argv, "--preset")
    resume = _peek_flag(argv, "--resume")
    if preset_name is None and resume is not None:
        preset_name = load_saved_config(Path(resume)).get("preset")
    if preset_name is None:
        preset_name = "paper" if accelerator_present() else "cpu"
        print(f"[purejaxmt] no --preset given: using '{preset_name}' "
              f"({'an accelerator is present' if preset_name == 'paper' else 'CPU-only machine'})")
    if preset_name not in presets:
        raise SystemExit(f"unknown --preset {preset_name!r}; choose one of {sorted(presets)}")
    chosen = presets[preset_name]

    # Built with real (not string) annotations so tyro can resolve the preset's config types.
    Args = dataclasses.make_dataclass("Args", [
        ("preset", str, dataclasses.field(default=preset_name)),
        ("tasks", str | None, dataclasses.field(default=None)),
        ("seeds", int | None, dataclasses.field(default=None)),
        ("steps", int | None, dataclasses.field(default=None)),
        ("run_dir", Path | None, dataclasses.field(default=None)),
        ("resume", Path | None, dataclasses.field(default=None)),
        ("agent", type(chosen.agent), dataclasses.field(default=chosen.agent)),
        ("run", RunConfig, dataclasses.field(default=chosen.run)),
        *((name, Annotated[kind, tyro.conf.arg(help=help_text)], dataclasses.field(default=default))
          for name, kind, default, help_text in flags),
    ], frozen=True)
    Args.__doc__ = (description or "") + "\n\nPresets: " + "; ".join(
        f"{name}: {p.description}" for name, p in presets.items()) + (
        ". --tasks overrides run.tasks, --seeds run.seeds, --steps agent.total_steps (env steps per task); "
        "--run-dir picks the run directory, --resume continues one.")
    args = tyro.cli(Args, args=argv, description=description)
    agent_config, run_config = args.agent, args.run
    if args.tasks is not None:
        run_config = dataclasses.replace(run_config, tasks=args.tasks)
    if args.seeds is not None:
        run_config = dataclasses.replace(run_config, seeds=args.seeds)
    if args.steps is not None:
        agent_config = dataclasses.replace(agent_config, total_steps=args.steps)
    return Command(preset=preset_name, agent=agent_config, run=run_config, run_dir=args.run_dir, resume=args.resume,
                   flags={name: getattr(args, name) for name, *_ in flags})


def _peek_flag(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None

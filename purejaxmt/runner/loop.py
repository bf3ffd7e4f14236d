"""The host loop: compile once, advance the runs in chunks, evaluate, log, checkpoint, resume.

A run is a pure function of its keys and settings. The host never touches the run state except to checkpoint it: it
calls the compiled, vmapped `train_chunk` (the state donated), reads back the small metrics pytree, writes one
`metrics.jsonl` line per chunk and run, and every few chunks evaluates and saves a checkpoint of the whole state.
SIGINT/SIGTERM finish the chunk in flight, checkpoint, and exit cleanly; `resume` continues the identical run.
Depends on `offpolicy.Program` only: any agent with the `purejaxmt.agents.Agent` protocol runs here.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import tqdm

from purejaxmt import envs, offpolicy, plotting
from purejaxmt.runner import checkpoints, devices, rundir
from purejaxmt.runner.config import RunConfig

ProgressFn = Callable[[int, list[dict]], Any]


def make_env(run_config: RunConfig) -> envs.TaskEnv:
    """The run's `TaskEnv`. Env options are passed only when set, as each applies to some providers' tasks only."""
    options = {"minimal_action_set": True} if run_config.minimal_action_set else {}
    return envs.make(run_config.tasks, episode_length=run_config.episode_length, **options)


def seed_keys(run_config: RunConfig) -> jax.Array:
    return devices.seed_keys(run_config.seed, run_config.seeds)


def abstract_run(agent_module: ModuleType, agent_config: Any, loop_config: offpolicy.LoopConfig,
                 run_config: RunConfig, env: Any | None = None) -> dict:
    """Traces a run without running or allocating it: the batched init, one train chunk and one evaluation, as
    `run` compiles them, under `jax.eval_shape` (a W=4096 critic and a 1M-transition replay cost no memory).
    Returns the shapes `{"state", "metrics", "evaluation"}`; raises whatever a real run would raise at start."""
    program = offpolicy.make(agent_module, agent_config, loop_config, make_env(run_config) if env is None else env)
    keys = seed_keys(run_config)
    state = devices.abstract_states(program, keys)
    state_out, metrics = jax.eval_shape(devices.vmap_train_chunk(program, state), state)
    evaluation = jax.eval_shape(devices.vmap_evaluate(program, state), state, keys)
    return {"state": state_out, "metrics": metrics, "evaluation": evaluation}


def _check_env_matches(env: Any, run_config: RunConfig) -> None:
    tasks = envs.resolve(run_config.tasks)
    lengths = set(env.episode_length)
    if tuple(env.task_names) != tasks or (run_config.episode_length is not None
                                          and lengths != {run_config.episode_length}):
        raise ValueError(f"the env given to run has tasks {list(env.task_names)} and episode lengths "
                         f"{list(env.episode_length)}, but run_config asks for tasks={run_config.tasks!r} "
                         f"({list(tasks)}) and episode_length={run_config.episode_length}: pass the env of that "
                         "run_config, or no env")


class _StopRequest:
    """SIGINT/SIGTERM set a flag: the chunk in flight finishes, then the run checkpoints and exits. A second
    SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
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


def run(experiment: str, agent_module: ModuleType, agent_config: Any, loop_config: offpolicy.LoopConfig,
        run_config: RunConfig, *, env: Any | None = None, run_dir: Path | None = None, resume: Path | None = None,
        preset: str | None = None, progress_fn: ProgressFn | None = None, runs_root: Path = Path("runs")) -> Path:
    """Trains `agent_module`'s agent on `run_config.tasks` (or on a ready `env`) and returns the run directory.

    `progress_fn(chunk, rows)` is called after each chunk with that chunk's metrics rows; returning False stops the
    run as SIGINT does (checkpoint, then return).
    """
    record = rundir.config_record(experiment, agent_module, agent_config, loop_config, run_config, preset)
    if resume is not None:
        run_dir = Path(resume)
        rundir.check_resumable(run_dir, record)
    else:
        run_dir = Path(run_dir) if run_dir is not None else rundir.new_run_dir(experiment, runs_root)
        rundir.check_new(run_dir)

    if env is None:
        env = make_env(run_config)
    else:  # the config record must describe the env that is trained on
        _check_env_matches(env, run_config)
    program = offpolicy.make(agent_module, agent_config, loop_config, env)
    task_names, num_chunks, steps_per_chunk = program.task_names, loop_config.num_chunks, loop_config.steps_per_chunk
    replay_bytes = devices.check_replay_fits(program, run_config.seeds)
    keys, seeds = seed_keys(run_config), [run_config.seed + i for i in range(run_config.seeds)]

    def saveable(state: Any) -> Any:
        return state if run_config.save_replay else state.replace(replay=None)

    if resume is not None:  # before any compile or allocation: the traced layout of the state this run would build
        checkpoints.check_layout(run_dir, saveable(devices.abstract_states(program, keys)))
    # Initialise before touching the disk: config errors that need the env surface here, and nothing is written.
    print(f"[purejaxmt] initialising {run_config.seeds} seed(s) on {list(task_names)} (compiles the env reset)",
          flush=True)
    state = devices.init_states(program, keys)

    print(f"[purejaxmt] {experiment}: {len(task_names)} tasks {list(task_names)}, {run_config.seeds} seed(s), "
          f"{num_chunks} chunks of {steps_per_chunk} env steps per task, on "
          f"{jax.device_count()} x {jax.devices()[0].device_kind}")
    print("[purejaxmt] resolved config:\n" + json.dumps(record, indent=2))
    print(f"[purejaxmt] replay buffer: {replay_bytes / 2**20:.1f} MiB per seed")
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume is None:
        (run_dir / "config.json").write_text(json.dumps(record, indent=2) + "\n")
        checkpoints.write_layout(run_dir, saveable(state))
    print(f"[purejaxmt] run dir: {run_dir}")
    checkpointer = checkpoints.Checkpointer(run_dir)

    start_chunk, wall_offset = 0, 0.0
    if resume is not None:
        last = checkpointer.latest_chunk()
        if last is None:
            raise FileNotFoundError(f"cannot resume {run_dir}: no checkpoint in {run_dir / 'checkpoints'}")
        restored = checkpointer.restore(last, saveable(state))
        state = restored if run_config.save_replay else restored.replace(replay=state.replay)
        start_chunk, wall_offset = last, rundir.truncate_metrics(run_dir / "metrics.jsonl", last)
        print(f"[purejaxmt] resumed from chunk {last} ({last * steps_per_chunk} env steps per task)")

    compile_start = time.perf_counter()
    lowered = (jax.jit(devices.vmap_train_chunk(program, state), donate_argnums=0).lower(state),
               jax.jit(devices.vmap_evaluate(program, state)).lower(state, keys))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # XLA compiles the two programs in parallel
        options = {"xla_backend_optimization_level": run_config.xla_optimization_level}
        train_chunk, evaluate = pool.map(lambda program: program.compile(compiler_options=options), lowered)
    print(f"[purejaxmt] compiled train chunk and evaluation in {time.perf_counter() - compile_start:.1f} s")

    steps_per_chunk_all = steps_per_chunk * len(task_names) * run_config.seeds
    bar = tqdm.tqdm(total=num_chunks * steps_per_chunk, initial=start_chunk * steps_per_chunk, unit="step",
                    unit_scale=True, desc="env steps per task", dynamic_ncols=True)
    chunk, loop_start = start_chunk, time.perf_counter()
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
                evaluation = evaluate(state, jax.vmap(lambda k: jax.random.fold_in(k, chunk))(keys))
            rows = rundir.metrics_rows(metrics, task_names, seeds, chunk,
                                       wall_offset + time.perf_counter() - loop_start, evaluation)
            for row in rows:
                row["env_steps_per_second"] = round(steps_per_chunk_all / chunk_seconds, 1)
                log.write(json.dumps(row) + "\n")
            log.flush()
            bar.update(steps_per_chunk)
            bar.set_postfix(sps=f"{steps_per_chunk_all / chunk_seconds:,.0f}",
                            ret=rundir.mean_return(rows, task_names, "train"), refresh=False)
            if progress_fn is not None and progress_fn(chunk, rows) is False:
                stop.requested = True
            if chunk % run_config.checkpoint_every == 0 or chunk == num_chunks or stop.requested:
                checkpointer.save(chunk, saveable(state))
    bar.close()
    checkpointer.close()
    plotting.plot_learning_curves(run_dir, list(task_names))
    if chunk < num_chunks:
        print(f"[purejaxmt] stopped after chunk {chunk}/{num_chunks}; continue with --resume {run_dir}")
    else:
        print(f"[purejaxmt] done: {run_dir} (metrics.jsonl, checkpoints/, plots/)")
    return run_dir

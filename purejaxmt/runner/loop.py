"""The host loop: compile once, advance the runs in chunks, evaluate, log, checkpoint, resume.

A run is a pure function of its keys and settings. The host never touches the run state except to checkpoint it: it
calls the compiled, vmapped `train_chunk` (the state donated), reads back the small metrics pytree, writes one
`metrics.jsonl` line per chunk and run, and every few chunks evaluates and saves a checkpoint of the whole state.
SIGINT/SIGTERM finish the chunk in flight, checkpoint, and exit cleanly; `resume` continues the identical run.
Depends on `offpolicy.Program` only: any agent with the `purejaxmt.agents.Agent` protocol runs here.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from purejaxmt import envs, offpolicy
from purejaxmt.agents import AgentSpec
from purejaxmt.runner import checkpoints, devices, health, loggers, provenance, rundir
from purejaxmt.runner.config import RunConfig, make_env

ProgressFn = Callable[[int, list[dict]], Any]


def abstract_run(agent_spec: AgentSpec, agent_config: Any, loop_config: offpolicy.LoopConfig,
                 run_config: RunConfig, env: Any | None = None) -> dict:
    """Traces a run without running or allocating it: the batched init, one train chunk and one evaluation, as
    `run` compiles them, under `jax.eval_shape` (a W=4096 critic and a 1M-transition replay cost no memory).
    Returns the shapes `{"state", "metrics", "evaluation"}`; raises whatever a real run would raise at start."""
    program = offpolicy.make(agent_spec, agent_config, loop_config, make_env(run_config) if env is None else env)
    keys = devices.seed_keys(run_config.seed, run_config.seeds)
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


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a program: its seed, its settings (`None`: the program's own) and the fields that name it in each
    metrics row (a sweep adds `run` and `setting`)."""

    seed: int
    hyper: offpolicy.Hyper | None = None
    labels: dict = dataclasses.field(default_factory=dict)
    learner: Any = None
    """A learner to start from instead of the agent's init (transfer: `purejaxmt.studies.transfer`), one run's pytree of
    the agent's `Learner` structure; replay, normaliser and envs start fresh as ever."""


def _start_learners(state: Any, learners: list[Any], mine: np.ndarray, sharding: Any, num_runs: int) -> Any:
    """`state` with this process's runs' (`mine`) learners replaced where `learners` (one per run of `mine`) gives
    one."""
    fresh = devices.local_values(state.learner, mine)
    treedef = jax.tree.structure(state.learner)
    rows = [jax.tree.leaves(jax.tree.map(lambda x, i=i: x[i], fresh)) if learner is None else
            [np.asarray(leaf) for leaf in treedef.flatten_up_to(learner)] for i, learner in enumerate(learners)]
    stacked = [np.stack(column) for column in zip(*rows)]
    for column, leaf in zip(stacked, jax.tree.leaves(fresh)):
        if column.shape != leaf.shape or column.dtype != leaf.dtype:
            raise ValueError(f"a starting learner has a leaf of shape {column.shape[1:]} {column.dtype} where this "
                             f"program's has {leaf.shape[1:]} {leaf.dtype}")
    learner = jax.tree.unflatten(treedef, [devices.global_runs_array(column, sharding, num_runs)
                                           for column in stacked])
    return state.replace(learner=learner)


def trace(run_dir: Path, event: str) -> None:
    """With `PUREJAXMT_TRACE` set, one `[purejaxmt:trace] <run dir name> <event>` line per compile, chunk and
    checkpoint, before it starts: the moments `experiments/faults.py` kills a run at (every process prints its own)."""
    if os.environ.get("PUREJAXMT_TRACE"):
        print(f"[purejaxmt:trace] {Path(run_dir).name} {event}", flush=True)


def say(*args: Any, **kwargs: Any) -> None:
    if jax.process_index() == 0:  # one voice for a multi-host job
        print(*args, **kwargs)


def sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _any_process(flag: bool) -> bool:
    """True when any process says so: the processes of a job stop after the same chunk (their checkpoints are one
    collective save)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


def run(experiment: str, agent_spec: AgentSpec, agent_config: Any, loop_config: offpolicy.LoopConfig,
        run_config: RunConfig, *, env: Any | None = None, run_dir: Path | None = None, resume: Path | None = None,
        preset: str | None = None, progress_fn: ProgressFn | None = None, runs_root: Path = Path("runs"),
        runs: list[RunSpec] | None = None, record_extra: dict | None = None) -> Path:
    """Trains `agent_spec`'s agent on `run_config.tasks` (or on a ready `env`) and returns the run directory.

    The runs are `run_config.seeds` seeds from `run_config.seed` with the configs' settings, or the given `runs`
    (a sweep's settings x seeds in one program; `record_extra` is saved in config.json with the configs). They are
    padded to a multiple of the device count (copies of the first run, dropped from the logs) and sharded over all
    devices of all processes. `progress_fn(chunk, rows)` is called after each chunk with this process's metrics rows;
    returning False stops the run as SIGINT does (checkpoint, then return). Trains only: plots and videos are the
    caller's after-run jobs (`cli.after_run`).
    """
    record = rundir.config_record(experiment, agent_spec, agent_config, loop_config, run_config, preset)
    record.update(json.loads(json.dumps(record_extra or {})))
    record[provenance.KEY] = provenance.record()  # versions, commit, devices: what produced the result
    loggers.check_installed(run_config.logger)  # before anything is written
    if resume is not None:
        run_dir = Path(resume)
        rundir.check_resumable(run_dir, record)
        if (changed := provenance.resume_warning(rundir.load_saved_config(run_dir), record[provenance.KEY])):
            say(changed)
    else:
        run_dir = Path(run_dir) if run_dir is not None else rundir.new_run_dir(experiment, runs_root)
        rundir.check_new(run_dir)

    if env is None:
        env = make_env(run_config)
    else:  # the config record must describe the env that is trained on
        _check_env_matches(env, run_config)
    program = offpolicy.make(agent_spec, agent_config, loop_config, env)
    task_names, num_chunks, steps_per_chunk = program.task_names, loop_config.num_chunks, loop_config.steps_per_chunk
    runs = runs if runs is not None else [RunSpec(seed=run_config.seed + i) for i in range(run_config.seeds)]
    num_runs = len(runs)
    device_list, fewer = devices.devices_for_runs(num_runs, run_config.devices)
    if fewer:
        say(f"[purejaxmt] {fewer}")
    padded = devices.padded_num_runs(num_runs, len(device_list))
    sharding = devices.runs_sharding(device_list)
    all_runs = runs + [runs[0]] * (padded - num_runs)  # padding: copies of run 0, never logged
    keys = jnp.stack([jax.random.PRNGKey(spec.seed) for spec in all_runs])
    hypers = jax.tree.map(lambda *xs: jnp.stack(xs),
                          *[program.hyper if spec.hyper is None else spec.hyper for spec in all_runs])
    mine = devices.local_runs(sharding, padded)
    options = {"xla_backend_optimization_level": run_config.xla_optimization_level}
    memory = devices.check_memory(program, padded, len(device_list), seeds=run_config.seeds, compiler_options=options)

    def saveable(state: Any) -> Any:
        return state if run_config.save_replay else state.replace(replay=None)

    if resume is not None:  # before any compile or allocation: the traced layout of the state this run would build
        checkpoints.check_layout(run_dir, saveable(devices.abstract_states(program, keys)))
    # Initialise before touching the disk: config errors that need the env surface here, and nothing is written.
    say(f"[purejaxmt] initialising {num_runs} run(s) on {list(task_names)} (compiles the env reset)", flush=True)
    state = devices.init_states(program, keys, hypers, sharding)
    if resume is None and any(spec.learner is not None for spec in all_runs):
        state = _start_learners(state, [all_runs[i].learner for i in mine], mine, sharding, padded)
    if sharding is None:  # committed to its device as restored arrays are: a resume then compiles the same program
        state = jax.device_put(state, device_list[0])  # (a compilation-cache hit), not one with other shardings
    run_keys = devices.global_runs_array(np.asarray(keys)[mine], sharding, padded)

    padding = f" (+{padded - num_runs} padding)" if padded > num_runs else ""
    say(f"[purejaxmt] {experiment}: {len(task_names)} tasks {list(task_names)}, {num_runs} run(s){padding}, "
         f"{num_chunks} chunks of {steps_per_chunk} env steps per task, on {len(device_list)} x "
         f"{device_list[0].device_kind} in {jax.process_count()} process(es)")
    say("[purejaxmt] resolved config:\n" + json.dumps(record, indent=2))
    say(f"[purejaxmt] {memory.line()}")
    sync("purejaxmt: run dir checked")  # no process writes before every process has checked the run dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume is None and jax.process_index() == 0:
        (run_dir / "config.json").write_text(json.dumps(record, indent=2) + "\n")
        checkpoints.write_layout(run_dir, saveable(state))
    say(f"[purejaxmt] run dir: {run_dir}")
    # Process 0 only: the TensorBoard/W&B mirror of its metrics rows (a resume appends to it).
    logger = loggers.make_logger(run_config.logger, run_dir, record) if jax.process_index() == 0 else None
    checkpointer = checkpoints.Checkpointer(run_dir)
    if (short_of_space := checkpointer.disk_warning(saveable(state))):
        say(short_of_space)
    log_path = rundir.metrics_file(run_dir, jax.process_index())

    start_chunk, wall_offset = 0, 0.0
    if resume is not None:
        # Verified against its digests; a damaged newest checkpoint is reported and the one before it used.
        last, restored = checkpointer.restore_latest_intact(saveable(state), say)
        state = restored if run_config.save_replay else restored.replace(replay=state.replay)
        start_chunk, wall_offset = last, rundir.truncate_metrics(log_path, last)
        say(f"[purejaxmt] resumed from chunk {last} ({last * steps_per_chunk} env steps per task)")

    def evaluate_at(state: Any, keys: jax.Array, chunk: jax.Array) -> dict:
        return devices.vmap_evaluate(program, state)(state, jax.vmap(lambda key: jax.random.fold_in(key, chunk))(keys))

    trace(run_dir, "compile")
    compile_start = time.perf_counter()
    lowered = (jax.jit(devices.vmap_train_chunk(program, state), donate_argnums=0).lower(state),
               jax.jit(evaluate_at).lower(state, run_keys, 0))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # XLA compiles the two programs in parallel
        train_chunk, evaluate = pool.map(lambda program: program.compile(compiler_options=options), lowered)
    say(f"[purejaxmt] compiled train chunk and evaluation in {time.perf_counter() - compile_start:.1f} s")

    logged = mine < num_runs
    labels = [{"seed": all_runs[i].seed, **all_runs[i].labels} for i in mine[logged]]
    # Divergence (runner/health.py); on a resume the runs that had diverged stay diverged.
    diverged_at = health.diverged_before(rundir.read_all_metrics(run_dir), labels) if resume is not None else {}
    healthy_local = np.ones(len(mine), bool)
    healthy_local[np.flatnonzero(logged)[list(diverged_at)]] = False
    watch = health.DivergenceWatch(state, healthy_local, sharding, padded)
    steps_per_chunk_all = steps_per_chunk * len(task_names) * num_runs
    bar = tqdm.tqdm(total=num_chunks * steps_per_chunk, initial=start_chunk * steps_per_chunk, unit="step",
                    unit_scale=True, desc="env steps per task", dynamic_ncols=True,
                    disable=jax.process_index() != 0)
    chunk, loop_start = start_chunk, time.perf_counter()
    with _StopRequest() as stop, open(log_path, "a") as log:
        while chunk < num_chunks and not stop.requested:
            trace(run_dir, f"chunk {chunk + 1}")
            chunk_start = time.perf_counter()
            with jax.transfer_guard("disallow"):
                state, metrics = train_chunk(state)
            jax.block_until_ready(metrics)
            watch.after_chunk(state, metrics)
            chunk += 1
            chunk_seconds = time.perf_counter() - chunk_start
            # Every process decides alike (the evaluation below is one collective program).
            elapsed = wall_offset + time.perf_counter() - loop_start  # the metrics' wall_time
            out_of_time = (run_config.train_minutes is not None and chunk < num_chunks
                           and _any_process(elapsed >= 60.0 * run_config.train_minutes))
            evaluation = None
            if chunk % run_config.eval_every == 0 or chunk == num_chunks or out_of_time:
                evaluation = devices.local_values(evaluate(state, run_keys, chunk), mine)
            local_metrics = devices.local_values(metrics, mine)
            rows = rundir.metrics_rows(jax.tree.map(lambda x: x[logged], local_metrics), task_names,
                                       labels, chunk, wall_offset + time.perf_counter() - loop_start,
                                       jax.tree.map(lambda x: x[logged], evaluation))
            for line in health.report(chunk, devices.local_values(watch.healthy, mine)[logged],
                                      devices.local_values(watch.flags, mine[logged]), rows, diverged_at):
                bar.write(line, file=sys.stderr)  # on a line of its own, not inside the progress bar's
            for row in rows:
                row["env_steps_per_second"] = round(steps_per_chunk_all / chunk_seconds, 1)
                log.write(json.dumps(row) + "\n")
            log.flush()
            if logger is not None:
                logger.write(rows)
            bar.update(steps_per_chunk)
            bar.set_postfix(sps=f"{steps_per_chunk_all / chunk_seconds:,.0f}",
                            ret=rundir.mean_return(rows, task_names, "train"), refresh=False)
            if progress_fn is not None and progress_fn(chunk, rows) is False:
                stop.requested = True
            if out_of_time:
                say(f"\n[purejaxmt] train_minutes={run_config.train_minutes} spent ({elapsed / 60:.1f} min)")
                stop.requested = True
            stop.requested = _any_process(stop.requested)
            if chunk % run_config.checkpoint_every == 0 or chunk == num_chunks or stop.requested:
                trace(run_dir, f"checkpoint {chunk}")
                # A diverged run's learner is saved as its last finite one; CheckpointWriteError on a full disk.
                checkpointer.save(chunk, saveable(watch.saveable(state)))
    bar.close()
    checkpointer.close()
    if logger is not None:
        logger.close()
    if diverged_at:
        print(f"[purejaxmt] {len(diverged_at)} run(s) diverged (the DIVERGED lines above; their rows carry "
              "diverged: true)", file=sys.stderr, flush=True)
    if chunk < num_chunks:
        say(f"[purejaxmt] stopped after chunk {chunk}/{num_chunks}; continue with --resume {run_dir}")
    else:
        say(f"[purejaxmt] done: {run_dir} (metrics.jsonl, checkpoints/)")
    return run_dir

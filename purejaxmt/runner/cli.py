"""The command line every experiment script shares, built from the configs' dataclasses (tyro).

    --preset NAME             a named (agent, loop, run) config; `--help` lists them with a line each
    --tasks, --seeds, --steps shorthands for --run.tasks, --run.seeds and --loop.total-steps
    --run-dir                 where a new run or study goes
    --resume DIR              continue a stopped run or study from its directory alone (RESUME_FLAGS may be given)
    --single-task-baselines   one run per task instead, in sub-directories (runner.baselines)
    --sweep F=v1,v2 (repeat)  settings x seeds in as few programs as the settings allow (runner.sweep)
    --variant "F=v G=w"       a named setting on top of the preset, crossed with the sweep (repeatable)
    --one-program             refuse a sweep that needs more than one compiled program
    --coordinator-address, --num-processes, --process-id   a multi-process job (jax.distributed)
    --agent.<field>, --loop.<field>, --run.<field>   any field of the preset's configs
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal

import jax
import tyro
from jax._src import distributed  # the job's coordination client (no public handle in jax 0.10)

from purejaxmt.offpolicy import LoopConfig
from purejaxmt.runner import baselines, loop, rundir, saved, study, sweep
from purejaxmt.runner.config import Preset, RunConfig

# The flags a resume may change: how the run is watched (logger, videos), how long it may take (the wall-clock
# budget), how often it is evaluated and checkpointed (an evaluation reads the state and draws its own keys: the
# trained runs are the same; only which rows carry eval fields changes), and how the job's processes meet. Everything
# else defines what is trained and comes from the directory: changing it mid-run would make a different run under the
# old one's name.
RESUME_FLAGS = ("--run.train-minutes", "--run.logger", "--run.video", "--run.no-video", "--run.eval-every",
                "--run.checkpoint-every", "--coordinator-address", "--num-processes", "--process-id")


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


def accelerator_present() -> bool:
    return jax.default_backend() != "cpu"


@dataclasses.dataclass(frozen=True)
class Command:
    """A parsed command line: the resolved configs and what to do with them."""

    preset: str
    agent: Any
    loop: LoopConfig
    run: RunConfig
    run_dir: Path | None
    resume: Path | None
    single_task_baselines: bool = False
    sweep: tuple[str, ...] = ()
    variants: tuple[str, ...] = ()
    one_program: bool = False
    argv: tuple[str, ...] = ()
    """The command line as given (recorded in a study's index)."""

    @property
    def is_sweep(self) -> bool:
        return bool(self.sweep or self.variants)


def parse_command(presets: dict[str, Preset], argv: list[str] | None = None,
                  description: str | None = None) -> Command:
    """The resolved configs of a command line (see the module docstring); `SystemExit` for an unknown preset."""
    argv = list(sys.argv[1:] if argv is None else argv)
    resume = _peek_flag(argv, "--resume")
    if resume is not None:
        return resumed_command(Path(resume), argv, description)
    preset_name = _peek_flag(argv, "--preset")
    if preset_name is None:
        preset_name = "paper" if accelerator_present() else "cpu"
        print(f"[purejaxmt] no --preset given: using '{preset_name}' "
              f"({'an accelerator is present' if preset_name == 'paper' else 'CPU-only machine'})")
    if preset_name not in presets:
        raise SystemExit(f"unknown --preset {preset_name!r}; choose one of {sorted(presets)}")
    chosen = presets[preset_name]

    preset_help = "Named configs (the defaults of --agent.*, --loop.* and --run.*): " + "; ".join(
        f"'{name}': {preset.description}" for name, preset in presets.items())

    def arg(help_text: str) -> Any:
        return tyro.conf.arg(help=help_text)

    # Built with real (not string) annotations so tyro can resolve the preset's config types.
    Args = dataclasses.make_dataclass("Args", [
        ("preset", Annotated[Literal[tuple(presets)], arg(preset_help)], dataclasses.field(default=preset_name)),
        ("tasks", Annotated[str | None, arg("Shorthand for --run.tasks: a task set or comma-separated tasks.")],
         dataclasses.field(default=None)),
        ("seeds", Annotated[int | None, arg("Shorthand for --run.seeds.")], dataclasses.field(default=None)),
        ("steps", Annotated[int | None, arg("Shorthand for --loop.total-steps: env steps per task.")],
         dataclasses.field(default=None)),
        ("run_dir", Annotated[Path | None, arg("Directory of a new run (default runs/<experiment>/<time>).")],
         dataclasses.field(default=None)),
        ("resume", Annotated[Path | None, arg("Continue the run in this directory (same config).")],
         dataclasses.field(default=None)),
        ("single_task_baselines", Annotated[bool, arg(
            "Train one agent per task instead, one after another, into <run dir>/<task>/, each with the same env "
            "steps and batch_size // number of tasks transitions per update (the multi-task batch's share).")],
         dataclasses.field(default=False)),
        ("sweep", Annotated[tuple[str, ...], tyro.conf.UseAppendAction, arg(
            "A swept field and its values, field=v1,v2 (agent.* or loop.*; repeat the flag for a cross product): "
            "one vmapped program for settings that are data (learning rates, tau, gamma, normalisation), one "
            "program per shape (widths, bins, critic loss, batch). Writes a sweep dir and its ablation report.")],
         dataclasses.field(default=chosen.sweep)),
        ("variant", Annotated[tuple[str, ...], tyro.conf.UseAppendAction, arg(
            "A setting on top of the preset, 'field=v field2=w' ('' for the preset as is); repeat for several, "
            "each crossed with --sweep.")],
         dataclasses.field(default=chosen.variants)),
        ("one_program", Annotated[bool, arg("Refuse a sweep whose settings need more than one compiled program.")],
         dataclasses.field(default=False)),
        ("coordinator_address", Annotated[str | None, arg(
            "host:port of process 0 of a multi-process job (or JAX_COORDINATOR_ADDRESS); see README.")],
         dataclasses.field(default=None)),
        ("num_processes", Annotated[str | None, arg("Processes of the job (or JAX_NUM_PROCESSES).")],
         dataclasses.field(default=None)),
        ("process_id", Annotated[int | None, arg("This process's index in the job (or JAX_PROCESS_ID).")],
         dataclasses.field(default=None)),
        ("agent", type(chosen.agent), dataclasses.field(default=chosen.agent)),
        ("loop", LoopConfig, dataclasses.field(default=chosen.loop)),
        ("run", RunConfig, dataclasses.field(default=chosen.run)),
    ], frozen=True)
    Args.__doc__ = description or ""
    args = tyro.cli(Args, args=argv, description=description)
    loop_config, run_config = args.loop, args.run
    if args.tasks is not None:
        run_config = dataclasses.replace(run_config, tasks=args.tasks)
    if args.seeds is not None:
        run_config = dataclasses.replace(run_config, seeds=args.seeds)
    if args.steps is not None:
        loop_config = dataclasses.replace(loop_config, total_steps=args.steps)
    return Command(preset=preset_name, agent=args.agent, loop=loop_config, run=run_config, run_dir=args.run_dir,
                   resume=args.resume, single_task_baselines=args.single_task_baselines, sweep=tuple(args.sweep),
                   variants=tuple(args.variant), one_program=args.one_program, argv=tuple(argv))


def resumed_command(directory: Path, argv: list[str], description: str | None = None) -> Command:
    """The command a run or study directory records (its resolved configs, preset, sweep, variants, kind), with the
    `RESUME_FLAGS` of `argv` on top; any other flag is an error naming it. Refuses directories it cannot continue,
    saying why."""
    record = rundir.load_saved_config(directory)
    given = [arg.split("=", 1)[0] for arg in argv if arg.startswith("--")]
    wrong = [flag for flag in given if flag not in (*RESUME_FLAGS, "--resume", "--help")]
    if wrong:
        raise SystemExit(f"--resume {directory}: {', '.join(wrong)} cannot change a resumed run or study (it would no "
                         f"longer be the one it continues; everything comes from {directory}/config.json). Flags a "
                         f"resume may change: {', '.join(RESUME_FLAGS)}")
    for member_key, what in (("sweep_program", "sweep"), ("transfer", "transfer")):
        if member_key in record:
            raise SystemExit(f"--resume {directory}: it is a member run of the {what} study in {directory.parent}; "
                             f"resume the study: --resume {directory.parent}")
    if "program" in record and "setting" in record:  # runs/<setting>/seed-<s>/config.json of a sweep: no run dir
        raise SystemExit(f"--resume {directory}: it is a sweep's record of one run (its runs train in the sweep's "
                         "program-<k>/ dirs); resume the sweep study: --resume <the sweep dir>")
    if "single_task_baselines" in record and "study" not in record:
        raise SystemExit(f"--resume {directory}: a --single-task-baselines dir written before studies (its "
                         "config.json holds the divided batch, not the command's); resume each task on its own with "
                         f"--resume {directory}/<task>, or start the baselines anew")
    try:
        configs = saved.configs_of(record, directory)
    except ValueError as error:
        raise SystemExit(f"--resume {directory}: {error}") from None
    name = record.get("preset") or "saved"
    preset = Preset(agent=configs["agent"], loop=configs["loop"], run=configs["run"],
                    sweep=tuple(record.get("sweep", ())), variants=tuple(record.get("variants", ())),
                    description=f"the configs saved in {directory}")
    position = argv.index("--resume") if "--resume" in argv else None
    rest = [arg for i, arg in enumerate(argv) if not arg.startswith("--resume") and i not in (
        position, None if position is None else position + 1)]
    command = parse_command({name: preset}, ["--preset", name, *rest], description)
    return dataclasses.replace(command, preset=record.get("preset"), run_dir=None, resume=directory,
                               single_task_baselines="single_task_baselines" in record,
                               argv=tuple(record.get("command", {}).get("argv", ())))


def main(experiment: str, agent_module: ModuleType, presets: dict[str, Preset], argv: list[str] | None = None,
         description: str | None = None) -> Path:
    """Parses the command line and runs it: one multi-task run, a sweep, or `--single-task-baselines`; with
    `--resume DIR` alone, whichever the directory holds. Then the after-run jobs (`after_run`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    initialize_distributed(argv)  # before anything starts JAX's backend
    command = parse_command(presets, argv, description)
    if command.resume is not None:
        check_experiment(command.resume, experiment, agent_module)
    enable_compilation_cache()
    if command.single_task_baselines:
        if command.is_sweep:
            raise SystemExit("--single-task-baselines and --sweep/--variant do not combine: run them separately")
        root = baselines.single_task_baselines(experiment, agent_module, command)
        for task in rundir.load_saved_config(root)["single_task_baselines"]:
            if study.member_rule(root / task, command.loop.num_chunks) == "finished":
                after_run(root / task, command.run, finished=True)
        return root
    if command.is_sweep:
        return sweep.run_sweep(experiment, agent_module, command)

    def train(run_dir: Path | None, resume: Path | None) -> Path:
        return loop.run(experiment, agent_module, command.agent, command.loop, command.run, run_dir=run_dir,
                        resume=resume, preset=command.preset)

    if command.resume is None:
        run_dir = train(command.run_dir, None)
    else:
        run_dir = command.resume
        study.apply_rule(run_dir, command.loop.num_chunks, train)
    after_run(run_dir, command.run, study.member_rule(run_dir, command.loop.num_chunks) == "finished")
    return run_dir


def after_run(run_dir: Path, run_config: RunConfig, finished: bool) -> None:
    """What follows a run, outside its training loop (process 0): learning curves in `plots/`, and with
    `--run.video` (once finished) videos of run 0's evaluation policy."""
    if jax.process_index() != 0 or not (Path(run_dir) / "config.json").is_file():
        return
    from purejaxmt import envs, plotting

    plotting.plot_learning_curves(run_dir, list(envs.resolve(run_config.tasks)))
    if run_config.video and finished:
        from purejaxmt import render  # only when asked: MuJoCo's renderer, imageio

        render.after_run(run_dir)  # videos/<task>_return-<R>.mp4 of run 0; a failure is reported, not raised


def check_experiment(directory: Path, experiment: str, agent_module: ModuleType) -> None:
    """Refuses a directory of another experiment script or agent, naming what it is."""
    record = rundir.load_saved_config(directory)
    made_by = record.get("experiment", "")
    if made_by not in (experiment, f"{experiment}_sweep", f"{experiment}_single_task"):
        raise SystemExit(f"--resume {directory}: it was made by experiment {made_by!r}, not {experiment!r}; resume it "
                         "with that experiment's script")
    if record.get("agent_module") != agent_module.__name__:
        raise SystemExit(f"--resume {directory}: its agent is {record.get('agent_module')!r}, this experiment's "
                         f"{agent_module.__name__!r}")


def initialize_distributed(argv: list[str]) -> bool:
    """Joins a multi-process job (JAX's own multi-controller runtime, `jax.distributed.initialize`) when the command
    line or the environment names one: `--coordinator-address host:port --num-processes N --process-id i`, or the
    variables `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`. On a TPU pod slice or under SLURM,
    `--num-processes auto` lets JAX detect everything. Returns whether a job was joined."""
    address = _peek_flag(argv, "--coordinator-address") or os.environ.get("JAX_COORDINATOR_ADDRESS")
    count = _peek_flag(argv, "--num-processes") or os.environ.get("JAX_NUM_PROCESSES")
    index = _peek_flag(argv, "--process-id") or os.environ.get("JAX_PROCESS_ID")
    if address is None and count is None and index is None:
        return False
    if count == "auto":
        jax.distributed.initialize()
    else:
        if address is None or count is None or index is None:
            raise SystemExit("a multi-process job needs all of --coordinator-address, --num-processes and "
                             f"--process-id (got {address!r}, {count!r}, {index!r}), or --num-processes auto on a "
                             "TPU pod or SLURM")
        jax.distributed.initialize(address, num_processes=int(count), process_id=int(index))
    print(f"[purejaxmt] process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local "
          f"of {jax.device_count()} devices", flush=True)
    watch_peers(argv)
    return True


# How long a peer may stay silent before this process declares it lost (`PUREJAXMT_PEER_TIMEOUT`, seconds).
PEER_TIMEOUT = 30.0
LOST_PEER_EXIT = 75  # EX_TEMPFAIL: the job can be continued


def watch_peers(argv: list[str], timeout: float | None = None, interval: float = 1.0) -> threading.Thread:
    """A daemon thread that keeps this process's heartbeat in the job's key-value store and stops this process with
    one line when another process is lost (silent for `timeout` s, or, for process 0's peers, the coordinator
    unreachable). Without it, a SIGKILLed peer leaves the others blocked in a collective until JAX's coordination
    service aborts them with a C++ check failure (72 s, exit code 134). A process that ends normally says so first
    (`atexit`), so the others do not mistake its exit for a loss. A collective cut by a lost peer raises at once
    (gloo: "connection reset by peer"): an uncaught exception first waits until every peer has beaten again (it was
    not a loss; the traceback follows) or the lost peer is named, so the exception does not lead into JAX's shutdown
    barrier and its abort."""
    timeout = float(os.environ.get("PUREJAXMT_PEER_TIMEOUT", timeout or PEER_TIMEOUT))
    client = distributed.global_state.client
    me, count = jax.process_index(), jax.process_count()
    resume = _peek_flag(argv, "--resume") or _peek_flag(argv, "--run-dir") or "<its run or study dir>"
    exiting = threading.Event()

    def beat_of(peer: int) -> str | None:
        try:
            return _try_get(client, f"purejaxmt/alive/{peer}")
        except Exception:  # noqa: BLE001 - the coordination service itself is gone
            return None

    def at_exit() -> None:  # registered after JAX's own shutdown hook, so it runs before it
        _quietly(lambda: client.key_value_set(f"purejaxmt/done/{me}", "1", True))
        # JAX's shutdown barrier aborts with a C++ trace when a peer is gone: before it, every peer must have
        # ended too or beat again; one silent for longer than `timeout` was lost, and this process says so.
        beats_then = {peer: beat_of(peer) for peer in heard}
        waiting_since = time.monotonic()
        while time.monotonic() - waiting_since < timeout + 5 * interval:
            if all(peer in done or _try_done(peer) or beat_of(peer) != beats_then[peer] for peer in heard):
                break
            time.sleep(interval / 5)
        else:
            silent = [peer for peer in heard if not _try_done(peer) and beat_of(peer) == beats_then[peer]]
            if silent:
                stop(f"process {silent[0]} was lost (no heartbeat for {timeout:.0f} s)")
        exiting.set()  # from here on a silent peer or a closed service is the job ending, not a loss

    def _try_done(peer: int) -> bool:
        try:
            return _try_get(client, f"purejaxmt/done/{peer}") is not None
        except Exception:  # noqa: BLE001 - the coordination service itself is gone
            return False

    atexit.register(at_exit)

    def stop(lost: str) -> None:
        if exiting.is_set():
            return
        print(f"[purejaxmt] process {me} of {count}: {lost}; stopping. Continue the job with --resume {resume} (and "
              "the same --coordinator-address, --num-processes, --process-id) on every process", file=sys.stderr,
              flush=True)
        os._exit(LOST_PEER_EXIT)

    heard = {peer: (None, time.monotonic()) for peer in range(count) if peer != me}  # last beat seen, and when
    done: set[int] = set()

    def watch() -> None:
        beats = 0
        while not exiting.is_set():
            try:
                beats += 1
                client.key_value_set(f"purejaxmt/alive/{me}", str(beats), True)
                for peer, (last, when) in list(heard.items()):
                    if peer in done or _try_get(client, f"purejaxmt/done/{peer}"):
                        done.add(peer)
                        continue
                    value = _try_get(client, f"purejaxmt/alive/{peer}")
                    if value != last:
                        heard[peer] = (value, time.monotonic())
                    elif time.monotonic() - when > timeout:
                        stop(f"process {peer} was lost (no heartbeat for {timeout:.0f} s)")
            except Exception as error:  # noqa: BLE001 - the coordination service itself is gone
                if me != 0:
                    stop(f"process 0 (the job's coordinator) was lost ({type(error).__name__})")
                return
            time.sleep(interval)

    previous_hook = sys.excepthook

    def on_uncaught(kind: type, value: BaseException, trace: Any) -> None:
        raised = time.monotonic()
        beats_then = {peer: beat_of(peer) for peer in heard}
        while time.monotonic() - raised < timeout + 5 * interval:  # the watch thread exits here on a loss
            if all(peer in done or when > raised for peer, (_, when) in heard.items()):
                break  # every peer beat after the error: not a loss
            time.sleep(interval / 5)
        else:  # the watch thread said nothing (a loaded machine can starve it): read the peers' beats here
            silent = [peer for peer in heard if peer not in done and beat_of(peer) == beats_then[peer]]
            if silent:  # no beat for longer than `timeout`: lost, and JAX's shutdown barrier would abort
                stop(f"process {silent[0]} was lost (no heartbeat for {timeout:.0f} s)")
        previous_hook(kind, value, trace)

    sys.excepthook = on_uncaught
    thread = threading.Thread(target=watch, name="purejaxmt-peer-watch", daemon=True)
    thread.start()
    return thread


def _try_get(client: Any, key: str) -> str | None:
    try:
        return client.key_value_try_get(key)
    except Exception as error:  # noqa: BLE001 - a missing key raises NOT_FOUND; anything else is a lost service
        if "NOT_FOUND" in str(error) or "not found" in str(error).lower():
            return None
        raise


def _quietly(action: Callable[[], Any]) -> None:
    try:
        action()
    except Exception:  # noqa: BLE001 - at exit, a gone service is no news
        pass


def _peek_flag(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None

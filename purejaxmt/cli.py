"""The command line every experiment script shares, built from the configs' dataclasses (tyro).

    --preset NAME             a named (agent, loop, run) config; `--help` lists them with a line each
    --tasks, --seeds, --steps shorthands for --run.tasks, --run.seeds and --loop.total-steps
    --run-dir                 where a new run or study goes
    --resume DIR              continue a stopped run or study from its directory alone (RESUME_FLAGS may be given)
    --single-task-baselines   one run per task instead, in sub-directories (studies.baselines)
    --sweep F=v1,v2 (repeat)  settings x seeds in as few programs as the settings allow (studies.sweep)
    --variant "F=v G=w"       a named setting on top of the preset, crossed with the sweep (repeatable)
    --one-program             refuse a sweep that needs more than one compiled program
    --coordinator-address, --num-processes, --process-id   a multi-process job (jax.distributed)
    --agent.<field>, --loop.<field>, --run.<field>   any field of the preset's configs
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import jax
import tyro

from purejaxmt.agents import AgentSpec
from purejaxmt.offpolicy import LoopConfig
from purejaxmt.runner import loop, rundir, saved, study
from purejaxmt.runner.config import Preset, RunConfig
from purejaxmt.runner.devices import accelerator_present, enable_compilation_cache
from purejaxmt.runner.peers import initialize_distributed, peek_flag
from purejaxmt.studies import baselines, sweep

# The flags a resume may change: how the run is watched (logger, videos), how long it may take (the wall-clock
# budget), how often it is evaluated and checkpointed (an evaluation reads the state and draws its own keys: the
# trained runs are the same; only which rows carry eval fields changes), and how the job's processes meet. Everything
# else defines what is trained and comes from the directory: changing it mid-run would make a different run under the
# old one's name.
RESUME_FLAGS = ("--run.train-minutes", "--run.logger", "--run.video", "--run.no-video", "--run.eval-every",
                "--run.checkpoint-every", "--coordinator-address", "--num-processes", "--process-id")


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
    resume = peek_flag(argv, "--resume")
    if resume is not None:
        return resumed_command(Path(resume), argv, description)
    preset_name = peek_flag(argv, "--preset")
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


def main(experiment: str, agent_spec: AgentSpec, presets: dict[str, Preset], argv: list[str] | None = None,
         description: str | None = None) -> Path:
    """Parses the command line and runs it: one multi-task run, a sweep, or `--single-task-baselines`; with
    `--resume DIR` alone, whichever the directory holds. Then the after-run jobs (`after_run`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    initialize_distributed(argv)  # before anything starts JAX's backend
    command = parse_command(presets, argv, description)
    if command.resume is not None:
        check_experiment(command.resume, experiment, agent_spec)
    enable_compilation_cache()
    if command.single_task_baselines:
        if command.is_sweep:
            raise SystemExit("--single-task-baselines and --sweep/--variant do not combine: run them separately")
        root = baselines.single_task_baselines(experiment, agent_spec, command)
        for task in rundir.load_saved_config(root)["single_task_baselines"]:
            if study.member_rule(root / task, command.loop.num_chunks) == "finished":
                after_run(root / task, command.run, finished=True)
        return root
    if command.is_sweep:
        return sweep.run_sweep(experiment, agent_spec, command)

    def train(run_dir: Path | None, resume: Path | None) -> Path:
        return loop.run(experiment, agent_spec, command.agent, command.loop, command.run, run_dir=run_dir,
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
    from purejaxmt import envs
    from purejaxmt.report import plotting

    plotting.plot_learning_curves(run_dir, list(envs.resolve(run_config.tasks)))
    if run_config.video and finished:
        from purejaxmt.report import render  # only when asked: MuJoCo's renderer, imageio

        render.after_run(run_dir)  # videos/<task>_return-<R>.mp4 of run 0; a failure is reported, not raised


def check_experiment(directory: Path, experiment: str, agent_spec: AgentSpec) -> None:
    """Refuses a directory of another experiment script or agent, naming what it is."""
    record = rundir.load_saved_config(directory)
    made_by = record.get("experiment", "")
    if made_by not in (experiment, f"{experiment}_sweep", f"{experiment}_single_task"):
        raise SystemExit(f"--resume {directory}: it was made by experiment {made_by!r}, not {experiment!r}; resume it "
                         "with that experiment's script")
    if record.get("agent_module") != agent_spec.name:
        raise SystemExit(f"--resume {directory}: its agent is {record.get('agent_module')!r}, this experiment's "
                         f"{agent_spec.name!r}")

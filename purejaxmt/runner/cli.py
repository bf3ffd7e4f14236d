"""The command line every experiment script shares, built from the configs' dataclasses (tyro).

    --preset NAME             a named (agent, loop, run) config; `--help` lists them with a line each
    --tasks, --seeds, --steps shorthands for --run.tasks, --run.seeds and --loop.total-steps
    --run-dir, --resume       where a new run goes; continue a stopped one
    --single-task-baselines   one run per task instead, in sub-directories (runner.baselines)
    --sweep F=v1,v2 (repeat)  settings x seeds in as few programs as the settings allow (runner.sweep)
    --variant "F=v G=w"       a named setting on top of the preset, crossed with the sweep (repeatable)
    --one-program             refuse a sweep that needs more than one compiled program
    --coordinator-address, --num-processes, --process-id   a multi-process job (jax.distributed)
    --agent.<field>, --loop.<field>, --run.<field>   any field of the preset's configs
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal

import jax
import tyro

from purejaxmt.offpolicy import LoopConfig
from purejaxmt.runner import baselines, loop, rundir, sweep
from purejaxmt.runner.config import Preset, RunConfig


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

    @property
    def is_sweep(self) -> bool:
        return bool(self.sweep or self.variants)


def parse_command(presets: dict[str, Preset], argv: list[str] | None = None,
                  description: str | None = None) -> Command:
    """The resolved configs of a command line (see the module docstring); `SystemExit` for an unknown preset."""
    argv = list(sys.argv[1:] if argv is None else argv)
    preset_name = _peek_flag(argv, "--preset")
    resume = _peek_flag(argv, "--resume")
    if preset_name is None and resume is not None:
        preset_name = rundir.load_saved_config(Path(resume)).get("preset")
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
    sweeps, variants = tuple(args.sweep), tuple(args.variant)
    if resume is not None and not _given(argv, "--sweep") and not _given(argv, "--variant"):
        # A sweep resumes from its directory alone: its sweep is saved there (a run dir saves none).
        saved = rundir.load_saved_config(Path(resume))
        sweeps, variants = tuple(saved.get("sweep", sweeps)), tuple(saved.get("variants", variants))
    return Command(preset=preset_name, agent=args.agent, loop=loop_config, run=run_config, run_dir=args.run_dir,
                   resume=args.resume, single_task_baselines=args.single_task_baselines, sweep=sweeps,
                   variants=variants, one_program=args.one_program)


def main(experiment: str, agent_module: ModuleType, presets: dict[str, Preset], argv: list[str] | None = None,
         description: str | None = None) -> Path:
    """Parses the command line and runs it: one multi-task run, a sweep, or `--single-task-baselines`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    initialize_distributed(argv)  # before anything starts JAX's backend
    command = parse_command(presets, argv, description)
    enable_compilation_cache()
    if command.single_task_baselines:
        if command.is_sweep:
            raise SystemExit("--single-task-baselines and --sweep/--variant do not combine: run them separately")
        return baselines.single_task_baselines(experiment, agent_module, command)
    if command.is_sweep:
        return sweep.run_sweep(experiment, agent_module, command)
    return loop.run(experiment, agent_module, command.agent, command.loop, command.run, run_dir=command.run_dir,
                    resume=command.resume, preset=command.preset)


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
    return True


def _given(argv: list[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv)


def _peek_flag(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None

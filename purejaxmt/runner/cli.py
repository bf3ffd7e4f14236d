"""The command line every experiment script shares, built from the configs' dataclasses (tyro).

    --preset NAME             a named (agent, loop, run) config; `--help` lists them with a line each
    --tasks, --seeds, --steps shorthands for --run.tasks, --run.seeds and --loop.total-steps
    --run-dir, --resume       where a new run goes; continue a stopped one
    --single-task-baselines   one run per task instead, in sub-directories (runner.baselines)
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
from purejaxmt.runner import baselines, loop, rundir
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
                   resume=args.resume, single_task_baselines=args.single_task_baselines)


def main(experiment: str, agent_module: ModuleType, presets: dict[str, Preset], argv: list[str] | None = None,
         description: str | None = None) -> Path:
    """Parses the command line and runs it: one multi-task run, or `--single-task-baselines`."""
    command = parse_command(presets, argv, description)
    enable_compilation_cache()
    if command.single_task_baselines:
        return baselines.single_task_baselines(experiment, agent_module, command)
    return loop.run(experiment, agent_module, command.agent, command.loop, command.run, run_dir=command.run_dir,
                    resume=command.resume, preset=command.preset)


def _peek_flag(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None

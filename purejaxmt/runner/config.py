"""What a run trains on and how the host drives it; presets bundle it with the agent's and the loop's configs."""

from __future__ import annotations

import dataclasses
from typing import Any

from purejaxmt import envs
from purejaxmt.offpolicy import LoopConfig
from purejaxmt.runner.loggers import LOGGERS


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The host's settings (the agent's live in the agent's `Config`, the loop's in `offpolicy.LoopConfig`)."""

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
    sticky_actions: float = 0.0
    """Probability that a MinAtar env repeats its previous action (0.1 is the original MinAtar protocol; Gymnax has
    none: 0, the default)."""
    eval_every: int = 10
    """Evaluate every this many chunks (and after the last)."""
    checkpoint_every: int = 10
    """Checkpoint every this many chunks (and at exit, including SIGINT/SIGTERM)."""
    save_replay: bool = True
    """Keep the replay buffer in checkpoints; without it a resumed run refills from empty and is not the same run."""
    video: bool = False
    """When the run finishes (not on a stop), render the evaluation policy of run 0 on every task that can be drawn
    (MJX tasks, MinAtar games) to <run dir>/videos/<task>_return-<R>.mp4 (`purejaxmt.report.render`; process 0 only)."""
    devices: int | None = None
    """Devices the runs are sharded over: None for every device of every process (the runs, padded to a multiple of
    the device count, must be at least as many as the devices), or the first N of a single process."""
    xla_optimization_level: int = 3
    """XLA backend optimisation level (0-3) of the compiled programs. On a CPU, 1 compiles an MJX humanoid step in
    about half the time of 3 and runs it about 1.4x slower (docs/results.md): worth it for short runs."""
    train_minutes: float | None = None
    """A wall-clock budget: stop after the first chunk that ends this many minutes into the run (the metrics'
    `wall_time`: training, evaluations and checkpoints, the time before a resume included, compiles excluded),
    evaluated there, checkpointed and resumable as after SIGINT. For fixed-budget comparisons ("returns after 20
    minutes on one GPU"); a resume may raise or drop it. None: no budget, the run ends at `total_steps`."""
    logger: str = "none"
    """Also show the metrics log in "tensorboard" (event files in <run dir>/tensorboard/) or "wandb" (a Weights &
    Biases run, offline without an API key); "none": metrics.jsonl only. Needs `pip install -e ".[loggers]"`."""

    def __post_init__(self) -> None:
        problems = [f"{name}={getattr(self, name)} must be >= 1" for name in ("seeds", "eval_every", "checkpoint_every")
                    if getattr(self, name) < 1]
        if self.devices is not None and self.devices < 1:
            problems.append(f"devices={self.devices} must be >= 1 (or None for all)")
        if self.episode_length is not None and self.episode_length < 1:
            problems.append(f"episode_length={self.episode_length} must be >= 1 (or None)")
        if not 0.0 <= self.sticky_actions <= 1.0:  # False for NaN too
            problems.append(f"sticky_actions={self.sticky_actions} must be a probability in [0, 1]")
        if self.xla_optimization_level not in (0, 1, 2, 3):
            problems.append(f"xla_optimization_level={self.xla_optimization_level} must be 0, 1, 2 or 3")
        if self.train_minutes is not None and not self.train_minutes > 0:  # False for NaN too
            problems.append(f"train_minutes={self.train_minutes} must be > 0 (or None for no budget)")
        if self.logger not in LOGGERS:
            problems.append(f"logger={self.logger!r} must be one of {', '.join(LOGGERS)}")
        if problems:
            raise ValueError("Invalid run config: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named starting point of an experiment: the agent's config, the loop's and the host's."""

    agent: Any
    loop: LoopConfig
    run: RunConfig
    description: str = ""
    sweep: tuple[str, ...] = ()
    """`--sweep` items (`field=v1,v2`) the preset runs unless the command line gives its own
    (`purejaxmt.studies.sweep`)."""
    variants: tuple[str, ...] = ()
    """`--variant` items (`field=v field2=w`; empty: the preset as is) crossed with the sweep."""


def make_env(run_config: RunConfig) -> envs.TaskEnv:
    """The run's `TaskEnv`. Env options are passed only when set, as each applies to some providers' tasks only."""
    options = {"minimal_action_set": True} if run_config.minimal_action_set else {}
    if run_config.sticky_actions > 0:
        options["sticky_actions"] = run_config.sticky_actions
    return envs.make(run_config.tasks, episode_length=run_config.episode_length, **options)

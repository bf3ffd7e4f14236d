"""Transfer: a multi-task BRC agent trained on source tasks learns new ones, three ways, over seeds.

    python experiments/transfer.py --preset cpu      # cartpole family, about 30 min on a 2-core CPU
    python experiments/transfer.py --preset gpu      # humanoid stand + walk + speed-4 -> run + speed-7, on a GPU
    python experiments/transfer.py --preset cpu --source runs/transfer/<stamp>/source   # reuse a trained source
    python experiments/transfer.py --resume runs/transfer/<stamp>                       # after a stop

1. The source run: an ordinary multi-task run on the source tasks (`OUT/source/`, skipped with `--source`).
2. The transfer run (`OUT/transfer/`): the source tasks followed by the targets, one vmapped program whose runs are
   the modes x seeds (`purejaxmt.studies.transfer`): `embedding` (only the new tasks' embedding rows learn), `all`
   (the source agent fine-tunes), `scratch` (random init, the baseline). Seed i of each mode starts from source
   seed i (modulo the source's seeds), with the same env and replay randomness as the other modes' seed i.
3. The report: `OUT/transfer.md` (+ `.json`, `plots/`): per target task the IQM of the final eval returns over seeds
   with 95% bootstrap intervals, P(mode > scratch), learning curves; `OUT/retention/` the same on the source tasks
   during the transfer run (what fine-tuning does to the tasks the agent knew).
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
from pathlib import Path

import tyro

from purejaxmt import runner
from purejaxmt.agents import brc
from purejaxmt.offpolicy import LoopConfig
from purejaxmt.report import stats
from purejaxmt.runner import saved, study
from purejaxmt.studies import transfer
from purejaxmt.studies.transfer import TransferPreset

EXPERIMENT, AGENT = transfer.EXPERIMENT, transfer.AGENT


CPU_AGENT = brc.Config(critic_width=256, critic_depth=1, actor_width=128)
CARTPOLE = "cartpole-balance,cartpole-swingup,cartpole-balance-sparse"

PRESETS = {
    "cpu": TransferPreset(
        # The cartpole family shares one body and observation: balance, swing-up and sparse balance teach the
        # source agent the dynamics; sparse swing-up is the hard new task (its reward comes only near the top, so
        # a source that swings up is what can make it reachable). 4 envs per task and one update of 128 per
        # iteration keep the 2 source runs (80k env steps per task) and the 6 transfer runs (3 modes x 2 seeds,
        # 24k) inside about 30 minutes; with 24k source steps the source barely swung up (returns 26 and 125) and
        # no mode ever scored on the target (docs/results.md).
        source=runner.Preset(
            agent=CPU_AGENT,
            loop=LoopConfig(batch_size=128, envs_per_task=4, updates_per_step=1, replay_capacity=100_000,
                            random_steps=2_000, total_steps=80_000, steps_per_chunk=8_000, eval_episodes=4),
            run=runner.RunConfig(tasks=CARTPOLE, seeds=2, eval_every=2, checkpoint_every=2, xla_optimization_level=1)),
        targets="cartpole-swingup-sparse",
        loop=LoopConfig(batch_size=128, envs_per_task=4, updates_per_step=1, replay_capacity=100_000,
                        random_steps=2_000, total_steps=24_000, steps_per_chunk=3_000, eval_episodes=4),
        description="source cartpole balance + swingup + balance-sparse, target swingup-sparse, 2 seeds: about 30 "
                    "min on a 2-core CPU"),
    "gpu": TransferPreset(
        # Held-out speeds on the humanoid: stand, walk and 4 m/s teach standing and moving; run (10 m/s) and 7 m/s
        # are new targets on the same body. The `gpu` preset of mjx_humanoid_mt for both runs.
        source=runner.Preset(
            agent=brc.Config(critic_width=1024, compute_dtype="bfloat16"),
            loop=LoopConfig(batch_size=768, envs_per_task=4, replay_capacity=300_000, total_steps=300_000,
                            steps_per_chunk=20_000, eval_episodes=4),
            run=runner.RunConfig(tasks="humanoid-stand,humanoid-walk,humanoid-speed-4", seeds=2, eval_every=1,
                                 checkpoint_every=5)),
        targets="humanoid-run,humanoid-speed-7",
        loop=LoopConfig(batch_size=768, envs_per_task=4, replay_capacity=300_000, total_steps=150_000,
                        steps_per_chunk=10_000, eval_episodes=4),
        description="source humanoid stand + walk + speed-4, targets run + speed-7, 2 seeds; for a GPU"),
    "smoke": TransferPreset(
        # The tests' size: tiny networks, 20-step episodes.
        source=runner.Preset(
            agent=brc.Config(critic_width=32, critic_depth=1, actor_width=16, num_bins=11, embed_dim=8),
            loop=LoopConfig(batch_size=24, envs_per_task=2, updates_per_step=1, replay_capacity=1_000,
                            random_steps=40, total_steps=120, steps_per_chunk=60, eval_episodes=2),
            run=runner.RunConfig(tasks="cartpole-balance,cartpole-swingup", seeds=2, episode_length=20,
                                 eval_every=1, checkpoint_every=1, xla_optimization_level=0)),
        targets="cartpole-balance-sparse",
        loop=LoopConfig(batch_size=24, envs_per_task=2, updates_per_step=1, replay_capacity=1_000, random_steps=40,
                        total_steps=120, steps_per_chunk=60, eval_episodes=2),
        description="tiny, for the tests"),
}


@dataclasses.dataclass(frozen=True)
class Args:
    """Transfer from a multi-task source run to new tasks (see the module docstring)."""

    preset: str = "cpu"
    """One of the PRESETS: cpu, gpu, smoke."""
    source: Path | None = None
    """A trained brc run dir to transfer from instead of training the preset's source."""
    out: Path | None = None
    """Where the experiment goes (default runs/transfer/<timestamp>); must not exist."""
    resume: Path | None = None
    """Continue a stopped experiment dir (its saved arguments are used)."""
    seeds: int | None = None
    """Seeds per mode (default: the source's seeds)."""
    source_steps: int | None = None
    """Env steps per task of the source run (default: the preset's)."""
    steps: int | None = None
    """Env steps per task of the transfer run (default: the preset's)."""
    reps: int = stats.DEFAULT_REPS
    """Bootstrap replications of each interval of the report."""


def main(args: Args, given: tuple[str, ...] = ()) -> Path:
    """The transfer study of `args` (`purejaxmt.studies.transfer.run_transfer`). `given`: the flags of the command
    line, checked against what a resume may change."""
    if args.resume is not None:
        out = Path(args.resume)
        wrong = [flag for flag in given if flag not in ("--resume", "--help")]
        if wrong:
            raise SystemExit(f"--resume {out}: {', '.join(wrong)} cannot change a resumed transfer study (it would no "
                             f"longer be the one it continues; everything comes from {out}/{study.INDEX})")
        saved_args = transfer.saved_args(out)
        args = Args(**{**saved_args, "source": saved_args.get("source") and Path(saved_args["source"]), "resume": out,
                       "out": out})
    if args.preset not in PRESETS:
        raise SystemExit(f"unknown --preset {args.preset!r}; choose one of {sorted(PRESETS)}")
    preset = PRESETS[args.preset]
    out = Path(args.out) if args.out is not None else \
        Path("runs") / transfer.EXPERIMENT / datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    if args.resume is None:
        if out.exists():
            raise SystemExit(f"{out} exists: runs are never overwritten (use --resume {out} to continue it)")
        if args.source is not None:
            saved.load(args.source)  # fails early on a bad path
    recorded = {field.name: str(value) if isinstance(value, Path) else value
                for field in dataclasses.fields(args) if (value := getattr(args, field.name)) is not None
                and field.name not in ("resume", "out")}
    source_loop = preset.source.loop if args.source_steps is None else \
        dataclasses.replace(preset.source.loop, total_steps=args.source_steps)
    loop_config = preset.loop if args.steps is None else dataclasses.replace(preset.loop, total_steps=args.steps)
    return transfer.run_transfer(out, args.preset, preset, source_dir=args.source, seeds=args.seeds,
                                 source_loop=source_loop, loop_config=loop_config, recorded=recorded, argv=given,
                                 resume=args.resume is not None, reps=args.reps)


if __name__ == "__main__":
    runner.enable_compilation_cache()
    with runner.usage_errors():  # a bad flag or value: one framed line and status 2, not a traceback
        main(tyro.cli(Args, description=__doc__, args=sys.argv[1:]),
             given=tuple(arg.split("=", 1)[0] for arg in sys.argv[1:] if arg.startswith("--")))

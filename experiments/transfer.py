"""Transfer: a multi-task BRC agent trained on source tasks learns new ones, three ways, over seeds.

    python experiments/transfer.py --preset cpu      # cartpole family, about 30 min on a 2-core CPU
    python experiments/transfer.py --preset gpu      # humanoid stand + walk + speed-4 -> run + speed-7, on a GPU
    python experiments/transfer.py --preset cpu --source runs/transfer/<stamp>/source   # reuse a trained source
    python experiments/transfer.py --resume runs/transfer/<stamp>                       # after a stop

1. The source run: an ordinary multi-task run on the source tasks (`OUT/source/`, skipped with `--source`).
2. The transfer run (`OUT/transfer/`): the source tasks followed by the targets, one vmapped program whose runs are
   the modes x seeds (`purejaxmt.transfer`): `embedding` (only the new tasks' embedding rows learn), `all` (the source
   agent fine-tunes), `scratch` (random init, the baseline). Seed i of each mode starts from source seed i (modulo the
   source's seeds), with the same env and replay randomness as the other modes' seed i.
3. The report: `OUT/transfer.md` (+ `.json`, `plots/`): per target task the IQM of the final eval returns over seeds
   with 95% bootstrap intervals, P(mode > scratch), learning curves; `OUT/retention/` the same on the source tasks
   during the transfer run (what fine-tuning does to the tasks the agent knew).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
import sys
from pathlib import Path

import jax
import tyro

from purejaxmt import ablation, envs, offpolicy, runner, transfer
from purejaxmt.agents import brc
from purejaxmt.offpolicy import LoopConfig
from purejaxmt.runner import loop, rundir, saved

EXPERIMENT, AGENT = "transfer", brc


@dataclasses.dataclass(frozen=True)
class TransferPreset:
    source: runner.Preset
    """The source run (its `run.tasks` are the source tasks, `run.seeds` its seeds)."""
    targets: str
    """Comma-separated new tasks."""
    loop: LoopConfig
    """The transfer run's loop (the agent is the source's)."""
    description: str = ""


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


def _finished(run_dir: Path, loop_config: LoopConfig) -> bool:
    return (run_dir / "config.json").is_file() and rundir.last_logged_chunk(run_dir) >= loop_config.num_chunks


def _train(experiment: str, run_dir: Path, run_kwargs: dict, **kwargs) -> None:
    """A run into `run_dir`: new, resumed, or skipped when finished."""
    if _finished(run_dir, kwargs["loop_config"]):
        print(f"[transfer] {run_dir} is finished: not run again")
        return
    resume = run_dir if (run_dir / "checkpoints").is_dir() else None
    if resume is None and run_dir.exists():  # started but stopped before its first checkpoint: start it again
        shutil.rmtree(run_dir)
    loop.run(experiment, AGENT, run_dir=None if resume else run_dir, resume=resume, **kwargs, **run_kwargs)


def main(args: Args) -> Path:
    if args.resume is not None:
        out = Path(args.resume)
        if not (out / "transfer_args.json").is_file():
            raise SystemExit(f"cannot resume {out}: no transfer_args.json (is it an experiments/transfer.py dir?)")
        saved_args = json.loads((out / "transfer_args.json").read_text())
        args = Args(**{**saved_args, "source": saved_args.get("source") and Path(saved_args["source"]), "resume": out,
                       "out": out})
    if args.preset not in PRESETS:
        raise SystemExit(f"unknown --preset {args.preset!r}; choose one of {sorted(PRESETS)}")
    preset = PRESETS[args.preset]
    targets = envs.resolve(preset.targets)
    out = Path(args.out) if args.out is not None else \
        Path("runs") / EXPERIMENT / datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    if args.resume is None:
        if out.exists():
            raise SystemExit(f"{out} exists: runs are never overwritten (use --resume {out} to continue it)")
        if args.source is not None:
            saved.load(args.source)  # fails early on a bad path
        out.mkdir(parents=True)
        (out / "transfer_args.json").write_text(json.dumps(
            {field.name: str(value) if isinstance(value, Path) else value
             for field in dataclasses.fields(args) if (value := getattr(args, field.name)) is not None
             and field.name not in ("resume", "out")}, indent=2) + "\n")

    # 1. The source run.
    if args.source is None:
        source_dir = out / "source"
        source_loop = preset.source.loop if args.source_steps is None else \
            dataclasses.replace(preset.source.loop, total_steps=args.source_steps)
        _train(f"{EXPERIMENT}_source", source_dir, {}, agent_config=preset.source.agent, loop_config=source_loop,
               run_config=preset.source.run, preset=args.preset)
    else:
        source_dir = Path(args.source)
    source = saved.load(source_dir)
    if source.agent_module is not AGENT:
        raise SystemExit(f"{source_dir} is a run of {source.record['agent_module']}; transfer needs a "
                         f"{AGENT.__name__} run")

    # 2. The transfer run: modes x seeds in one program.
    tasks = transfer.task_set(source.task_names, targets)
    agent_config = transfer.agent_config(source.agent_config, source.task_names, tasks)
    loop_config = preset.loop if args.steps is None else dataclasses.replace(preset.loop, total_steps=args.steps)
    seeds = args.seeds or source.num_runs
    run_config = dataclasses.replace(source.run_config, tasks=",".join(tasks), seeds=len(transfer.MODES) * seeds)
    env = loop.make_env(run_config)
    agent = AGENT.Agent(agent_config, env.spec)
    template = jax.eval_shape(agent.init, jax.random.PRNGKey(0), AGENT.Hyper.from_config(agent_config))
    runs = []
    for mode in transfer.MODES:
        hyper = offpolicy.hyper_of(AGENT, transfer.agent_config(source.agent_config, source.task_names, tasks, mode),
                                   loop_config)
        for seed in range(seeds):
            learner = None if mode == "scratch" else transfer.grow(
                source.learner(seed % source.num_runs), template, source.task_names, tasks, source_dir)
            runs.append(loop.RunSpec(seed=run_config.seed + seed, hyper=hyper, learner=learner,
                                     labels={"run": f"{mode}/seed-{seed}", "setting": mode}))
    _train(EXPERIMENT, out / "transfer", {"env": env, "runs": runs, "plot": False,
                                          "record_extra": {"transfer": {"source": str(source_dir),
                                                                        "modes": list(transfer.MODES)}}},
           agent_config=agent_config, loop_config=loop_config, run_config=run_config, preset=args.preset)

    # 3. The report: targets, and retention on the source tasks.
    rows = ablation.run_rows(out / "transfer", "run")
    spec = {"experiment": EXPERIMENT, "agent_module": AGENT.__name__, "preset": args.preset,
            "sweep": [f"source: {source_dir} ({', '.join(source.task_names)})", f"targets: {', '.join(targets)}",
                      "modes: scratch (random init), embedding (only the new rows learn), all (fine-tune)"]}
    run_entries = [{"name": spec_.labels["run"], "setting": spec_.labels["setting"], "seed": spec_.seed}
                   for spec_ in runs]
    report = ablation.write_report(ablation.Sweep(out, spec, list(transfer.MODES), list(targets), run_entries, rows))
    report = report.rename(out / "transfer.md")
    (out / "ablation.json").rename(out / "transfer.json")
    (out / "retention").mkdir(exist_ok=True)
    ablation.write_report(ablation.Sweep(out / "retention", spec, list(transfer.MODES), list(source.task_names),
                                         run_entries, rows))
    print(report.read_text())
    print(f"[transfer] done: {report} (retention on the source tasks: {out / 'retention' / 'ablation.md'})")
    return out


if __name__ == "__main__":
    runner.enable_compilation_cache()
    main(tyro.cli(Args, description=__doc__, args=sys.argv[1:]))

"""Multi-task discrete BRC on four MinAtar games (Gymnax): one pixel-based agent, one task axis, on the accelerator.

    python experiments/minatar_mt.py --preset smoke                          # seconds of training: checks the install
    python experiments/minatar_mt.py --preset cpu                            # the 4-game agent on a 2-core CPU
    python experiments/minatar_mt.py --preset cpu --tasks Breakout-MinAtar   # any subset, or a single game
    python experiments/minatar_mt.py --preset cpu --single-task-baselines    # one agent per game, same budget each
    python experiments/minatar_mt.py --preset cpu --run.minimal-action-set   # each game's own legal actions only
    python experiments/minatar_mt.py --preset paper --seeds 4                # BRC.md's settings, on a GPU/TPU

Games: Breakout, Asterix, Freeway and SpaceInvaders (the task set `minatar`), Gymnax's full 6-action set, observations
`uint8 [10, 10, 7]` (channels zero-padded). Writes runs/minatar_mt/<timestamp>/{config.json, metrics.jsonl,
checkpoints/, plots/}. Any field of the agent's config can be overridden, e.g. `--agent.width 1024`; `--help` lists
them all.

`--single-task-baselines` trains one agent per game, one after another, into `<run dir>/<game>/` (default run dir
runs/minatar_st/<timestamp>/), each with the preset's settings, the same env steps per game, and the multi-task batch's
per-game share (`batch_size // number of games`), so that each game contributes as many samples per update as in the
multi-task run. `<run dir>/summary.json` collects the games' final evaluation returns. `--resume <run dir>` with the
flag continues the games that have started and starts the rest.
Note: Gymnax's MinAtar has no sticky actions and cuts episodes at 1000 steps (Freeway 2500); compare with the
original MinAtar's numbers with that in mind (purejaxmt/envs/gymnax_tasks.py).
"""

import dataclasses
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing too

from purejaxmt import brc_discrete, plotting, runner  # noqa: E402

EXPERIMENT, SINGLE_TASK_EXPERIMENT, AGENT = "minatar_mt", "minatar_st", brc_discrete

PAPER = brc_discrete.Config(compute_dtype="bfloat16")  # BRC.md: W=4096 trunk, 101 atoms, batch 1024, 1M steps/task

PRESETS = {
    "paper": runner.Preset(
        agent=PAPER,
        run=runner.RunConfig(tasks="minatar", eval_every=10, checkpoint_every=10),
        description="BRC.md defaults (W=4096 depth-2 trunk, batch 1024, 2 updates per step), 1M env steps per game; "
                    "for a GPU/TPU"),
    "gpu": runner.Preset(
        # Measured on one H100 with 3 seeds (docs/results.md): 42 s compile, 9 min 43 s for 2M env steps per game,
        # 3,400 env steps/s per game per seed. A W=1024 trunk and 8 envs per game with one update of 512 transitions
        # per iteration (16 replayed samples per env step) keep one update at about 1.3 ms.
        agent=dataclasses.replace(PAPER, width=1024, batch_size=512, envs_per_task=8, updates_per_step=1,
                                  replay_capacity=500_000, total_steps=2_000_000, steps_per_chunk=100_000,
                                  eval_episodes=8),
        run=runner.RunConfig(tasks="minatar", eval_every=1, checkpoint_every=5),
        description="W=1024 trunk, 8 envs per game, 2M env steps per game: about 10 minutes on one H100"),
    "cpu": runner.Preset(
        # Sized by measurement on a 2-core CPU shared with other jobs (load 3-4): one 3x3 conv (16 channels), a W=256
        # depth-1 trunk and 51 atoms make an update on a 128-transition batch 12-20 ms, and the 4 games' envs cost
        # 0.25 ms per iteration (65k env steps/s at 4 envs per game), so the update is the whole cost: one update per
        # iteration of 4 envs per game runs at 20-29 ms per iteration, 550-800 env steps/s over the 4 games.
        # 100k env steps per game took 16 min 21 s of training with 3 seeds vmapped (docs/results.md, session 5), plus
        # ~60 s of compile. With the authors' return range (a normaliser scaled by the first-step return could not
        # learn Freeway here) and 3-step returns, Breakout, Freeway and SpaceInvaders learn in every seed;
        # Asterix needs ~200k+ steps (gpu).
        agent=brc_discrete.Config(width=256, depth=1, conv_channels=(16,), conv_kernel_sizes=(3,), conv_strides=(1,),
                                  num_bins=51, n_step=3, batch_size=128, envs_per_task=4, updates_per_step=1,
                                  replay_capacity=100_000, random_steps=5_000, epsilon_decay_steps=50_000,
                                  total_steps=100_000, steps_per_chunk=10_000, eval_episodes=4),
        run=runner.RunConfig(tasks="minatar", eval_every=5, checkpoint_every=5, xla_optimization_level=1),
        description="small network, 100k env steps per game: about 17 minutes on a 2-core CPU"),
    "smoke": runner.Preset(
        agent=brc_discrete.Config(width=32, depth=1, embed_dim=8, conv_channels=(8,), conv_kernel_sizes=(3,),
                                  conv_strides=(1,), num_bins=21, batch_size=16, envs_per_task=2, updates_per_step=1,
                                  replay_capacity=1_000, random_steps=100, epsilon_decay_steps=200, total_steps=400,
                                  steps_per_chunk=200, eval_episodes=2),
        run=runner.RunConfig(tasks="minatar", episode_length=50, eval_every=1, checkpoint_every=1,
                             xla_optimization_level=1),
        description="tiny network, 50-step episodes, 400 env steps per game: checks the install in ~2 minutes "
                    "(under 1 with the compile cache warm)"),
}

FLAGS = (("single_task_baselines", bool, False,
          "Train one agent per game instead (sequentially, into <run dir>/<game>/), with the same env steps per game "
          "and batch_size // number of games transitions per update."),)


def single_task_baselines(command: runner.Command) -> Path:
    """One run per game of `command.run.tasks`, each into its own subdirectory of one run directory."""
    games = list(runner.make_env(command.run).task_names)
    agent_config = command.agent
    if len(games) > 1:
        if agent_config.batch_size < len(games):
            raise ValueError(f"batch_size={agent_config.batch_size} is smaller than the {len(games)} games {games}: "
                             "a single-task agent gets batch_size // number of games")
        agent_config = dataclasses.replace(agent_config, batch_size=agent_config.batch_size // len(games))
    root = command.resume or command.run_dir or runner.new_run_dir(SINGLE_TASK_EXPERIMENT)
    record = {"experiment": SINGLE_TASK_EXPERIMENT, "preset": command.preset, "single_task_baselines": True,
              "games": games, "run": dataclasses.asdict(command.run), "agent_config": dataclasses.asdict(agent_config)}
    record = json.loads(json.dumps(record))
    if command.resume is not None:
        saved = runner.load_saved_config(root)
        if not saved.get("single_task_baselines"):
            raise ValueError(f"cannot resume {root} with --single-task-baselines: it is not a single-task baselines "
                             "run dir (its config.json has no single_task_baselines entry)")
        if saved != record:
            raise ValueError(f"cannot resume {root}: it was run with a different config; saved {saved}, requested "
                             f"{record}")
    else:
        if root.exists() and any(root.iterdir()):
            raise FileExistsError(f"run dir {root} already exists and is not empty: pass --resume {root} to continue "
                                  "it, or choose a new --run-dir")
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"[purejaxmt] single-task baselines: {len(games)} games {games}, batch {agent_config.batch_size} each, "
          f"into {root}")

    num_chunks = math.ceil(agent_config.total_steps / agent_config.steps_per_chunk)
    for game in games:
        run_config = dataclasses.replace(command.run, tasks=game)
        game_dir = root / game
        started = (game_dir / "config.json").is_file()
        if started and _last_chunk(game_dir) >= num_chunks:
            print(f"[purejaxmt] {game}: already finished in {game_dir}")
            continue
        runner.run(SINGLE_TASK_EXPERIMENT, brc_discrete, agent_config, run_config, preset=command.preset,
                   run_dir=None if started else game_dir, resume=game_dir if started else None)

    summary = {}
    for game in games:
        rows = [row for row in plotting.read_metrics(root / game / "metrics.jsonl")
                if row.get(f"eval/{game}/return") is not None]
        if rows:
            last = max(rows, key=lambda row: (row["step"], row["seed"]))["step"]
            returns = [row[f"eval/{game}/return"] for row in rows if row["step"] == last]
            summary[game] = {"step": last, "eval_return": sum(returns) / len(returns), "seeds": len(returns)}
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("[purejaxmt] single-task final evaluation returns: " +
          ", ".join(f"{game} {entry['eval_return']:.2f}" for game, entry in summary.items()))
    return root


def _last_chunk(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return max((row["chunk"] for row in plotting.read_metrics(path)), default=0) if path.is_file() else 0


def main(argv: list[str] | None = None) -> Path:
    command = runner.parse_command(PRESETS, argv, description=__doc__, flags=FLAGS)
    if command.flags["single_task_baselines"]:
        return single_task_baselines(command)
    return runner.run(EXPERIMENT, brc_discrete, command.agent, command.run, run_dir=command.run_dir,
                      resume=command.resume, preset=command.preset)


if __name__ == "__main__":
    main()

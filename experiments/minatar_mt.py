"""Multi-task discrete BRC on four MinAtar games (Gymnax): one pixel-based agent, one task axis, on the accelerator.

    python experiments/minatar_mt.py --preset smoke                          # checks the install (~2 min on a CPU)
    python experiments/minatar_mt.py --preset cpu                            # the 4-game agent: ~17 min on a CPU
    python experiments/minatar_mt.py --preset cpu --tasks Breakout-MinAtar   # any subset, or a single game
    python experiments/minatar_mt.py --preset cpu --single-task-baselines    # one agent per game, same budget each
    python experiments/minatar_mt.py --preset cpu --run.minimal-action-set   # each game's own legal actions only
    python experiments/minatar_mt.py --preset cpu --run.sticky-actions 0.1   # the original MinAtar's sticky actions
    python experiments/minatar_mt.py --preset paper --seeds 4                # BRC.md's settings, on a GPU/TPU

Games: Breakout, Asterix, Freeway and SpaceInvaders (the task set `minatar`), Gymnax's full 6-action set, observations
`uint8 [10, 10, 7]` (channels zero-padded). Writes runs/minatar_mt/<timestamp>/{config.json, metrics.jsonl,
checkpoints/, plots/}. Any field of the configs can be overridden, e.g. `--agent.critic-width 1024`; `--help` lists
them all. `--single-task-baselines` trains one agent per game into `<run dir>/<game>/` (purejaxmt.studies.baselines).
Note: Gymnax's MinAtar has no sticky actions (`--run.sticky-actions 0.1` adds the original's) and cuts episodes at
1000 steps (Freeway 2500); compare with the original MinAtar's numbers with that in mind
(purejaxmt/envs/gymnax_tasks.py).
"""

import dataclasses

from purejaxmt import cli, runner
from purejaxmt.agents import brc_discrete
from purejaxmt.offpolicy import LoopConfig

EXPERIMENT, AGENT = "minatar_mt", brc_discrete.AGENT_SPEC
PAPER = brc_discrete.Config(compute_dtype="bfloat16")  # BRC.md: W=4096 trunk, 101 atoms
PAPER_LOOP = LoopConfig()                              # batch 1024, 2 updates per step, 1M env steps per game

PRESETS = {
    "paper": runner.Preset(
        agent=PAPER, loop=PAPER_LOOP,
        run=runner.RunConfig(tasks="minatar", eval_every=10, checkpoint_every=10),
        description="BRC.md defaults (W=4096 depth-2 trunk, batch 1024, 2 updates per step), 1M env steps per game; "
                    "for a GPU/TPU"),
    "gpu": runner.Preset(
        # Measured on one H100 with 3 seeds (docs/results.md): 42 s compile, 9 min 43 s for 2M env steps per game,
        # 3,400 env steps/s per game per seed. A W=1024 trunk and 8 envs per game with one update of 512 transitions
        # per iteration (16 replayed samples per env step) keep one update at about 1.3 ms.
        agent=dataclasses.replace(PAPER, critic_width=1024),
        loop=dataclasses.replace(PAPER_LOOP, batch_size=512, envs_per_task=8, updates_per_step=1,
                                 replay_capacity=500_000, total_steps=2_000_000, steps_per_chunk=100_000,
                                 eval_episodes=8),
        run=runner.RunConfig(tasks="minatar", eval_every=1, checkpoint_every=5),
        description="W=1024 trunk, 8 envs per game, 2M env steps per game: about 10 minutes on one H100"),
    "fast": runner.Preset(
        # The massively parallel regime (issue 13), the discrete agent's counterpart of mjx_humanoid_mt.py's `fast`:
        # hundreds of envs per game feeding large task-balanced batches, a few updates per iteration, bf16. FastTD3
        # publishes no MinAtar settings; its multi-task (MTBench) ones use thousands of envs, 2 updates per
        # iteration and n-step returns, and the `gpu` preset above (measured on an H100) sets the replay ratio.
        # Not yet run on a GPU.
        agent=dataclasses.replace(
            PAPER,
            critic_width=1024,                # the `gpu` preset's trunk (1.3 ms per update of 512 there)
            epsilon_decay_steps=1_000_000),   # 5% of the budget per game, as the `gpu` preset's 100k of 2M
        loop=dataclasses.replace(
            PAPER_LOOP,
            envs_per_task=512,                # 2048 envs in all (Gymnax MinAtar steps cost little on a GPU)
            batch_size=16384,                 # 4096 per game: 2 x 16384 / 2048 = 16 replayed per env step, the
            updates_per_step=2,               # `gpu` preset's replay ratio (512 per 32 env steps)
            n_step=3,                         # 3-step returns: Freeway learns sooner and in more seeds (cpu preset)
            # 2^22 per game: 4 x 2^22 = 2^24 transitions, 712 bytes each (the uint8 observation stored once) and
            # the finals of 16384 episodes per game = 11.99 GB per run (23.66 GB with next_obs stored too). The
            # finals are exact while a game's episodes in its ring average 256+ steps; Breakout's early short
            # episodes overwrite the oldest terminal finals (`replay_lost_finals`; a terminal transition's next_obs
            # is multiplied by 0 in the target).
            replay_capacity=2**22,
            # Freeway's episodes last 2500 steps: 2500 random iterations let every game finish an episode (a
            # defined reward scale) before the first update.
            random_steps=2500 * 512,
            steps_per_chunk=500 * 512,
            total_steps=20_000_000,
            eval_episodes=512),               # = envs_per_task: the evaluation reuses the traced env step
        # A 12 GB replay per run: checkpoints leave it out (a resume refills it).
        run=runner.RunConfig(tasks="minatar", eval_every=5, checkpoint_every=10, save_replay=False),
        description="massively parallel: 512 envs per game, batch 16384, 2 updates per iteration, 3-step returns, "
                    "W=1024 bf16 trunk, 2^22 replay per game; for an H100-class GPU"),
    "cpu": runner.Preset(
        # Sized by measurement on a 2-core CPU shared with other jobs (load 3-4): one 3x3 conv (16 channels), a W=256
        # depth-1 trunk and 51 atoms make an update on a 128-transition batch 12-20 ms, and the 4 games' envs cost
        # 0.25 ms per iteration (65k env steps/s at 4 envs per game), so the update is the whole cost: one update per
        # iteration of 4 envs per game runs at 20-29 ms per iteration, 550-800 env steps/s over the 4 games.
        # 100k env steps per game took 16 min 21 s of training with 3 seeds vmapped (docs/results.md, session 5), plus
        # ~60 s of compile. With the authors' return range and 3-step returns, Breakout, Freeway and SpaceInvaders
        # learn in every seed; Asterix needs ~200k+ steps (gpu).
        agent=brc_discrete.Config(critic_width=256, critic_depth=1, conv_channels=(16,), conv_kernel_sizes=(3,),
                                  conv_strides=(1,), num_bins=51, epsilon_decay_steps=50_000),
        loop=LoopConfig(n_step=3, batch_size=128, envs_per_task=4, updates_per_step=1, replay_capacity=100_000,
                        random_steps=5_000, total_steps=100_000, steps_per_chunk=10_000, eval_episodes=4),
        run=runner.RunConfig(tasks="minatar", eval_every=5, checkpoint_every=5, xla_optimization_level=1),
        description="small network, 100k env steps per game: about 17 minutes on a 2-core CPU"),
    "smoke": runner.Preset(
        agent=brc_discrete.Config(critic_width=32, critic_depth=1, embed_dim=8, conv_channels=(8,),
                                  conv_kernel_sizes=(3,), conv_strides=(1,), num_bins=21, epsilon_decay_steps=200),
        loop=LoopConfig(batch_size=16, envs_per_task=2, updates_per_step=1, replay_capacity=1_000, random_steps=100,
                        total_steps=400, steps_per_chunk=200, eval_episodes=2),
        run=runner.RunConfig(tasks="minatar", episode_length=50, eval_every=1, checkpoint_every=1,
                             xla_optimization_level=1),
        description="tiny network, 50-step episodes, 400 env steps per game: checks the install in ~2 minutes "
                    "(under 1 with the compile cache warm)"),
}

if __name__ == "__main__":
    with runner.usage_errors():  # a bad flag or value: one framed line and status 2, not a traceback
        cli.main(EXPERIMENT, AGENT, PRESETS, description=__doc__)

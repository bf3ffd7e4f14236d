"""Multi-task BRC on MJX humanoid stand, walk and run: one agent, one task axis, everything on the accelerator.

    python experiments/mjx_humanoid_mt.py --preset smoke              # checks the install (~5 min cold on a CPU)
    python experiments/mjx_humanoid_mt.py --preset cpu --tasks dmc-small   # learning you can watch on a CPU
    python experiments/mjx_humanoid_mt.py --preset gpu                # ~20 minutes on one H100
    python experiments/mjx_humanoid_mt.py --preset paper --seeds 4    # the paper's settings, on a GPU/TPU
    python experiments/mjx_humanoid_mt.py --preset cpu --single-task-baselines   # one agent per task
    python experiments/mjx_humanoid_mt.py --preset cpu-ablation       # categorical vs MSE vs no normaliser, 3 seeds
    python experiments/mjx_humanoid_mt.py --preset paper-ablation     # BRC's central ablation table, on a GPU/TPU

What a CPU user should expect (docs/results.md, 2-core CPU): the `cpu` preset on the humanoid takes about 25
minutes (3-4 min compile, then ~15 env steps/s per task) and the humanoid does not visibly learn in its 20k env steps
per task; `--tasks dmc-small` (cartpole-swingup, cheetah-run, walker-walk) takes about 12 minutes and cartpole-swingup
reaches returns of 200-400.

Writes runs/mjx_humanoid_mt/<timestamp>/{config.json, metrics.jsonl, checkpoints/, plots/}. Any field of the configs
can be overridden, e.g. `--agent.critic-width 1024` or `--loop.batch-size 512`; `--help` lists them all.
Note: Playground's humanoid is not dm_control's (timestep 0.005 instead of 0.0025, no random initial pose, episodes
end only at the 1000-step limit or on a non-finite state); compare with dm_control numbers with that in mind.
"""

import dataclasses

from purejaxmt import cli, runner
from purejaxmt.agents import brc
from purejaxmt.offpolicy import LoopConfig

EXPERIMENT, AGENT = "mjx_humanoid_mt", brc.AGENT_SPEC
PAPER = brc.Config(compute_dtype="bfloat16")  # BRC.md defaults: W=4096 critic
PAPER_LOOP = LoopConfig()                     # batch 1024, 2 updates per step, 1M env steps per task

PRESETS = {
    "paper": runner.Preset(
        agent=PAPER, loop=PAPER_LOOP,
        run=runner.RunConfig(tasks="humanoid", eval_every=10, checkpoint_every=10),
        description="BRC.md defaults, 1M env steps per task; for a GPU/TPU"),
    "gpu": runner.Preset(
        # Measured on one H100 with 2 seeds (docs/results.md): 86 s compile, 263 env steps/s per task per seed; by 240k
        # env steps per task (15 minutes) eval returns were stand 294, walk 235, run 76 and still rising. A W=1024
        # critic and 4 envs per task with 2 updates of 768 transitions per iteration (128 replayed samples per env
        # step) trade some of the paper's sample efficiency for wall-clock.
        agent=dataclasses.replace(PAPER, critic_width=1024),
        loop=dataclasses.replace(PAPER_LOOP, batch_size=768, envs_per_task=4, replay_capacity=300_000,
                                 total_steps=300_000, steps_per_chunk=20_000, eval_episodes=4),
        run=runner.RunConfig(tasks="humanoid", eval_every=1, checkpoint_every=5),
        description="W=1024 critic, 4 envs per task, 300k env steps per task: about 20 minutes on one H100"),
    "cpu": runner.Preset(
        # The paper's ratio of 2 updates per step of every task (one env per task would idle the CPU between
        # updates, so 2), on batches small enough for a 2-core CPU to make ~15 iterations a second.
        agent=brc.Config(critic_width=256, critic_depth=1, actor_width=128),
        loop=LoopConfig(batch_size=192, envs_per_task=2, updates_per_step=2, replay_capacity=100_000,
                        random_steps=2_000, total_steps=20_000, steps_per_chunk=2_000, eval_episodes=2),
        run=runner.RunConfig(tasks="humanoid", eval_every=2, checkpoint_every=2, xla_optimization_level=1),
        description="W=256 critic, 20k env steps per task: ~25 min on a 2-core CPU; the humanoid does not visibly "
                    "learn that soon (use --tasks dmc-small: ~12 min, cartpole-swingup learns)"),
    "fast": runner.Preset(
        # The massively parallel regime (issue 13): thousands of envs per task feeding large task-balanced batches,
        # a few updates per iteration. Started from FastTD3's published MuJoCo Playground settings
        # (github.com/younggyoseo/FastTD3, fast_td3/hyperparams.py, `MuJoCoPlaygroundArgs`, the config behind its
        # Playground humanoid stand/walk/run of 982/972/621 at 50M steps), keeping BRC's categorical cross-entropy
        # loss, per-task return-range reward normaliser and task embedding. Not yet run on a GPU: the throughput
        # below is an estimate from FLOPs, not a measurement (experiments/benchmark.py measures it).
        agent=dataclasses.replace(
            PAPER,
            # A BroNet of FastTD3's critic width (its `critic_hidden_dim` 1024) at BRC's depth 2 (the `gpu` preset's
            # critic): a whole update is 112 MFLOP per sample (XLA's cost analysis), 3.7 TFLOP per batch of 32768,
            # ~7-11 ms on an H100 at 35-50% of its bf16 peak (PAPER's compute dtype; FastTD3 trains in bf16 AMP
            # too). W=4096 would be ~15x that.
            critic_width=1024,
            actor_width=512,   # FastTD3's `actor_hidden_dim`
            # FastTD3's target step (BRC: 0.005): with batches of 32768 each update averages over many samples, and
            # a 0.1 target follows the online critic within ~10 updates instead of ~200.
            tau=0.1,
            # FastTD3's `obs_normalization` (on for Playground): thousands of envs in lockstep episodes move the
            # observation distribution fast early on; the statistics are the learner's, task-balanced.
            normalize_observations=True),
        # 101 atoms on [-10, 10] are both BRC's and FastTD3's Playground support; lr 3e-4 both; BRC's weight decay.
        loop=LoopConfig(
            envs_per_task=1024,          # FastTD3's `num_envs` (for one task), here per task: 3072 envs in all
            batch_size=32768,            # FastTD3's batch, task-balanced: 10922-10923 per task per update
            updates_per_step=2,          # FastTD3's `num_updates`: 2 x 32768 / 3072 = ~21 replayed per env step
            gamma=0.97,                  # FastTD3's Playground discount (BRC: 0.99)
            # 2^23 per task (FastTD3 keeps 10240 steps per env: ~10.5M per task), 3 x 2^23 = 25.2M transitions,
            # each float32 observation stored once (360 bytes per transition): 9.07 GB (8.45 GiB) per run with the
            # finals of 16384 episodes per task (15.75 GB when obs and next_obs were both stored; 5.69 GB with
            # --loop.compact-obs). The memory pre-flight prints the whole run's estimate at start.
            replay_capacity=2**23,
            # All envs start together and Playground humanoid episodes last exactly 1000 steps: 1000 random
            # iterations (FastTD3: 10) let every task finish an episode, so the reward scale is defined before the
            # first update (as BRC's 5000 random steps are longer than one episode).
            random_steps=1000 * 1024,
            steps_per_chunk=200 * 1024,  # 200 iterations per chunk: a log line every few seconds
            # 24.4k iterations: ~20 minutes on an H100 if an iteration (3072 MJX steps + 2 updates) takes ~45 ms;
            # `--run.train-minutes 20` holds the run to the 20-minute goal whatever the iteration costs.
            total_steps=25_000_000,
            eval_episodes=1024),         # = envs_per_task: FastTD3's 1024 eval envs; reuses the traced MJX step
        # A 9.1 GB replay per run would make every checkpoint a 9 GB write: keep it out (a resume refills it).
        run=runner.RunConfig(tasks="humanoid", eval_every=10, checkpoint_every=20, save_replay=False),
        description="massively parallel: 1024 envs per task, batch 32768, 2 updates per iteration, W=1024 bf16 "
                    "critic, 2^23 replay per task (FastTD3's Playground settings with BRC's critic); for an H100-class "
                    "GPU"),
    "paper-ablation": runner.Preset(
        # BRC's central table (BRC.md): the categorical loss with normalised rewards against the MSE loss, with and
        # without the task embedding, at two critic widths: 8 programs (each of these changes shapes), trained one
        # after another, each over the seeds in one vmapped program. At the `gpu` preset's budget, so that a sweep
        # of 8 programs x 2 seeds fits a day on one GPU; raise --steps on a pod.
        agent=dataclasses.replace(PAPER, critic_width=1024),
        loop=dataclasses.replace(PAPER_LOOP, batch_size=768, envs_per_task=4, replay_capacity=300_000,
                                 total_steps=300_000, steps_per_chunk=20_000, eval_episodes=4),
        run=runner.RunConfig(tasks="humanoid", seeds=2, eval_every=1, checkpoint_every=5),
        sweep=("agent.critic_loss=categorical,mse", "agent.task_conditioning=embedding,none",
               "agent.critic_width=1024,4096"),
        description="BRC's ablation table (categorical vs MSE, embedding vs none, W=1024 vs 4096), 2 seeds, 300k env "
                    "steps per task: 8 programs, for a GPU/TPU"),
    "cpu-ablation": runner.Preset(
        # The CPU-sized ablation on dmc-small: BRC (categorical, normalised rewards) against the MSE loss and
        # against no reward normaliser, 3 seeds each. BRC and no-normaliser differ only in data, so they are one
        # vmapped program of 6 runs; MSE is a second program of 3. The `cpu` preset's networks, with one update of
        # 128 per iteration of 2 envs per task, so that the 9 runs take about 40 minutes on a 2-core CPU.
        agent=brc.Config(critic_width=256, critic_depth=1, actor_width=128),
        loop=LoopConfig(batch_size=128, envs_per_task=2, updates_per_step=1, replay_capacity=50_000,
                        random_steps=2_000, total_steps=16_000, steps_per_chunk=2_000, eval_episodes=2),
        run=runner.RunConfig(tasks="dmc-small", seeds=3, eval_every=2, checkpoint_every=2, xla_optimization_level=1),
        variants=("", "agent.critic_loss=mse", "loop.normalize_rewards=false"),
        description="BRC vs MSE critic vs no reward normaliser on dmc-small, 3 seeds each, 16k env steps per task: "
                    "2 programs, about 40 min on a 2-core CPU"),
    "smoke": runner.Preset(
        # eval_episodes == envs_per_task: the evaluation steps envs of the training shape, so JAX reuses the traced
        # MJX step instead of tracing it again (a cold smoke run took 181 s with 2 eval episodes, 156 s with 4).
        agent=brc.Config(critic_width=64, critic_depth=1, actor_width=32),
        loop=LoopConfig(batch_size=48, envs_per_task=4, updates_per_step=1, replay_capacity=2_000, random_steps=200,
                        total_steps=800, steps_per_chunk=400, eval_episodes=4),
        run=runner.RunConfig(tasks="humanoid", episode_length=50, eval_every=1, checkpoint_every=1,
                             xla_optimization_level=1),
        description="tiny networks, 50-step episodes, 800 env steps per task: checks the install (~5 min cold on a "
                    "2-core CPU, ~2 min with the compile cache warm)"),
}

if __name__ == "__main__":
    with runner.usage_errors():  # a bad flag or value: one framed line and status 2, not a traceback
        cli.main(EXPERIMENT, AGENT, PRESETS, description=__doc__)

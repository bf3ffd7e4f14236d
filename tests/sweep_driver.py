"""A tiny BRC sweep on Gymnax Pendulum-v1, as a script, for the sweep tests that need a fresh process (8 fake devices):
`python tests/sweep_driver.py [command-line flags]`. Its presets are also tests/study_driver.py's."""

from __future__ import annotations

import sys

from purejaxmt import cli, offpolicy, runner
from purejaxmt.agents import brc
from purejaxmt.studies import sweep

EXPERIMENT = "tiny"
AGENT = brc.Config(critic_width=32, critic_depth=1, actor_width=16, num_bins=21)
LOOP = offpolicy.LoopConfig(batch_size=16, envs_per_task=2, updates_per_step=1, replay_capacity=256, random_steps=20,
                            total_steps=120, steps_per_chunk=40, eval_episodes=2)
RUN = runner.RunConfig(tasks="Pendulum-v1", seeds=2, episode_length=25, eval_every=1, checkpoint_every=1,
                       xla_optimization_level=1)
PRESETS = {"tiny": runner.Preset(agent=AGENT, loop=LOOP, run=RUN, description="a tiny Pendulum-v1 config")}


def main(argv: list[str]) -> None:
    runner.enable_compilation_cache()
    command = cli.parse_command(PRESETS, argv)
    sweep.run_sweep(EXPERIMENT, brc.AGENT_SPEC, command, report=False)


if __name__ == "__main__":
    main(sys.argv[1:])

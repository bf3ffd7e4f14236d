"""Times one BRC update (critic + target + actor + temperature step) per critic width on this machine.

    python experiments/bench_update.py --widths 256 512 1024 2048 --batch-size 256

Prints a markdown table (width, critic parameters per member, ms per update, updates/s) with the device it ran on.
"""

import dataclasses
import time

import jax
import numpy as np
import tyro

from purejaxmt import envs
from purejaxmt.agents import brc


@dataclasses.dataclass(frozen=True)
class Args:
    widths: tuple[int, ...] = (256, 512, 1024, 2048)
    depth: int = 2
    batch_size: int = 256
    num_tasks: int = 1
    obs_dim: int = 67          # humanoid
    action_dim: int = 21
    compute_dtype: str = "float32"
    repeats: int = 20


def main(args: Args) -> None:
    device = jax.devices()[0]
    print(f"device: {jax.device_count()} x {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print("| critic width | params per member | ms per update | updates/s |\n| --- | --- | --- | --- |")
    for width in args.widths:
        config = brc.Config(critic_width=width, critic_depth=args.depth, compute_dtype=args.compute_dtype)
        spec = envs.EnvSpec(task_names=tuple(f"task{i}" for i in range(args.num_tasks)), obs_shape=(args.obs_dim,),
                            obs_dtype=np.float32, episode_length=(1000,) * args.num_tasks,
                            action=envs.ActionSpec(discrete=False, size=args.action_dim,
                                                   mask=np.ones((args.num_tasks, args.action_dim), bool)))
        agent, hyper = brc.Agent(config, spec), brc.Hyper.from_config(config)
        learner = agent.init(jax.random.PRNGKey(0), hyper)
        reward_scale = jax.numpy.ones((args.num_tasks,))
        keys = jax.random.split(jax.random.PRNGKey(1), 4)
        shape = (args.batch_size,)
        batch = {"task_id": jax.numpy.arange(args.batch_size, dtype=jax.numpy.int32) % args.num_tasks,
                 "obs": jax.random.normal(keys[0], (*shape, args.obs_dim)),
                 "action": jax.random.uniform(keys[1], (*shape, args.action_dim), minval=-1, maxval=1),
                 "reward": jax.random.uniform(keys[2], shape),
                 "next_obs": jax.random.normal(keys[3], (*shape, args.obs_dim)),
                 "terminal": jax.numpy.zeros(shape, bool), "truncated": jax.numpy.zeros(shape, bool),
                 "discount": jax.numpy.full(shape, 0.99)}
        update = jax.jit(lambda learner, key: agent.update(learner, hyper, batch, reward_scale, key, 0),
                         donate_argnums=0)
        learner, info = update(learner, keys[0])
        jax.block_until_ready(info)
        start = time.perf_counter()
        for i in range(args.repeats):
            learner, info = update(learner, jax.random.fold_in(keys[0], i))
        jax.block_until_ready(info)
        seconds = (time.perf_counter() - start) / args.repeats
        params = sum(x.size for x in jax.tree.leaves(learner.critic_params)) // config.num_critics
        print(f"| {width} | {params / 1e6:.2f}M | {seconds * 1e3:.1f} | {1 / seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args))

"""Times one BRC update (critic + target + actor + temperature step) per critic width on this machine.

    python experiments/bench_update.py --widths 256 512 1024 2048 --batch-size 256

Prints a markdown table (width, critic parameters per member, ms per update, updates/s) with the device it ran on.
"""

import dataclasses
import sys
import time
from pathlib import Path

import jax
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from purejaxmt import brc  # noqa: E402


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
        config = brc.Config(critic_width=width, critic_depth=args.depth, batch_size=args.batch_size,
                            compute_dtype=args.compute_dtype)
        state = brc.init(jax.random.PRNGKey(0), config, obs_dim=args.obs_dim, action_dim=args.action_dim,
                         num_tasks=args.num_tasks)
        keys = jax.random.split(jax.random.PRNGKey(1), 4)
        shape = (args.batch_size,)
        batch = {"task_id": jax.numpy.arange(args.batch_size, dtype=jax.numpy.int32) % args.num_tasks,
                 "obs": jax.random.normal(keys[0], (*shape, args.obs_dim)),
                 "action": jax.random.uniform(keys[1], (*shape, args.action_dim), minval=-1, maxval=1),
                 "reward": jax.random.uniform(keys[2], shape), "next_obs": jax.random.normal(keys[3], (*shape, args.obs_dim)),
                 "terminal": jax.numpy.zeros(shape, bool), "truncated": jax.numpy.zeros(shape, bool)}
        update = jax.jit(brc.update, donate_argnums=0)
        state, info = update(state, batch)
        jax.block_until_ready(info)
        start = time.perf_counter()
        for _ in range(args.repeats):
            state, info = update(state, batch)
        jax.block_until_ready(info)
        seconds = (time.perf_counter() - start) / args.repeats
        params = sum(x.size for x in jax.tree.leaves(state.critic_params)) // config.num_critics
        print(f"| {width} | {params / 1e6:.2f}M | {seconds * 1e3:.1f} | {1 / seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args))

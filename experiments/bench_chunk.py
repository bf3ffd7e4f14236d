"""Times a BRC train chunk per iteration, un-vmapped and vmapped over seeds as the runner runs it.

    python experiments/bench_chunk.py                        # humanoid-walk, 16 envs, batch 256, W=256 critic
    python experiments/bench_chunk.py --seeds 1 4 --iterations 20

One iteration steps all `T x E` envs once, stores the transitions, updates the normaliser and (after the random phase)
runs `updates_per_step` updates. The first chunk is all random phase (no updates), the later ones all learning; both
are timed, each as the median of `--repeats` chunk calls after a warm-up call. Vmapped over S seeds, a run should cost
no more than S un-vmapped runs: the per-run column compares them. Prints a markdown table with the device it ran on.
A measurement script for docs/results.md (on the humanoid each run compiles three MJX programs, minutes on a CPU);
the test suite runs it on Pendulum-v1.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import jax
import tyro

from purejaxmt import envs, offpolicy, runner
from purejaxmt.agents import brc
from purejaxmt.runner import devices


@dataclasses.dataclass(frozen=True)
class Args:
    tasks: str = "humanoid-walk"
    envs_per_task: int = 16
    batch_size: int = 256
    critic_width: int = 256
    critic_depth: int = 1
    updates_per_step: int = 1
    seeds: tuple[int, ...] = (1, 4)
    """Vmapped seed counts to time besides the un-vmapped run."""
    iterations: int = 10
    """Iterations per timed chunk."""
    repeats: int = 3
    xla_optimization_level: int = 1


def _time_chunks(chunk, state, repeats: int) -> tuple[float, float, object]:
    """Seconds of the first (random-phase) chunk and the median of `repeats` learning chunks after a warm-up one."""
    start = time.perf_counter()
    state, metrics = chunk(state)
    jax.block_until_ready(metrics)
    random_phase = time.perf_counter() - start
    state, metrics = chunk(state)  # warm-up learning chunk
    jax.block_until_ready(metrics)
    learning = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = chunk(state)
        jax.block_until_ready(metrics)
        learning.append(time.perf_counter() - start)
    return random_phase, statistics.median(learning), metrics


def main(args: Args) -> None:
    device = jax.devices()[0]
    print(f"device: {jax.device_count()} x {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    env = envs.make(args.tasks)
    steps = args.iterations * args.envs_per_task
    config = brc.Config(critic_width=args.critic_width, critic_depth=args.critic_depth, actor_width=128)
    loop = offpolicy.LoopConfig(batch_size=args.batch_size, envs_per_task=args.envs_per_task,
                                updates_per_step=args.updates_per_step, replay_capacity=10 * steps,
                                random_steps=steps, total_steps=10 * steps, steps_per_chunk=steps)
    program = offpolicy.make(brc, config, loop, env)
    options = {"xla_backend_optimization_level": args.xla_optimization_level}
    print(f"{args.tasks}, {args.envs_per_task} envs per task, batch {args.batch_size}, critic W={args.critic_width} "
          f"depth {args.critic_depth}, {args.updates_per_step} update(s) per iteration, {args.iterations} iterations "
          "per chunk\n")
    print("| program | compile s | random-phase ms per iteration | learning ms per iteration | learning ms per "
          "iteration and run |\n| --- | --- | --- | --- | --- |")

    single = jax.tree.map(lambda x: jax.numpy.array(x, copy=True), program.init(jax.random.PRNGKey(0), program.hyper))
    start = time.perf_counter()
    chunk = jax.jit(program.train_chunk, donate_argnums=0).lower(single).compile(compiler_options=options)
    compile_seconds = time.perf_counter() - start
    random_phase, learning, _ = _time_chunks(chunk, single, args.repeats)
    per_iteration = 1e3 / args.iterations
    print(f"| un-vmapped | {compile_seconds:.0f} | {random_phase * per_iteration:.1f} | "
          f"{learning * per_iteration:.1f} | {learning * per_iteration:.1f} |", flush=True)

    for seeds in args.seeds:
        states = devices.init_states(program, devices.seed_keys(0, seeds))
        start = time.perf_counter()
        chunk = (jax.jit(runner.vmap_train_chunk(program, states), donate_argnums=0).lower(states)
                 .compile(compiler_options=options))
        compile_seconds = time.perf_counter() - start
        random_phase, learning, _ = _time_chunks(chunk, states, args.repeats)
        print(f"| vmapped over {seeds} seed(s) | {compile_seconds:.0f} | {random_phase * per_iteration:.1f} | "
              f"{learning * per_iteration:.1f} | {learning * per_iteration / seeds:.1f} |", flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args))

"""Throughput per run as the runs axis grows, and a settings x seeds sweep in one vmapped program vs run by run.

    python experiments/bench_runs.py                                         # Pendulum-v1, R = 1 2 4 8, 2 lr x 2 seeds
    python experiments/bench_runs.py --tasks cartpole-swingup,cheetah-run,walker-walk --runs 1 4 --iterations 100
    python experiments/bench_runs.py --json results/bench_runs.json

(a) The un-vmapped chunk (`jit(program.train_chunk)` on `program.init(key, program.hyper)`) and the chunk vmapped over
    R runs as the runner runs it (`devices.init_states`, `devices.vmap_train_chunk`: the lockstep counters stay
    unbatched). Per program: compile seconds (lower + compile), steady-state seconds per chunk (the median of
    `--repeats` calls after a warm-up call), env steps/s per run and in total, and the cost of one run relative to the
    un-vmapped chunk: `(seconds per chunk / R) / un-vmapped seconds per chunk`. The goal is <= 1 (a compute-bound
    CPU gives ~1; an accelerator less); a vmap that lowers badly shows up here as 3-6.
(b) N settings (learning rates) x M seeds: all N*M runs in one vmapped program (stacked `Hyper`s, one compile) vs the
    same runs one after another un-vmapped (one compile, reused for every run since the settings are data). Total
    wall seconds of each approach including compile, init (also shown apart) and `--sweep-chunks` chunks per run, and
    the steady-state seconds per chunk of all the runs (vmapped: the median chunk after the first; sequential: the
    sum over runs of each run's median chunk after its first). Separate processes, one per run, would also pay a
    compile per run: the last column adds it.

Every chunk learns (`random_steps=0`: updates from the first iteration). One chunk steps `iterations x T x E` envs
per run. Prints the machine, JAX backend and device and a markdown table per part; `--json PATH` writes them too. A
measurement script (CPU timings on a shared machine are indicative only); the test suite runs it on tiny settings.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import tyro

from purejaxmt import envs, offpolicy
from purejaxmt.agents import brc
from purejaxmt.benchmarking import compile_jit, machine
from purejaxmt.benchmarking import own_buffers as _own_buffers
from purejaxmt.benchmarking import steady as _steady
from purejaxmt.benchmarking import table as _table
from purejaxmt.benchmarking import timed_calls as _timed_chunks
from purejaxmt.runner import devices


def _compile(fn, state, options: dict[str, int]) -> tuple[Any, float]:
    """`fn` jitted with the state donated, lowered and compiled: the executable and the seconds taken."""
    return compile_jit(fn, state, options=options)


@dataclasses.dataclass(frozen=True)
class Args:
    tasks: str = "Pendulum-v1"
    """Comma-separated tasks or task sets (`envs.make`), e.g. "cartpole-swingup,cheetah-run,walker-walk" (MJX)."""
    envs_per_task: int = 2
    batch_size: int = 256
    critic_width: int = 256
    critic_depth: int = 1
    actor_width: int = 128
    updates_per_step: int = 1
    iterations: int = 200
    """Iterations per chunk (each steps all `T x E` envs once and runs `updates_per_step` updates)."""
    replay_capacity: int = 10_000
    """Transitions kept per task and run."""
    runs: tuple[int, ...] = (1, 2, 4, 8)
    """(a): vmapped run counts to time besides the un-vmapped chunk."""
    repeats: int = 3
    """(a): timed chunk calls per program, after a warm-up call."""
    learning_rates: tuple[float, ...] = (3e-4, 1e-3)
    """(b): the N settings of the sweep."""
    sweep_seeds: int = 2
    """(b): M seeds per setting."""
    sweep_chunks: int = 3
    """(b): chunks per run, the first counted as warm-up in the steady-state column."""
    seed: int = 0
    xla_optimization_level: int = 1
    """XLA backend optimisation level of every compile (1: the CPU presets'; the runner's default is 3)."""
    json: Path | None = None
    """Also write the results here as JSON."""


def build(args: Args) -> tuple[Any, brc.Config, offpolicy.LoopConfig]:
    env = envs.make(args.tasks)
    steps = args.iterations * args.envs_per_task
    config = brc.Config(critic_width=args.critic_width, critic_depth=args.critic_depth, actor_width=args.actor_width)
    loop = offpolicy.LoopConfig(batch_size=args.batch_size, envs_per_task=args.envs_per_task,
                                updates_per_step=args.updates_per_step, replay_capacity=args.replay_capacity,
                                random_steps=0, steps_per_chunk=steps, total_steps=1000 * steps)
    return offpolicy.make(brc.AGENT_SPEC, config, loop, env), config, loop


def bench_runs(program: offpolicy.Program, args: Args, options: dict[str, int]) -> list[dict[str, Any]]:
    """(a): the un-vmapped chunk, then the chunk vmapped over each of `args.runs`."""
    steps_per_run = args.iterations * args.envs_per_task * len(program.task_names)
    single = _own_buffers(program.init(jax.random.PRNGKey(args.seed), program.hyper))
    chunk, compile_seconds = _compile(program.train_chunk, single, options)
    _, seconds = _timed_chunks(chunk, single, 1 + args.repeats)
    results = [{"program": "un-vmapped", "runs": 1, "compile_s": compile_seconds, "chunk_s": _steady(seconds)}]
    del chunk, single
    for runs in args.runs:
        states = devices.init_states(program, devices.seed_keys(args.seed, runs))
        chunk, compile_seconds = _compile(devices.vmap_train_chunk(program, states), states, options)
        _, seconds = _timed_chunks(chunk, states, 1 + args.repeats)
        results.append({"program": "vmapped", "runs": runs, "compile_s": compile_seconds, "chunk_s": _steady(seconds)})
        del chunk, states
    baseline = results[0]["chunk_s"]
    for result in results:
        result["env_steps_per_s_per_run"] = steps_per_run / result["chunk_s"]
        result["env_steps_per_s"] = result["runs"] * steps_per_run / result["chunk_s"]
        result["per_run_cost"] = result["chunk_s"] / result["runs"] / baseline
    return results


def sweep_hypers(config: brc.Config, loop: offpolicy.LoopConfig, args: Args
                 ) -> tuple[list[tuple[float, int]], jax.Array, list[offpolicy.Hyper]]:
    """The sweep's runs, settings outer and seeds inner: (learning rate, seed) of each, their keys and settings."""
    runs = [(lr, args.seed + i) for lr in args.learning_rates for i in range(args.sweep_seeds)]
    keys = jnp.stack([jax.random.PRNGKey(seed) for _, seed in runs])
    hypers = [offpolicy.hyper_of(brc.AGENT_SPEC, dataclasses.replace(config, learning_rate=lr), loop) for lr, _ in runs]
    return runs, keys, hypers


def bench_sweep(program: offpolicy.Program, config: brc.Config, loop: offpolicy.LoopConfig, args: Args,
                options: dict[str, int]) -> list[dict[str, Any]]:
    """(b): the sweep's N*M runs in one vmapped program, then one after another un-vmapped."""
    runs, keys, hypers = sweep_hypers(config, loop, args)
    num_runs, steps_per_run = len(runs), args.iterations * args.envs_per_task * len(program.task_names)

    start = time.perf_counter()
    states = jax.block_until_ready(
        devices.init_states(program, keys, jax.tree.map(lambda *xs: jnp.stack(xs), *hypers)))
    init_seconds = time.perf_counter() - start
    chunk, compile_seconds = _compile(devices.vmap_train_chunk(program, states), states, options)
    _, seconds = _timed_chunks(chunk, states, args.sweep_chunks)
    vmapped = {"approach": "vmapped (one program)", "runs": num_runs, "compile_s": compile_seconds,
               "init_s": init_seconds, "total_s": time.perf_counter() - start, "steady_chunk_s": _steady(seconds)}
    del chunk, states

    start = time.perf_counter()
    chunk, compile_seconds, init_seconds, steady = None, 0.0, 0.0, 0.0
    for key, hyper in zip(keys, hypers):
        init_start = time.perf_counter()
        state = jax.block_until_ready(_own_buffers(program.init(key, hyper)))
        init_seconds += time.perf_counter() - init_start
        if chunk is None:
            chunk, compile_seconds = _compile(program.train_chunk, state, options)
        _, seconds = _timed_chunks(chunk, state, args.sweep_chunks)
        steady += _steady(seconds)
    sequential = {"approach": "sequential (un-vmapped, one compile)", "runs": num_runs, "compile_s": compile_seconds,
                  "init_s": init_seconds, "total_s": time.perf_counter() - start, "steady_chunk_s": steady}
    del chunk

    results = [vmapped, sequential]
    for result in results:
        result["env_steps_per_s"] = num_runs * steps_per_run / result["steady_chunk_s"]
        result["total_vs_vmapped"] = result["total_s"] / vmapped["total_s"]
        extra_compiles = 0 if result is vmapped else num_runs - 1
        result["total_s_compile_per_run"] = result["total_s"] + extra_compiles * result["compile_s"]
    return results


def main(args: Args) -> dict[str, Any]:
    host = machine()
    print(f"machine: {host['cpu']}, {host['cpu_count']} CPUs; jax {host['jax']} backend {host['backend']}, "
          f"{host['device_count']} x {host['device_kind']}")
    if host["compilation_cache_dir"]:
        print(f"persistent compilation cache on ({host['compilation_cache_dir']}): compile times may be cache loads")
    program, config, loop = build(args)
    options = {"xla_backend_optimization_level": args.xla_optimization_level}
    steps_per_run = args.iterations * args.envs_per_task * len(program.task_names)
    print(f"BRC on {args.tasks} ({len(program.task_names)} task(s)), {args.envs_per_task} env(s) per task, batch "
          f"{args.batch_size}, critic W={args.critic_width} depth {args.critic_depth}, actor W={args.actor_width}, "
          f"{args.updates_per_step} update(s) per iteration, {args.iterations} iterations per chunk "
          f"({steps_per_run} env steps per run), XLA level {args.xla_optimization_level}\n")

    print(f"(a) runs axis: steady state is the median of {args.repeats} chunks after a warm-up chunk\n")
    part_a = bench_runs(program, args, options)
    print(_table(["program", "runs", "compile s", "s per chunk", "env steps/s per run", "env steps/s total",
                  "per-run cost vs un-vmapped"],
                 [[r["program"], str(r["runs"]), f"{r['compile_s']:.2f}", f"{r['chunk_s']:.4f}",
                   f"{r['env_steps_per_s_per_run']:.0f}", f"{r['env_steps_per_s']:.0f}", f"{r['per_run_cost']:.2f}"]
                  for r in part_a]), flush=True)

    print(f"\n(b) sweep: {len(args.learning_rates)} learning rates x {args.sweep_seeds} seeds, {args.sweep_chunks} "
          "chunks per run; totals include compile and init\n")
    part_b = bench_sweep(program, config, loop, args, options)
    print(_table(["approach", "runs", "compile s", "init s", "total s", "steady s per chunk (all runs)",
                  "env steps/s total", "total vs vmapped", "total s, a compile per run"],
                 [[r["approach"], str(r["runs"]), f"{r['compile_s']:.2f}", f"{r['init_s']:.2f}",
                   f"{r['total_s']:.2f}",
                   f"{r['steady_chunk_s']:.4f}", f"{r['env_steps_per_s']:.0f}", f"{r['total_vs_vmapped']:.2f}",
                   f"{r['total_s_compile_per_run']:.2f}"] for r in part_b]), flush=True)

    results = {"machine": host, "args": {k: (str(v) if isinstance(v, Path) else v)
                                         for k, v in dataclasses.asdict(args).items()},
               "env_steps_per_chunk_per_run": steps_per_run, "runs": part_a, "sweep": part_b}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))

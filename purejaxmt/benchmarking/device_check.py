"""The device check: what to measure first whenever an accelerator is at hand, in one command of a few minutes
(`python experiments/benchmark.py --device-check`; `--smoke` for tiny stand-ins on a CPU).

- `humanoid_fast` / `minatar_fast`: a preset (the `fast` ones) trained through the runner (`runner.run`, the run's
  own program, memory pre-flight and host loop) for a fixed wall-clock budget (`--run.train-minutes`): the evaluation
  returns against wall clock and env steps, env steps/s, and memory per run: the runner's pre-flight estimate
  (`devices.check_memory`: replay, state, one update's working set; the seeds that fit) beside what the device
  reports while the run is live (`device.memory_stats()`, on an accelerator);
- `update_peak`: the W=4096 BRC update's share of a matmul peak measured on the same device in the compute dtype
  (bf16 on an accelerator), its FLOPs by XLA's cost analysis (`components.time_update`, as `--sections update`);
- `normalizer`: the reward normaliser's update (`normalize.update`, its `while_loop` over ended episodes) at each
  preset's `[T, E]`, in a `lax.scan` as the chunk runs it, when no env, 1/L of the envs or every env ends an episode
  (each a full one of L steps).

Every table row names the device. A section that fails is recorded with its error and the others still run.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from purejaxmt import normalize, offpolicy, runner
from purejaxmt.agents import AgentSpec
from purejaxmt.benchmarking import components, sections, timing
from purejaxmt.benchmarking.context import Context, Plan, set_xla_level
from purejaxmt.benchmarking.timing import fmt
from purejaxmt.runner import devices, rundir

SECTIONS = ("humanoid_fast", "minatar_fast", "update_peak", "normalizer")


@dataclasses.dataclass(frozen=True)
class PresetRun:
    """A preset of an experiment trained for `minutes` of wall clock (the runner's `train_minutes`), one seed."""

    experiment: str
    agent_spec: AgentSpec
    preset_name: str
    preset: runner.Preset
    minutes: float
    eval_every: int
    """Chunks between evaluations: the points of the curve (each costs an episode of every eval env)."""

    def run_config(self) -> runner.RunConfig:
        return dataclasses.replace(self.preset.run, seeds=1, train_minutes=self.minutes, eval_every=self.eval_every,
                                   checkpoint_every=10**9, save_replay=False, logger="none", video=False)


@dataclasses.dataclass(frozen=True)
class DeviceCheck:
    name: str
    plan: Plan
    """The shared `Context`'s: XLA level, `env_tasks` (the update's spec), matmul sizes, update calls, repeats."""
    humanoid: PresetRun
    minatar: PresetRun
    update_width: int
    update_depth: int
    update_batches: tuple[int, ...]
    normalizer_iterations: int
    """Normaliser updates per timed scan."""


def device_memory() -> dict[str, int] | None:
    """The first local device's allocator statistics (`bytes_in_use`, `peak_bytes_in_use`, `bytes_limit`, ...);
    None where the backend keeps none (a CPU)."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return dict(stats) if stats else None


def _gib(nbytes: float | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**30:.2f} GiB"


def preset_run(check: PresetRun, run_dir: Path) -> dict[str, Any]:
    """Trains `check`'s preset for its minutes through the runner; its evaluation curve, throughput and memory."""
    run_config = check.run_config()
    env = runner.make_env(run_config)
    program = offpolicy.make(check.agent_spec, check.preset.agent, check.preset.loop, env)
    estimate = devices.check_memory(program, 1, seeds=1)  # raises MemoryError, naming sizes, when one run cannot fit
    memory: dict[str, Any] = {"estimate_parts": estimate.parts, "estimate_per_run": estimate.per_run,
                              "available": estimate.available, "memory_fraction": devices.MEMORY_FRACTION,
                              "seeds_that_fit_estimate": estimate.runs_that_fit, "estimate_line": estimate.line()}
    del program
    in_use: list[int] = []

    def progress(chunk: int, rows: list[dict]) -> None:
        stats = device_memory()
        if stats and "bytes_in_use" in stats:
            in_use.append(int(stats["bytes_in_use"]))  # the run's state, live between chunks

    start = time.perf_counter()
    runner.run(check.experiment, check.agent_spec, check.preset.agent, check.preset.loop, run_config, env=env,
               run_dir=run_dir, preset=check.preset_name, progress_fn=progress)
    wall_s = time.perf_counter() - start
    stats = device_memory() or {}
    measured = max(in_use) if in_use else None
    limit = stats.get("bytes_limit")
    memory.update(bytes_in_use_max=measured, peak_bytes_in_use=stats.get("peak_bytes_in_use"), bytes_limit=limit,
                  seeds_that_fit_measured=(int(devices.MEMORY_FRACTION * limit // measured)
                                           if measured and limit else None))
    task_names = list(env.task_names)
    rows = rundir.read_all_metrics(run_dir)
    curve = [{"chunk": row["chunk"], "step": row["step"], "wall_minutes": row["wall_time"] / 60,
              "env_steps_per_s": row.get("env_steps_per_second"),
              "eval_return": {task: row.get(f"eval/{task}/return") for task in task_names}}
             for row in rows if any(f"eval/{task}/return" in row for task in task_names)]
    loop = check.preset.loop
    # Throughput of the chunks that learned throughout (the random phase's are faster: no updates), else of all.
    learning = [row for row in rows if row["step"] - loop.steps_per_chunk >= loop.random_steps] or rows
    speeds = [row["env_steps_per_second"] for row in learning if "env_steps_per_second" in row]
    return {"experiment": check.experiment, "preset": check.preset_name, "tasks": task_names,
            "minutes": check.minutes, "run_dir": str(run_dir), "wall_s_with_compile": wall_s,
            "train_wall_s": rows[-1]["wall_time"] if rows else None, "chunks": len(rows),
            "env_steps_per_task": rows[-1]["step"] if rows else 0,
            "envs_per_task": loop.envs_per_task, "batch_size": loop.batch_size,
            "critic_width": check.preset.agent.critic_width,
            "env_steps_per_s_median": sorted(speeds)[len(speeds) // 2] if speeds else None,
            "speed_of": "learning chunks" if learning is not rows else "all chunks (none learned throughout)",
            "curve": curve, "memory": memory}


def update_peak(ctx: Context, width: int, depth: int, batches: tuple[int, ...]) -> dict[str, Any]:
    """The W=`width` update's FLOP/s against the measured matmul peak, in the context's compute dtype."""
    return {"matmul_peak": ctx.peak(),
            "rows": [components.time_update(ctx, width, depth, batch_size) for batch_size in batches]}


def normalizer_cost(ctx: Context, shapes: list[tuple[str, int, int, int]], iterations: int) -> dict[str, Any]:
    """`normalize.update` at each `(label, T, E, L)`, `iterations` of it in one `lax.scan` (as in the chunk) over
    precomputed rewards, episodes ended (truncated, as the time limit ends them) by: no env; each env with probability
    1/L per step; every env, each after a full episode of L steps (the `fast` humanoid's lockstep step: its step
    count is set to L - 1 before each update; a `where` on a flag, so one compile serves the three). The state starts
    half-way into an episode."""
    rows = []
    for label, num_tasks, num_envs, max_length in shapes:
        def scan(state, reward, ended, full_episodes, max_length=max_length):
            def step(state, xs):
                reward, ended = xs
                state = state.replace(step_count=jnp.where(full_episodes, max_length - 1, state.step_count))
                return normalize.update(state, reward, jnp.zeros_like(ended), ended, 0.99), None

            return jax.lax.scan(step, state, (reward, ended))[0]

        keys = jax.random.split(jax.random.PRNGKey(0))
        reward = jax.random.uniform(keys[0], (iterations, num_tasks, num_envs))
        state = normalize.init(num_tasks, num_envs, max_length)
        state = state.replace(step_count=jnp.full_like(state.step_count, max_length // 2))
        compiled, compile_s = timing.compile_jit(scan, state, reward, jnp.zeros(reward.shape, bool),
                                                 jnp.zeros((), bool), options=ctx.options)
        for regime, probability in (("no episode ends", 0.0), ("1/L of the envs end", 1.0 / max_length),
                                    ("every env ends a full episode", 1.0)):
            ended = jax.random.uniform(keys[1], (iterations, num_tasks, num_envs)) < probability
            full_episodes = jnp.asarray(probability == 1.0)
            carry = {"state": timing.own_buffers(state)}

            def call(compiled=compiled, reward=reward, ended=ended, full_episodes=full_episodes, carry=carry):
                carry["state"] = compiled(carry["state"], reward, ended, full_episodes)
                return carry["state"].step_count

            seconds = timing.mean_seconds(call, ctx.plan.repeats, warmup=1) / iterations
            rows.append({"preset": label, "num_tasks": num_tasks, "envs_per_task": num_envs,
                         "max_episode_length": max_length, "regime": regime, "compile_s": compile_s,
                         "ms_per_update": 1e3 * seconds, "ns_per_env_step": 1e9 * seconds / (num_tasks * num_envs)})
    return {"iterations_per_scan": iterations, "rows": rows}


def normalizer_shape(check: PresetRun) -> tuple[str, int, int, int]:
    env = runner.make_env(check.run_config())
    return (f"{check.experiment} {check.preset_name}", env.spec.num_tasks, check.preset.loop.envs_per_task,
            max(env.spec.episode_length))


def run(check: DeviceCheck, chosen: set[str] | None = None, compute_dtype: str | None = None, command: str = "",
        out_dir: Path = Path("runs/benchmark/device-check")) -> dict[str, Any]:
    """The chosen sections of the device check (all by default), each timed, a failure recorded and passed over;
    the preset runs' directories go under `out_dir`."""
    chosen = set(SECTIONS) if chosen is None else chosen
    unknown = sorted(chosen - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown device-check sections {unknown}; choose from {list(SECTIONS)}")
    level_for_all = set_xla_level(check.plan.xla_optimization_level)
    ctx = Context(check.plan, compute_dtype)
    machine, started = sections.header(check.name, check.plan.xla_optimization_level, level_for_all, ctx.dtype)
    device = f"{machine['device_kind']} ({machine['backend']})"
    timings: dict[str, Any] = {}
    results: dict[str, Any] = {}
    measures = {
        "humanoid_fast": lambda: preset_run(check.humanoid, out_dir / "humanoid_fast"),
        "minatar_fast": lambda: preset_run(check.minatar, out_dir / "minatar_fast"),
        "update_peak": lambda: update_peak(ctx, check.update_width, check.update_depth, check.update_batches),
        "normalizer": lambda: _share_of_iteration(results, normalizer_cost(
            ctx, [normalizer_shape(check.humanoid), normalizer_shape(check.minatar)], check.normalizer_iterations)),
    }
    for name in SECTIONS:
        if name not in chosen:
            continue

        def measure(name: str = name) -> dict[str, Any]:
            try:
                return {"device": device, **measures[name]()}
            except Exception as error:  # noqa: BLE001 - recorded, and the other sections still run
                traceback.print_exc()
                return {"device": device, "error": f"{type(error).__name__}: {error}"}

        results[name] = sections.timed(name, timings, measure, MARKDOWN[name])
    print("\n" + markdown_memory(results), flush=True)
    return {**sections.record(command, check.name, machine, ctx, level_for_all, started, timings),
            "device": device, "check_settings": _settings(check), "sections": results}


def _share_of_iteration(results: dict[str, Any], normalizer: dict[str, Any]) -> dict[str, Any]:
    """`normalizer` with each row's time as a share of its preset run's median training iteration (`[T, E]` env
    steps and the updates) in `results`, where both were measured."""
    speeds = {f"{r['experiment']} {r['preset']}": r.get("env_steps_per_s_median")
              for r in results.values() if "experiment" in r}
    for row in normalizer["rows"]:
        speed = speeds.get(row["preset"])
        row["share_of_iteration"] = (row["ms_per_update"] / 1e3 * speed / (row["num_tasks"] * row["envs_per_task"])
                                     if speed else None)
    return normalizer


def _settings(check: DeviceCheck) -> dict[str, Any]:
    runs = {name: {"experiment": run.experiment, "preset": run.preset_name, "minutes": run.minutes,
                   "eval_every": run.eval_every, "agent": dataclasses.asdict(run.preset.agent),
                   "loop": dataclasses.asdict(run.preset.loop), "run": dataclasses.asdict(run.run_config())}
            for name, run in (("humanoid", check.humanoid), ("minatar", check.minatar))}
    return {**runs, "update_width": check.update_width, "update_depth": check.update_depth,
            "update_batches": list(check.update_batches), "normalizer_iterations": check.normalizer_iterations,
            "plan": dataclasses.asdict(check.plan)}


def failed(results: dict[str, Any]) -> list[str]:
    """The sections that recorded an error."""
    return [name for name, result in results["sections"].items() if "error" in result]


# ----------------------------------------------------------------------------------------------------------------------
# Tables: every row names the device
# ----------------------------------------------------------------------------------------------------------------------
def markdown_preset_run(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"device check, a preset run on {result['device']}: failed: {result['error']}"
    tasks = result["tasks"]
    title = (f"device check: `{result['experiment']} --preset {result['preset']}` on {', '.join(tasks)} for "
             f"{result['minutes']:g} min of wall clock ({result['envs_per_task']} envs per task, batch "
             f"{result['batch_size']}, critic W={result['critic_width']}): {result['env_steps_per_task']:,} env steps "
             f"per task in {result['chunks']} chunks, median {fmt(result['env_steps_per_s_median'], 0)} env steps/s "
             f"of all tasks over {result['speed_of']}; {result['wall_s_with_compile']:.0f} s with init and compiles. "
             "The evaluations (wall clock of training and evaluations, compiles excluded):")
    return title + "\n\n" + timing.table(
        ["device", "wall min", "env steps per task", "env steps/s", *[f"eval return {task}" for task in tasks]],
        [[result["device"], fmt(point["wall_minutes"], 2), f"{point['step']:,}", fmt(point["env_steps_per_s"], 0),
          *[fmt(point["eval_return"][task]) for task in tasks]] for point in result["curve"]])


def markdown_memory(results: dict[str, Any]) -> str:
    """Memory per run of the preset runs: the runner's pre-flight estimate and, on an accelerator, the device's."""
    runs = [(name, result) for name, result in results.items() if "memory" in result]
    if not runs:
        return ""
    memory = runs[0][1]["memory"]
    return (f"device check: memory per run, the runner's pre-flight estimate (`devices.check_memory`; seeds that fit "
            f"{memory['memory_fraction']:.0%} of the device) and the device's own count (`memory_stats()`, between "
            "chunks; none on a CPU)\n\n" + timing.table(
                ["device", "preset", "estimate per run", "of which replay / learner / update", "seeds that fit "
                 "(estimate)", "in use while training", "peak in use", "device limit", "seeds that fit (in use)"],
                [[result["device"], f"{result['experiment']} {result['preset']}", _gib(m["estimate_per_run"]),
                  " / ".join(_gib(m["estimate_parts"].get(part)) for part in ("replay", "learner", "update")),
                  str(m["seeds_that_fit_estimate"]), _gib(m["bytes_in_use_max"]), _gib(m["peak_bytes_in_use"]),
                  _gib(m["bytes_limit"]) if m["bytes_limit"] else _gib(m["available"]) + " (available)",
                  "-" if m["seeds_that_fit_measured"] is None else str(m["seeds_that_fit_measured"])]
                 for _, result in runs for m in [result["memory"]]]))


def markdown_update_peak(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"device check, the update's share of the matmul peak on {result['device']}: failed: {result['error']}"
    peak = result["matmul_peak"]
    return (f"device check: one BRC update against a matmul peak of {peak['flops_per_s'] / 1e12:,.2f} TFLOP/s "
            f"({peak['dtype']}, n={peak['size']}), FLOPs by XLA's cost analysis\n\n" + timing.table(
                ["device", "critic W", "depth", "batch", "dtype", "ms per update", "TFLOP per update", "TFLOP/s",
                 "of matmul peak"],
                [[result["device"], str(r["critic_width"]), str(r["critic_depth"]), str(r["batch_size"]),
                  r["compute_dtype"], fmt(r["ms_per_update"], 2), fmt(r["flops"] and r["flops"] / 1e12, 3),
                  fmt(r["flops_per_s"] and r["flops_per_s"] / 1e12, 2),
                  "-" if r["fraction_of_matmul_peak"] is None else f"{100 * r['fraction_of_matmul_peak']:.0f}%"]
                 for r in result["rows"]]))


def markdown_normalizer(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"device check, the reward normaliser on {result['device']}: failed: {result['error']}"
    return (f"device check: the reward normaliser's update (`normalize.update`), {result['iterations_per_scan']} in "
            "one `lax.scan`\n\n" + timing.table(
                ["device", "preset", "T x E", "L", "episodes ending", "ms per update", "ns per env step",
                 "of the run's iteration"],
                [[result["device"], r["preset"], f"{r['num_tasks']} x {r['envs_per_task']}",
                  str(r["max_episode_length"]), r["regime"], fmt(r["ms_per_update"], 3),
                  fmt(r["ns_per_env_step"], 1),
                  "-" if r.get("share_of_iteration") is None else f"{100 * r['share_of_iteration']:.2f}%"]
                 for r in result["rows"]]))


MARKDOWN = {"humanoid_fast": markdown_preset_run, "minatar_fast": markdown_preset_run,
            "update_peak": markdown_update_peak, "normalizer": markdown_normalizer}


def markdown(results: dict[str, Any]) -> str:
    """The device check's rows for docs/benchmarks.md."""
    return (sections.markdown(results, MARKDOWN) + "\n" + markdown_memory(results["sections"])).rstrip()

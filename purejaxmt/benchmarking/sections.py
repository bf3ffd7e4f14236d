"""The benchmark's sections by name, and one benchmark run: compile first, then time each wanted section with nothing
else of ours running; the results as one JSON-able dict and as the markdown rows of docs/benchmarks.md.

    results = sections.run(plan, sections.wanted(["components", "brax"]), command="python experiments/benchmark.py")
    text = sections.markdown(results)
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable, Iterable
from typing import Any

from purejaxmt.benchmarking import brax_sac, components, host, scaling, timing
from purejaxmt.benchmarking.context import COMPONENTS, SECTIONS, Context, Plan, Point, job_name, set_xla_level


@dataclasses.dataclass(frozen=True)
class Section:
    """One section: what it measures on a `Context`, and its result as markdown."""

    run: Callable[[Context], Any] | None  # None: the brax section, whose trainer runs in a child process
    markdown: Callable[[Any], str]


def _markdown_scaling(result: dict) -> str:
    point = Point(**result["point"])
    return (scaling.markdown_scaling_tasks(result["tasks"], point) + "\n\n" + scaling.markdown_scaling_runs(
        result["runs"], dataclasses.replace(point, tasks=result["tasks"][0]["tasks"])))


REGISTRY: dict[str, Section] = {
    "env": Section(components.bench_env, components.markdown_env),
    "update": Section(components.bench_updates,
                      lambda result: "(1b) " + components.markdown_update(result["rows"], result["matmul_peak"])),
    "replay": Section(components.bench_replay, components.markdown_replay),
    "fused": Section(components.bench_fused_vs_parts, components.markdown_fused),
    "host_vs_fused": Section(host.host_vs_fused, host.markdown_host),
    "brax": Section(None, brax_sac.markdown_brax),
    "scaling": Section(scaling.scaling, _markdown_scaling),
    "flops": Section(scaling.flops_section, scaling.markdown_flops),
}


def wanted(names: Iterable[str]) -> set[str]:
    """The sections `names` asks for (`components` = env update replay fused); raises on an unknown name."""
    chosen = {name for item in names for name in (COMPONENTS if item == "components" else (item,))}
    unknown = sorted(chosen - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown sections {unknown}; choose from {['components', *SECTIONS]}")
    return chosen


def header(plan_name: str, level: int, level_for_all: bool, dtype: str) -> tuple[dict[str, Any], float]:
    """Prints the machine, backend and device; returns the machine's record and the start time."""
    machine = timing.machine()
    print(f"machine: {machine['cpu']}, {machine['cpu_count']} CPUs, load average {machine['load_average']}; jax "
          f"{machine['jax']} backend {machine['backend']}, {machine['device_count']} x {machine['device_kind']}; plan "
          f"{plan_name}, XLA level {level}{'' if level_for_all else ' (our compiles only: the backend had started)'}, "
          f"compute dtype {dtype}", flush=True)
    if machine["compilation_cache_dir"]:
        print(f"persistent compilation cache on ({machine['compilation_cache_dir']}): compile times may be cache "
              "loads")
    return machine, time.perf_counter()


def timed(name: str, timings: dict[str, Any], measure: Callable[[], Any], markdown: Callable[[Any], str]) -> Any:
    """`measure()`, its seconds and the load average at its start and end recorded in `timings[name]`; prints its
    `markdown`."""
    print(f"\n== {name} ==\n", flush=True)
    load_start, start = timing.load_average(), time.perf_counter()
    result = measure()
    timings[name] = {"seconds": time.perf_counter() - start, "load_start": load_start,
                     "load_end": timing.load_average()}
    print(markdown(result), f"\n[{name}: {timings[name]['seconds']:.0f} s]", flush=True)
    return result


def run(plan: Plan, chosen: set[str], compute_dtype: str | None = None, command: str = "") -> dict[str, Any]:
    """The chosen sections of `plan`: every program compiled first (two at a time, Brax's trainer compiling beside
    them in its own process), then each section timed with nothing else of ours running."""
    level_for_all = set_xla_level(plan.xla_optimization_level)
    ctx = Context(plan, compute_dtype)
    machine, started = header(plan.name, plan.xla_optimization_level, level_for_all, ctx.dtype)
    worker = brax_sac.start_brax_worker(plan) if "brax" in chosen else None
    load_start = timing.load_average()
    print("\n== compiling ==", flush=True)
    compiling = ctx.precompile(chosen)
    brax_result = brax_sac.finish_brax_worker(worker) if worker is not None else None
    compiling.update(seconds_with_brax=time.perf_counter() - started, load_start=load_start,
                     load_end=timing.load_average())
    print(f"[{compiling['jobs']} compile jobs: {compiling['seconds']:.0f} s; with Brax's first epoch "
          f"{compiling['seconds_with_brax']:.0f} s]", flush=True)

    results: dict[str, Any] = {}
    timings: dict[str, Any] = {"compiling": compiling}
    for name in SECTIONS:
        if name in chosen:
            measure = REGISTRY[name].run
            result = timed(name, timings, (lambda: brax_sac.brax_section(ctx, brax_result)) if measure is None
                           else (lambda measure=measure: measure(ctx)), REGISTRY[name].markdown)
            if name in COMPONENTS:
                results.setdefault("components", {})[name] = result
            else:
                results[name] = result
    return {**record(command, plan.name, machine, ctx, level_for_all, started, timings),
            "plan_settings": dataclasses.asdict(plan), "sections": results}


def record(command: str, plan_name: str, machine: dict, ctx: Context, level_for_all: bool, started: float,
           timings: dict[str, Any]) -> dict[str, Any]:
    """What every results file starts with: the command, date, plan, machine, dtype, XLA level, times."""
    return {"command": command, "date": datetime.date.today().isoformat(), "plan": plan_name, "machine": machine,
            "compute_dtype": ctx.dtype, "xla_optimization_level": ctx.plan.xla_optimization_level,
            "xla_level_for_all_compiles": level_for_all, "wall_s": time.perf_counter() - started,
            "timing": timings, "compile_s": {job_name(key): seconds for key, seconds in ctx.compile_s.items()}}


def markdown(results: dict[str, Any], tables: dict[str, Callable[[Any], str]] | None = None) -> str:
    """The rows for docs/benchmarks.md: the command, machine and load, then every section's tables (`tables`: each
    section's markdown by name; default the benchmark's `REGISTRY`)."""
    tables = tables or {name: section.markdown for name, section in REGISTRY.items()}
    machine = results["machine"]
    loads = ", ".join(f"{name} {info['load_start']} -> {info['load_end']}" for name, info in results["timing"].items())
    lines = [f"### {results['date']}: `{results['command']}`", "",
             f"Machine: {machine['cpu']} ({machine['cpu_count']} CPUs), JAX {machine['jax']} on {machine['backend']} "
             f"({machine['device_count']} x {machine['device_kind']}); XLA backend optimisation level "
             f"{results['xla_optimization_level']}; compute dtype {results['compute_dtype']}; "
             f"{results['wall_s'] / 60:.1f} min in all. Load average (1 min) at the start and end of each section: "
             f"{loads}."]
    compiling = results["timing"].get("compiling")
    if compiling:
        lines[-1] += (f" Compile phase first: {compiling['jobs']} programs in {compiling['seconds']:.0f} s, two at a "
                      f"time ({compiling['seconds_with_brax']:.0f} s until Brax's trainer, compiling beside them in "
                      "its own process, had finished its first epoch); a table's compile seconds are wall-clock "
                      "with another compile beside them.")
    lines.append("")
    for group, result in results["sections"].items():
        for name, part in (result.items() if group == "components" else [(group, result)]):
            lines += [tables[name](part), ""]
    return "\n".join(lines)

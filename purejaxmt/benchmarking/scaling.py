"""Sections (4) scaling, throughput as tasks and vmapped runs grow, and (5) flops, the W=4096 update's FLOP/s
against a measured bf16 matmul peak on an accelerator."""

from __future__ import annotations

import dataclasses
from typing import Any

from purejaxmt.benchmarking import timing
from purejaxmt.benchmarking.components import markdown_update, time_update
from purejaxmt.benchmarking.context import Context, Point, stacked_states
from purejaxmt.benchmarking.timing import fmt


def scaling(ctx: Context) -> dict[str, Any]:
    base = ctx.plan.scaling_point
    task_rows = []
    for tasks in ctx.plan.scaling_tasks:
        fused = ctx.fused(dataclasses.replace(base, tasks=tasks))
        task_rows.append({"tasks": tasks, "num_tasks": fused["num_tasks"], "compile_s": fused["compile_s"],
                          "iteration_ms": fused["iteration_ms"], "env_steps_per_s": fused["env_steps_per_s"],
                          "env_steps_per_s_per_task": fused["env_steps_per_s"] / fused["num_tasks"]})
    point = dataclasses.replace(base, tasks=ctx.plan.scaling_tasks[0])
    single = ctx.fused(point)
    run_rows = []
    for num_runs in ctx.plan.scaling_runs:
        if num_runs == 1:
            chunk_s, compile_s = single["chunk_s"], single["compile_s"]
        else:
            program, chunk = ctx.program(point), ctx.vmapped_chunk(point, num_runs)
            states = timing.own_buffers(stacked_states(program, num_runs))
            _, seconds = timing.timed_calls(chunk, states, 1 + ctx.plan.repeats)
            chunk_s, compile_s = timing.steady(seconds), ctx.compile_s.get(("vmapped", point, num_runs))
            del states
        steps = single["num_tasks"] * point.envs_per_task * point.iterations
        run_rows.append({"runs": num_runs, "compile_s": compile_s, "chunk_s": chunk_s,
                         "env_steps_per_s": num_runs * steps / chunk_s, "env_steps_per_s_per_run": steps / chunk_s,
                         "per_run_cost": chunk_s / num_runs / single["chunk_s"]})
    return {"tasks": task_rows, "runs": run_rows, "point": dataclasses.asdict(base)}


# ----------------------------------------------------------------------------------------------------------------------
# 5. FLOP/s of the big update on an accelerator
# ----------------------------------------------------------------------------------------------------------------------
def flops_section(ctx: Context) -> dict[str, Any]:
    if not ctx.accelerator:
        return {"skipped": "skipped: no accelerator"}
    rows = [time_update(ctx, ctx.plan.flops_width, 2, batch_size) for batch_size in ctx.plan.flops_batches]
    return {"rows": rows, "matmul_peak": ctx.peak()}


def markdown_scaling_tasks(rows: list[dict], point: Point) -> str:
    return (f"(4a) tasks: {point.envs_per_task} envs per task, batch {point.batch_size} in all, critic "
            f"W={point.critic_width} depth {point.critic_depth}, {point.updates_per_step} update(s) per iteration\n\n"
            + timing.table(
                ["tasks", "T", "compile s", "ms per iteration", "env steps/s", "env steps/s per task"],
                [[r["tasks"], str(r["num_tasks"]), fmt(r["compile_s"]), fmt(r["iteration_ms"], 2),
                  fmt(r["env_steps_per_s"], 0), fmt(r["env_steps_per_s_per_task"], 0)] for r in rows]))


def markdown_scaling_runs(rows: list[dict], point: Point) -> str:
    return (f"(4b) vmapped runs of {point.tasks}, {point.envs_per_task} envs, batch {point.batch_size} (per-run "
            "cost: chunk seconds / runs / the un-vmapped chunk's; goal <= 1)\n\n" + timing.table(
                ["runs", "compile s", "s per chunk", "env steps/s", "env steps/s per run", "per-run cost"],
                [[str(r["runs"]), fmt(r["compile_s"]), fmt(r["chunk_s"], 3), fmt(r["env_steps_per_s"], 0),
                  fmt(r["env_steps_per_s_per_run"], 0), fmt(r["per_run_cost"], 2)] for r in rows]))


def markdown_flops(result: dict) -> str:
    if "skipped" in result:
        return f"(5) W=4096 update FLOP/s vs a bf16 matmul peak: {result['skipped']}"
    return "(5) " + markdown_update(result["rows"], result["matmul_peak"])

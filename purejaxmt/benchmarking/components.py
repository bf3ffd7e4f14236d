"""Section (1), components: the task-axis env step, one BRC update per critic width and batch, replay add and sample on
a large ring, and one fused iteration against the sum of its parts (each a function of the shared `Context`, with its
markdown table beside it)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from purejaxmt import offpolicy, replay
from purejaxmt.benchmarking import context, timing
from purejaxmt.benchmarking.context import Context, Point, action_shape, transition_fields
from purejaxmt.benchmarking.timing import fmt


def bench_env(ctx: Context) -> list[dict[str, Any]]:
    """Env steps/s of the task axis at each envs-per-task count: the jitted `TaskEnv.step` (the state donated) called
    in a Python loop with uniform random actions (the step the host loop and the parts use)."""
    tasks = ctx.plan.env_tasks
    env, env_step, rows = ctx.env(tasks), ctx.step(tasks), []
    for num_envs in ctx.plan.env_sizes:
        if ("env", tasks, num_envs) not in ctx.compile_s:
            ctx.warm_env(tasks, num_envs)
        state, _ = env.reset(jax.random.PRNGKey(0), num_envs)
        shape = (env.num_tasks, num_envs, *action_shape(env.spec))
        mask = jnp.asarray(env.spec.action.mask)[:, None, :]
        actions = [jnp.where(mask, jax.random.uniform(jax.random.PRNGKey(i), shape, minval=-1, maxval=1), 0.0)
                   for i in range(4)]
        carry = {"state": timing.own_buffers(state), "i": 0}  # donated below: no buffer twice

        def step():
            carry["i"] += 1
            carry["state"], transition = env_step(carry["state"], actions[carry["i"] % len(actions)])
            return transition

        seconds = timing.mean_seconds(step, ctx.plan.env_calls, warmup=2)
        steps = env.num_tasks * num_envs
        rows.append({"tasks": tasks, "num_tasks": env.num_tasks, "envs_per_task": num_envs, "envs": steps,
                     "compile_s": ctx.compile_s[("env", tasks, num_envs)], "ms_per_step": 1e3 * seconds,
                     "env_steps_per_s": steps / seconds})
    return rows


def time_update(ctx: Context, width: int, depth: int, batch_size: int) -> dict[str, Any]:
    """One BRC update (critic, target, actor, temperature) at this critic width and batch: ms per update, FLOPs
    (XLA's cost analysis) and the achieved fraction of the measured matmul peak."""
    built = ctx.update(width, depth, batch_size)
    compiled, agent, spec = built["compiled"], built["agent"], built["spec"]
    learner = timing.own_buffers(agent.init(jax.random.PRNGKey(0), built["hyper"]))
    batch, scale = context.random_batch(spec, batch_size, jax.random.PRNGKey(1)), jnp.ones((spec.num_tasks,))
    carry = {"state": (learner, jax.random.PRNGKey(2))}

    def call():
        carry["state"], info = compiled(*carry["state"], batch, scale)
        return info

    seconds = timing.mean_seconds(call, ctx.plan.update_calls)
    flops, peak = timing.flops(compiled), ctx.peak()["flops_per_s"]
    params = sum(x.size for x in jax.tree.leaves(carry["state"][0].critic_params)) // built["config"].num_critics
    return {"critic_width": width, "critic_depth": depth, "batch_size": batch_size, "num_tasks": spec.num_tasks,
            "compute_dtype": ctx.dtype, "critic_params_per_member": int(params),
            "compile_s": ctx.compile_s.get(("update", width, depth, batch_size)), "ms_per_update": 1e3 * seconds,
            "updates_per_s": 1 / seconds, "flops": flops, "flops_per_s": flops / seconds if flops else None,
            "fraction_of_matmul_peak": flops / seconds / peak if flops else None}


def bench_updates(ctx: Context) -> dict[str, Any]:
    return {"matmul_peak": ctx.peak(),
            "rows": [time_update(ctx, width, ctx.plan.update_depth, batch_size)
                     for width in ctx.plan.update_widths for batch_size in ctx.plan.update_batches]}


def bench_replay(ctx: Context) -> dict[str, Any]:
    """`replay.add` of E items per task and `replay.sample` of B items, task-balanced, on a full ring of the plan's
    capacity per task, in the loop's layout (each observation stored once, `LoopConfig`'s default finals ring; the
    humanoid's items are 360 bytes). One buffer per E (the layout is made for one E); sampling on the last."""
    spec, capacity = ctx.env(ctx.plan.env_tasks).spec, ctx.plan.replay_capacity
    example = offpolicy.replay_example(spec)
    rows, carry, nbytes = [], {}, 0
    add = jax.jit(replay.add, donate_argnums=0)
    for num_envs in ctx.plan.replay_adds:
        final_capacity = min(capacity, max(num_envs, offpolicy.LoopConfig.replay_final_capacity))  # the loop's
        carry.clear()
        state = replay.init(example, capacity, num_envs, final_capacity)
        nbytes = replay.nbytes(example, capacity, num_envs, final_capacity)
        carry["state"] = state.replace(size=jnp.full_like(state.size, capacity))  # sample from every slot
        del state
        items = {name: jnp.ones((spec.num_tasks, num_envs, *leaf.shape[1:]), leaf.dtype)
                 for name, leaf in example.items()}

        def call():
            carry["state"] = add(carry["state"], items)
            return carry["state"].pointer

        seconds = timing.mean_seconds(call, 20, warmup=2)
        rows.append({"op": "add", "items_per_task": num_envs, "items": spec.num_tasks * num_envs,
                     "ms_per_call": 1e3 * seconds, "items_per_s": spec.num_tasks * num_envs / seconds})
    for batch_size in ctx.plan.replay_batches:
        sample = jax.jit(functools.partial(replay.sample, batch_size=batch_size))
        keys = iter(jax.random.split(jax.random.PRNGKey(0), 64))
        seconds = timing.mean_seconds(lambda: sample(carry["state"], next(keys)), 20, warmup=2)
        rows.append({"op": "sample", "items_per_task": None, "items": batch_size, "ms_per_call": 1e3 * seconds,
                     "items_per_s": batch_size / seconds})
    return {"capacity_per_task": capacity, "num_tasks": spec.num_tasks, "items": spec.num_tasks * capacity,
            "bytes": nbytes, "rows": rows}


def time_parts(ctx: Context, point: Point) -> dict[str, float]:
    """Each part of one iteration at `point`, jitted on its own and called back to back: ms per call."""
    program, fns, env, env_step = ctx.program(point), ctx.fns(point), ctx.env(point.tasks), ctx.step(point.tasks)
    state = program.init(jax.random.PRNGKey(0), program.hyper)
    hyper, calls = state.hyper, ctx.plan.env_calls
    carry = {"env": timing.own_buffers(state.env_state), "learner": timing.own_buffers(state.learner),
             "normalizer": timing.own_buffers(state.normalizer), "replay": timing.own_buffers(state.replay),
             "key": jax.random.PRNGKey(1)}
    del state
    action = fns.random_action(jax.random.PRNGKey(2), point.envs_per_task)
    carry["env"], transition = env_step(carry["env"], action)
    stored = transition_fields(transition, offpolicy.replay_example(env.spec))

    def step():
        carry["env"], transition = env_step(carry["env"], action)
        return transition

    def act():
        action, carry["key"] = fns.act(carry["learner"], hyper, carry["env"].obs, carry["key"])
        return action

    def add():
        carry["replay"] = fns.add(carry["replay"], stored)
        return carry["replay"].pointer

    def normalizer():
        carry["normalizer"] = fns.normalize(carry["normalizer"], transition.reward, transition.terminal,
                                            transition.truncated, hyper.gamma)
        return carry["normalizer"].step_count

    parts = {"env_step": timing.mean_seconds(step, calls), "act": timing.mean_seconds(act, calls),
             "replay_add": timing.mean_seconds(add, calls),
             "normalizer": timing.mean_seconds(normalizer, calls)}
    keys = iter(jax.random.split(jax.random.PRNGKey(3), 2 * calls + 4))
    parts["replay_sample"] = timing.mean_seconds(lambda: fns.sample(carry["replay"], next(keys)), calls)
    batch = fns.sample(carry["replay"], next(keys))

    def learn():
        carry["learner"], carry["key"], info = fns.learn(carry["learner"], hyper, carry["normalizer"], batch,
                                                         carry["key"], jnp.zeros((), jnp.int32))
        return info

    parts["update"] = timing.mean_seconds(learn, max(2, calls // 2))
    return {name: 1e3 * seconds for name, seconds in parts.items()}


def bench_fused_vs_parts(ctx: Context) -> dict[str, Any]:
    point = ctx.plan.fused
    fused, parts = ctx.fused(point), time_parts(ctx, point)
    updates = point.updates_per_step
    issue_sum = parts["env_step"] + parts["replay_add"] + updates * (parts["replay_sample"] + parts["update"])
    full_sum = issue_sum + parts["act"] + parts["normalizer"]
    return {"point": dataclasses.asdict(point), "label": point.label(fused["num_tasks"]), "parts_ms": parts,
            "sum_env_add_sample_update_ms": issue_sum, "sum_all_parts_ms": full_sum,
            "fused_iteration_ms": fused["iteration_ms"], "fused_compile_s": fused["compile_s"],
            "ratio_to_env_add_sample_update": fused["iteration_ms"] / issue_sum,
            "ratio_to_all_parts": fused["iteration_ms"] / full_sum}


def markdown_env(rows: list[dict]) -> str:
    return ("(1a) env steps/s: the jitted task-axis step (state donated) with random actions, called in a loop\n\n"
            + timing.table(
                ["tasks", "envs per task", "envs", "ms per step", "env steps/s", "compile s (reset + step)"],
                [[r["tasks"], str(r["envs_per_task"]), str(r["envs"]), fmt(r["ms_per_step"], 2),
                  fmt(r["env_steps_per_s"], 0), fmt(r["compile_s"])] for r in rows]))


def markdown_update(rows: list[dict], peak: dict) -> str:
    return (f"one BRC update (critic + target + actor + temperature); matmul peak {peak['flops_per_s'] / 1e9:,.1f} "
            f"GFLOP/s ({peak['dtype']}, n={peak['size']})\n\n" + timing.table(
                ["critic W", "depth", "batch", "tasks", "dtype", "params per member", "compile s", "ms per update",
                 "GFLOP per update", "GFLOP/s", "of matmul peak"],
                [[str(r["critic_width"]), str(r["critic_depth"]), str(r["batch_size"]), str(r["num_tasks"]),
                  r["compute_dtype"], f"{r['critic_params_per_member'] / 1e6:.2f}M", fmt(r["compile_s"]),
                  fmt(r["ms_per_update"], 2), fmt(r["flops"] and r["flops"] / 1e9, 2),
                  fmt(r["flops_per_s"] and r["flops_per_s"] / 1e9),
                  "-" if r["fraction_of_matmul_peak"] is None else f"{100 * r['fraction_of_matmul_peak']:.0f}%"]
                 for r in rows]))


def markdown_replay(result: dict) -> str:
    return (f"(1c) replay ring of {result['capacity_per_task']:,} items per task x {result['num_tasks']} tasks "
            f"({result['items']:,} items, {result['bytes'] / 2**30:.2f} GiB), full\n\n" + timing.table(
                ["op", "items per call", "ms per call", "items/s"],
                [[r["op"], str(r["items"]), fmt(r["ms_per_call"], 3), fmt(r["items_per_s"], 0)]
                 for r in result["rows"]]))


def markdown_fused(result: dict) -> str:
    parts = result["parts_ms"]
    rows = [[name.replace("_", " "), fmt(ms, 2)] for name, ms in parts.items()]
    rows += [["sum: env step + replay add + updates x (sample + update)",
              fmt(result["sum_env_add_sample_update_ms"], 2)],
             ["sum of all parts (+ act + normaliser)", fmt(result["sum_all_parts_ms"], 2)],
             ["fused iteration (`train_chunk`)", fmt(result["fused_iteration_ms"], 2)],
             ["ratio fused / (env + add + sample + update) (goal <= 1.1)",
              fmt(result["ratio_to_env_add_sample_update"], 2)],
             ["ratio fused / all parts", fmt(result["ratio_to_all_parts"], 2)]]
    return f"(1d) one iteration vs the sum of its parts: {result['label']}\n\n" + timing.table(
        ["part", "ms"], rows)

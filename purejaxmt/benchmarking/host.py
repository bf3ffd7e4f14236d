"""Section (2), host_vs_fused: the same agent and config driven as the authors' code drives theirs (a Python loop,
the replay in NumPy on the host) against the loop's fused chunk."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purejaxmt import offpolicy
from purejaxmt.benchmarking import timing
from purejaxmt.benchmarking.context import Context, Point, transition_fields
from purejaxmt.benchmarking.timing import fmt


def _sampled_batch(items: dict, task_id: Any, gamma: Any, xp: Any = jnp) -> dict:
    """The host loop's NumPy batch as the update takes it (`offpolicy.sample_batch` on the device)."""
    return {**items, "discount": xp.full(task_id.shape, gamma, xp.float32), "task_id": task_id.astype(xp.int32)}


class HostReplay:
    """The authors' kind of replay: NumPy rings `[T, C, ...]` on the host, task-balanced uniform sampling there."""

    def __init__(self, example: dict[str, jax.ShapeDtypeStruct], capacity: int) -> None:
        self.data = {name: np.zeros((leaf.shape[0], capacity, *leaf.shape[1:]), leaf.dtype)
                     for name, leaf in example.items()}
        self.num_tasks, self.capacity, self.pointer, self.size = next(iter(example.values())).shape[0], capacity, 0, 0

    def add(self, items: dict[str, np.ndarray]) -> None:
        """E items per task (leaves `[T, E, ...]`)."""
        num_envs = next(iter(items.values())).shape[1]
        slots = (self.pointer + np.arange(num_envs)) % self.capacity
        for name, value in items.items():
            self.data[name][:, slots] = value
        self.pointer = (self.pointer + num_envs) % self.capacity
        self.size = min(self.size + num_envs, self.capacity)

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        per_task, remainder = divmod(batch_size, self.num_tasks)
        task_id = np.concatenate([np.repeat(np.arange(self.num_tasks), per_task),
                                  rng.permutation(self.num_tasks)[:remainder]])
        slots = rng.integers(0, self.size, batch_size)
        return {name: stored[task_id, slots] for name, stored in self.data.items()}, task_id


def host_loop(ctx: Context, point: Point) -> dict[str, Any]:
    """The authors' way of driving the same agent: per iteration a jitted act and env step, the transition copied to
    the host (`jax.device_get`) into a NumPy ring, then `updates_per_step` times a batch sampled with NumPy and sent
    to the jitted update. The reward normaliser runs jitted on the device (the authors keep theirs in NumPy)."""
    program, fns, env, env_step = ctx.program(point), ctx.fns(point), ctx.env(point.tasks), ctx.step(point.tasks)
    state = program.init(jax.random.PRNGKey(0), program.hyper)
    hyper, gamma = state.hyper, float(state.hyper.gamma)
    names = offpolicy.replay_example(env.spec)
    buffer, rng = HostReplay(names, point.replay_capacity), np.random.default_rng(0)
    carry = {"env": timing.own_buffers(state.env_state), "learner": timing.own_buffers(state.learner),
             "normalizer": timing.own_buffers(state.normalizer), "key": jax.random.PRNGKey(1), "updates": 0}
    del state
    seconds = {"device_get": 0.0, "numpy_replay": 0.0}

    def iteration() -> Any:
        action, carry["key"] = fns.act(carry["learner"], hyper, carry["env"].obs, carry["key"])
        carry["env"], transition = env_step(carry["env"], action)
        carry["normalizer"] = fns.normalize(carry["normalizer"], transition.reward, transition.terminal,
                                            transition.truncated, hyper.gamma)
        start = time.perf_counter()
        items = jax.device_get(transition_fields(transition, names))  # waits for the step
        seconds["device_get"] += time.perf_counter() - start
        start = time.perf_counter()
        buffer.add(items)
        batches = [buffer.sample(rng, point.batch_size) for _ in range(point.updates_per_step)]
        seconds["numpy_replay"] += time.perf_counter() - start
        info = None
        for items, task_id in batches:
            batch = _sampled_batch(items, task_id, gamma, xp=np)
            carry["learner"], carry["key"], info = fns.learn(carry["learner"], hyper, carry["normalizer"], batch,
                                                             carry["key"], np.int32(carry["updates"]))
            carry["updates"] += 1
        return info

    iterations = point.iterations * ctx.plan.repeats
    mean = timing.mean_seconds(iteration, iterations, warmup=2)
    timed = iterations + 2
    return {"iteration_ms": 1e3 * mean, "env_steps_per_s": env.num_tasks * point.envs_per_task / mean,
            "device_get_ms": 1e3 * seconds["device_get"] / timed,
            "numpy_replay_ms": 1e3 * seconds["numpy_replay"] / timed}


def host_vs_fused(ctx: Context) -> list[dict[str, Any]]:
    rows = []
    for point in ctx.plan.host:
        host, fused = host_loop(ctx, point), ctx.fused(point)
        rows.append({"point": dataclasses.asdict(point), "label": point.label(fused["num_tasks"]),
                     "host_iteration_ms": host["iteration_ms"], "host_env_steps_per_s": host["env_steps_per_s"],
                     "host_device_get_ms": host["device_get_ms"], "host_numpy_replay_ms": host["numpy_replay_ms"],
                     "fused_iteration_ms": fused["iteration_ms"], "fused_env_steps_per_s": fused["env_steps_per_s"],
                     "fused_speedup": host["iteration_ms"] / fused["iteration_ms"],
                     "fused_compile_s": fused["compile_s"]})
    return rows


def markdown_host(rows: list[dict]) -> str:
    return "(2) host loop (NumPy replay on the host) vs fused chunk, env steps/s of all tasks\n\n" + timing.table(
        ["config", "host ms per iteration (of which device_get / NumPy replay)", "host env steps/s",
         "fused ms per iteration", "fused env steps/s", "fused speed-up"],
        [[r["label"], f"{fmt(r['host_iteration_ms'], 2)} ({fmt(r['host_device_get_ms'], 2)} / "
          f"{fmt(r['host_numpy_replay_ms'], 2)})", fmt(r["host_env_steps_per_s"], 0), fmt(r["fused_iteration_ms"], 2),
          fmt(r["fused_env_steps_per_s"], 0), fmt(r["fused_speedup"], 2) + "x"] for r in rows])

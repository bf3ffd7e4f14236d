"""Section (3), brax: Brax's own SAC trainer (`brax.training.agents.sac.train`, unchanged) against our fused chunk,
matched on envs, batch, hidden widths and updates per env step. Brax runs in a child process
(`python -m purejaxmt.benchmarking.brax_sac MATCH_JSON XLA_LEVEL`): its compiles overlap ours, its timed epoch does
not."""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys
import time
from typing import Any

import jax
import numpy as np

from purejaxmt.benchmarking import timing
from purejaxmt.benchmarking.components import time_parts
from purejaxmt.benchmarking.context import BraxMatch, Context, Plan, Point, set_xla_level
from purejaxmt.benchmarking.timing import fmt

_WORKER_TAG = "[benchmark brax worker]"


def start_brax_worker(plan: Plan) -> subprocess.Popen:
    """Starts Brax's trainer on the plan's match in a child process; it compiles and runs its first (compiling)
    epoch and evaluation, then waits for `finish_brax_worker` before its timed second epoch."""
    command = [sys.executable, "-m", "purejaxmt.benchmarking.brax_sac",
               json.dumps(dataclasses.asdict(plan.brax)), str(plan.xla_optimization_level)]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _worker_line(worker: subprocess.Popen, expected: str) -> str:
    """The worker's next protocol line starting with `expected` (other output is passed through)."""
    for line in worker.stdout:
        if line.startswith(f"{_WORKER_TAG} {expected}"):
            return line[len(_WORKER_TAG) + len(expected) + 2:]
        print(line, end="")
    raise RuntimeError(f"Brax's trainer stopped before saying {expected!r} (exit code {worker.wait()}); its errors "
                       "are above")


def finish_brax_worker(worker: subprocess.Popen) -> dict[str, Any]:
    """Lets the worker run its timed epoch (nothing else of ours runs meanwhile) and returns its result."""
    _worker_line(worker, "READY")
    worker.stdin.write("GO\n")
    worker.stdin.flush()
    result = json.loads(_worker_line(worker, "RESULT"))
    worker.wait()
    return result


def brax_worker(match_json: str, level: int) -> None:
    """The child's side: Brax's `sac.train`, unchanged, on the matched settings (envs, batch, one hidden width for
    policy and Q networks with as many hidden layers as our BroNets have matmuls of that width, 1 + 2 x depth,
    updates per actor step); 2 epochs of `iterations` actor steps, the second timed by Brax itself
    (`training/sps`). Between them (in `progress_fn`) it says READY and waits for GO on stdin."""
    set_xla_level(level)
    fields = json.loads(match_json)
    match = BraxMatch(**{**fields, "ours": Point(**fields["ours"])})
    if not hasattr(jax, "device_put_replicated"):  # removed in jax 0.10; brax 0.14.2 still calls it (this process)
        from jax._src import api as jax_api

        jax.device_put_replicated = jax_api.device_put_replicated
    from brax.training.agents.sac import networks as sac_networks
    from brax.training.agents.sac import train as sac_train

    if match.env == "fast":
        import brax.envs

        environment, wrap_env_fn = brax.envs.get_environment("fast"), None
    else:
        from mujoco_playground import registry, wrapper

        environment = registry.load(match.env, config_overrides={"impl": "jax"})
        wrap_env_fn = wrapper.wrap_for_brax_training
    ours = match.ours
    num_envs, batch_size = ours.envs_per_task, ours.batch_size
    hidden = (ours.critic_width,) * (1 + 2 * ours.critic_depth)
    records: list[dict[str, float]] = []
    waited = {"s": 0.0}

    def progress(step: int, metrics: Any) -> None:
        records.append({name: float(np.mean(value)) for name, value in metrics.items()})
        if sum("training/sps" in record for record in records) == 1:  # after epoch 1: wait for the parent
            start = time.perf_counter()
            print(f"{_WORKER_TAG} READY", flush=True)
            sys.stdin.readline()
            waited["s"] += time.perf_counter() - start

    start = time.perf_counter()
    sac_train.train(
        environment=environment, wrap_env_fn=wrap_env_fn, episode_length=match.episode_length,
        # No prefill (ours too learns from the first iteration): Brax's prefill scan is then empty, one compile less.
        num_timesteps=2 * match.iterations * num_envs, num_evals=3, num_envs=num_envs, num_eval_envs=1,
        batch_size=batch_size, grad_updates_per_step=ours.updates_per_step, min_replay_size=0,
        max_replay_size=ours.replay_capacity, learning_rate=3e-4, discounting=0.99, seed=0, deterministic_eval=True,
        network_factory=functools.partial(sac_networks.make_sac_networks, hidden_layer_sizes=hidden),
        progress_fn=progress)
    sps = [record["training/sps"] for record in records if "training/sps" in record]
    result = {"env": match.env, "brax_hidden_layer_sizes": list(hidden), "num_envs": num_envs,
              "batch_size": batch_size, "grad_updates_per_step": ours.updates_per_step,
              "iterations_per_epoch": match.iterations, "brax_sps_per_epoch": sps, "brax_env_steps_per_s": sps[-1],
              "brax_wall_s": time.perf_counter() - start - waited["s"], "brax_load_end": timing.load_average()}
    print(f"{_WORKER_TAG} RESULT {json.dumps(result)}", flush=True)


def brax_section(ctx: Context, worker_result: dict[str, Any]) -> dict[str, Any]:
    ours_point = ctx.plan.brax.ours
    ours = ctx.fused(ours_point)
    parts = time_parts(ctx, ours_point) if ctx.plan.brax_parts else None
    return {**worker_result, "ours_point": dataclasses.asdict(ours_point),
            "ours_env_steps_per_s": ours["env_steps_per_s"], "ours_iteration_ms": ours["iteration_ms"],
            "ours_parts_ms": parts, "ours_compile_s": ours["compile_s"],
            "ours_over_brax": ours["env_steps_per_s"] / worker_result["brax_env_steps_per_s"],
            "differs": "Brax: MSE twin-Q critic and plain MLPs (no LayerNorm, no residuals, one output each), no "
                       "reward normaliser, a flat replay queue, Brax's episode and auto-reset wrappers. Ours: 101-bin "
                       "categorical critic ensemble (C51 projection of the target), BroNets with LayerNorm, the "
                       "return-range reward normaliser, reset pools."}


def markdown_brax(result: dict) -> str:
    ours, parts = result["ours_point"], result["ours_parts_ms"]
    return (f"(3) Brax SAC (`sac.train`, unchanged) on {result['env']} vs ours, matched: {result['num_envs']} envs, "
            f"batch {result['batch_size']}, {result['grad_updates_per_step']} update(s) per actor step, hidden "
            f"{tuple(result['brax_hidden_layer_sizes'])}\n\n" + timing.table(
                ["trainer", "env steps/s", "notes"],
                [["Brax SAC", fmt(result["brax_env_steps_per_s"], 0),
                  "`training/sps` of epoch 2 (epoch 1, with its compile: "
                  + fmt(result["brax_sps_per_epoch"][0], 0) + ")"],
                 ["ours (fused chunk)", fmt(result["ours_env_steps_per_s"], 0),
                  f"{fmt(result['ours_iteration_ms'], 2)} ms per iteration"
                  + (f"; alone: env step {fmt(parts['env_step'], 2)} ms, update {fmt(parts['update'], 2)} ms"
                     if parts else "") + f" (critic W={ours['critic_width']} depth {ours['critic_depth']}, actor "
                  f"W={ours['actor_width']})"],
                 ["ours / Brax", fmt(result["ours_over_brax"], 2), ""]]) + "\n\n" + result["differs"])


if __name__ == "__main__":  # the child's side (`start_brax_worker`)
    brax_worker(sys.argv[1], int(sys.argv[2]))

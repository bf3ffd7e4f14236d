"""Training metrics of one compiled chunk, reduced inside the chunk's `lax.scan` (no host round-trip).

The loop's `train_chunk` (`purejaxmt.offpolicy`) carries a `Totals` through its iterations:

    totals = chunk_metrics.init_totals(num_tasks, zero_update_metrics)        # before the scan
    totals = chunk_metrics.accumulate(totals, env_state.stats, reward, learning, update_info)   # each iteration
    metrics = chunk_metrics.finalize(totals, env_steps_per_task=iterations * envs_per_task)     # after the scan

`finalize` gives, per task `[T]`: the mean return and length of the episodes that finished in the chunk (NaN where
none did), the episode count, the mean raw reward per env step and the envs reset for non-finite states; and per
update metric: its mean over the iterations that updated (NaN if none did, e.g. during the random phase).
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

Totals = dict[str, Any]
Metrics = dict[str, jax.Array]


def init_totals(num_tasks: int, zero_update_metrics: Metrics) -> Totals:
    """Empty totals for `num_tasks` tasks; `zero_update_metrics` is the agent's update metrics dict, zeroed."""
    zeros = jnp.zeros((num_tasks,), jnp.float32)
    return {"episodes": zeros, "return_sum": zeros, "length_sum": zeros, "reward_sum": zeros,
            "nonfinite": jnp.zeros((num_tasks,), jnp.int32), "updates": jnp.zeros((), jnp.int32),
            "update_sums": zero_update_metrics}


def accumulate(totals: Totals, stats: Any, reward: jax.Array, learning: jax.Array, update_info: Metrics) -> Totals:
    """Adds one iteration: `stats` is the stepped env state's `EpisodeStats` (`[T, E]` leaves), `reward` `[T, E]`
    the step's raw rewards, `learning` a bool scalar (whether this iteration updated), `update_info` its update
    metrics (counted only when `learning`)."""
    chex.assert_equal_shape([stats.finished, stats.finished_return, stats.finished_length, reward])
    chex.assert_rank(reward, 2)
    chex.assert_shape(learning, ())
    finished = stats.finished.astype(jnp.float32)
    return {
        "episodes": totals["episodes"] + finished.sum(axis=1),
        "return_sum": totals["return_sum"] + (stats.finished_return * finished).sum(axis=1),
        "length_sum": totals["length_sum"] + (stats.finished_length * finished).sum(axis=1),
        "reward_sum": totals["reward_sum"] + reward.sum(axis=1),
        "nonfinite": totals["nonfinite"] + stats.nonfinite.sum(axis=1).astype(jnp.int32),
        "updates": totals["updates"] + learning.astype(jnp.int32),
        "update_sums": jax.tree.map(lambda total, x: total + jnp.where(learning, x, 0.0), totals["update_sums"],
                                    update_info),
    }


def finalize(totals: Totals, env_steps_per_task: int) -> Metrics:
    """The chunk's metrics from its totals; `env_steps_per_task` = iterations in the chunk x envs per task."""
    episodes = totals["episodes"]
    has_episode = episodes > 0
    updated = totals["updates"] > 0
    updates = jnp.maximum(totals["updates"], 1)
    return {
        "return": jnp.where(has_episode, totals["return_sum"] / jnp.maximum(episodes, 1), jnp.nan),
        "episode_length": jnp.where(has_episode, totals["length_sum"] / jnp.maximum(episodes, 1), jnp.nan),
        "episodes": episodes,
        "reward_mean": totals["reward_sum"] / env_steps_per_task,
        "nonfinite_resets": totals["nonfinite"],
        **{name: jnp.where(updated, value / updates, jnp.nan) for name, value in totals["update_sums"].items()},
    }

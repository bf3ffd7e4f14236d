"""Per-task reward normalisation by the largest absolute discounted return seen so far (BRC).

Each env accumulates the discounted Monte-Carlo return of its current episode. When the episode ends, its return
(plus the bootstrapped tail `gamma^n * mean(r) / (1 - gamma)` if a time limit cut it) updates its task's
`max_abs_return`, and rewards are scaled by `v_max / (G_i + entropy_correction)` with
`G_i = max(max_abs_return, max_abs_reward)`. Before a task has finished an episode G_i is undefined and its rewards
stay raw (scale 1.0).

Why the floor `max_abs_reward` (the largest |r| of any step so far): the return from an episode's *start* bounds |Q|
only when rewards come early. With a sparse reward that random play finds late in a long episode (MinAtar Freeway:
one crossing in ~5 episodes of 2500 steps), that return is `gamma^t` for a large t (~1e-4), the scale is ~1e5, and
every rewarded transition lands far beyond the categorical support, so Freeway never learned in a 4-game run. The
return-to-go from the rewarded state itself is at least |r|, so the floor is still a lower bound on the range of Q,
and a single scaled reward never exceeds `v_max`. With dense rewards (humanoid: many steps of rewards in [0, 1]) the
discounted episode return is far above any one reward and the floor never binds.

All arrays are float32 except the step count (int32) and `has_return` (bool); all functions are pure and jittable.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class NormalizerState:
    """Running per-env episode accumulators `[T, E]` and the per-task return range `[T]`."""

    discounted_return: jax.Array  # f32[T, E]: sum_t gamma^t r_t since the episode start
    discount: jax.Array  # f32[T, E]: gamma^n, n = steps taken in the current episode
    reward_sum: jax.Array  # f32[T, E]: undiscounted sum of the episode's rewards
    step_count: jax.Array  # i32[T, E]: n
    max_abs_return: jax.Array  # f32[T]: the largest |discounted return| of a finished episode
    max_abs_reward: jax.Array  # f32[T]: the largest |reward| of any step so far (the floor of G_i)
    has_return: jax.Array  # bool[T]: task i has finished at least one episode


def init(num_tasks: int, envs_per_task: int) -> NormalizerState:
    """Fresh accumulators (every env at an episode start) and no finished episode yet."""
    env_shape = (num_tasks, envs_per_task)
    return NormalizerState(
        discounted_return=jnp.zeros(env_shape, jnp.float32),
        discount=jnp.ones(env_shape, jnp.float32),
        reward_sum=jnp.zeros(env_shape, jnp.float32),
        step_count=jnp.zeros(env_shape, jnp.int32),
        max_abs_return=jnp.zeros((num_tasks,), jnp.float32),
        max_abs_reward=jnp.zeros((num_tasks,), jnp.float32),
        has_return=jnp.zeros((num_tasks,), jnp.bool_),
    )


def update(
    state: NormalizerState,
    reward: jax.Array,
    terminal: jax.Array,
    truncated: jax.Array,
    gamma: float | jax.Array,
) -> NormalizerState:
    """Add this step's reward `[T, E]` to every env's episode; where an episode ends here, fold its return into G_i.

    An episode ends where `terminal | truncated`. A truncated (and not terminal) episode bootstraps its tail as if
    the mean reward went on forever: `gamma^n * mean(r) / (1 - gamma)`, n its length including this step. The ended
    envs' accumulators restart from zero for the episode that begins at the next step.
    """
    chex.assert_equal_shape((reward, terminal, truncated, state.discounted_return))
    gamma = jnp.asarray(gamma, jnp.float32)
    reward = reward.astype(jnp.float32)

    discounted_return = state.discounted_return + state.discount * reward
    discount = state.discount * gamma  # gamma^n after this step
    reward_sum = state.reward_sum + reward
    step_count = state.step_count + 1

    tail = discount * (reward_sum / step_count.astype(jnp.float32)) / (1.0 - gamma)
    bootstrap = truncated & ~terminal
    episode_return = discounted_return + jnp.where(bootstrap, tail, 0.0)  # [T, E]

    ended = terminal | truncated
    # |G| >= 0, so 0 is a neutral element for the max over envs whose episode did not end.
    largest_ended = jnp.max(jnp.where(ended, jnp.abs(episode_return), 0.0), axis=1)  # [T]

    return NormalizerState(
        discounted_return=jnp.where(ended, 0.0, discounted_return),
        discount=jnp.where(ended, 1.0, discount),
        reward_sum=jnp.where(ended, 0.0, reward_sum),
        step_count=jnp.where(ended, 0, step_count),
        max_abs_return=jnp.maximum(state.max_abs_return, largest_ended),
        max_abs_reward=jnp.maximum(state.max_abs_reward, jnp.max(jnp.abs(reward), axis=1)),
        has_return=state.has_return | jnp.any(ended, axis=1),
    )


def scale(
    state: NormalizerState, v_max: float | jax.Array, entropy_correction: float | jax.Array
) -> jax.Array:
    """Per-task reward scale `[T]`: `v_max / (G_i + entropy_correction)` where task i has a finished episode, else 1.0;
    `G_i = max(max_abs_return, max_abs_reward)`.

    `entropy_correction` is a scalar or `[T]` (BRC: `alpha * H / (1 - gamma)`). A task whose denominator is not
    positive (every finished episode returned exactly 0 and no correction) also keeps 1.0 rather than an infinite
    scale: like a task with no episode yet, it has no return range to normalise by.
    """
    entropy_correction = jnp.asarray(entropy_correction, jnp.float32)
    chex.assert_rank(entropy_correction, {0, 1})
    if entropy_correction.ndim == 1:
        chex.assert_equal_shape((entropy_correction, state.max_abs_return))
    denominator = return_range(state) + entropy_correction  # [T]
    defined = state.has_return & (denominator > 0)
    safe_denominator = jnp.where(defined, denominator, 1.0)
    return jnp.where(defined, jnp.asarray(v_max, jnp.float32) / safe_denominator, jnp.float32(1.0))


def return_range(state: NormalizerState) -> jax.Array:
    """G_i `[T]`: the largest |discounted episode return|, floored by the largest |reward| (see the module doc)."""
    return jnp.maximum(state.max_abs_return, state.max_abs_reward)


def normalize_reward(reward: jax.Array, scale: jax.Array) -> jax.Array:
    """`reward [T, ...] * scale [T]`, the scale broadcast over the trailing axes."""
    chex.assert_rank(scale, 1)
    chex.assert_axis_dimension(reward, 0, scale.shape[0])
    return reward * scale.reshape(scale.shape + (1,) * (reward.ndim - 1))

"""Per-task reward normalisation by the range of the discounted returns-to-go seen so far (BRC, Nauman et al. 2025).

Rewards of task i are scaled by `v_max / (G_i + entropy_correction)` with the authors' return range G_i
(`RewardNormalizer` in jaxrl/normalizer.py, variable-length mode): for every finished episode of every env of the
task, with rewards r_0..r_{n-1}, the return-to-go at *every* step,

    v_{n-1} = r_{n-1} + gamma * b,   v_t = r_t + gamma * v_{t+1},   b = mean(r) / (1 - gamma) if truncated else 0,

updates a running `max_v = max(v)` and `min_v = min(v)` over all steps of all finished episodes of the task, and
`G_i = max(max_v, |min_v|)`. `terminal` means the MDP ended (no bootstrap), `truncated` that the time limit cut the
episode (bootstrap as if its mean reward went on forever); an episode with both set counts as terminal.

Why every step, not only the return from an episode's first step (this module's previous definition): G_i should be
the range of Q over the states the agent visits, and the return from the start falls far below it when rewards come
late. A humanoid first has to get up, so the discounted return from its first step underestimates what a standing
humanoid earns; in MinAtar Freeway random play crosses the road about once in several 2500-step episodes, so the
return from the start is `gamma^t` (~1e-4) while the return-to-go at the crossing is at least its reward, 1. Scaling
by the former (~1e4x) puts every rewarded target far outside the categorical support. With rewards of one sign the
return-to-go at a rewarded step is at least that reward, so a scaled reward never exceeds `v_max` and the previous
`max |reward|` floor is implied (with mixed signs, |r_t| = |v_t - gamma * v_{t+1}| <= (1 + gamma) * G_i at every
step but a truncated episode's last).

On device, jittable and vmappable over leading (e.g. seed) axes:
- every env writes its reward into its history row `[L + 1]` at its step within the episode (L = the longest possible
  episode, `max(env.episode_length)`): a `[T, E]` scatter, in place inside a scan;
- when episodes end, only the ended envs' rows are read: gathered a fixed-size chunk at a time (`nonzero` picks the
  next ones) in a `lax.while_loop`, which runs zero times on a step where nothing ends;
- a gathered row becomes `r'_t = r_t (t < n), r'_n = b, 0 beyond`, and its returns-to-go are a reverse discounted
  cumulative sum by `lax.associative_scan`: log2(L) parallel levels rather than an L-step sequential loop, and only
  non-negative powers of gamma (a `gamma^-t` closed form loses float32 precision over long episodes).
A step thus costs O(T * E) plus O(L log L) per ended episode, not O(T * E * L): with 3 tasks x 1024 envs and L = 1000,
scanning every row every step took ~50 ms a step on a 2-core CPU, more than a critic update; this takes ~0.06 ms.

An ended env's row is not zeroed (a `[T, E, L + 1]` pass every step); only its step count is reset. Its entries at
positions >= n are stale rewards of an earlier episode, never read (the scan row masks them) and overwritten by the new
episode as it goes. An episode longer than L steps (impossible for a `TaskEnv`, which truncates at its
`episode_length`) raises no error: the write position is clipped to the spare slot L, which is never read as a reward,
so nothing is written out of range and no other env is touched; its returns-to-go are those of its first L rewards
(bootstrapped, if truncated, with the mean of those L), the later rewards are lost.

A task with no finished episode yet has no return range (`return_range` 0) and reward scale 0: its rewards enter
the targets as 0 until its first episode ends. This is the authors' rule: `RewardNormalizer.normalize` divides by
`max(max_v, |min_v|)` with the running extremes still at -inf/+inf, an infinite denominator, so every reward is 0.
It matters: updates start after `random_steps`, and in several presets (MinAtar Freeway, the transfer `cpu` runs) no
episode of some task has ended by then. Raw rewards there would be on another scale than every later target (a
Freeway reward of 1 is 10x what the normalised support expects). A task whose denominator is not positive (every
return-to-go so far exactly 0 and no correction, where the authors divide by 0) has scale 0 too: no range, no reward
signal; its finished episodes had no reward anyway.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import struct

# Rows read per step where at most this many episodes end (one chunk, [4, L + 1]): terminal-driven families end 0-2
# episodes on most steps, and a chunk costs in proportion to its rows whether they are used or not.
_FEW_ENDED = 4
# Otherwise, chunks of about this many history entries (L = 1000: 65 rows), so that a step where a time limit ends
# every env at once (3 x 1024 envs) runs 48 iterations rather than 768, each still cheap next to a critic update.
_CHUNK_ENTRIES = 2**16

_Pair = tuple[jax.Array, jax.Array]


@struct.dataclass
class NormalizerState:
    """Per-env episode rewards `[T, E, L + 1]` and step counts `[T, E]`; the per-task return range `[T]`."""

    history: jax.Array  # f32[T, E, L + 1]: reward of step t of the current episode at [..., t] (t < n); slot L: sink
    step_count: jax.Array  # i32[T, E]: n, steps taken in the current episode
    max_return: jax.Array  # f32[T]: the largest return-to-go of any step of a finished episode (-inf before one)
    min_return: jax.Array  # f32[T]: the smallest (+inf before one; the infinities are the max/min identities)
    has_return: jax.Array  # bool[T]: task i has finished at least one episode


def init(num_tasks: int, envs_per_task: int, max_episode_length: int) -> NormalizerState:
    """Every env at an episode start, no finished episode yet. `max_episode_length` (L) is the longest episode any
    env can have: `max(env.episode_length)` for a `TaskEnv`, which truncates every episode there."""
    if min(num_tasks, envs_per_task, max_episode_length) < 1:
        raise ValueError(f"need num_tasks, envs_per_task, max_episode_length >= 1, got "
                         f"{num_tasks}, {envs_per_task}, {max_episode_length}")
    return NormalizerState(
        history=jnp.zeros((num_tasks, envs_per_task, max_episode_length + 1), jnp.float32),
        step_count=jnp.zeros((num_tasks, envs_per_task), jnp.int32),
        max_return=jnp.full((num_tasks,), -jnp.inf, jnp.float32),
        min_return=jnp.full((num_tasks,), jnp.inf, jnp.float32),
        has_return=jnp.zeros((num_tasks,), jnp.bool_),
    )


def update(
    state: NormalizerState,
    reward: jax.Array,
    terminal: jax.Array,
    truncated: jax.Array,
    gamma: float | jax.Array,
) -> NormalizerState:
    """Append this step's reward `[T, E]` to every env's episode; fold the returns-to-go of the episodes that end here
    (`terminal | truncated`; bootstrapped only where `truncated & ~terminal`) into their task's range.

    Ended envs start a new episode at the next step (step count 0).
    """
    chex.assert_rank(reward, 2)
    chex.assert_equal_shape((reward, terminal, truncated, state.step_count))
    chex.assert_equal_shape_prefix((reward, state.history), 2)
    num_tasks, envs_per_task, num_slots = state.history.shape
    max_length = num_slots - 1
    gamma = jnp.asarray(gamma, jnp.float32)

    # Clipped so that steps >= L of an over-long episode land in the spare slot L instead of out of range.
    position = jnp.minimum(state.step_count, max_length)
    task_index = jnp.arange(num_tasks)[:, None]
    env_index = jnp.arange(envs_per_task)[None, :]
    # A [T, E] scatter: O(T * E), in place inside a scan (no pass over the whole history).
    history = state.history.at[task_index, env_index, position].set(
        reward.astype(jnp.float32), indices_are_sorted=True, unique_indices=True)

    ended = terminal.astype(bool) | truncated.astype(bool)
    max_return, min_return = _fold_ended_episodes(
        history,
        length=jnp.minimum(state.step_count + 1, max_length),  # rewards the row holds (all of them if n <= L)
        ended=ended,
        bootstrap=truncated.astype(bool) & ~terminal.astype(bool),
        gamma=gamma,
        max_return=state.max_return,
        min_return=state.min_return,
    )
    return NormalizerState(
        history=history,  # ended rows keep stale entries, masked by the step count (see the module doc)
        step_count=jnp.where(ended, 0, state.step_count + 1),
        max_return=max_return,
        min_return=min_return,
        has_return=state.has_return | jnp.any(ended, axis=1),
    )


def _fold_ended_episodes(
    history: jax.Array,
    length: jax.Array,
    ended: jax.Array,
    bootstrap: jax.Array,
    gamma: jax.Array,
    max_return: jax.Array,
    min_return: jax.Array,
) -> _Pair:
    """Running per-task max/min `[T]` updated with every return-to-go of the ended envs' episodes.

    A `while_loop` reads the ended envs' rows a fixed-size chunk at a time (the next ones still to do, by `nonzero`),
    until none remain: zero iterations on a step where nothing ends (under `vmap`: the most over the batch), and no
    O(T * E) listing of ended envs either, which would be most of a quiet step's cost. Two chunk sizes: a step that
    ends a few episodes (the usual case where terminals end them: MinAtar) reads `_FEW_ENDED` rows once; a step that
    ends many (a time limit ending every env of a family together: DMC) reads about `_CHUNK_ENTRIES` entries at a time,
    so it runs few iterations.
    """
    num_tasks, envs_per_task, num_slots = history.shape
    num_envs = num_tasks * envs_per_task
    small = min(num_envs, _FEW_ENDED)
    large = max(small, min(num_envs, _CHUNK_ENTRIES // num_slots))
    flat_history = history.reshape(num_envs, num_slots)
    flat_length = length.reshape(num_envs)
    flat_bootstrap = bootstrap.reshape(num_envs)
    slot = jnp.arange(num_slots)

    def fold_rows(ids: jax.Array, extremes: _Pair) -> _Pair:
        valid = ids < num_envs
        ids = jnp.where(valid, ids, 0)  # padding reads env 0; its values are masked out below
        rows, n = flat_history[ids], flat_length[ids]  # [K, L + 1], [K]
        held = slot < n[:, None]  # the episode's own rewards: stale entries past n are ignored
        mean = jnp.sum(jnp.where(held, rows, 0.0), axis=1) / n.astype(jnp.float32)
        seed = jnp.where(flat_bootstrap[ids], mean / (1.0 - gamma), 0.0)
        returns = _returns_to_go(jnp.where(held, rows, jnp.where(slot == n[:, None], seed[:, None], 0.0)), gamma)
        counted = held & valid[:, None]  # v_t for t < n only: v_n is the bootstrap itself, not a visited state
        task = ids // envs_per_task
        return (extremes[0].at[task].max(jnp.max(jnp.where(counted, returns, -jnp.inf), axis=1)),
                extremes[1].at[task].min(jnp.min(jnp.where(counted, returns, jnp.inf), axis=1)))

    def fold_chunks(chunk: int, remaining: jax.Array, extremes: _Pair) -> _Pair:
        def body(carry: tuple[jax.Array, _Pair]) -> tuple[jax.Array, _Pair]:
            remaining, extremes = carry
            ids = jnp.nonzero(remaining, size=chunk, fill_value=num_envs)[0]  # the next `chunk`, padded with N
            return remaining.at[ids].set(False, mode="drop"), fold_rows(ids, extremes)

        return jax.lax.while_loop(lambda carry: jnp.any(carry[0]), body, (remaining, extremes))[1]

    flat_ended = ended.reshape(num_envs)
    few = jnp.sum(flat_ended, dtype=jnp.int32) <= small
    extremes = fold_chunks(small, flat_ended & few, (max_return, min_return))  # zero or one iteration
    if large > small:
        extremes = fold_chunks(large, flat_ended & ~few, extremes)
    return extremes


def _returns_to_go(rows: jax.Array, gamma: jax.Array) -> jax.Array:
    """`v_t = sum_{k >= t} gamma^(k - t) rows_k` along the last axis, as a reverse associative scan.

    Each element is the affine map `v_t = b_t + a_t * v_{t+1}` with (a, b) = (gamma, r'_t); composing a segment with
    the one after it gives (a1 * a2, b1 + a1 * b2). Only non-negative powers of gamma appear (no float32 blow-up or
    cancellation as with `gamma^-t` closed forms). In reverse mode `associative_scan` calls `fn(later, earlier)`.
    """
    def compose(later: _Pair, earlier: _Pair) -> _Pair:
        return earlier[0] * later[0], earlier[1] + earlier[0] * later[1]

    decay = jnp.broadcast_to(gamma, rows.shape)
    _, returns = jax.lax.associative_scan(compose, (decay, rows), reverse=True, axis=rows.ndim - 1)
    return returns


def scale(
    state: NormalizerState, v_max: float | jax.Array, entropy_correction: float | jax.Array
) -> jax.Array:
    """Per-task reward scale `[T]`: `v_max / (G_i + entropy_correction)` where task i has a finished episode, else 0
    (the authors' rule: their denominator is infinite until then).

    `entropy_correction` is a scalar or `[T]` (BRC: `alpha * |H| / (1 - gamma)`). A task whose denominator is not
    positive (every return-to-go so far exactly 0 and no correction) also gets 0 rather than an infinite scale:
    like a task with no episode yet, it has no return range to normalise by.
    """
    entropy_correction = jnp.asarray(entropy_correction, jnp.float32)
    chex.assert_rank(entropy_correction, {0, 1})
    if entropy_correction.ndim == 1:
        chex.assert_equal_shape((entropy_correction, state.max_return))
    denominator = return_range(state) + entropy_correction  # [T]
    defined = state.has_return & (denominator > 0)
    safe_denominator = jnp.where(defined, denominator, 1.0)
    return jnp.where(defined, jnp.asarray(v_max, jnp.float32) / safe_denominator, jnp.float32(0.0))


def return_range(state: NormalizerState) -> jax.Array:
    """G_i `[T]`: `max(max_v, |min_v|)` over the returns-to-go of every step of every finished episode of task i;
    0 for a task with no finished episode (its running max/min are still the infinite identities)."""
    chex.assert_rank(state.max_return, 1)
    return jnp.where(state.has_return, jnp.maximum(state.max_return, jnp.abs(state.min_return)), 0.0)


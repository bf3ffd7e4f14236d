"""Tests of the per-task return-range normaliser against returns computed by hand and by a float64 NumPy loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxmt import normalize

GAMMA = 0.97
V_MAX = 10.0

# Compiled once per [T, E] shape; gamma is traced, so its value does not recompile.
_update = jax.jit(normalize.update)


def _run(rewards, terminal, truncated, gamma=GAMMA) -> normalize.NormalizerState:
    """Feed `[S, T, E]` step arrays one step at a time, as the training loop does."""
    _, num_tasks, envs_per_task = rewards.shape
    state = normalize.init(num_tasks, envs_per_task)
    for r, term, trunc in zip(rewards, terminal, truncated):
        state = _update(state, jnp.asarray(r, jnp.float32), jnp.asarray(term), jnp.asarray(trunc), gamma)
    return state


def _reference(rewards, terminal, truncated, gamma=GAMMA):
    """Float64 loop over episodes kept as reward lists: (G [T], has_return [T], open episodes [T][E]), where G is the
    largest |discounted episode return| floored by the largest |reward| seen."""
    num_steps, num_tasks, envs_per_task = rewards.shape
    max_abs = np.abs(rewards.astype(np.float64)).max(axis=(0, 2))
    has_return = np.zeros(num_tasks, bool)
    episodes = [[[] for _ in range(envs_per_task)] for _ in range(num_tasks)]
    for s in range(num_steps):
        for t in range(num_tasks):
            for e in range(envs_per_task):
                episodes[t][e].append(float(rewards[s, t, e]))
                if terminal[s, t, e] or truncated[s, t, e]:
                    r = np.array(episodes[t][e])
                    n = len(r)
                    g = float(np.sum(gamma ** np.arange(n) * r))
                    if truncated[s, t, e] and not terminal[s, t, e]:
                        g += gamma**n * r.mean() / (1 - gamma)
                    max_abs[t] = max(max_abs[t], abs(g))
                    has_return[t] = True
                    episodes[t][e] = []
    return max_abs, has_return, episodes


def _single_episode(rewards, terminal: bool, truncated: bool):
    """One task, one env, one episode ending at the last step: `[S, 1, 1]` arrays."""
    num_steps = len(rewards)
    ends = np.zeros((num_steps, 1, 1), bool)
    term, trunc = ends.copy(), ends.copy()
    term[-1], trunc[-1] = terminal, truncated
    return np.asarray(rewards, np.float32).reshape(num_steps, 1, 1), term, trunc


def test_terminated_episode_gives_its_discounted_return():
    rewards = np.random.default_rng(0).uniform(0.5, 2.0, size=6)
    state = _run(*_single_episode(rewards, terminal=True, truncated=False))
    expected = sum(GAMMA**t * r for t, r in enumerate(rewards))
    np.testing.assert_allclose(state.max_abs_return, [expected], rtol=1e-5)
    assert bool(state.has_return[0])
    np.testing.assert_allclose(normalize.scale(state, V_MAX, 0.0), [V_MAX / expected], rtol=1e-5)


def test_truncated_episode_bootstraps_its_tail():
    rewards = np.random.default_rng(1).uniform(0.5, 2.0, size=6)
    state = _run(*_single_episode(rewards, terminal=False, truncated=True))
    n = len(rewards)
    expected = sum(GAMMA**t * r for t, r in enumerate(rewards)) + GAMMA**n * rewards.mean() / (1 - GAMMA)
    np.testing.assert_allclose(state.max_abs_return, [expected], rtol=1e-5)

    # The tail is the larger part here; an episode both terminal and truncated ends for real and gets none.
    both = _run(*_single_episode(rewards, terminal=True, truncated=True))
    np.testing.assert_allclose(both.max_abs_return, [sum(GAMMA**t * r for t, r in enumerate(rewards))], rtol=1e-5)
    assert float(state.max_abs_return[0]) > 3 * float(both.max_abs_return[0])


def test_negative_returns_count_by_absolute_value():
    rewards = -np.random.default_rng(2).uniform(1.0, 3.0, size=5)
    for terminal, truncated in [(True, False), (False, True)]:
        state = _run(*_single_episode(rewards, terminal, truncated))
        g = sum(GAMMA**t * r for t, r in enumerate(rewards))
        if truncated:
            g += GAMMA ** len(rewards) * rewards.mean() / (1 - GAMMA)
        assert g < 0
        np.testing.assert_allclose(state.max_abs_return, [-g], rtol=1e-5)


def test_accumulators_reset_when_an_episode_ends():
    rng = np.random.default_rng(3)
    rewards = rng.uniform(-2.0, 2.0, size=(5, 3, 3)).astype(np.float32)
    terminal = np.zeros((5, 3, 3), bool)
    truncated = np.zeros((5, 3, 3), bool)
    terminal[2, 0, 1] = True
    truncated[2, 1, 2] = True
    state = _run(rewards[:3], terminal[:3], truncated[:3])
    ended = terminal[2] | truncated[2]
    np.testing.assert_array_equal(np.asarray(state.discounted_return)[ended], 0.0)
    np.testing.assert_array_equal(np.asarray(state.discount)[ended], 1.0)
    np.testing.assert_array_equal(np.asarray(state.reward_sum)[ended], 0.0)
    np.testing.assert_array_equal(np.asarray(state.step_count)[ended], 0)
    np.testing.assert_array_equal(np.asarray(state.step_count)[~ended], 3)

    # Two more steps: the ended envs hold only their new episode, the others their whole 5 steps.
    state = _run(rewards, terminal, truncated)
    start = np.where(ended, 3, 0)
    for t in range(3):
        for e in range(3):
            r = rewards[start[t, e] :, t, e].astype(np.float64)
            n = len(r)
            np.testing.assert_allclose(state.discounted_return[t, e], np.sum(GAMMA ** np.arange(n) * r), rtol=1e-5)
            np.testing.assert_allclose(state.discount[t, e], GAMMA**n, rtol=1e-6)
            np.testing.assert_allclose(state.reward_sum[t, e], r.sum(), rtol=1e-5, atol=1e-6)
            assert int(state.step_count[t, e]) == n


def test_scripted_tasks_match_a_float64_reference():
    """Three tasks x three envs, episodes ending at different steps in every way, one task never finishing."""
    num_steps, num_tasks, envs_per_task = 12, 3, 3
    rng = np.random.default_rng(4)
    rewards = np.empty((num_steps, num_tasks, envs_per_task), np.float32)
    rewards[:, 0] = rng.uniform(0.5, 2.0, size=(num_steps, envs_per_task))  # positive
    rewards[:, 1] = -rng.uniform(1.0, 3.0, size=(num_steps, envs_per_task))  # negative
    rewards[:, 2] = rng.normal(0.0, 5.0, size=(num_steps, envs_per_task))  # mixed, never finishes
    terminal = np.zeros(rewards.shape, bool)
    truncated = np.zeros(rewards.shape, bool)
    terminal[3, 0, 0] = terminal[9, 0, 0] = True  # two episodes in one env
    truncated[5, 0, 1] = True
    terminal[7, 0, 2] = truncated[7, 0, 2] = True
    terminal[2, 1, 0] = True
    terminal[6, 1, 1] = True
    truncated[10, 1, 2] = True
    truncated[4, 1, 0] = True  # a 2-step episode right after the first

    state = _run(rewards, terminal, truncated)
    max_abs, has_return, episodes = _reference(rewards, terminal, truncated)

    np.testing.assert_allclose(normalize.return_range(state)[:2], max_abs[:2], rtol=1e-5)
    np.testing.assert_array_equal(state.has_return, has_return)
    np.testing.assert_array_equal(state.has_return, [True, True, False])
    assert float(state.max_abs_return[2]) == 0.0
    for t in range(num_tasks):  # the open episodes carry over exactly
        for e in range(envs_per_task):
            r = np.array(episodes[t][e])
            assert int(state.step_count[t, e]) == len(r)
            np.testing.assert_allclose(
                state.discounted_return[t, e], np.sum(GAMMA ** np.arange(len(r)) * r), rtol=1e-5, atol=1e-6
            )

    correction = np.array([0.5, 2.0, 3.0], np.float32)
    scales = np.asarray(normalize.scale(state, V_MAX, correction))
    assert scales.dtype == np.float32
    np.testing.assert_allclose(scales[:2], V_MAX / (max_abs[:2] + correction[:2]), rtol=1e-5)
    assert scales[2] == 1.0  # never finished: rewards stay raw
    scalar = np.asarray(normalize.scale(state, V_MAX, 0.5))
    np.testing.assert_allclose(scalar[:2], V_MAX / (max_abs[:2] + 0.5), rtol=1e-5)
    assert scalar[2] == 1.0


def test_max_abs_return_never_decreases():
    rewards = np.zeros((4, 1, 2), np.float32)
    rewards[:2, 0, 0] = [5.0, 4.0]  # a large episode ending at step 1
    rewards[:, 0, 1] = [0.3, 0.2, 0.4, 0.1]
    terminal = np.zeros_like(rewards, bool)
    terminal[1, 0, 0] = terminal[3, 0, 0] = terminal[3, 0, 1] = True
    state = _run(rewards, terminal, np.zeros_like(terminal))
    np.testing.assert_allclose(state.max_abs_return, [5.0 + GAMMA * 4.0], rtol=1e-6)


def test_a_late_sparse_reward_is_floored_by_its_own_size():
    """Freeway under random play: one reward of 1 late in a long episode. Its discounted episode return is gamma^t,
    tiny; without the floor the scale would be v_max / gamma^t and the scaled reward far outside the support."""
    gamma, length = 0.99, 2500
    rewards = np.zeros(length, np.float32)
    rewards[1800] = 1.0
    state = _run(*_single_episode(rewards, terminal=False, truncated=True), gamma=gamma)
    np.testing.assert_allclose(state.max_abs_return, [gamma**1800 + gamma**length / length / (1 - gamma)], rtol=1e-3)
    assert float(state.max_abs_return[0]) < 1e-6
    np.testing.assert_allclose(normalize.return_range(state), [1.0])
    np.testing.assert_allclose(normalize.scale(state, V_MAX, 0.0), [V_MAX], rtol=1e-6)


def test_the_reward_floor_counts_unfinished_episodes_and_negative_rewards():
    rewards = np.zeros((5, 1, 2), np.float32)
    rewards[:, 0, 0] = [0.1, 0.1, 0.0, 0.0, 0.1]
    rewards[3, 0, 1] = -4.0  # in an episode that has not ended
    terminal = np.zeros_like(rewards, bool)
    terminal[4, 0, 0] = True
    state = _run(rewards, terminal, np.zeros_like(terminal))
    np.testing.assert_allclose(state.max_abs_return, [0.1 + GAMMA * 0.1 + GAMMA**4 * 0.1], rtol=1e-5)
    np.testing.assert_allclose(state.max_abs_reward, [4.0])
    np.testing.assert_allclose(normalize.scale(state, V_MAX, 1.0), [V_MAX / 5.0], rtol=1e-6)


def test_a_zero_return_range_keeps_the_raw_scale():
    rewards = np.zeros((3, 1, 1), np.float32)
    state = _run(*_single_episode(rewards.ravel(), terminal=True, truncated=False))
    assert bool(state.has_return[0]) and float(state.max_abs_return[0]) == 0.0
    assert float(normalize.scale(state, V_MAX, 0.0)[0]) == 1.0  # not inf
    np.testing.assert_allclose(normalize.scale(state, V_MAX, 2.0), [V_MAX / 2.0], rtol=1e-6)


def test_normalize_reward_broadcasts_the_task_scale():
    rng = np.random.default_rng(5)
    scale = jnp.asarray(rng.uniform(0.1, 3.0, size=3), jnp.float32)
    for shape in [(3,), (3, 4), (3, 4, 2)]:
        reward = jnp.asarray(rng.normal(size=shape), jnp.float32)
        out = normalize.normalize_reward(reward, scale)
        assert out.shape == shape and out.dtype == jnp.float32
        np.testing.assert_allclose(out, np.asarray(reward) * np.asarray(scale).reshape((3,) + (1,) * (len(shape) - 1)))
    with pytest.raises(AssertionError):
        normalize.normalize_reward(jnp.ones((2, 4)), scale)


def test_state_is_float32():
    state = _run(*_single_episode([1.0, 2.0], terminal=False, truncated=True))
    for name in ("discounted_return", "discount", "reward_sum", "max_abs_return", "max_abs_reward"):
        assert getattr(state, name).dtype == jnp.float32, name
    assert state.step_count.dtype == jnp.int32 and state.has_return.dtype == jnp.bool_

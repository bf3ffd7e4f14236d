"""Tests of the per-task return-range normaliser against a float64 NumPy port of the authors' `RewardNormalizer`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxmt import normalize

GAMMA = 0.97
V_MAX = 10.0


def _feed(state: normalize.NormalizerState, rewards, terminal, truncated, gamma) -> normalize.NormalizerState:
    """`update` over `[S, T, E]` step arrays in a scan, as the training loop calls it (one step per iteration)."""
    def step(state, inputs):
        return normalize.update(state, *inputs, gamma), None

    return jax.lax.scan(step, state, (rewards, terminal, truncated))[0]


# Compiled once per shape; gamma is traced, so its value does not recompile.
_feed_jit = jax.jit(_feed)


def _run(rewards, terminal, truncated, max_length: int, gamma: float = GAMMA) -> normalize.NormalizerState:
    _, num_tasks, envs_per_task = rewards.shape
    state = normalize.init(num_tasks, envs_per_task, max_length)
    return _feed_jit(state, jnp.asarray(rewards, jnp.float32), jnp.asarray(terminal), jnp.asarray(truncated),
                     jnp.float32(gamma))


def _reference(rewards, terminal, truncated, gamma: float = GAMMA):
    """The authors' variable-length `RewardNormalizer`, in float64, per env: reward lists, and at every episode end the
    backward recursion from `mean(r) / (1 - gamma)` (truncated, not terminal) or 0, folded into a running max/min.

    Returns (G [T], max_v [T], min_v [T], has_return [T], the open episodes' rewards [T][E])."""
    num_steps, num_tasks, envs_per_task = rewards.shape
    max_v = np.full(num_tasks, -np.inf)
    min_v = np.full(num_tasks, np.inf)
    episodes = [[[] for _ in range(envs_per_task)] for _ in range(num_tasks)]
    for s in range(num_steps):
        for t in range(num_tasks):
            for e in range(envs_per_task):
                episodes[t][e].append(float(rewards[s, t, e]))
                if not (terminal[s, t, e] or truncated[s, t, e]):
                    continue
                r = np.asarray(episodes[t][e], np.float64)
                values = np.zeros_like(r)
                bootstrap = r.mean() / (1.0 - gamma) if truncated[s, t, e] and not terminal[s, t, e] else 0.0
                for i in reversed(range(len(r))):
                    values[i] = r[i] + gamma * bootstrap
                    bootstrap = values[i]
                max_v[t] = max(max_v[t], values.max())
                min_v[t] = min(min_v[t], values.min())
                episodes[t][e] = []
    has_return = np.isfinite(max_v)
    g = np.where(has_return, np.maximum(max_v, np.abs(min_v)), 0.0)
    return g, max_v, min_v, has_return, episodes


def _assert_matches_reference(state, rewards, terminal, truncated, gamma=GAMMA, rtol=2e-5):
    """float32 against float64: relative to the range G (an extreme far below it, e.g. gamma^2400, carries the
    relative error of gamma's float32 rounding to the 2400th power, ~2e-5)."""
    g, max_v, min_v, has_return, episodes = _reference(rewards, terminal, truncated, gamma)
    np.testing.assert_array_equal(state.has_return, has_return)
    np.testing.assert_allclose(normalize.return_range(state), g, rtol=rtol)
    for t in np.flatnonzero(has_return):
        np.testing.assert_allclose([state.max_return[t], state.min_return[t]], [max_v[t], min_v[t]], rtol=rtol,
                                   atol=rtol * g[t])
    for t, task_episodes in enumerate(episodes):  # the open episodes carry over: their counts and rewards
        for e, r in enumerate(task_episodes):
            assert int(state.step_count[t, e]) == len(r)
            np.testing.assert_array_equal(np.asarray(state.history)[t, e, : len(r)], np.float32(r))
    return g


def _one_episode(rewards, terminal: bool, truncated: bool, num_steps: int = 16):
    """One task, one env: an episode ending at its last reward, then zero rewards of an open episode up to
    `num_steps` steps (so tests of different lengths share one compiled shape)."""
    n = len(rewards)
    padded = np.zeros((num_steps, 1, 1), np.float32)
    padded[:n, 0, 0] = rewards
    term, trunc = np.zeros_like(padded, bool), np.zeros_like(padded, bool)
    term[n - 1], trunc[n - 1] = terminal, truncated
    return padded, term, trunc


def _returns_to_go(rewards, bootstrap: float, gamma: float = GAMMA):
    values, after = [], bootstrap
    for r in reversed(rewards):
        after = r + gamma * after
        values.append(after)
    return np.asarray(values[::-1])


def test_terminated_episode_gives_the_range_of_its_returns_to_go():
    rewards = np.random.default_rng(0).uniform(0.5, 2.0, size=6)
    state = _run(*_one_episode(rewards, terminal=True, truncated=False), max_length=16)
    values = _returns_to_go(rewards, 0.0)
    np.testing.assert_allclose(state.max_return, [values.max()], rtol=1e-5)
    np.testing.assert_allclose(state.min_return, [values.min()], rtol=1e-5)  # the last step: r_5
    np.testing.assert_allclose(normalize.return_range(state), [values.max()], rtol=1e-5)
    assert bool(state.has_return[0])
    np.testing.assert_allclose(normalize.scale(state, V_MAX, 0.0), [V_MAX / values.max()], rtol=1e-5)


def test_truncated_episode_bootstraps_the_mean_reward():
    rewards = np.random.default_rng(1).uniform(0.5, 2.0, size=6)
    state = _run(*_one_episode(rewards, terminal=False, truncated=True), max_length=16)
    values = _returns_to_go(rewards, rewards.mean() / (1 - GAMMA))
    np.testing.assert_allclose(normalize.return_range(state), [values.max()], rtol=1e-5)
    np.testing.assert_allclose(state.min_return, [values.min()], rtol=1e-5)

    # An episode both terminal and truncated ended for real: no bootstrap.
    both = _run(*_one_episode(rewards, terminal=True, truncated=True), max_length=16)
    np.testing.assert_allclose(normalize.return_range(both), [_returns_to_go(rewards, 0.0).max()], rtol=1e-5)
    assert float(normalize.return_range(state)[0]) > 3 * float(normalize.return_range(both)[0])


def test_negative_returns_count_by_absolute_value():
    rewards = -np.random.default_rng(2).uniform(1.0, 3.0, size=5)
    for terminal, truncated in [(True, False), (False, True)]:
        state = _run(*_one_episode(rewards, terminal, truncated), max_length=16)
        values = _returns_to_go(rewards, rewards.mean() / (1 - GAMMA) if truncated else 0.0)
        assert values.max() < 0
        np.testing.assert_allclose(normalize.return_range(state), [-values.min()], rtol=1e-5)
        np.testing.assert_allclose(state.max_return, [values.max()], rtol=1e-5)


def test_a_late_reward_counts_from_the_step_that_earns_it():
    """Freeway under random play: one reward of 1 late in a 2500-step episode. The return from the episode's start
    is gamma^2400 ~ 3e-11 (a scale of ~1e11); the return-to-go at the crossing is about 1."""
    gamma, length = 0.99, 2500
    rewards = np.zeros(length, np.float32)
    rewards[2400] = 1.0
    for terminal, truncated in [(False, True), (True, False)]:
        stream = _one_episode(rewards, terminal, truncated, num_steps=length)
        state = _run(*stream, max_length=length, gamma=gamma)
        g = _assert_matches_reference(state, *stream, gamma=gamma, rtol=1e-5)
        tail = gamma**100 * rewards.mean() / (1 - gamma) if truncated else 0.0  # v_2400 = 1 + gamma^100 * b
        np.testing.assert_allclose(normalize.return_range(state), [1.0 + tail], rtol=1e-5)
        assert 1.0 <= g[0] < 1.02
        np.testing.assert_allclose(normalize.scale(state, V_MAX, 0.0), [V_MAX / (1.0 + tail)], rtol=1e-5)


def _random_stream(rng, num_steps: int, num_tasks: int, envs_per_task: int, max_length: int):
    """Per env, back-to-back episodes of random length in [1, max_length] (a third of them 1 to 5 steps), each ending
    terminal, truncated or both, with rewards of a random kind: dense positive, negative, mixed, sparse, late, early."""
    shape = (num_steps, num_tasks, envs_per_task)
    rewards = np.zeros(shape, np.float32)
    terminal, truncated = np.zeros(shape, bool), np.zeros(shape, bool)
    for t in range(num_tasks):
        for e in range(envs_per_task):
            start = 0
            while start < num_steps:
                n = int(rng.integers(1, 6) if rng.random() < 1 / 3 else rng.integers(1, max_length + 1))
                kind = rng.integers(6)
                if kind == 0:
                    r = rng.uniform(0.0, 1.0, n)
                elif kind == 1:
                    r = -rng.uniform(0.5, 2.0, n)
                elif kind == 2:
                    r = rng.normal(0.0, 3.0, n)
                elif kind == 3:
                    r = np.where(rng.random(n) < 0.01, rng.choice([-5.0, 2.0, 7.0], n), 0.0)
                elif kind == 4:
                    r = np.where(np.arange(n) >= 0.9 * n, 1.0, 0.0)
                else:
                    r = np.where(np.arange(n) < 3, rng.uniform(1.0, 4.0, n), 0.0)
                stop = min(start + n, num_steps)
                rewards[start:stop, t, e] = r[: stop - start]
                if start + n <= num_steps:
                    way = rng.integers(3)
                    terminal[start + n - 1, t, e] = way != 1
                    truncated[start + n - 1, t, e] = way != 0
                start += n
    return rewards, terminal, truncated


def test_random_streams_of_several_tasks_match_the_reference():
    """Three tasks x four envs over 3000 steps, episodes of 1 to 1000 steps ending at different steps, plus scripted
    ends: two envs of different tasks on the same step, episodes of one step at the stream start and back to back,
    every env at once (more than `_FEW_ENDED`: the chunked path)."""
    rewards, terminal, truncated = _random_stream(np.random.default_rng(6), 3000, 3, 4, 1000)
    terminal[0, 2, 1] = True  # a one-step episode at the stream start
    terminal[1500, 2, 1] = terminal[1501, 2, 1] = True  # and a one-step episode right after another
    truncated[1200, 0, 0] = truncated[1200, 1, 2] = True  # two envs (two tasks) end on the same step
    truncated[2500] = True  # every env at once
    state = _run(rewards, terminal, truncated, max_length=1000)
    g = _assert_matches_reference(state, rewards, terminal, truncated)
    assert (g > 0).all()
    lengths = np.diff(np.flatnonzero(np.concatenate([[True], (terminal | truncated)[:, 0, 0]])))
    assert lengths.max() > 500 and lengths.min() <= 5  # long and short episodes in one env


def test_chunk_sizes_do_not_change_the_result(monkeypatch):
    """One row per 'few' chunk and two rows per large chunk: 0, 1, 2, 3 and all 10 envs ending on one step all run
    through the chunk loops (several iterations for the large ones) and give the reference values."""
    max_length = 20
    rewards, terminal, truncated = _random_stream(np.random.default_rng(7), 120, 2, 5, max_length)
    terminal[60, 0, :3] = True
    truncated[90] = True
    monkeypatch.setattr(normalize, "_FEW_ENDED", 1)
    monkeypatch.setattr(normalize, "_CHUNK_ENTRIES", 2 * (max_length + 1))
    state = normalize.init(2, 5, max_length)
    # A fresh jit: the module-level one would reuse its compilation with the default chunk sizes.
    state = jax.jit(lambda *args: _feed(*args))(state, rewards, terminal, truncated, jnp.float32(GAMMA))
    _assert_matches_reference(state, rewards, terminal, truncated)


def test_vmapped_over_seeds_equals_separate_runs():
    """Seeds with different streams (and a different number of ended episodes on the same step, so the chunk loops
    run different counts under vmap) give exactly what each gives alone."""
    streams = [_random_stream(np.random.default_rng(10 + seed), 150, 2, 3, 30) for seed in range(3)]
    streams[0][1][100] = True  # seed 0: all six envs end at step 100; seed 1: one
    streams[1][1][100, 1, 2] = True
    stacked = [np.stack(arrays, axis=1) for arrays in zip(*streams)]  # [S, seeds, T, E]
    states = jax.tree.map(lambda leaf: jnp.stack([leaf] * 3), normalize.init(2, 3, 30))
    batched = jax.jit(jax.vmap(_feed, in_axes=(0, 1, 1, 1, None)))(states, *stacked, jnp.float32(GAMMA))
    for seed, stream in enumerate(streams):
        alone = _run(*stream, max_length=30)
        jax.tree.map(lambda b, a: np.testing.assert_array_equal(b[seed], a), batched, alone)
        _assert_matches_reference(alone, *stream)


def test_a_new_episode_ignores_the_stale_rewards_of_the_last():
    """Counters reset where an episode ends; the row is not zeroed, and its stale entries past the new episode's
    length must not leak into the new episode's returns-to-go."""
    first = _run(*_one_episode(np.full(5, -100.0), terminal=True, truncated=False), max_length=16)
    np.testing.assert_allclose(first.max_return, [-100.0])  # an episode of five steps: max v = v_4 = -100
    rewards = np.zeros((16, 1, 1), np.float32)
    rewards[:5, 0, 0] = -100.0
    rewards[5:7, 0, 0] = 1.0  # then one of two: v = [1 + gamma, 1]
    terminal = np.zeros_like(rewards, bool)
    terminal[4] = terminal[6] = True
    state = _run(rewards, terminal, np.zeros_like(terminal), max_length=16)
    np.testing.assert_allclose(state.max_return, [1.0 + GAMMA], rtol=1e-5)
    _assert_matches_reference(state, rewards, terminal, np.zeros_like(terminal))


def test_counters_and_rows_restart_where_episodes_end():
    rng = np.random.default_rng(3)
    rewards = rng.uniform(-2.0, 2.0, size=(12, 3, 3)).astype(np.float32)
    terminal = np.zeros((12, 3, 3), bool)
    truncated = np.zeros((12, 3, 3), bool)
    terminal[2, 0, 1] = True
    truncated[2, 1, 2] = True
    ended = terminal[2] | truncated[2]
    state = _run(rewards, terminal, truncated, max_length=16)
    np.testing.assert_array_equal(state.step_count, np.where(ended, 9, 12))
    start = np.where(ended, 3, 0)
    for t in range(3):
        for e in range(3):  # each row holds its open episode from position 0
            np.testing.assert_array_equal(state.history[t, e, : 12 - start[t, e]], rewards[start[t, e] :, t, e])


def test_an_episode_longer_than_the_history_stays_in_its_row():
    """Task 0's env runs 7 steps with room for 4: no error, nothing written outside its row, and its returns-to-go
    are those of its first 4 rewards bootstrapped with their mean. Task 1 is unaffected."""
    max_length = 4
    rewards = np.zeros((7, 2, 1), np.float32)
    rewards[:, 0, 0] = np.arange(1, 8)
    rewards[:, 1, 0] = [0.5, -1.0, 2.0, 0.3, 0.1, 0.2, 0.4]
    terminal, truncated = np.zeros_like(rewards, bool), np.zeros_like(rewards, bool)
    truncated[6, 0, 0] = True
    terminal[2, 1, 0] = terminal[5, 1, 0] = True
    state = _run(rewards, terminal, truncated, max_length=max_length)
    assert state.history.shape == (2, 1, max_length + 1)
    kept = np.arange(1.0, max_length + 1)
    values = _returns_to_go(kept, kept.mean() / (1 - GAMMA))
    np.testing.assert_allclose([state.max_return[0], state.min_return[0]], [values.max(), values.min()], rtol=1e-5)
    np.testing.assert_array_equal(state.history[1, 0, :1], rewards[6:, 1, 0])  # task 1's open episode
    g, *_ = _reference(rewards[:, 1:], terminal[:, 1:], truncated[:, 1:])
    np.testing.assert_allclose(normalize.return_range(state)[1], g[0], rtol=1e-5)


def test_scripted_tasks_scale_by_their_own_range_and_an_unfinished_task_stays_raw():
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

    state = _run(rewards, terminal, truncated, max_length=16)
    g = _assert_matches_reference(state, rewards, terminal, truncated)
    np.testing.assert_array_equal(state.has_return, [True, True, False])
    assert g[2] == 0.0 and float(normalize.return_range(state)[2]) == 0.0

    correction = np.array([0.5, 2.0, 3.0], np.float32)
    scales = np.asarray(normalize.scale(state, V_MAX, correction))
    assert scales.dtype == np.float32
    np.testing.assert_allclose(scales[:2], V_MAX / (g[:2] + correction[:2]), rtol=1e-5)
    assert scales[2] == 0.0  # never finished: the authors' infinite denominator, rewards 0
    scalar = np.asarray(normalize.scale(state, V_MAX, 0.5))
    np.testing.assert_allclose(scalar[:2], V_MAX / (g[:2] + 0.5), rtol=1e-5)
    assert scalar[2] == 0.0


def test_the_range_is_a_running_max_and_min():
    """A large first episode sets max_v; a later, smaller one leaves it; a negative one extends min_v."""
    rewards = np.zeros((12, 3, 3), np.float32)  # task 0, envs 0 and 1 (the shape of the tests above)
    rewards[:2, 0, 0] = [5.0, 4.0]
    rewards[:6, 0, 1] = [0.3, 0.2, 0.4, 0.1, -1.0, -8.0]
    terminal = np.zeros_like(rewards, bool)
    terminal[1, 0, 0] = terminal[3, 0, 1] = terminal[5, 0, 1] = True
    state = _run(rewards, terminal, np.zeros_like(terminal), max_length=16)
    np.testing.assert_allclose(state.max_return[0], 5.0 + GAMMA * 4.0, rtol=1e-5)
    np.testing.assert_allclose(state.min_return[0], -1.0 - GAMMA * 8.0, rtol=1e-5)  # v_0 of the last episode
    np.testing.assert_allclose(normalize.return_range(state)[0], 5.0 + GAMMA * 4.0, rtol=1e-5)  # |min_v| < max_v
    _assert_matches_reference(state, rewards, terminal, np.zeros_like(terminal))


def test_before_any_episode_the_scale_is_zero():
    state = normalize.init(2, 3, 10)
    np.testing.assert_array_equal(normalize.scale(state, V_MAX, 0.5), [0.0, 0.0])
    np.testing.assert_array_equal(normalize.return_range(state), [0.0, 0.0])
    unfinished = _run(*_one_episode(np.ones(4), terminal=False, truncated=False), max_length=16)
    assert not bool(unfinished.has_return[0])
    np.testing.assert_array_equal(normalize.scale(unfinished, V_MAX, np.float32([0.5])), [0.0])


def test_a_zero_return_range_without_correction_has_scale_zero():
    state = _run(*_one_episode(np.zeros(3), terminal=True, truncated=False), max_length=16)
    assert bool(state.has_return[0]) and float(normalize.return_range(state)[0]) == 0.0
    assert float(normalize.scale(state, V_MAX, 0.0)[0]) == 0.0  # not inf
    np.testing.assert_allclose(normalize.scale(state, V_MAX, 2.0), [V_MAX / 2.0], rtol=1e-5)


def test_state_shapes_and_dtypes_and_bad_inputs():
    state = normalize.init(3, 4, 10)
    assert state.history.shape == (3, 4, 11) and state.history.dtype == jnp.float32
    assert state.step_count.shape == (3, 4) and state.step_count.dtype == jnp.int32
    for leaf in (state.max_return, state.min_return):
        assert leaf.shape == (3,) and leaf.dtype == jnp.float32
    assert state.has_return.shape == (3,) and state.has_return.dtype == jnp.bool_
    with pytest.raises(AssertionError):  # a [T, E] step of the wrong E
        normalize.update(state, jnp.ones((3, 5)), jnp.zeros((3, 5), bool), jnp.zeros((3, 5), bool), GAMMA)
    with pytest.raises(ValueError):
        normalize.init(3, 4, 0)
    # A per-task correction must have one entry per task: a [1] one would broadcast silently over 3 tasks.
    with pytest.raises(AssertionError):
        normalize.scale(state, V_MAX, jnp.ones(1))
    with pytest.raises(AssertionError):
        normalize.scale(state, V_MAX, jnp.ones((3, 1)))

"""Tests of the continuous Gymnax provider (`purejaxmt.envs.gymnax_continuous`: Pendulum-v1, MountainCarContinuous-v0;
CPU, tiny).

ONE program is compiled: `make("classic-continuous")` reset + a scan of `step` (about a second on a 2-core CPU),
with a short time limit so that it crosses resets, and one MountainCar env started next to the goal so that it
terminates at its first step. Every transition is compared with what Gymnax's own `step_env` makes of the env state
the rollout carried before that step, with the action scaled to the env's bounds.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxmt import envs
from purejaxmt.envs import gymnax_continuous

E = 4  # envs per task
EPISODE = 10  # time limit: the rollout crosses two of them
STEPS = 24
PENDULUM, MOUNTAIN_CAR = 0, 1
SCALE = {"Pendulum-v1": 2.0, "MountainCarContinuous-v0": 1.0}  # the action bounds are [-SCALE, SCALE]


def _upstream_step(name):
    """Gymnax's step_env (obs, state, reward, terminated) for Gymnax's own action, vmapped over [S, E]."""
    import gymnax

    upstream, params = gymnax.make(name)
    return jax.jit(jax.vmap(jax.vmap(lambda key, s, a: upstream.step_env(key, s, a, params)[:4])))


@pytest.fixture(scope="module")
def rollout():
    env = envs.make("classic-continuous", episode_length=EPISODE)

    def run(key, actions):
        state, _ = env.reset(key, E)
        # MountainCar env 0 starts next to the goal, moving towards it: it terminates at its first step.
        car = state.family_states[MOUNTAIN_CAR]
        car = car.replace(position=car.position.at[0, 0].set(0.44), velocity=car.velocity.at[0, 0].set(0.06))
        state = state.replace(family_states=(state.family_states[PENDULUM], car))

        def body(state, action):
            state, transition = env.step(state, action)
            return state, (transition, state)

        _, (transitions, states) = jax.lax.scan(body, state, actions)
        return state, transitions, states

    # Some actions beyond [-1, 1]: they are clipped to it before scaling.
    actions = np.random.default_rng(0).uniform(-1.2, 1.2, (STEPS, 2, E, 1)).astype(np.float32)
    initial, transitions, states = jax.tree.map(np.asarray, jax.jit(run)(jax.random.PRNGKey(0), actions))
    return env, actions, initial, transitions, states


def test_task_names_are_gymnax_continuous_classic_control():
    import gymnax
    from gymnax.environments import spaces

    continuous = []
    for name in gymnax.registered_envs:
        if name.endswith("-misc") or name == "MNISTBandit-bsuite":  # misc envs are not offered; MNIST downloads
            continue
        env, params = gymnax.make(name)
        if isinstance(env.action_space(params), spaces.Box):
            continuous.append(name)
    assert gymnax_continuous.task_names() == gymnax_continuous.CONTINUOUS_TASKS == tuple(continuous)
    assert envs.TASK_SETS["classic-continuous"] == ("Pendulum-v1", "MountainCarContinuous-v0")
    assert envs.resolve("classic-continuous") == envs.TASK_SETS["classic-continuous"]


def test_layout_and_spec(rollout):
    env = envs.make("classic-continuous")
    spec = env.spec
    assert spec.task_names == ("Pendulum-v1", "MountainCarContinuous-v0") and spec.num_tasks == 2
    assert spec.obs_shape == (3,) and spec.obs_dtype == np.float32
    assert not spec.action.discrete and spec.action.size == 1 and spec.action.mask.all()
    assert spec.episode_length == (200, 999)  # Gymnax's max_steps_in_episode
    assert [f.obs_shape for f in env.families] == [(3,), (2,)]
    for family in env.families:
        np.testing.assert_array_equal(family.low, [-SCALE[family.task_names[0]]])
        np.testing.assert_array_equal(family.high, [SCALE[family.task_names[0]]])
    assert rollout[0].spec.episode_length == (EPISODE, EPISODE)


def test_build_is_cheap():
    """No MuJoCo / MJX: building the continuous Gymnax tasks imports Gymnax only, and takes seconds (Gymnax's import
    included; the bound is loose for a loaded 2-core CPU)."""
    code = ("import sys, time; t = time.time(); from purejaxmt import envs; env = envs.make('classic-continuous'); "
            "seconds = time.time() - t; "
            "loaded = [m for m in ('mujoco_playground', 'mujoco') if m in sys.modules]; "
            "assert not loaded, f'make(classic-continuous) imported {loaded}'; "
            "assert seconds < 30, f'make(classic-continuous) took {seconds:.1f} s'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_transitions_equal_gymnax_step_env(rollout):
    env, actions, initial, transitions, states = rollout
    assert transitions.obs.dtype == transitions.next_obs.dtype == np.float32
    assert transitions.reward.dtype == np.float32
    np.testing.assert_array_equal(transitions.action, actions)  # recorded as given (the env clips a copy)
    for t, name in enumerate(env.task_names):
        # The family state before each step: the initial one, then the one after each step (reset where done).
        previous = jax.tree.map(lambda first, rest: np.concatenate([first[None], rest[:-1]])[:, 0],
                                initial.family_states[t], states.family_states[t])  # leaves [S, E]
        keys = jnp.zeros((STEPS, E, 2), jnp.uint32)  # both step_envs ignore their key
        applied = np.clip(actions[:, t], -1, 1) * SCALE[name]  # [S, E, 1]
        obs, _, reward, terminated = _upstream_step(name)(keys, previous, jnp.asarray(applied))
        size = env.families[t].obs_shape[0]
        np.testing.assert_allclose(transitions.next_obs[:, t, :, :size], obs, rtol=1e-6, atol=1e-6, err_msg=name)
        assert not transitions.next_obs[:, t, :, size:].any()  # zero padding (MountainCar's third entry)
        np.testing.assert_allclose(transitions.reward[:, t], reward, rtol=1e-6, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(transitions.terminal[:, t], terminated, err_msg=name)
    # The scaling matters: Pendulum's control cost and torque see 2a (a clipped action saturates at the bound).
    assert np.abs(actions[:, PENDULUM]).max() > 1


def test_terminal_truncated_and_auto_reset(rollout):
    env, actions, initial, transitions, states = rollout
    terminal, truncated = transitions.terminal, transitions.truncated  # [S, T, E]
    # MountainCar env 0 reaches the goal at step 0 (terminal: reward 100 minus its control cost, no bootstrap).
    expected_terminal = np.zeros_like(terminal)
    expected_terminal[0, MOUNTAIN_CAR, 0] = True
    np.testing.assert_array_equal(terminal, expected_terminal)
    a = actions[0, MOUNTAIN_CAR, 0, 0]
    np.testing.assert_allclose(transitions.reward[0, MOUNTAIN_CAR, 0], 100 - 0.1 * a ** 2, rtol=1e-6)
    final = transitions.next_obs[0, MOUNTAIN_CAR, 0]
    assert final[0] >= 0.45 and final[1] >= 0  # the true final observation, at the goal ...
    reset = states.obs[0, MOUNTAIN_CAR, 0]
    assert -0.6 <= reset[0] <= -0.4 and reset[1] == 0  # ... while the env acts next from a fresh reset
    np.testing.assert_array_equal(transitions.obs[1, MOUNTAIN_CAR, 0], reset)
    assert states.family_states[MOUNTAIN_CAR].time[0, 0, 0] == 0

    # The time limit truncates everything else (Pendulum never terminates; random MountainCar never arrives).
    expected_truncated = np.zeros_like(truncated)
    expected_truncated[[EPISODE - 1, 2 * EPISODE - 1]] = True
    expected_truncated[:, MOUNTAIN_CAR, 0] = False
    expected_truncated[[EPISODE, 2 * EPISODE], MOUNTAIN_CAR, 0] = True  # env 0 restarted one step later
    np.testing.assert_array_equal(truncated, expected_truncated)
    done = terminal | truncated
    np.testing.assert_array_equal(states.stats.finished, done)
    np.testing.assert_array_equal(states.stats.finished_length[EPISODE - 1, PENDULUM], EPISODE)
    np.testing.assert_allclose(states.stats.finished_return[EPISODE - 1, PENDULUM],
                               transitions.reward[:EPISODE, PENDULUM].sum(0), rtol=1e-5)
    # Where an episode was cut, next_obs is the physics' observation and the state a new reset (Gymnax's time 0).
    pendulum_time = states.family_states[PENDULUM].time[:, 0]  # [S, E]
    np.testing.assert_array_equal(pendulum_time[EPISODE - 1], 0)
    np.testing.assert_array_equal(pendulum_time[EPISODE - 2], EPISODE - 1)
    assert not np.allclose(states.obs[EPISODE - 1, PENDULUM], transitions.next_obs[EPISODE - 1, PENDULUM])
    assert not np.allclose(states.obs[EPISODE - 1, PENDULUM], initial.obs[PENDULUM])  # a new draw, not the first
    np.testing.assert_allclose(np.linalg.norm(states.obs[EPISODE - 1, PENDULUM, :, :2], axis=-1), 1, rtol=1e-6)


def test_actions_are_clipped_then_scaled():
    family, = gymnax_continuous.build(["Pendulum-v1"])
    keys = jax.random.split(jax.random.PRNGKey(1), 4).reshape(1, 4, 2)
    inner, _ = jax.jit(family.reset)(keys)
    step = jax.jit(family.step)
    ours = step(inner, jnp.array([[[-3.0], [-1.0], [0.25], [1.5]]]), keys)
    same = step(inner, jnp.array([[[-1.0], [-1.0], [0.25], [1.0]]]), keys)
    jax.tree.map(np.testing.assert_array_equal, ours, same)
    np.testing.assert_array_equal(np.asarray(ours[0].last_u)[0], [-2.0, -2.0, 0.5, 2.0])  # the torque applied
    with pytest.raises(ValueError, match=r"Unknown continuous Gymnax task 'CartPole-v1'.*'Pendulum-v1'"):
        gymnax_continuous.build(["CartPole-v1"])

"""Tests of the Gymnax provider (`purejaxmt.envs.gymnax_tasks`; CPU, tiny).

Compiling a MinAtar step takes seconds per game (Asterix and Freeway about 8 s each on a loaded 2-core CPU, and the
`TaskEnv` step holds each game's reset as well), so ONE MinAtar program is compiled: `make("minatar")` reset + a
scan of `step`, 2 envs per game. Its observations are compared with what Gymnax's own `get_obs` makes of the very
env states the rollout carries. The key plumbing (`[n, E]` keys into `reset_env`/`step_env`), terminal vs truncated
and auto-reset are checked on CartPole-v1 (compiles in about a second), the minimal action-set mapping on Breakout.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxmt import envs
from purejaxmt.envs import gymnax_tasks

E = 2  # envs per task in the MinAtar rollout
STEPS = 24  # random-action steps of the MinAtar rollout (Breakout with random actions usually ends within them)
CHANNELS = {"Breakout-MinAtar": 4, "Asterix-MinAtar": 4, "Freeway-MinAtar": 7, "SpaceInvaders-MinAtar": 6}
MINIMAL = {"Breakout-MinAtar": [0, 1, 3], "Asterix-MinAtar": [0, 1, 2, 3, 4], "Freeway-MinAtar": [0, 2, 4],
           "SpaceInvaders-MinAtar": [0, 1, 3, 5]}


def _upstream(name, **kwargs):
    import gymnax

    return gymnax.make(name, **kwargs)


def _tree_np(tree):
    return jax.tree.map(np.asarray, tree)


def _rollout_fn(env, envs_per_task):
    """jit(reset, then scan `step` over actions [S, T, E]) -> (initial state, transitions [S, ...], states [S, ...])."""

    def rollout(key, actions):
        state, _ = env.reset(key, envs_per_task)

        def body(state, action):
            state, transition = env.step(state, action)
            return state, (transition, state)

        _, (transitions, states) = jax.lax.scan(body, state, actions)
        return state, transitions, states

    return jax.jit(rollout)


@pytest.fixture(scope="module")
def minatar():
    env = envs.make("minatar")
    actions = np.random.default_rng(0).integers(0, 6, (STEPS, 4, E), dtype=np.int32)
    initial, transitions, states = _tree_np(_rollout_fn(env, E)(jax.random.PRNGKey(0), actions))
    return env, initial, transitions, states


@pytest.fixture(scope="module")
def cartpole_step():
    """The CartPole family and Gymnax's own env, with jitted family reset/step and upstream reset_env/step_env."""
    family, = gymnax_tasks.build(["CartPole-v1"])
    upstream, params = _upstream("CartPole-v1")
    upstream_reset = jax.jit(jax.vmap(jax.vmap(lambda key: upstream.reset_env(key, params))))
    upstream_step = jax.jit(jax.vmap(jax.vmap(lambda key, s, a: upstream.step_env(key, s, a, params)[:4])))
    return family, jax.jit(family.reset), jax.jit(family.step), upstream_reset, upstream_step


# -------------------------------------------------------------------------------------------------------------
# Registry and layout (no compiles)


def test_task_names_are_gymnax_discrete_envs():
    import gymnax
    from gymnax.environments import spaces

    discrete = []
    for name in gymnax.registered_envs:
        if name == "MNISTBandit-bsuite":  # its constructor downloads MNIST: not offered
            continue
        env, params = gymnax.make(name)
        if isinstance(env.action_space(params), spaces.Discrete):
            discrete.append(name)
    assert gymnax_tasks.task_names() == tuple(discrete)
    assert "Pendulum-v1" not in gymnax_tasks.task_names() and "Breakout-MinAtar" in gymnax_tasks.task_names()
    assert "Pendulum-v1" in envs.list_tasks()  # a continuous task of purejaxmt.envs.gymnax_continuous
    names = envs.list_tasks()
    assert "CartPole-v1" in names and "humanoid-stand" in names and "cartpole-swingup" in names
    assert envs.TASK_SETS["minatar"] == gymnax_tasks.MINATAR == tuple(CHANNELS)


def test_import_is_cheap():
    code = ("import sys, purejaxmt.envs.gymnax_tasks as g; g.task_names(); "
            "assert 'gymnax' not in sys.modules, 'importing the provider imported gymnax'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_make_minatar_imports_no_playground():
    """Building Gymnax tasks imports Gymnax only: never MuJoCo Playground or MuJoCo (seconds, and a GPU-minded
    stack nobody asked for)."""
    code = ("import sys; from purejaxmt import envs; env = envs.make('minatar'); "
            "assert env.task_names == envs.TASK_SETS['minatar'] and 'gymnax' in sys.modules; "
            "loaded = [m for m in ('mujoco_playground', 'mujoco') if m in sys.modules]; "
            "assert not loaded, f'make(minatar) imported {loaded}'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_minatar_layout_full_and_minimal_action_sets():
    env = envs.make("minatar")
    assert env.task_names == tuple(CHANNELS) and env.num_tasks == 4 and env.spec.action.discrete
    assert env.obs_shape == (10, 10, 7) and env.obs_dtype == np.uint8 and env.spec.action.size == 6
    assert env.spec.obs_shape == (10, 10, 7) and env.spec.obs_dtype == np.uint8
    assert env.spec.action.mask.shape == (4, 6) and env.spec.action.mask.all()
    assert env.episode_length == env.spec.episode_length == (1000, 1000, 2500, 1000)
    assert [f.obs_shape for f in env.families] == [(10, 10, c) for c in CHANNELS.values()]
    for family in env.families:
        np.testing.assert_array_equal(family.action_set, np.arange(6))

    minimal = envs.make("minatar", minimal_action_set=True)
    assert minimal.task_names == tuple(CHANNELS) and minimal.obs_shape == (10, 10, 7)
    counts = [len(ids) for ids in MINIMAL.values()]
    assert minimal.spec.action.size == max(counts) == 5
    expected_mask = np.arange(5)[None, :] < np.array(counts)[:, None]  # legal actions: the first n of each game
    np.testing.assert_array_equal(minimal.spec.action.mask, expected_mask)
    assert repr(minimal.spec.action) == "ActionSpec(discrete=True, size=5, legal actions per task=[3, 5, 3, 4])"
    for family in minimal.families:
        np.testing.assert_array_equal(family.action_set, MINIMAL[family.task_names[0]])

    other = envs.make("Freeway-MinAtar, Seaquest-MinAtar", episode_length=100, minimal_action_set=True)
    assert other.obs_shape == (10, 10, 10) and other.spec.action.size == 6 and other.episode_length == (100,) * 2
    np.testing.assert_array_equal(other.spec.action.mask.sum(1), [3, 6])
    assert envs.make("minatar", minimal_action_set=False).spec.action.mask.all()

    classic = envs.make("CartPole-v1,Acrobot-v1,MountainCar-v0")
    assert classic.obs_shape == (6,) and classic.obs_dtype == np.float32 and classic.spec.action.size == 3
    assert classic.episode_length == (500, 500, 200)
    np.testing.assert_array_equal(classic.spec.action.mask.sum(1), [2, 3, 3])


def test_errors():
    with pytest.raises(ValueError, match=r"Unknown task.*'Breakout-Minatar'.*'Breakout-MinAtar'"):
        envs.make("Breakout-Minatar")
    with pytest.raises(ValueError, match=r"Unknown task.*'Reacher-misc'.*'CartPole-v1'"):
        envs.make("Reacher-misc")  # Gymnax's continuous misc envs are not offered
    with pytest.raises(ValueError, match="Cannot mix discrete.*CartPole-v1.*continuous.*humanoid-stand"):
        envs.make("CartPole-v1,humanoid-stand")
    with pytest.raises(ValueError, match="Cannot mix discrete.*CartPole-v1.*continuous.*Pendulum-v1"):
        envs.make("CartPole-v1,Pendulum-v1")
    with pytest.raises(ValueError, match=r"Unknown Gymnax task 'Pendulum-v1'.*gymnax_continuous.*'CartPole-v1'"):
        gymnax_tasks.build(["Pendulum-v1"])
    with pytest.raises(ValueError, match="Duplicate.*Breakout-MinAtar"):
        envs.make("minatar,Breakout-MinAtar")
    # Env options reach only the providers that take them, and must apply to the requested tasks.
    with pytest.raises(ValueError, match=r"minimal_action_set=True.*\['humanoid-stand'.*gymnax_tasks"):
        envs.make("humanoid", minimal_action_set=True)
    with pytest.raises(ValueError, match=r"minimal_action_set=True applies to MinAtar games only.*CartPole-v1"):
        envs.make("CartPole-v1", minimal_action_set=True)
    with pytest.raises(ValueError, match=r"Env option frame_skip=4 .*no provider takes it"):
        envs.make("minatar", frame_skip=4)


# -------------------------------------------------------------------------------------------------------------
# MinAtar: padded observations equal Gymnax's own


def test_minatar_observations_equal_gymnax(minatar):
    env, initial, transitions, states = minatar
    assert initial.obs.shape == (4, E, 10, 10, 7) and initial.obs.dtype == np.uint8
    assert transitions.next_obs.dtype == np.uint8 and transitions.reward.dtype == np.float32
    assert transitions.action.shape == (STEPS, 4, E)
    assert not transitions.truncated.any()  # far from the time limits
    done = transitions.terminal | transitions.truncated  # [S, T, E]
    assert done[:, 0].any(), "expected a Breakout episode to end within the rollout (random actions)"
    for t, (name, channels) in enumerate(CHANNELS.items()):
        upstream, params = _upstream(name, use_minimal_action_set=False)
        gymnax_obs = jax.jit(jax.vmap(jax.vmap(lambda s: upstream.get_obs(s, params))))

        def check(obs, family_state, where=None, what=""):
            """obs [B, E, 10, 10, 7] (ours) vs Gymnax's get_obs of family_state (leaves [B, E, ...])."""
            expected = np.asarray(gymnax_obs(family_state))
            assert set(np.unique(expected)) <= {0.0, 1.0}, f"{name}: Gymnax obs not binary"
            where = np.ones(obs.shape[:2], bool) if where is None else where
            np.testing.assert_array_equal(obs[where][..., :channels], expected[where].astype(np.uint8),
                                          err_msg=f"{name} {what}")
            assert not obs[..., channels:].any(), f"{name} {what}: padding channels are not zero"

        check(initial.obs[t][None], initial.family_states[t], what="reset obs")  # family state leaves [1, E, ...]
        inner = jax.tree.map(lambda x: x[:, 0], states.family_states[t])  # [S, E, ...]
        # The obs to act on next is Gymnax's obs of the (already reset where done) state the env carries.
        check(states.obs[:, t], inner, what="state.obs")
        # Where the episode goes on, the transition's next_obs is that same state's obs.
        check(transitions.next_obs[:, t], inner, where=~done[:, t], what="next_obs")
        # The transition's obs is the previous step's state.obs.
        np.testing.assert_array_equal(transitions.obs[1:, t], states.obs[:-1, t])
        np.testing.assert_array_equal(transitions.obs[0, t], initial.obs[t])
        # Where an episode ended the state was reset: Gymnax's time counter restarts.
        np.testing.assert_array_equal(inner.time[done[:, t]], 0)
        assert (inner.time[~done[:, t]] > 0).all()


# -------------------------------------------------------------------------------------------------------------
# Key plumbing, illegal and minimal actions (family level, against Gymnax's reset_env / step_env)


def test_family_reset_and_step_equal_gymnax(cartpole_step):
    family, reset, step, upstream_reset, upstream_step = cartpole_step
    keys = jax.random.split(jax.random.PRNGKey(1), 6).reshape(1, 6, 2)
    inner, obs = reset(keys)
    expected_obs, expected_inner = upstream_reset(keys)
    np.testing.assert_array_equal(obs, expected_obs)
    jax.tree.map(np.testing.assert_array_equal, inner, expected_inner)
    assert len(np.unique(np.asarray(obs)[0, :, 0])) == 6  # every env got its own key
    assert family.num_actions == 2 and family.obs_dtype == np.float32 and family.episode_length == 500

    actions = jnp.array([[0, 1, 1, 0, 1, 0]], jnp.int32)
    step_keys = jax.random.split(jax.random.PRNGKey(2), 6).reshape(1, 6, 2)
    new_inner, new_obs, reward, terminal, truncated = step(inner, actions, step_keys)
    expected_obs, expected_inner, expected_reward, expected_terminal = upstream_step(step_keys, inner, actions)
    np.testing.assert_array_equal(new_obs, expected_obs)
    jax.tree.map(np.testing.assert_array_equal, new_inner, expected_inner)
    np.testing.assert_array_equal(reward, expected_reward)
    np.testing.assert_array_equal(terminal, expected_terminal)
    assert reward.dtype == jnp.float32 and terminal.dtype == bool and not truncated.any()

    # An illegal action (outside [0, num_actions)) is applied as action 0.
    illegal = step(inner, jnp.array([[5, -1, 2, 0, 7, 0]], jnp.int32), step_keys)[1]
    legal = step(inner, jnp.zeros((1, 6), jnp.int32), step_keys)[1]
    np.testing.assert_array_equal(illegal, legal)


def test_minimal_action_j_is_gymnax_full_action_set_id():
    full, = gymnax_tasks.build(["Breakout-MinAtar"])
    minimal, = gymnax_tasks.build(["Breakout-MinAtar"], minimal_action_set=True)
    assert (full.num_actions, minimal.num_actions) == (6, 3)
    keys = jax.random.split(jax.random.PRNGKey(3), 4).reshape(1, 4, 2)
    inner, _ = jax.jit(full.reset)(keys)
    minimal_actions = jnp.array([[0, 1, 2, 4]], jnp.int32)  # 4 is illegal: applied as 0 (no-op)
    full_actions = jnp.array([[0, 1, 3, 0]], jnp.int32)  # n, l, r, n
    ours = jax.jit(minimal.step)(inner, minimal_actions, keys)
    theirs = jax.jit(full.step)(inner, full_actions, keys)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    np.testing.assert_array_equal(np.asarray(ours[0].pos)[0], [4, 3, 5, 4])  # paddle: stay, left, right, stay


# -------------------------------------------------------------------------------------------------------------
# Terminal vs truncated and auto-reset (CartPole-v1, whose step ignores its key)


def test_cartpole_terminates_and_keeps_the_true_final_obs(cartpole_step):
    family, _, _, _, upstream_step = cartpole_step
    env = envs.make("CartPole-v1")
    steps, envs_per_task = 60, 8
    actions = np.random.default_rng(1).integers(0, 2, (steps, 1, envs_per_task), dtype=np.int32)
    initial, transitions, states = _tree_np(_rollout_fn(env, envs_per_task)(jax.random.PRNGKey(4), actions))
    terminal, truncated = transitions.terminal[:, 0], transitions.truncated[:, 0]  # [S, E]
    assert terminal.sum() >= envs_per_task and not truncated.any()  # random CartPole episodes last ~20 steps
    np.testing.assert_array_equal(transitions.reward, 1.0)

    # next_obs is Gymnax's step_env of the previous state: the true final observation where the episode ended.
    previous = jax.tree.map(lambda first, rest: np.concatenate([first[None], rest[:-1]]),
                            initial.family_states[0], states.family_states[0])  # [S, 1, E, ...]
    keys = jnp.zeros((steps, envs_per_task, 2), jnp.uint32)  # CartPole's step_env ignores its key
    expected_next_obs, _, _, expected_terminal = upstream_step(
        keys, jax.tree.map(lambda x: x[:, 0], previous), actions[:, 0])
    np.testing.assert_allclose(transitions.next_obs[:, 0], expected_next_obs, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(terminal, expected_terminal)
    final = transitions.next_obs[:, 0][terminal]
    assert ((np.abs(final[:, 0]) > 2.4) | (np.abs(final[:, 2]) > 12 * 2 * np.pi / 360)).all()
    # ... while the state holds a fresh reset observation (uniform in [-0.05, 0.05]) and a fresh Gymnax state.
    assert (np.abs(states.obs[:, 0][terminal]) <= 0.05).all()
    assert (states.family_states[0].time[:, 0][terminal] == 0).all()
    np.testing.assert_array_equal(states.stats.finished[:, 0], terminal)


def test_cartpole_time_limit_truncates(cartpole_step):
    family, _, _, _, upstream_step = cartpole_step
    episode_length, envs_per_task = 5, 4
    env = envs.make("CartPole-v1", episode_length=episode_length)
    assert env.episode_length == (episode_length,)
    actions = np.tile(np.array([1, 0], np.int32), 4)[:7, None, None] * np.ones((1, 1, envs_per_task), np.int32)
    initial, transitions, states = _tree_np(_rollout_fn(env, envs_per_task)(jax.random.PRNGKey(5), actions))
    truncated, terminal = transitions.truncated[:, 0], transitions.terminal[:, 0]
    assert not terminal.any()  # alternating pushes keep the pole up
    np.testing.assert_array_equal(truncated.all(axis=1), [False] * 4 + [True] + [False] * 2)
    assert not truncated[[0, 1, 2, 3, 5, 6]].any()
    np.testing.assert_array_equal(states.stats.finished_length[4, 0], episode_length)

    # The truncated transition's next_obs is the true 5th observation (not the reset one), and bootstraps from it.
    before = jax.tree.map(lambda x: x[3, 0], states.family_states[0])  # the state after step 4, leaves [E]
    expected, _, _, _ = upstream_step(jnp.zeros((1, envs_per_task, 2), jnp.uint32),
                                      jax.tree.map(lambda x: x[None], before), actions[4])
    np.testing.assert_allclose(transitions.next_obs[4, 0], np.asarray(expected)[0], rtol=1e-6, atol=1e-7)
    assert (np.abs(transitions.next_obs[4, 0][:, 1]) > 0.1).all()  # cart velocity after the push: not a reset obs
    assert (np.abs(states.obs[4, 0]) <= 0.05).all() and (states.family_states[0].time[4, 0] == 0).all()
    np.testing.assert_array_equal(transitions.obs[5, 0], states.obs[4, 0])

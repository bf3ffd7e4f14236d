"""Tests of the task-axis environments (CPU, tiny).

Compiling an MJX humanoid step takes about a minute on a small CPU, so ONE env is compiled for the physics tests:
the three humanoid tasks (one MJX model, vmapped) plus pendulum-swingup (a second family with a different
observation and action size and a random reset), 2 envs per task, one jitted rollout (reset + scan of `step`)
that every test below re-runs with other inputs. The registry, error, spec and toy-family tests compile no physics.
"""

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxmt import envs
from purejaxmt.envs import playground
from purejaxmt.envs.base import ActionSpec, EnvSpec, Family, TaskEnv

E = 2  # envs per task
EPISODE = 20  # a short time limit so that the rollout crosses a reset
STEPS = 24
FINAL = EPISODE - 2  # env 0 starts with length 1, so its episode ends at step index 18; env 1's at 19
HUMANOID_ROWS = (0, 1, 2)
PENDULUM = 3
PG_NAMES = ("HumanoidStand", "HumanoidWalk", "HumanoidRun")


@pytest.fixture(scope="module")
def mixed():
    env = envs.make("humanoid,pendulum-swingup", episode_length=EPISODE)

    def rollout(key, actions, length0, inject_nan):
        """reset, start some envs mid-episode (`length0`) or with NaN humanoid velocities, then scan `step`."""
        state, _ = env.reset(key, E)
        humanoid_state = state.family_states[0]
        data = humanoid_state.data
        data = data.replace(qvel=jnp.where(inject_nan[:PENDULUM, :, None], jnp.nan, data.qvel))
        state = state.replace(family_states=(humanoid_state.replace(data=data),) + state.family_states[1:],
                              stats=state.stats.replace(length=length0))

        def body(state, action):
            state, transition = env.step(state, action)
            return state, (transition, state)

        _, (transitions, states) = jax.lax.scan(body, state, actions)
        return state, transitions, states

    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (STEPS, 4, E, env.spec.action.size)).astype(np.float32)
    actions[:, HUMANOID_ROWS, 1] = actions[:, HUMANOID_ROWS, 0]  # humanoid env 1 is env 0's twin (see below)
    length0 = np.zeros((4, E), np.int32)
    length0[:, 0] = 1
    compiled = jax.jit(rollout)

    def run(key=0, actions=actions, length0=length0, inject_nan=np.zeros((4, E), bool)):
        return jax.tree.map(np.asarray, compiled(jax.random.PRNGKey(key), actions, length0, inject_nan))

    return env, run, actions


@pytest.fixture(scope="module")
def base_run(mixed):
    return mixed[1]()


def _rows(tree, row):
    """Select task row `row` of every `[N, T, E, ...]` leaf."""
    return jax.tree.map(lambda x: x[:, row] if isinstance(x, np.ndarray) and x.ndim >= 3 else x, tree)


def _humanoid_physics_data(states):
    """Post-step mjx Data per (step, task, env), [N, 3, E]. Where env 0's episode ended the state already holds
    the reset; its twin env 1 took the identical step from the identical state, so use env 1's data there."""

    def fix(x):
        if not isinstance(x, np.ndarray) or x.ndim < 3:
            return x
        x = x.copy()
        x[FINAL, :, 0] = x[FINAL, :, 1]
        return x

    return jax.tree.map(fix, states.family_states[0].data)


def test_layout(mixed):
    env = envs.make("humanoid")
    assert env.task_names == ("humanoid-stand", "humanoid-walk", "humanoid-run")
    spec = env.spec
    assert isinstance(spec, EnvSpec) and spec.task_names == env.task_names and spec.num_tasks == env.num_tasks == 3
    assert env.obs_shape == spec.obs_shape == (67,) and spec.obs_dtype == env.obs_dtype == np.float32
    assert not spec.action.discrete and spec.action.size == 21
    assert spec.action.mask.shape == (3, 21) and spec.action.mask.all()
    assert env.episode_length == spec.episode_length == (1000,) * 3
    assert len(env.families) == 1  # one MJX model for all three tasks
    for removed in ("action_size", "num_actions", "discrete", "action_mask"):  # the action layout is in the spec only
        assert not hasattr(env, removed), removed
    assert repr(env) == ("TaskEnv(tasks=['humanoid-stand', 'humanoid-walk', 'humanoid-run'], obs_shape=(67,), "
                         "obs_dtype=float32, action=ActionSpec(discrete=False, size=21, entries per task=[21, 21, "
                         "21]), episode_length=[1000, 1000, 1000])")

    env = mixed[0]
    assert env.task_names == ("humanoid-stand", "humanoid-walk", "humanoid-run", "pendulum-swingup")
    assert env.obs_shape == (67,) and env.spec.action.size == 21 and env.episode_length == (EPISODE,) * 4
    np.testing.assert_array_equal(env.spec.action.mask[PENDULUM], [True] + [False] * 20)
    assert env.spec.action.mask[:PENDULUM].all()


def test_humanoid_reward_and_obs_equal_playground(mixed, base_run):
    from mujoco_playground import registry

    _, _, actions = mixed
    _, transitions, states = base_run
    # The twin construction holds: envs 0 and 1 are in the identical state before env 0's final step.
    qpos = states.family_states[0].data.qpos
    np.testing.assert_array_equal(qpos[FINAL - 1, :, 0], qpos[FINAL - 1, :, 1])
    data = _humanoid_physics_data(states)
    checked = np.ones((STEPS, E), bool)
    checked[FINAL + 1, 1] = False  # env 1's final step has no twin
    for t, name in zip(HUMANOID_ROWS, PG_NAMES):
        pg = registry.load(name, config_overrides={"impl": "jax"})
        reward_fn = jax.jit(jax.vmap(jax.vmap(lambda d, a: pg._get_reward(d, a, {}, {}))))
        obs_fn = jax.jit(jax.vmap(jax.vmap(lambda d: pg._get_obs(d, {}))))
        data_t = _rows(data, t)
        expected_reward = np.asarray(reward_fn(data_t, actions[:, t]))
        expected_obs = np.asarray(obs_fn(data_t))
        np.testing.assert_allclose(transitions.reward[:, t][checked], expected_reward[checked], rtol=1e-5,
                                   atol=1e-7, err_msg=f"reward of {name}")
        np.testing.assert_allclose(transitions.next_obs[:, t][checked], expected_obs[checked], rtol=1e-5, atol=1e-5,
                                   err_msg=f"next_obs of {name}")
    # The rewards really differ per task (the traced speed selects stand / walk / run).
    assert np.all(transitions.reward[:, 0] > transitions.reward[:, 1])


def test_pendulum_reward_and_obs_equal_playground(mixed, base_run):
    from mujoco_playground import registry

    _, _, actions = mixed
    initial, transitions, states = base_run
    pg = registry.load("PendulumSwingup", config_overrides={"impl": "jax"})
    # States before each step: the initial state, then the state after each step. The family row is [1, E].
    before = jax.tree.map(lambda x0, xs: np.concatenate([x0[None], xs[:-1]])[:, 0],
                          initial.family_states[1], states.family_states[1])
    expected = jax.jit(jax.vmap(jax.vmap(pg.step)))(before, actions[:, PENDULUM, :, : pg.action_size])
    np.testing.assert_allclose(transitions.reward[:, PENDULUM], expected.reward, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(transitions.next_obs[:, PENDULUM, :, :3], expected.obs, rtol=1e-5, atol=1e-6)


def test_padding_and_padded_action_entries_are_ignored(mixed, base_run):
    _, run, actions = mixed
    initial, transitions, states = base_run
    for obs in (initial.obs[None], transitions.obs, transitions.next_obs, states.obs):
        assert not obs[:, PENDULUM, :, 3:].any()  # zero padding of the pendulum rows
        assert obs[:, PENDULUM, :, :3].any()
    assert not transitions.action[:, PENDULUM, :, 1:].any()  # the transition records the action as applied
    assert actions[:, PENDULUM, :, 1:].any()
    changed = actions.copy()
    changed[:, PENDULUM, :, 1:] = -actions[:, PENDULUM, :, 1:]
    for a, b in zip(jax.tree.leaves(base_run), jax.tree.leaves(run(actions=changed))):
        np.testing.assert_array_equal(a, b)


def test_auto_reset_and_time_limit(base_run):
    initial, transitions, states = base_run
    terminal, truncated, reward = transitions.terminal, transitions.truncated, transitions.reward
    expected_truncated = np.zeros_like(truncated)
    expected_truncated[FINAL, :, 0] = True
    expected_truncated[FINAL + 1, :, 1] = True
    np.testing.assert_array_equal(truncated, expected_truncated)
    assert not terminal.any()
    np.testing.assert_array_equal(states.stats.finished, expected_truncated)

    # next_obs at the final step is the physics' observation; the state's obs is a fresh reset observation.
    humanoid = list(HUMANOID_ROWS)
    reset_obs = initial.obs[humanoid, 0]  # the Playground humanoid reset is deterministic
    final_next_obs = transitions.next_obs[FINAL, humanoid, 0]
    np.testing.assert_allclose(final_next_obs, transitions.next_obs[FINAL, humanoid, 1], rtol=1e-5, atol=1e-5)
    assert np.abs(final_next_obs - reset_obs).max() > 1e-2
    np.testing.assert_array_equal(states.obs[FINAL, humanoid, 0], reset_obs)
    np.testing.assert_array_equal(states.family_states[0].data.qpos[FINAL, :, 0],
                                  initial.family_states[0].data.qpos[:, 0])
    np.testing.assert_array_equal(transitions.obs[FINAL + 1], states.obs[FINAL])  # acted on next
    # pendulum (random reset): the reset obs starts at rest, a new draw, not the final physics obs
    reset_pendulum, final_pendulum = states.obs[FINAL, PENDULUM, 0, :3], transitions.next_obs[FINAL, PENDULUM, 0, :3]
    assert reset_pendulum[2] == 0.0 and final_pendulum[2] != 0.0
    assert not np.allclose(reset_pendulum, initial.obs[PENDULUM, 0, :3])
    # Playground resets come from the reset pool drawn at `reset` (64 distinct pendulum starts), not the first state.
    pool_obs = initial.reset_pools[1][1][0]  # family 1 (pendulum), its obs, task row 0: [P, O]
    assert pool_obs.shape == (64, 67) and len(np.unique(pool_obs[:, :3], axis=0)) == 64
    assert np.any(np.all(pool_obs == states.obs[FINAL, PENDULUM, 0], axis=-1))

    # Episode statistics.
    stats = states.stats
    np.testing.assert_allclose(stats.finished_return[FINAL, :, 0], reward[: FINAL + 1, :, 0].sum(0), rtol=1e-5)
    np.testing.assert_array_equal(stats.finished_length[FINAL, :, 0], EPISODE)  # started at length 1
    np.testing.assert_allclose(stats.finished_return[FINAL + 1, :, 1], reward[: FINAL + 2, :, 1].sum(0), rtol=1e-5)
    np.testing.assert_array_equal(stats.finished_length[FINAL + 1, :, 1], EPISODE)
    np.testing.assert_allclose(stats.return_[-1, :, 0], reward[FINAL + 1:, :, 0].sum(0), rtol=1e-5)
    np.testing.assert_array_equal(stats.length[-1, :, 0], STEPS - FINAL - 1)
    assert not stats.nonfinite.any() and not stats.nonfinite_count.any()


def test_nonfinite_guard(mixed, base_run):
    _, run, _ = mixed
    inject = np.zeros((4, E), bool)
    inject[1, 0] = True  # humanoid-walk, env 0 starts with NaN velocities
    initial, transitions, states = run(length0=np.zeros((4, E), np.int32), inject_nan=inject)
    assert np.isnan(initial.family_states[0].data.qvel[1, 0]).all()

    for leaf in jax.tree.leaves((transitions, states.obs, states.stats)):
        if np.issubdtype(leaf.dtype, np.inexact):
            assert np.isfinite(leaf).all()
    assert np.isfinite(states.family_states[0].data.qvel).all()  # the bad env was reset

    assert transitions.terminal[0, 1, 0] and not transitions.truncated[0, 1, 0]
    assert transitions.reward[0, 1, 0] == 0.0
    np.testing.assert_array_equal(transitions.next_obs[0, 1, 0], initial.obs[1, 0])  # the previous obs
    np.testing.assert_array_equal(states.obs[0, 1, 0], initial.obs[1, 0])  # a fresh reset obs
    np.testing.assert_array_equal(states.stats.nonfinite[0], inject)
    assert not states.stats.nonfinite[1:].any()
    np.testing.assert_array_equal(states.stats.nonfinite_count[-1], [0, 1, 0, 0])
    assert states.stats.finished[0, 1, 0] and states.stats.finished_length[0, 1, 0] == 1
    assert states.stats.finished_return[0, 1, 0] == 0.0
    assert transitions.terminal.sum() == 1

    # Every other env is untouched (identical to the base rollout before the time limit).
    _, clean, _ = base_run
    np.testing.assert_array_equal(transitions.reward[:FINAL][:, ~inject], clean.reward[:FINAL][:, ~inject])


def test_determinism(mixed, base_run):
    _, run, _ = mixed
    for a, b in zip(jax.tree.leaves(base_run), jax.tree.leaves(run(key=0))):
        np.testing.assert_array_equal(a, b)
    _, transitions, _ = base_run
    _, other, _ = run(key=1)
    assert not np.allclose(other.obs[0, PENDULUM], transitions.obs[0, PENDULUM])  # pendulum's reset is random
    assert not np.allclose(transitions.obs[0, PENDULUM, 0], transitions.obs[0, PENDULUM, 1])  # and per env
    # An env reset after the time limit draws a new initial state, not its first one again.
    assert not np.allclose(transitions.obs[FINAL + 1, PENDULUM, 0], transitions.obs[0, PENDULUM, 0])
    # The humanoid reset is deterministic (Playground): the key does not change its rollout.
    np.testing.assert_array_equal(other.reward[:, :PENDULUM], transitions.reward[:, :PENDULUM])


# -------------------------------------------------------------------------------------------------------------
# Registry and errors (no compiles).


def test_dmc_small_and_task_names():
    env = envs.make("dmc-small")
    assert env.task_names == envs.TASK_SETS["dmc-small"] == ("cartpole-swingup", "cheetah-run", "walker-walk")
    assert env.obs_shape == (24,) and env.spec.action.size == 6 and env.episode_length == (1000,) * 3
    np.testing.assert_array_equal(env.spec.action.mask.sum(1), [1, 6, 6])
    names = envs.list_tasks()
    for name in ("ball-in-cup", "cartpole-swingup", "cheetah-run", "humanoid-run", "swimmer-swimmer6",
                 "acrobot-swingup-sparse", "point-mass"):
        assert name in names
    # Humanoid tasks share one family wherever they appear; the row order is the requested order.
    env = envs.make("humanoid-run, cartpole-swingup ,humanoid-stand")
    assert env.task_names == ("humanoid-run", "cartpole-swingup", "humanoid-stand")
    assert [f.task_names for f in env.families] == [("humanoid-run", "humanoid-stand"), ("cartpole-swingup",)]
    np.testing.assert_array_equal(env.spec.action.mask.sum(1), [21, 1, 21])


def test_playground_families_are_built_once_per_task_and_process(mixed):
    """A later env of the same tasks reuses their family (the loaded MJX model, the traced one-env reset and step);
    humanoid task sets have families of their own on one shared model and batched step; an env's time limit stays
    its own."""
    env = mixed[0]  # families: humanoid (stand, walk, run), pendulum-swingup
    other = envs.make("pendulum-swingup,humanoid-walk,humanoid-speed-4")
    assert other.families[0] is env.families[1]
    humanoid, other_humanoid = env.families[0], other.families[1]
    assert other_humanoid is not humanoid and other_humanoid.task_names == ("humanoid-walk", "humanoid-speed-4")
    assert other_humanoid.env is humanoid.env and other_humanoid._step_envs is humanoid._step_envs
    assert env.episode_length == (EPISODE,) * 4 and other.episode_length == (1000,) * 3


def test_errors():
    with pytest.raises(ValueError, match="Unknown task.*'humnoid-run'.*dmc-small.*humanoid-run"):
        envs.make("humnoid-run")
    with pytest.raises(ValueError, match="Empty task name"):
        envs.make("")
    with pytest.raises(ValueError, match="Empty task name"):
        envs.make("cartpole-swingup,,cheetah-run")
    with pytest.raises(ValueError, match="Duplicate.*cartpole-swingup"):
        envs.make("cartpole-swingup,cheetah-run,cartpole-swingup")
    with pytest.raises(ValueError, match="episode_length"):
        envs.make("cartpole-swingup", episode_length=0)
    env = envs.make("cartpole-swingup")
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="envs_per_task"):
            env.reset(jax.random.PRNGKey(0), bad)
        with pytest.raises(ValueError, match="reset_pool_size"):
            env.reset(jax.random.PRNGKey(0), 1, reset_pool_size=bad)
    with pytest.raises(ValueError, match="reset_pool_size must be a positive int, got 0"):
        TaskEnv(env.families, reset_pool_size=0)


def test_playground_task_list_is_playground_registry():
    """The literal task list (so that `resolve` need not import Playground) is Playground's DM Control registry."""
    from mujoco_playground import registry
    from mujoco_playground._src.dm_control_suite import humanoid as pg_humanoid

    assert playground.task_names() == playground.DM_CONTROL_TASKS
    assert playground.DM_CONTROL_TASKS == tuple(playground.kebab(n) for n in registry.dm_control_suite.ALL_ENVS)
    assert tuple(playground.playground_names()) == playground.DM_CONTROL_TASKS
    assert playground.HUMANOID_SPEEDS == {"humanoid-stand": 0.0, "humanoid-walk": pg_humanoid.WALK_SPEED,
                                          "humanoid-run": pg_humanoid.RUN_SPEED}


def test_resolve_gives_make_task_names_and_errors():
    assert envs.resolve("humanoid") == ("humanoid-stand", "humanoid-walk", "humanoid-run")
    assert envs.resolve(" dmc-small, humanoid-run") == ("cartpole-swingup", "cheetah-run", "walker-walk",
                                                        "humanoid-run")
    assert envs.resolve("minatar,CartPole-v1") == envs.TASK_SETS["minatar"] + ("CartPole-v1",)
    assert envs.resolve("classic-continuous,cartpole-swingup") == ("Pendulum-v1", "MountainCarContinuous-v0",
                                                                   "cartpole-swingup")
    assert envs.make("humanoid-run,cartpole-swingup").task_names == envs.resolve("humanoid-run,cartpole-swingup")
    for bad, match in (("humnoid-run", "Unknown task.*'humnoid-run'.*dmc-small.*humanoid-run"),
                       ("", "Empty task name"), ("cartpole-swingup,,cheetah-run", "Empty task name"),
                       ("dmc-small,cheetah-run", r"Duplicate.*cheetah-run.*task sets expanded"),
                       ("CartPole-v1,humanoid-stand", "Cannot mix discrete.*CartPole-v1.*continuous.*humanoid-stand"),
                       (["humanoid"], "tasks must be a string")):
        with pytest.raises(ValueError, match=match):
            envs.resolve(bad)
        with pytest.raises(ValueError, match=match):
            envs.make(bad)


def test_resolve_imports_no_simulator():
    """`resolve` (and `list_tasks`) import the provider modules only: neither MuJoCo / Playground nor Gymnax."""
    code = ("import sys; from purejaxmt import envs; "
            "assert envs.resolve('minatar') == envs.TASK_SETS['minatar']; "
            "assert envs.resolve('humanoid') == envs.TASK_SETS['humanoid']; "
            "assert envs.resolve('classic-continuous') == envs.TASK_SETS['classic-continuous']; "
            "assert 'humanoid-run' in envs.list_tasks() and 'Pendulum-v1' in envs.list_tasks(); "
            "loaded = [m for m in ('mujoco_playground', 'mujoco', 'gymnax') if m in sys.modules]; "
            "assert not loaded, f'resolve imported {loaded}'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_spec_is_plain_validated_data():
    mask = np.array([[1, 1, 0], [1, 0, 0]], bool)
    action = ActionSpec(discrete=False, size=3, mask=mask)
    mask[1, 1] = True  # the spec holds its own copy ...
    np.testing.assert_array_equal(action.mask.sum(1), [2, 1])
    with pytest.raises(ValueError, match="read-only"):  # ... which is read-only
        action.mask[0, 2] = True
    spec = EnvSpec(task_names=["a", "b"], obs_shape=[4], obs_dtype="uint8", action=action,
                   episode_length=[10, np.int32(20)])
    assert spec.task_names == ("a", "b") and spec.obs_shape == (4,) and spec.obs_dtype == np.uint8
    assert spec.num_tasks == 2 and spec.episode_length == (10, 20) and type(spec.episode_length[1]) is int
    assert repr(action) == "ActionSpec(discrete=False, size=3, entries per task=[2, 1])"
    assert repr(ActionSpec(True, 2, [[1, 1]])) == "ActionSpec(discrete=True, size=2, legal actions per task=[2])"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.obs_shape = (5,)

    with pytest.raises(ValueError, match=r"mask must have shape \[T, size=4\], got \(2, 3\)"):
        ActionSpec(discrete=False, size=4, mask=mask)
    with pytest.raises(ValueError, match=r"task rows \[1\] no legal action"):
        ActionSpec(discrete=True, size=2, mask=[[1, 0], [0, 0]])
    with pytest.raises(ValueError, match="ActionSpec.size must be a positive int, got 0"):
        ActionSpec(discrete=True, size=0, mask=np.zeros((1, 0), bool))
    with pytest.raises(ValueError, match="ActionSpec.discrete must be a bool, got 'yes'"):
        ActionSpec(discrete="yes", size=1, mask=[[1]])
    with pytest.raises(ValueError, match=r"3 task rows, expected one per task of \['a', 'b'\]"):
        EnvSpec(("a", "b"), (4,), np.float32, ActionSpec(False, 1, [[1], [1], [1]]), (10, 10))
    with pytest.raises(ValueError, match=r"episode_length has 1 entries \[10\], expected one per task"):
        EnvSpec(("a", "b"), (4,), np.float32, action, (10,))
    with pytest.raises(ValueError, match="episode_length must hold positive ints, got \\(10, 0\\)"):
        EnvSpec(("a", "b"), (4,), np.float32, action, (10, 0))
    with pytest.raises(ValueError, match="task_names must be a non-empty sequence of strings"):
        EnvSpec((), (4,), np.float32, action, ())


# -------------------------------------------------------------------------------------------------------------
# TaskEnv mechanics on toy families (pure jnp, compile in well under a second).


class _Counter(Family):
    """obs = [step count, 10 * obs size + task index, 0...]; reward = the first action entry; terminal when the
    count reaches `end`; a NaN reward at count `nan_at`."""

    def __init__(self, names, obs_size, action_size, end=100, discrete=False, nan_at=None):
        self.task_names = tuple(names)
        self.obs_shape = (obs_size,)
        self.obs_dtype = np.float32
        if discrete:
            self.num_actions = action_size
        else:
            self.action_size = action_size
        self.episode_length = 1000
        self.end = end
        self.nan_at = nan_at
        self.offset = jnp.arange(len(names), dtype=jnp.float32)[:, None] + 10 * obs_size

    def _obs(self, count):
        obs = jnp.zeros(count.shape + self.obs_shape).at[..., 0].set(count)
        return obs.at[..., 1].set(jnp.broadcast_to(self.offset, count.shape))

    def reset(self, keys):
        count = jnp.zeros(keys.shape[:2], jnp.float32)
        return count, self._obs(count)

    def step(self, count, action, keys):
        count = count + 1
        reward = action[..., 0].astype(jnp.float32) if not self.discrete else action.astype(jnp.float32)
        if self.nan_at is not None:
            reward = jnp.where(count == self.nan_at, jnp.nan, reward)
        return count, self._obs(count), reward, count >= self.end, jnp.zeros(count.shape, bool)


def test_task_order_permutation_and_episode_ends():
    short = _Counter(["a", "b"], obs_size=3, action_size=2, end=4)
    long = _Counter(["c"], obs_size=5, action_size=1)
    env = TaskEnv([short, long], task_order=["a", "c", "b"], episode_length=6)
    assert env.obs_shape == (5,) and env.spec.action.size == 2 and not env.spec.action.discrete
    np.testing.assert_array_equal(env.spec.action.mask, [[1, 1], [1, 0], [1, 1]])
    state, obs = env.reset(jax.random.PRNGKey(0), 2)
    np.testing.assert_array_equal(obs[:, 0, 1], [30, 50, 31])  # rows in the requested order
    action = jnp.arange(3, dtype=jnp.float32)[:, None, None] * jnp.ones((3, 2, 2))
    step = jax.jit(env.step)
    for i in range(6):
        state, transition = step(state, action)
        np.testing.assert_array_equal(transition.reward[:, 0], [0, 1, 2])
        if i == 3:  # the short family terminates after 4 steps; the true final obs is kept
            np.testing.assert_array_equal(transition.terminal[:, 0], [True, False, True])
            np.testing.assert_array_equal(transition.next_obs[[0, 2], 0, 0], [4, 4])
            np.testing.assert_array_equal(state.obs[[0, 2], 0, 0], [0, 0])
            np.testing.assert_array_equal(state.stats.finished_return[:, 0], [0, 0, 8])
    # the long family is truncated by the time limit at step 6
    assert transition.truncated[1].all() and not transition.terminal[1].any()
    np.testing.assert_array_equal(state.stats.finished_return[1], [6, 6])
    np.testing.assert_array_equal(state.stats.finished_length[1], [6, 6])


def test_toy_nonfinite_reward():
    env = TaskEnv([_Counter(["a"], obs_size=2, action_size=1, nan_at=3)])
    state, _ = env.reset(jax.random.PRNGKey(0), 2)
    step = jax.jit(env.step)
    for _ in range(3):
        previous = state.obs
        state, transition = step(state, jnp.ones((1, 2, 1)))
    assert transition.terminal.all() and (transition.reward == 0).all()
    np.testing.assert_array_equal(transition.next_obs, previous)
    np.testing.assert_array_equal(state.stats.nonfinite_count, [2])
    np.testing.assert_array_equal(state.obs[..., 0], 0)


class _RandomStart(Family):
    """obs = a random start drawn at reset (then frozen); ends every `end` steps; counts its reset traces."""

    def __init__(self, pooled: bool, end: int = 2):
        self.task_names, self.obs_shape, self.obs_dtype, self.action_size = ("r",), (1,), np.float32, 1
        self.episode_length, self.pooled_reset, self.end, self.reset_traces = 1000, pooled, end, 0

    def reset(self, keys):
        self.reset_traces += 1
        start = jax.vmap(jax.vmap(lambda k: jax.random.uniform(k, (1,))))(keys)
        return (start, jnp.zeros(keys.shape[:2], jnp.int32)), start

    def step(self, inner, action, keys):
        start, count = inner
        count = count + 1
        return (start, count), start, jnp.zeros(count.shape), count >= self.end, jnp.zeros(count.shape, bool)


def test_reset_pool_restarts_from_pool_entries_and_keeps_resets_out_of_step():
    pooled, fresh = _RandomStart(pooled=True), _RandomStart(pooled=False)
    starts = {}
    for family in (pooled, fresh):
        env = TaskEnv([family], reset_pool_size=3)
        state, first = env.reset(jax.random.PRNGKey(0), 8)
        traces_after_reset = family.reset_traces
        step = jax.jit(env.step)
        seen = []
        for _ in range(20):
            state, transition = step(state, jnp.zeros((1, 8, 1)))
            seen.append(np.asarray(state.obs[0, :, 0])[np.asarray(transition.terminal[0])])
        starts[family.pooled_reset] = np.concatenate(seen)
        if family.pooled_reset:
            pool = np.asarray(state.reset_pools[0][1][0, :, 0])
            assert family.reset_traces == traces_after_reset  # the step program holds no reset
            assert len(np.unique(pool)) == 3 and not np.isin(first[0, :, 0], pool).any()
            assert np.isin(starts[True], pool).all() and len(np.unique(starts[True])) == 3  # every entry is used
        else:
            assert state.reset_pools == (None,) and family.reset_traces > traces_after_reset
    assert len(np.unique(starts[False])) == len(starts[False]) == 80  # fresh draws never repeat


def test_mixing_discrete_and_continuous_is_an_error():
    with pytest.raises(ValueError, match="Cannot mix discrete and continuous"):
        TaskEnv([_Counter(["a"], 2, 1), _Counter(["b"], 2, 4, discrete=True)])
    env = TaskEnv([_Counter(["a"], 2, 3, discrete=True), _Counter(["b"], 2, 4, discrete=True)])
    assert env.spec.action.discrete and env.spec.action.size == 4
    np.testing.assert_array_equal(env.spec.action.mask, [[1, 1, 1, 0], [1, 1, 1, 1]])

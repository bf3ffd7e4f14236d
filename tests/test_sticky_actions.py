"""Tests of MinAtar's sticky actions (`envs.make(..., sticky_actions=p)`, `purejaxmt.envs.gymnax_tasks`; CPU, tiny).

Breakout only (its step compiles in seconds). The executed action is observable: it is the `last_action` the family
state carries after each step (`StickyState`), and the p=1 test checks it is what Gymnax's `step_env` was given.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxmt import envs
from purejaxmt.envs import gymnax_tasks

GAME = "Breakout-MinAtar"


def _rollout(env, key, actions):
    """jit(reset, then scan `step` over actions [S, T, E]) -> (transitions [S, ...], states [S, ...])."""
    envs_per_task = actions.shape[-1]

    def rollout(key, actions):
        state, _ = env.reset(key, envs_per_task)

        def body(state, action):
            state, transition = env.step(state, action)
            return state, (transition, state)

        return jax.lax.scan(body, state, actions)[1]

    return jax.tree.map(np.asarray, jax.jit(rollout)(key, actions))


def test_errors():
    with pytest.raises(ValueError, match=r"sticky_actions=0.1 does not apply to tasks \['humanoid-stand'.*gymnax"):
        envs.make("humanoid", sticky_actions=0.1)
    with pytest.raises(ValueError, match=r"sticky_actions=0.1 applies to MinAtar games only.*CartPole-v1"):
        envs.make("CartPole-v1", sticky_actions=0.1)
    for bad in (-0.1, 1.5, float("nan"), True, "0.1", None):
        with pytest.raises(ValueError, match=r"sticky_actions must be a probability in \[0, 1\]"):
            gymnax_tasks.build([GAME], sticky_actions=bad)
    assert gymnax_tasks.build(["CartPole-v1"], sticky_actions=0)[0].sticky_actions == 0.0  # the default: no-op
    families = gymnax_tasks.build([GAME, "CartPole-v1"], sticky_actions=0.1)
    assert [f.sticky_actions for f in families] == [0.1, 0.0]  # MinAtar games only


def test_p0_is_bit_identical_to_no_option():
    actions = np.random.default_rng(0).integers(0, 6, (40, 1, 4), dtype=np.int32)
    key = jax.random.PRNGKey(0)
    plain = _rollout(envs.make(GAME), key, actions)
    zero = _rollout(envs.make(GAME, sticky_actions=0.0), key, actions)
    assert jax.tree.structure(plain) == jax.tree.structure(zero)  # no StickyState: checkpoints stay as they were
    jax.tree.map(np.testing.assert_array_equal, plain, zero)


def test_p1_executes_the_previous_action_as_gymnax_step_env():
    """p = 1: every step executes `last_action`, whatever the agent chose; the result is Gymnax's `step_env` with
    that action (on the first half of the env's step key; the second half draws the stick)."""
    import gymnax

    family, = gymnax_tasks.build([GAME], sticky_actions=1.0)
    upstream, params = gymnax.make(GAME, use_minimal_action_set=False)
    upstream_step = jax.jit(jax.vmap(jax.vmap(lambda k, s, a: upstream.step_env(k, s, a, params)[:4])))
    keys = jax.random.split(jax.random.PRNGKey(1), 6).reshape(1, 6, 2)
    inner, _ = jax.jit(family.reset)(keys)
    assert isinstance(inner, gymnax_tasks.StickyState)
    np.testing.assert_array_equal(inner.last_action, 0)  # no-op when the TaskEnv resets, as MinAtar's __init__
    inner = inner.replace(last_action=jnp.array([[0, 1, 3, 1, 3, 0]], jnp.int32))
    chosen = jnp.array([[3, 3, 1, 0, 1, 1]], jnp.int32)
    step_keys = jax.random.split(jax.random.PRNGKey(2), 6).reshape(1, 6, 2)
    new, obs, reward, terminal, _ = jax.jit(family.step)(inner, chosen, step_keys)
    gymnax_keys = jax.vmap(jax.vmap(lambda k: jax.random.split(k)[0]))(step_keys)
    expected_obs, expected_state, expected_reward, expected_terminal = upstream_step(
        gymnax_keys, inner.env_state, inner.last_action)
    jax.tree.map(np.testing.assert_array_equal, new.env_state, expected_state)
    np.testing.assert_array_equal(obs, np.asarray(expected_obs).astype(np.uint8))
    np.testing.assert_array_equal(reward, expected_reward)
    np.testing.assert_array_equal(terminal, expected_terminal)
    np.testing.assert_array_equal(new.last_action, inner.last_action)
    np.testing.assert_array_equal(np.asarray(new.env_state.pos)[0] - np.asarray(inner.env_state.pos)[0],
                                  [0, -1, 1, -1, 1, 0])  # the paddle follows last_action (n, l, r), not `chosen`


def test_stick_rate_carry_over_and_stored_action():
    """64 envs x 200 steps of random chosen actions at p = 0.1 (the original MinAtar's): the executed action is the
    chosen one or the previous executed one; where they differ, it is the previous one at rate p (binomial, 5 sigma);
    draws are per env; the previous action survives an episode's end (as in MinAtar, whose reset keeps it);
    `Transition.action` is the chosen action."""
    p, steps, envs_per_task = 0.1, 200, 64
    env = envs.make(GAME, sticky_actions=p)
    chosen = np.random.default_rng(2).integers(0, 6, (steps, 1, envs_per_task), dtype=np.int32)
    transitions, states = _rollout(env, jax.random.PRNGKey(3), chosen)
    np.testing.assert_array_equal(transitions.action, chosen)  # replay stores the agent's choice
    chosen = chosen[:, 0]
    executed = states.family_states[0].last_action[:, 0]  # [S, E]
    previous = np.concatenate([np.zeros((1, envs_per_task), np.int32), executed[:-1]])
    assert ((executed == chosen) | (executed == previous)).all()
    differ = previous != chosen
    stuck = differ & (executed == previous)
    rate, n = stuck.sum() / differ.sum(), differ.sum()
    assert abs(rate - p) < 5 * np.sqrt(p * (1 - p) / n), (rate, n)
    per_step = stuck.sum(1)
    assert ((per_step > 0) & (per_step < differ.sum(1))).any()  # envs draw on their own keys
    # Across episode ends: the first step of a new episode may repeat the ended episode's last (non-no-op) action.
    done = transitions.terminal[:, 0] | transitions.truncated[:, 0]
    first = np.concatenate([np.ones((1, envs_per_task), bool), done[:-1]])
    assert done.sum() > 100
    assert (stuck & first & (previous != 0))[1:].any()


def test_the_command_line_flag_reaches_the_env(capsys):
    """`--run.sticky-actions 0.1` (README, experiments/minatar_mt.py) gives the MinAtar family p = 0.1; without it
    the env is the plain Gymnax one."""
    from test_presets import SCRIPTS

    from purejaxmt import cli, runner

    presets = SCRIPTS["minatar_mt"].PRESETS
    command = cli.parse_command(presets, ["--preset", "cpu", "--tasks", GAME, "--run.sticky-actions", "0.1"])
    assert command.run.sticky_actions == 0.1
    sticky = runner.make_env(command.run)
    plain = runner.make_env(cli.parse_command(presets, ["--preset", "cpu", "--tasks", GAME]).run)
    state, _ = sticky.reset(jax.random.PRNGKey(0), 2)
    plain_state, _ = plain.reset(jax.random.PRNGKey(0), 2)
    assert "StickyState" in str(jax.tree_util.tree_structure(state))
    assert "StickyState" not in str(jax.tree_util.tree_structure(plain_state))
    with pytest.raises(SystemExit):
        cli.parse_command(presets, ["--preset", "cpu", "--run.sticky-actions", "1.5"])
    assert "sticky_actions=1.5" in capsys.readouterr().err  # tyro prints the config's error, wrapped

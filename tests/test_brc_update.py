"""The BRC learner on synthetic batches: learning signal, target update, gradient routing, temperature, seeds."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from purejaxmt import brc, nets, normalize

NUM_TASKS, PER_TASK, OBS_DIM, ACTION_DIM = 3, 16, 8, 3
CONFIG = brc.Config(critic_width=64, critic_depth=1, actor_width=32, num_bins=51, batch_size=NUM_TASKS * PER_TASK)


def make_batch(key: jax.Array) -> dict:
    k = jax.random.split(key, 5)
    shape = (NUM_TASKS * PER_TASK,)
    return {
        "task_id": jnp.repeat(jnp.arange(NUM_TASKS, dtype=jnp.int32), PER_TASK),
        "obs": jax.random.normal(k[0], (*shape, OBS_DIM)),
        "action": jax.random.uniform(k[1], (*shape, ACTION_DIM), minval=-1, maxval=1),
        "reward": jax.random.uniform(k[2], shape),
        "next_obs": jax.random.normal(k[3], (*shape, OBS_DIM)),
        "terminal": jax.random.bernoulli(k[4], 0.1, shape),
        "truncated": jnp.zeros(shape, bool),
    }


def make_state(seed: int = 0, config: brc.Config = CONFIG) -> brc.TrainState:
    return brc.init(jax.random.PRNGKey(seed), config, obs_dim=OBS_DIM, action_dim=ACTION_DIM, num_tasks=NUM_TASKS)


update = jax.jit(brc.update)


@pytest.fixture(scope="module")
def batch():
    return make_batch(jax.random.PRNGKey(42))


def fixed_critic_loss(state: brc.TrainState, batch: dict) -> float:
    loss, _ = brc.critic_loss(state.critic_params, state, batch, brc.reward_scale(state),
                              jax.random.PRNGKey(7))
    return float(loss)


def test_critic_loss_decreases_on_a_fixed_batch(batch):
    state = make_state()
    before = fixed_critic_loss(state, batch)

    def body(state, _):
        return update(state, batch)[0], None

    state, _ = jax.lax.scan(body, state, None, length=50)
    after = fixed_critic_loss(state, batch)
    assert np.isfinite(after)
    assert after < 0.8 * before, (before, after)


def test_target_params_move_by_exactly_tau(batch):
    state = make_state()
    new_state, _ = update(state, batch)
    expected = jax.tree.map(lambda online, target: CONFIG.tau * online + (1 - CONFIG.tau) * target,
                            new_state.critic_params, state.critic_target_params)
    jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7),
                 new_state.critic_target_params, expected)
    # And the online critic did move, so the check above is not vacuous.
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new_state.critic_params, state.critic_params)
    assert max(jax.tree.leaves(moved)) > 0


def test_task_embedding_is_trained_by_the_critic_loss_alone(batch):
    """After a full update the embedding table equals what the critic step alone makes of it: the actor step
    leaves it untouched (it reads the embedding through a stop-gradient)."""
    state = make_state()
    new_state, _ = update(state, batch)

    _, critic_key, _ = jax.random.split(state.key, 3)
    grads = jax.grad(lambda p: brc.critic_loss(p, state, batch, brc.reward_scale(state),
                                               critic_key)[0])(state.critic_params)
    optimizer = optax.adamw(CONFIG.learning_rate, weight_decay=CONFIG.weight_decay)
    updates, _ = optimizer.update(grads, optimizer.init(state.critic_params), state.critic_params)
    critic_only = optax.apply_updates(state.critic_params, updates)

    def embedding_table(params):
        tables = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                  if "embed" in jax.tree_util.keystr(path).lower()]
        assert len(tables) == 1, jax.tree_util.keystr(jax.tree_util.tree_leaves_with_path(params)[0][0])
        return tables[0]

    np.testing.assert_allclose(embedding_table(new_state.critic_params), embedding_table(critic_only), rtol=1e-6,
                               atol=1e-7)
    assert float(jnp.abs(embedding_table(new_state.critic_params) - embedding_table(state.critic_params)).max()) > 0

    # The actor loss has no gradient path into the embedding through the actor's input.
    critic, actor = brc._networks(CONFIG, ACTION_DIM, NUM_TASKS)

    def actor_input_path(critic_params):
        task_embedding = jax.lax.stop_gradient(critic.apply(critic_params, batch["task_id"], method=nets.Critic.embed))
        mean, _ = actor.apply(state.actor_params, batch["obs"], task_embedding)
        return mean.sum()

    grad = jax.grad(actor_input_path)(state.critic_params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grad))


def test_temperature_moves_toward_the_target_entropy(batch):
    """Initial policies are near-deterministic (entropy far below -|A|/2): alpha rises. With an unreachably low
    target, alpha falls."""
    def temperature_after(config):
        state = make_state(config=config)
        for _ in range(5):
            state, info = update(state, batch)
        return float(jnp.exp(state.log_temperature)), float(info["entropy"])

    alpha, entropy = temperature_after(CONFIG)
    assert entropy < CONFIG.target_entropy_per_dim * ACTION_DIM  # the premise: entropy below its target
    assert alpha > CONFIG.init_temperature
    low_target = dataclasses.replace(CONFIG, target_entropy_per_dim=-100.0)
    alpha, _ = temperature_after(low_target)
    assert alpha < CONFIG.init_temperature


def test_vmap_over_seeds_gives_independent_learners(batch):
    keys = jnp.stack([jax.random.PRNGKey(s) for s in range(3)])
    init = jax.vmap(lambda k: brc.init(k, CONFIG, obs_dim=OBS_DIM, action_dim=ACTION_DIM, num_tasks=NUM_TASKS))
    states = init(keys)
    states, info = jax.jit(jax.vmap(brc.update, in_axes=(0, None)))(states, batch)
    assert info["critic_loss"].shape == (3,)
    leaves = jax.tree.leaves(states.actor_params)
    for leaf in leaves:
        assert not np.allclose(leaf[0], leaf[1]) or leaf[0].size == 0 or np.all(leaf[0] == 0)
    kernel = max(leaves, key=lambda x: x.size)
    assert not np.allclose(kernel[0], kernel[1]) and not np.allclose(kernel[1], kernel[2])
    # Seed i of the vmapped program equals a single run with seed i.
    single, single_info = update(make_state(seed=1), batch)
    np.testing.assert_allclose(info["critic_loss"][1], single_info["critic_loss"], rtol=1e-5)
    jax.tree.map(lambda v, s: np.testing.assert_allclose(v[1], s, rtol=1e-4, atol=1e-6),
                 states.critic_params, single.critic_params)


def test_entropy_correction_is_a_non_negative_term_under_both_rules():
    """`fixed` adds alpha * (|A|/4) / (1 - gamma) to each task's return range, as the authors' normaliser does
    (`- alpha * target_entropy / 2 / (1 - gamma)` with the target -|A|/2); `policy` adds alpha * |H| / (1 - gamma)
    with H the policy's entropy, starting from the target entropy, and never shrinks the denominator."""
    state = make_state()
    returns = jnp.asarray([2.0, 5.0, 9.0])[:, None]  # one-step episodes: G_i = |r|
    ended = jnp.ones((NUM_TASKS, 1), bool)
    normalizer = jax.jit(normalize.update)(state.normalizer, returns, ended, ~ended, CONFIG.gamma)
    state = state.replace(normalizer=normalizer)
    alpha, horizon, g = CONFIG.init_temperature, 1.0 / (1.0 - CONFIG.gamma), np.array([2.0, 5.0, 9.0])

    def scale(rule, policy_entropy=None):
        s = state.replace(config=dataclasses.replace(CONFIG, entropy_correction=rule))
        if policy_entropy is not None:
            s = s.replace(policy_entropy=jnp.asarray(policy_entropy, jnp.float32))
        return np.asarray(brc.reward_scale(s))

    np.testing.assert_allclose(scale("none"), CONFIG.v_max / g, rtol=1e-5)
    np.testing.assert_allclose(scale("fixed"), CONFIG.v_max / (g + alpha * ACTION_DIM / 4 * horizon), rtol=1e-5)
    # Before any update the policy's entropy stands at its target, -|A|/2: a term of alpha * |A|/2 * horizon.
    np.testing.assert_allclose(state.policy_entropy, CONFIG.target_entropy_per_dim * ACTION_DIM)
    np.testing.assert_allclose(scale("policy"), CONFIG.v_max / (g + alpha * ACTION_DIM / 2 * horizon), rtol=1e-5)
    # A policy entropy of -|A|/4 (or +|A|/4) gives exactly the fixed rule's term.
    for entropy in (-ACTION_DIM / 4, ACTION_DIM / 4):
        np.testing.assert_allclose(scale("policy", entropy), scale("fixed"), rtol=1e-6)
    assert (scale("policy", -3.0) < scale("none")).all() and (scale("fixed") < scale("none")).all()


def test_config_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="tau=1.5"):
        brc.Config(tau=1.5)
    with pytest.raises(ValueError, match="compute_dtype='fp8'"):
        brc.Config(compute_dtype="fp8")
    with pytest.raises(ValueError, match="batch_size=2 is smaller than the number of tasks 3"):
        brc.init(jax.random.PRNGKey(0), dataclasses.replace(CONFIG, batch_size=2), obs_dim=OBS_DIM,
                 action_dim=ACTION_DIM, num_tasks=3)

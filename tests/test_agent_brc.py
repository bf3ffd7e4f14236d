"""The BRC agent on synthetic batches: learning signal, target update, gradient routing, temperature, seeds, the
entropy correction of the reward scale, and config errors. No env, replay or loop: the agent sees an `EnvSpec`."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from purejaxmt import nets, normalize
from purejaxmt.agents import brc
from purejaxmt.envs import ActionSpec, EnvSpec

NUM_TASKS, PER_TASK, OBS_DIM, ACTION_DIM, GAMMA = 3, 16, 8, 3, 0.99
SPEC = EnvSpec(task_names=("a", "b", "c"), obs_shape=(OBS_DIM,), obs_dtype=np.float32,
               action=ActionSpec(discrete=False, size=ACTION_DIM, mask=np.ones((NUM_TASKS, ACTION_DIM), bool)),
               episode_length=(50,) * NUM_TASKS)
CONFIG = brc.Config(critic_width=64, critic_depth=1, actor_width=32, num_bins=51)
AGENT = brc.Agent(CONFIG, SPEC)
HYPER = brc.Hyper.from_config(CONFIG)
REWARD_SCALE = jnp.asarray([1.0, 0.5, 2.0])  # not all ones: the scale must reach the target per task

update = jax.jit(AGENT.update)


@jax.jit
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
        "discount": jnp.full(shape, GAMMA, jnp.float32),
    }


def make_learner(seed: int = 0, hyper: brc.Hyper = HYPER) -> brc.Learner:
    # Op by op, as the runner does: a jitted init (eight LAPACK QR calls of the orthogonal initialisers in one
    # program) intermittently never finished executing on the 2-core CPU (jax 0.10.2).
    return AGENT.init(jax.random.PRNGKey(seed), hyper)


def step(learner: brc.Learner, batch: dict, key: jax.Array, num_updates: int = 0, hyper: brc.Hyper = HYPER):
    return update(learner, hyper, batch, REWARD_SCALE, key, jnp.asarray(num_updates, jnp.int32))


@pytest.fixture(scope="module")
def batch():
    return make_batch(jax.random.PRNGKey(42))


@jax.jit
def fixed_critic_loss(learner: brc.Learner, batch: dict) -> jax.Array:
    return AGENT.critic_loss(learner.critic_params, learner, batch, REWARD_SCALE, jax.random.PRNGKey(7))[0]


def test_critic_loss_decreases_on_a_fixed_batch(batch):
    learner = make_learner()
    before = float(fixed_critic_loss(learner, batch))

    for i, key in enumerate(jax.random.split(jax.random.PRNGKey(1), 50)):
        learner, _ = step(learner, batch, key, i)
    after = float(fixed_critic_loss(learner, batch))
    assert np.isfinite(after)
    assert after < 0.8 * before, (before, after)


def test_the_reward_scale_reaches_the_target_per_task(batch):
    """`REWARD_SCALE` scales each task's rewards by its own entry: the update's mean normalised reward is the mean of
    `reward * scale[task]`, and the loss differs from the unit scale's. (tests/test_references.py checks the whole
    target against a float64 reference.)"""
    learner, key = make_learner(), jax.random.PRNGKey(7)
    loss, info = jax.jit(AGENT.critic_loss)(learner.critic_params, learner, batch, REWARD_SCALE, key)
    expected = np.mean(np.asarray(batch["reward"]) * np.asarray(REWARD_SCALE)[np.asarray(batch["task_id"])])
    np.testing.assert_allclose(float(info["normalized_reward"]), expected, rtol=1e-6)
    unit_loss, _ = jax.jit(AGENT.critic_loss)(learner.critic_params, learner, batch, jnp.ones(NUM_TASKS), key)
    assert abs(float(loss) - float(unit_loss)) > 1e-4


def test_target_params_move_by_exactly_tau(batch):
    learner = make_learner()
    new_learner, info = step(learner, batch, jax.random.PRNGKey(1))
    assert set(info) >= {"critic_loss", "actor_loss", "entropy", "temperature", "q_mean"}
    expected = jax.tree.map(lambda online, target: CONFIG.tau * online + (1 - CONFIG.tau) * target,
                            new_learner.critic_params, learner.critic_target_params)
    jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7),
                 new_learner.critic_target_params, expected)
    # And the online critic did move, so the check above is not vacuous.
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new_learner.critic_params, learner.critic_params)
    assert max(jax.tree.leaves(moved)) > 0


def test_task_embedding_is_trained_by_the_critic_loss_alone(batch):
    """After a full update the embedding table equals what the critic step alone makes of it: the actor step
    leaves it untouched (it reads the embedding through a stop-gradient)."""
    learner, key = make_learner(), jax.random.PRNGKey(1)
    new_learner, _ = step(learner, batch, key)

    @jax.jit
    def critic_step_alone(learner):
        critic_key, _ = jax.random.split(key)  # the update's split: critic key first
        grads = jax.grad(lambda p: AGENT.critic_loss(p, learner, batch, REWARD_SCALE, critic_key)[0])(
            learner.critic_params)
        optimizer = optax.adamw(CONFIG.learning_rate, weight_decay=CONFIG.weight_decay)
        updates, _ = optimizer.update(grads, optimizer.init(learner.critic_params), learner.critic_params)
        return optax.apply_updates(learner.critic_params, updates)

    critic_only = critic_step_alone(learner)

    def embedding_table(params):
        tables = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                  if "embed" in jax.tree_util.keystr(path).lower()]
        assert len(tables) == 1, [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
        return tables[0]

    np.testing.assert_allclose(embedding_table(new_learner.critic_params), embedding_table(critic_only), rtol=1e-6,
                               atol=1e-7)
    assert float(jnp.abs(embedding_table(new_learner.critic_params)
                         - embedding_table(learner.critic_params)).max()) > 0

    # The actor loss has no gradient path into the embedding through the actor's input.
    def actor_input_path(critic_params):
        task_embedding = jax.lax.stop_gradient(
            AGENT.critic.apply(critic_params, batch["task_id"], method=nets.Critic.embed))
        mean, _ = AGENT.actor.apply(learner.actor_params, batch["obs"], task_embedding)
        return mean.sum()

    grad = jax.jit(jax.grad(actor_input_path))(learner.critic_params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grad))


def test_temperature_moves_toward_the_target_entropy(batch):
    """Initial policies are near-deterministic (entropy far below -|A|/2): alpha rises. With an unreachably low
    target, alpha falls. The target is data (`Hyper`): one compiled update serves both."""
    def temperature_after(hyper):
        learner = make_learner(hyper=hyper)
        for i, key in enumerate(jax.random.split(jax.random.PRNGKey(1), 5)):
            learner, info = step(learner, batch, key, i, hyper)
        return float(jnp.exp(learner.log_temperature)), float(info["entropy"])

    alpha, entropy = temperature_after(HYPER)
    assert entropy < CONFIG.target_entropy_per_dim * ACTION_DIM  # the premise: entropy below its target
    assert alpha > CONFIG.init_temperature
    low_target = brc.Hyper.from_config(dataclasses.replace(CONFIG, target_entropy_per_dim=-100.0))
    alpha, _ = temperature_after(low_target)
    assert alpha < CONFIG.init_temperature


def test_vmap_over_seeds_gives_independent_learners(batch):
    """The seeds' learners stacked on a runs axis (the vmapped init is `test_offpolicy`'s), one vmapped update."""
    num_seeds = 3
    update_keys = jax.random.split(jax.random.PRNGKey(100), num_seeds)
    learners = jax.tree.map(lambda *xs: jnp.stack(xs), *[make_learner(seed) for seed in range(num_seeds)])
    vmapped_update = jax.jit(jax.vmap(AGENT.update, in_axes=(0, None, None, None, 0, None)))
    learners, info = vmapped_update(learners, HYPER, batch, REWARD_SCALE, update_keys, jnp.zeros((), jnp.int32))
    assert info["critic_loss"].shape == (num_seeds,)
    leaves = jax.tree.leaves(learners.actor_params)
    for leaf in leaves:
        assert not np.allclose(leaf[0], leaf[1]) or leaf[0].size == 0 or np.all(leaf[0] == 0)
    kernel = max(leaves, key=lambda x: x.size)
    assert not np.allclose(kernel[0], kernel[1]) and not np.allclose(kernel[1], kernel[2])
    # Seed i of the vmapped program equals a single run with seed i.
    single, single_info = step(make_learner(seed=1), batch, update_keys[1])
    np.testing.assert_allclose(info["critic_loss"][1], single_info["critic_loss"], rtol=1e-5)
    jax.tree.map(lambda v, s: np.testing.assert_allclose(v[1], s, rtol=1e-4, atol=1e-6),
                 learners.critic_params, single.critic_params)
    jax.tree.map(lambda v, s: np.testing.assert_allclose(v[1], s, rtol=1e-4, atol=1e-6),
                 learners.actor_params, single.actor_params)


def test_entropy_correction_is_a_non_negative_term_under_both_rules():
    """`fixed` adds alpha * (|A|/4) / (1 - gamma) to each task's return range, as the authors' normaliser does
    (`- alpha * target_entropy / 2 / (1 - gamma)` with the target -|A|/2); `policy` adds alpha * |H| / (1 - gamma)
    with H the policy's entropy, starting from the target entropy, and never shrinks the denominator."""
    learner = make_learner()
    returns = jnp.asarray([2.0, 5.0, 9.0])[:, None]  # one-step episodes: G_i = |r|
    ended = jnp.ones((NUM_TASKS, 1), bool)
    normalizer = normalize.init(NUM_TASKS, 1, max_episode_length=50)
    normalizer = jax.jit(normalize.update)(normalizer, returns, ended, ~ended, GAMMA)
    alpha, horizon, g = CONFIG.init_temperature, 1.0 / (1.0 - GAMMA), np.array([2.0, 5.0, 9.0])

    def scale(rule, policy_entropy=None):
        agent = brc.Agent(dataclasses.replace(CONFIG, entropy_correction=rule), SPEC)
        state = learner if policy_entropy is None else learner.replace(
            policy_entropy=jnp.asarray(policy_entropy, jnp.float32))
        correction = agent.reward_correction(state, HYPER, jnp.asarray(GAMMA, jnp.float32))
        assert (np.asarray(correction) >= 0).all(), (rule, policy_entropy, correction)
        return np.asarray(normalize.scale(normalizer, agent.v_max, correction))

    np.testing.assert_allclose(scale("none"), CONFIG.v_max / g, rtol=1e-5)
    np.testing.assert_allclose(scale("fixed"), CONFIG.v_max / (g + alpha * ACTION_DIM / 4 * horizon), rtol=1e-5)
    # Before any update the policy's entropy stands at its target, -|A|/2: a term of alpha * |A|/2 * horizon.
    np.testing.assert_allclose(learner.policy_entropy, CONFIG.target_entropy_per_dim * ACTION_DIM)
    np.testing.assert_allclose(scale("policy"), CONFIG.v_max / (g + alpha * ACTION_DIM / 2 * horizon), rtol=1e-5)
    # A policy entropy of -|A|/4 (or +|A|/4) gives exactly the fixed rule's term.
    for entropy in (-ACTION_DIM / 4, ACTION_DIM / 4):
        np.testing.assert_allclose(scale("policy", entropy), scale("fixed"), rtol=1e-6)
    assert (scale("policy", -3.0) < scale("none")).all() and (scale("fixed") < scale("none")).all()


def test_observation_statistics_equal_float64_numpy_over_uneven_batches():
    """The running merge of batches of 1, 5, 64 and 300 observations (means far from 0, scales from 1e-3 to 1e3)
    equals NumPy's float64 mean and population variance of all of them at once."""
    rng = np.random.default_rng(0)
    scales, offsets = 10.0 ** rng.uniform(-3, 3, OBS_DIM), rng.uniform(-50, 50, OBS_DIM)
    batches = [rng.normal(size=(n, OBS_DIM)) * scales + offsets for n in (1, 5, 64, 300)]
    merge = jax.jit(brc.observation_statistics)
    mean, var, count = jnp.zeros(OBS_DIM), jnp.ones(OBS_DIM), jnp.zeros(())
    for obs in batches:
        mean, var, count = merge(mean, var, count, jnp.asarray(obs, jnp.float32))
    everything = np.concatenate(batches).astype(np.float32).astype(np.float64)
    assert float(count) == len(everything)
    # float32 sums: the means to 1e-6 of their size; the variances of dims whose mean is up to 3e4 spreads from 0
    # (a spread of 1e-3 around 30) to 1e-3.
    np.testing.assert_allclose(mean, everything.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(var, everything.var(axis=0), rtol=1e-3)


def test_normalised_observations_make_the_update_invariant_to_their_scale(batch):
    """With `normalize_observations` on, an update on observations `a * obs + b` (per-dimension a, b) gives the same
    learner as on `obs`, and the actor then acts alike on the transformed inputs; with it off they differ. The
    statistics are kept either way."""
    a = jnp.asarray(np.random.default_rng(1).uniform(0.01, 100.0, OBS_DIM), jnp.float32)
    b = jnp.asarray(np.random.default_rng(2).uniform(-20.0, 20.0, OBS_DIM), jnp.float32)
    moved = {**batch, "obs": batch["obs"] * a + b, "next_obs": batch["next_obs"] * a + b}
    act = jax.jit(AGENT.act)
    key = jax.random.PRNGKey(3)
    for on in (True, False):
        hyper = brc.Hyper.from_config(dataclasses.replace(CONFIG, normalize_observations=on))
        plain, _ = step(make_learner(hyper=hyper), batch, key, hyper=hyper)
        scaled, _ = step(make_learner(hyper=hyper), moved, key, hyper=hyper)
        np.testing.assert_allclose(scaled.obs_mean, plain.obs_mean * a + b, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(scaled.obs_var, plain.obs_var * a**2, rtol=1e-3)
        params = (plain.actor_params, plain.critic_params), (scaled.actor_params, scaled.critic_params)
        close = jax.tree.leaves(jax.tree.map(lambda x, y: np.allclose(x, y, rtol=1e-3, atol=1e-4), *params))
        obs = batch["obs"].reshape(NUM_TASKS, PER_TASK, OBS_DIM)
        actions = act(plain, hyper, obs, key, None), act(scaled, hyper, obs * a + b, key, None)
        if on:
            assert all(close)
            np.testing.assert_allclose(*actions, atol=1e-4)
        else:
            assert not all(close)
            assert not np.allclose(*actions, atol=1e-2)


def test_config_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="tau=1.5"):
        brc.Config(tau=1.5)
    with pytest.raises(ValueError, match="compute_dtype='fp8'"):
        brc.Config(compute_dtype="fp8")
    with pytest.raises(ValueError, match="entropy_correction='auto'"):
        brc.Config(entropy_correction="auto")
    with pytest.raises(ValueError, match=r"critic_width=0 must be >= 1"):
        brc.Config(critic_width=0)
    discrete = dataclasses.replace(SPEC, action=ActionSpec(discrete=True, size=2, mask=np.ones((NUM_TASKS, 2), bool)))
    with pytest.raises(ValueError, match=r"tasks \['a', 'b', 'c'\] are discrete: use purejaxmt.agents.brc_discrete"):
        brc.Agent(CONFIG, discrete)
    with pytest.raises(ValueError, match=r"obs_shape=\(6, 6, 3\)"):
        brc.Agent(CONFIG, dataclasses.replace(SPEC, obs_shape=(6, 6, 3)))

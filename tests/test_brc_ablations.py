"""The paper's two ablations of continuous BRC, as `brc.Config` switches: `critic_loss="mse"` (scalar Q heads, squared
soft-TD error, against a float64 NumPy reference) and `task_conditioning="one_hot" | "none"` (only the task input
changes); config errors; and the shared loop still builds (traced with `jax.eval_shape`, nothing run) with each."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxmt import envs, nets, offpolicy
from purejaxmt.agents import brc
from purejaxmt.envs import ActionSpec, EnvSpec

NUM_TASKS, PER_TASK, OBS_DIM, ACTION_DIM, GAMMA, EMBED_DIM = 3, 8, 6, 3, 0.99, 8
ACTION_MASK = np.array([[True, True, True], [True, True, False], [True, False, False]])  # padded actions too
SPEC = EnvSpec(task_names=("a", "b", "c"), obs_shape=(OBS_DIM,), obs_dtype=np.float32,
               action=ActionSpec(discrete=False, size=ACTION_DIM, mask=ACTION_MASK), episode_length=(50,) * NUM_TASKS)
CONFIG = brc.Config(critic_width=32, critic_depth=1, actor_width=16, num_bins=21, embed_dim=EMBED_DIM)
MSE = brc.Agent(dataclasses.replace(CONFIG, critic_loss="mse"), SPEC)
HYPER = brc.Hyper.from_config(CONFIG)
REWARD_SCALE = jnp.asarray([1.0, 0.5, 2.0])


@pytest.fixture(scope="module")
def batch() -> dict:
    """Random inputs everywhere: rewards of both signs, some terminals, per-row discounts gamma^m (n-step)."""
    rng = np.random.default_rng(0)
    size = NUM_TASKS * PER_TASK
    task_id = np.repeat(np.arange(NUM_TASKS), PER_TASK)
    action = rng.uniform(-1, 1, (size, ACTION_DIM)) * ACTION_MASK[task_id]
    return jax.tree.map(jnp.asarray, {
        "task_id": task_id.astype(np.int32),
        "obs": rng.standard_normal((size, OBS_DIM)).astype(np.float32),
        "action": action.astype(np.float32),
        "reward": rng.normal(0.0, 2.0, size).astype(np.float32),
        "next_obs": rng.standard_normal((size, OBS_DIM)).astype(np.float32),
        "terminal": rng.random(size) < 0.3,
        "truncated": np.zeros(size, bool),
        "discount": (GAMMA ** rng.integers(1, 4, size)).astype(np.float32),
    })


@pytest.fixture(scope="module")
def mse_learner() -> brc.Learner:
    """An mse learner whose target critic differs from the online one (a mix-up would show), with alpha 0.3."""
    learner = MSE.init(jax.random.PRNGKey(0), HYPER)  # op by op, as in test_agent_brc
    noise_keys = iter(jax.random.split(jax.random.PRNGKey(1), len(jax.tree.leaves(learner.critic_params))))
    target = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(noise_keys), x.shape), learner.critic_params)
    return learner.replace(critic_target_params=target, log_temperature=jnp.log(jnp.float32(0.3)))


def sample_policy(agent: brc.Agent, learner: brc.Learner, obs, task_id, key):
    """a ~ pi(s) and log pi(a|s), from the actor network and `nets.sample_tanh_gaussian` directly."""
    task_input = agent.critic.apply(learner.critic_params, task_id, method=nets.Critic.embed)
    mean, log_std = agent.actor.apply(learner.actor_params, obs, task_input)
    return nets.sample_tanh_gaussian(key, mean, log_std, agent.action_mask[task_id])


# -------------------------------------------------------------------------------------------- critic_loss="mse"


def test_mse_critic_loss_matches_a_float64_reference(mse_learner, batch):
    """loss = sum_m mean_b (Q_m(s, a) - y)^2 with y = r_scaled + d (mean_m Q'_m(s', a') - alpha log pi(a'|s')),
    d = discount (1 - terminal); the target is a constant for the gradient."""
    learner, key = mse_learner, jax.random.PRNGKey(7)

    @jax.jit
    def network_outputs(learner):
        next_action, next_log_prob = sample_policy(MSE, learner, batch["next_obs"], batch["task_id"], key)
        target = MSE.critic.apply(learner.critic_target_params, batch["next_obs"], next_action, batch["task_id"])
        online = MSE.critic.apply(learner.critic_params, batch["obs"], batch["action"], batch["task_id"])
        return target, online, next_log_prob

    target_q, online_q, next_log_prob = (np.asarray(x, np.float64) for x in network_outputs(learner))
    assert target_q.shape == online_q.shape == (CONFIG.num_critics, NUM_TASKS * PER_TASK, 1)  # scalar heads
    b = {name: np.asarray(value, np.float64) for name, value in batch.items()}
    alpha = float(np.exp(np.float64(learner.log_temperature)))
    reward = b["reward"] * np.asarray(REWARD_SCALE, np.float64)[batch["task_id"]]
    y = reward + b["discount"] * (1.0 - b["terminal"]) * (target_q[..., 0].mean(axis=0) - alpha * next_log_prob)
    expected = ((online_q[..., 0] - y) ** 2).mean(axis=-1).sum()

    loss_and_grad = jax.jit(jax.value_and_grad(MSE.critic_loss, has_aux=True))
    (loss, info), grads = loss_and_grad(learner.critic_params, learner, batch, REWARD_SCALE, key)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(info["q_mean"]), online_q[..., 0].mean(), rtol=1e-5, atol=1e-6)
    # Premise of the comparison: the terms are all of a size that matters.
    assert np.abs(alpha * next_log_prob).mean() > 0.1 and np.abs(target_q).mean() > 0.1 and b["terminal"].any()

    # The gradient is that of the squared error with y held fixed: the target is under stop_gradient.
    y_fixed = jnp.asarray(y, jnp.float32)
    fixed_target_grads = jax.jit(jax.grad(lambda p: jnp.square(
        MSE.critic.apply(p, batch["obs"], batch["action"], batch["task_id"])[..., 0] - y_fixed).mean(-1).sum()))(
        learner.critic_params)
    jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6), grads,
                 fixed_target_grads)


def test_mse_updates_reduce_the_loss_on_a_fixed_batch(mse_learner, batch):
    update = jax.jit(MSE.update)
    fixed_loss = jax.jit(lambda learner: MSE.critic_loss(learner.critic_params, learner, batch, REWARD_SCALE,
                                                         jax.random.PRNGKey(7))[0])
    learner = mse_learner
    before = float(fixed_loss(learner))
    for i, key in enumerate(jax.random.split(jax.random.PRNGKey(2), 30)):
        learner, info = update(learner, HYPER, batch, REWARD_SCALE, key, jnp.asarray(i, jnp.int32))
    after = float(fixed_loss(learner))
    assert set(info) >= {"critic_loss", "actor_loss", "q_mean", "entropy", "temperature"}
    assert all(np.isfinite(float(value)) for value in info.values()), info
    assert after < 0.9 * before, (before, after)
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(learner.actor_params),
                                                          jax.tree.leaves(mse_learner.actor_params))]
    assert max(moved) > 0


def test_mse_actor_loss_uses_the_ensemble_mean_scalar_head(mse_learner, batch):
    """alpha log pi(a|s) - mean_m Q_m(s, a), a ~ pi(s), against the same terms in float64."""
    learner, key = mse_learner, jax.random.PRNGKey(11)

    @jax.jit
    def terms(learner):
        action, log_prob = sample_policy(MSE, learner, batch["obs"], batch["task_id"], key)
        return MSE.critic.apply(learner.critic_params, batch["obs"], action, batch["task_id"]), log_prob

    q_members, log_prob = (np.asarray(x, np.float64) for x in terms(learner))
    assert q_members.shape[-1] == 1 and np.abs(q_members[0] - q_members[1]).max() > 1e-3  # two distinct heads
    alpha = float(np.exp(np.float64(learner.log_temperature)))
    expected = (alpha * log_prob - q_members[..., 0].mean(axis=0)).mean()
    loss, info = jax.jit(MSE.actor_loss)(learner.actor_params, learner, batch, key)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(info["entropy"]), -log_prob.mean(), rtol=1e-5)


# ------------------------------------------------------------------------------------------------ task conditioning


@pytest.fixture(scope="module")
def conditioned():
    """One agent and learner per task conditioning, all from the same key."""
    agents = {kind: brc.Agent(dataclasses.replace(CONFIG, task_conditioning=kind), SPEC)
              for kind in nets.TASK_CONDITIONINGS}
    return {kind: (agent, agent.init(jax.random.PRNGKey(3), HYPER)) for kind, agent in agents.items()}


def test_conditionings_differ_only_in_the_task_input(conditioned):
    """With identical keys the learners (parameters, targets, optimiser states) hold the same leaves, equal bit for
    bit, except the embedding table (only "embedding" has one) and the first layers' kernels, whose input rows are
    [obs, action, task input] (critic) and [obs, task input] (actor). Orthogonal init of a kernel of another shape
    differs in every entry, so those kernels differ as a whole."""
    task_input_size = {"embedding": EMBED_DIM, "one_hot": NUM_TASKS, "none": 0}
    leaves = {kind: {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(learner)}
              for kind, (_, learner) in conditioned.items()}
    first_kernel = "['Dense_0']['kernel']"
    reference = leaves["embedding"]
    for kind in ("one_hot", "none"):
        missing = set(reference) - set(leaves[kind])
        assert missing and all("task_embedding" in path for path in missing), missing
        assert set(leaves[kind]) <= set(reference), set(leaves[kind]) - set(reference)
        for path, leaf in leaves[kind].items():
            if path.endswith(first_kernel):
                continue
            np.testing.assert_array_equal(leaf, reference[path], err_msg=f"{kind}: {path}")
    for kind, kind_leaves in leaves.items():
        kernels = {path: leaf.shape for path, leaf in kind_leaves.items() if path.endswith(first_kernel)}
        # Critic (with Adam's mu and nu), target critic, actor (with mu and nu).
        assert len(kernels) == 7, kernels
        for path, shape in kernels.items():
            inputs = OBS_DIM + (0 if "actor" in path else ACTION_DIM) + task_input_size[kind]
            assert shape[-2] == inputs, (kind, path, shape)
    assert "task_embedding" in str(list(reference))


def test_one_hot_and_none_conditioning(conditioned, batch):
    """"one_hot" feeds eye(T)[task] and has no embedding parameters; "none" makes critic and actor ignore the task
    id (bit for bit); "one_hot" and "embedding" do not."""
    obs, action, task_id = batch["obs"], batch["action"], batch["task_id"]
    other_task = (task_id + 1) % NUM_TASKS

    def outputs(agent, learner, task_id):
        task_input = agent.critic.apply(learner.critic_params, task_id, method=nets.Critic.embed)
        return (agent.critic.apply(learner.critic_params, obs, action, task_id),
                agent.actor.apply(learner.actor_params, obs, task_input)[0], task_input)

    for kind, (agent, learner) in conditioned.items():
        critic_out, actor_out, task_input = jax.jit(functools.partial(outputs, agent))(learner, task_id)
        critic_other, actor_other, _ = jax.jit(functools.partial(outputs, agent))(learner, other_task)
        if kind == "none":
            assert task_input.shape == (len(task_id), 0)
            np.testing.assert_array_equal(critic_out, critic_other)
            np.testing.assert_array_equal(actor_out, actor_other)
        else:
            assert np.abs(np.asarray(critic_out - critic_other)).max() > 1e-4, kind
            assert np.abs(np.asarray(actor_out - actor_other)).max() > 1e-4, kind
        if kind == "one_hot":
            np.testing.assert_array_equal(task_input, np.eye(NUM_TASKS, dtype=np.float32)[task_id])
        assert ("task_embedding" in learner.critic_params["params"]) == (kind == "embedding"), kind


# ------------------------------------------------------------------------------------------------------ config


def test_bad_switch_values_name_the_field_and_the_choices():
    with pytest.raises(ValueError, match=r"critic_loss='huber'; choose 'categorical' or 'mse'"):
        brc.Config(critic_loss="huber")
    with pytest.raises(ValueError, match=r"task_conditioning='onehot'; choose 'embedding', 'one_hot' or 'none'"):
        brc.Config(task_conditioning="onehot")
    with pytest.raises(ValueError, match="conditioning='learned'"):
        obs = jnp.zeros((1, OBS_DIM))
        jax.eval_shape(nets.Critic(8, 1, 5, NUM_TASKS, conditioning="learned").init, jax.random.PRNGKey(0), obs,
                       jnp.zeros((1, ACTION_DIM)), jnp.zeros((1,), jnp.int32))


# ------------------------------------------------------------------------------------------------ the whole loop

LOOP = offpolicy.LoopConfig(envs_per_task=2, replay_capacity=64, batch_size=8, updates_per_step=1, random_steps=4,
                            total_steps=16, steps_per_chunk=8, eval_episodes=1)


@pytest.fixture(scope="module")
def two_task_env():
    return envs.make("Pendulum-v1,MountainCarContinuous-v0")


@pytest.mark.parametrize("critic_loss, task_conditioning",
                         [("mse", "embedding"), ("categorical", "one_hot"), ("mse", "none")])
def test_the_loop_builds_with_each_switch(two_task_env, critic_loss, task_conditioning):
    """init, train_chunk and evaluate trace (shapes only, nothing compiled or run) on a two-task env."""
    config = dataclasses.replace(CONFIG, critic_loss=critic_loss, task_conditioning=task_conditioning)
    program = offpolicy.make(brc.AGENT_SPEC, config, LOOP, two_task_env)
    state = jax.eval_shape(program.init, jax.random.PRNGKey(0), program.hyper)
    state_after, metrics = jax.eval_shape(program.train_chunk, state)
    jax.tree.map(lambda a, b: np.testing.assert_equal((a.shape, a.dtype), (b.shape, b.dtype)), state_after, state)
    assert metrics["critic_loss"].shape == metrics["q_mean"].shape == ()
    assert jax.eval_shape(program.evaluate, state, jax.random.PRNGKey(1))["return"].shape == (2,)

    members = state.learner.critic_params["params"]["members"]
    head = members[max((name for name in members if name.startswith("Dense_")), key=lambda n: int(n.split("_")[1]))]
    assert head["kernel"].shape[-1] == (1 if critic_loss == "mse" else CONFIG.num_bins)
    spec = two_task_env.spec
    task_input = {"embedding": EMBED_DIM, "one_hot": spec.num_tasks, "none": 0}[task_conditioning]
    assert members["Dense_0"]["kernel"].shape[-2] == spec.obs_shape[0] + spec.action.size + task_input

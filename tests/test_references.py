"""The method pinned by float64 NumPy references written from BRC.md and the authors' code (naumix/
BiggerRegularizedCategorical: `jaxrl/agent/update.py`, `jaxrl/normalizer.py`), not from ours.

Each reference takes only what the networks output (logits, Q heads, the actor's mean and log-std, read through the
agents' Flax modules, which tests/test_nets.py covers) and the sampling noise (the same `jax.random.normal` draw),
and computes everything the method adds in float64: the tanh-Gaussian log-prob, the soft-TD categorical target with
its C51 projection (the authors' floor/ceil form), the cross-entropy / squared-error losses, the actor and
temperature losses, the double-Q target of discrete BRC, the return range G_i of every task and the reward scale
`V_max / (G_i + alpha |A_i| / 4 / (1 - gamma))`. The agents' float32 results must agree to float32 precision.

The batches are chosen so that a slip shows: random (not zero) parameters, a target critic that differs from the
online one, ensemble members that differ, terminal rows, truncated rows (which must bootstrap), n-step discounts,
three tasks with different reward scales and action counts, scaled rewards beyond the support, a temperature that
is not the initial one. Small networks: the whole file runs in seconds (mutation testing reruns it).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxmt import nets, normalize
from purejaxmt.agents import brc, brc_discrete
from purejaxmt.envs import ActionSpec, EnvSpec

NUM_TASKS, PER_TASK, OBS_DIM, ACTION_DIM, GAMMA = 3, 8, 5, 3, 0.99
ROWS = NUM_TASKS * PER_TASK
# |A_i| = 3, 1, 2: not symmetric, so a sum over the wrong axis of the mask (the tasks' instead of the entries')
# gives other counts.
ACTION_MASK = np.array([[True, True, True], [True, False, False], [True, True, False]])
SPEC = EnvSpec(task_names=("a", "b", "c"), obs_shape=(OBS_DIM,), obs_dtype=np.float32,
               action=ActionSpec(discrete=False, size=ACTION_DIM, mask=ACTION_MASK), episode_length=(20,) * NUM_TASKS)
SMALL = dict(critic_width=32, critic_depth=1, actor_width=16, embed_dim=4, num_bins=21)
REWARD_SCALE = np.array([1.7, 0.3, 4.0], np.float32)
TEMPERATURE = 0.37
RTOL, ATOL = 1e-5, 1e-5


# ----------------------------------------------------------------------------------------------------------------------
# Float64 references
# ----------------------------------------------------------------------------------------------------------------------
def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def support_of(num_bins: int, v_max: float) -> np.ndarray:
    return np.linspace(-v_max, v_max, num_bins)  # the authors' bin_values


def c51_projection(atoms: np.ndarray, probs: np.ndarray, v_max: float) -> np.ndarray:
    """The authors' `update_critic` projection, row by row: clip to [-v_max, v_max], split each mass between
    floor and ceil of its position in bins; a position on a bin keeps all its mass."""
    rows, num_bins = probs.shape
    delta = 2 * v_max / (num_bins - 1)
    out = np.zeros((rows, num_bins))
    position = (np.clip(atoms, -v_max, v_max) + v_max) / delta
    for b in range(rows):
        for j in range(num_bins):
            lower, upper = math.floor(position[b, j]), math.ceil(position[b, j])
            lower_weight = upper + (lower == upper) - position[b, j]
            out[b, lower] += probs[b, j] * lower_weight
            out[b, upper] += probs[b, j] * (position[b, j] - lower)
    return out


def tanh_gaussian(mean: np.ndarray, log_std: np.ndarray, noise: np.ndarray, mask: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Action tanh(mean + std * noise) (0 where masked) and its log-prob over the task's own action entries."""
    mean, log_std, noise = (np.asarray(x, np.float64) for x in (mean, log_std, noise))
    pre_tanh = mean + np.exp(log_std) * noise
    action = np.tanh(pre_tanh)
    normal_log_density = -0.5 * ((pre_tanh - mean) / np.exp(log_std)) ** 2 - log_std - 0.5 * np.log(2 * np.pi)
    # log(1 - tanh(u)^2) = -2 log cosh(u), written so that it keeps float64 precision for large |u| (1 - tanh^2
    # itself cancels catastrophically once |u| > ~8).
    log_one_minus_tanh_sq = -2.0 * (np.abs(pre_tanh) + np.log1p(np.exp(-2.0 * np.abs(pre_tanh))) - np.log(2.0))
    log_prob = normal_log_density - log_one_minus_tanh_sq
    return np.where(mask, action, 0.0), np.where(mask, log_prob, 0.0).sum(axis=-1)


# ----------------------------------------------------------------------------------------------------------------------
# Continuous BRC
# ----------------------------------------------------------------------------------------------------------------------
def continuous_batch(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    task_id = np.repeat(np.arange(NUM_TASKS), PER_TASK)
    terminal = rng.random(ROWS) < 0.25
    truncated = ~terminal & (rng.random(ROWS) < 0.3)          # time-limit ends: they must still bootstrap
    terminal[0], truncated[1] = True, True
    discount = np.where(rng.random(ROWS) < 0.5, GAMMA, GAMMA**3)  # one-step and three-step rows
    action = np.where(ACTION_MASK[task_id], rng.uniform(-0.9, 0.9, (ROWS, ACTION_DIM)), 0.0)
    return {"task_id": jnp.asarray(task_id, jnp.int32),
            "obs": jnp.asarray(rng.normal(size=(ROWS, OBS_DIM)), jnp.float32),
            "action": jnp.asarray(action, jnp.float32),
            "reward": jnp.asarray(rng.uniform(-3.0, 3.0, ROWS), jnp.float32),  # scaled up to 12: beyond the support
            "next_obs": jnp.asarray(rng.normal(size=(ROWS, OBS_DIM)), jnp.float32),
            "terminal": jnp.asarray(terminal), "truncated": jnp.asarray(truncated),
            "discount": jnp.asarray(discount, jnp.float32)}


def continuous_setup(critic_loss: str):
    config = brc.Config(**SMALL, critic_loss=critic_loss, v_max=10.0, v_min=-10.0)
    agent = brc.Agent(config, SPEC)
    hyper = brc.Hyper.from_config(config)
    learner = agent.init(jax.random.PRNGKey(0), hyper)
    # A target critic unlike the online one (another init), and a temperature that is not the initial 0.1.
    other = agent.init(jax.random.PRNGKey(1), hyper)
    learner = learner.replace(critic_target_params=other.critic_params,
                              log_temperature=jnp.log(jnp.float32(TEMPERATURE)))
    return agent, hyper, learner


@pytest.fixture(scope="module", params=["categorical", "mse"])
def continuous(request):
    agent, hyper, learner = continuous_setup(request.param)
    return request.param, agent, hyper, learner, continuous_batch(3)


def embedding(agent, critic_params, task_id):
    return agent.critic.apply(critic_params, task_id, method=nets.Critic.embed)


def reference_policy(agent, actor_params, critic_params, obs, task_id, key):
    """The tanh-Gaussian sample and log-prob for `obs`: the actor network's mean and log-std, the noise of `key`."""
    mean, log_std = agent.actor.apply(actor_params, obs, embedding(agent, critic_params, task_id))
    noise = jax.random.normal(key, mean.shape, jnp.float32)
    return tanh_gaussian(mean, log_std, noise, ACTION_MASK[np.asarray(task_id)])


def reference_q(critic_loss: str, outputs: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Q from the members' outputs `[M, B, K | 1]`: expectation of the ensemble-mean probabilities, or the mean of
    the scalar heads."""
    if critic_loss == "categorical":
        return (softmax(outputs).mean(axis=0) * support).sum(axis=-1)
    return np.asarray(outputs, np.float64)[..., 0].mean(axis=0)


def reference_critic_loss(critic_loss, agent, learner, batch, reward_scale, key, critic_params=None):
    critic_params = learner.critic_params if critic_params is None else critic_params
    temperature = float(np.exp(np.float64(learner.log_temperature)))
    task_id = batch["task_id"]
    next_action, next_log_prob = reference_policy(agent, learner.actor_params, critic_params, batch["next_obs"],
                                                  task_id, key)
    target_outputs = np.asarray(agent.critic.apply(learner.critic_target_params, batch["next_obs"],
                                                   jnp.asarray(next_action, jnp.float32), task_id), np.float64)
    outputs = np.asarray(agent.critic.apply(critic_params, batch["obs"], batch["action"], task_id), np.float64)
    reward = np.asarray(batch["reward"], np.float64) * np.asarray(reward_scale, np.float64)[np.asarray(task_id)]
    mask = np.asarray(batch["discount"], np.float64) * (1.0 - np.asarray(batch["terminal"], np.float64))
    support = support_of(outputs.shape[-1], 10.0)
    if critic_loss == "categorical":
        atoms = reward[:, None] + mask[:, None] * (support[None] - temperature * next_log_prob[:, None])
        target = c51_projection(atoms, softmax(target_outputs).mean(axis=0), 10.0)
        return -(target[None] * log_softmax(outputs)).sum(-1).mean(-1).sum()
    target_q = reward + mask * (reference_q("mse", target_outputs, support) - temperature * next_log_prob)
    return ((outputs[..., 0] - target_q[None]) ** 2).mean(-1).sum()


def reference_actor_loss(critic_loss, agent, learner, batch, key, critic_params=None, actor_params=None):
    critic_params = learner.critic_params if critic_params is None else critic_params
    actor_params = learner.actor_params if actor_params is None else actor_params
    temperature = float(np.exp(np.float64(learner.log_temperature)))
    action, log_prob = reference_policy(agent, actor_params, critic_params, batch["obs"], batch["task_id"], key)
    outputs = agent.critic.apply(critic_params, batch["obs"], jnp.asarray(action, jnp.float32), batch["task_id"])
    q = reference_q(critic_loss, np.asarray(outputs, np.float64), support_of(outputs.shape[-1], 10.0))
    return (temperature * log_prob - q).mean(), log_prob


def test_continuous_critic_loss_matches_the_reference(continuous):
    critic_loss, agent, hyper, learner, batch = continuous
    for seed in range(2):
        key = jax.random.PRNGKey(10 + seed)
        got, info = jax.jit(agent.critic_loss)(learner.critic_params, learner, batch, jnp.asarray(REWARD_SCALE), key)
        expected = reference_critic_loss(critic_loss, agent, learner, batch, REWARD_SCALE, key)
        np.testing.assert_allclose(float(got), expected, rtol=RTOL, atol=ATOL)
        reward = np.asarray(batch["reward"], np.float64) * REWARD_SCALE[np.asarray(batch["task_id"])]
        np.testing.assert_allclose(float(info["normalized_reward"]), reward.mean(), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(float(info["critic_loss"]), expected, rtol=RTOL, atol=ATOL)
        outputs = np.asarray(agent.critic.apply(learner.critic_params, batch["obs"], batch["action"],
                                                batch["task_id"]), np.float64)
        q_mean = reference_q(critic_loss, outputs, support_of(outputs.shape[-1], 10.0)).mean()
        np.testing.assert_allclose(float(info["q_mean"]), q_mean, rtol=RTOL, atol=ATOL)


def test_continuous_critic_targets_depend_on_each_ingredient(continuous):
    """The reference's own sanity: every ingredient it checks moves the loss, so a test that agrees with it cannot
    agree by accident (e.g. with the terminal flags or the target critic ignored)."""
    critic_loss, agent, hyper, learner, batch = continuous
    key = jax.random.PRNGKey(10)
    base = reference_critic_loss(critic_loss, agent, learner, batch, REWARD_SCALE, key)
    variants = {
        "no terminal": {**batch, "terminal": jnp.zeros_like(batch["terminal"])},
        "one discount": {**batch, "discount": jnp.full_like(batch["discount"], GAMMA)},
    }
    for name, changed in variants.items():
        assert abs(reference_critic_loss(critic_loss, agent, learner, changed, REWARD_SCALE, key) - base) > 1e-3, name
    online_target = learner.replace(critic_target_params=learner.critic_params)
    assert abs(reference_critic_loss(critic_loss, agent, online_target, batch, REWARD_SCALE, key) - base) > 1e-3
    unit = np.ones(NUM_TASKS, np.float32)
    assert abs(reference_critic_loss(critic_loss, agent, learner, batch, unit, key) - base) > 1e-3


def test_continuous_actor_loss_matches_the_reference(continuous):
    critic_loss, agent, hyper, learner, batch = continuous
    key = jax.random.PRNGKey(5)
    got, info = jax.jit(agent.actor_loss)(learner.actor_params, learner, batch, key)
    expected, log_prob = reference_actor_loss(critic_loss, agent, learner, batch, key)
    np.testing.assert_allclose(float(got), expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(info["log_prob"]), log_prob, rtol=RTOL, atol=1e-4)
    np.testing.assert_allclose(float(info["entropy"]), -log_prob.mean(), rtol=RTOL, atol=ATOL)
    # Q from every member: with one member's Q the loss would differ by this much (far above the tolerance).
    outputs = np.asarray(agent.critic.apply(learner.critic_params, batch["obs"],
                                            jnp.asarray(reference_policy(agent, learner.actor_params,
                                                                         learner.critic_params, batch["obs"],
                                                                         batch["task_id"], key)[0], jnp.float32),
                                            batch["task_id"]), np.float64)
    support = support_of(outputs.shape[-1], 10.0)
    assert abs(reference_q(critic_loss, outputs[:1], support).mean()
               - reference_q(critic_loss, outputs, support).mean()) > 1e-3


def test_temperature_loss_and_its_gradient_match_the_reference():
    rng = np.random.default_rng(0)
    log_prob = rng.normal(-1.0, 2.0, ROWS).astype(np.float32)
    target_entropy = -0.5 * ACTION_MASK.sum(-1)[np.repeat(np.arange(NUM_TASKS), PER_TASK)].astype(np.float32)
    log_temperature = np.float32(np.log(TEMPERATURE))
    # The authors': temperature * (entropy - target_entropy), entropy = -log pi; differentiated w.r.t. log alpha.
    expected = TEMPERATURE * (-log_prob.astype(np.float64) - target_entropy).mean()
    got, grad = jax.value_and_grad(brc.Agent.temperature_loss)(jnp.asarray(log_temperature), jnp.asarray(log_prob),
                                                               jnp.asarray(target_entropy))
    np.testing.assert_allclose(float(got), expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(float(grad), expected, rtol=RTOL, atol=ATOL)  # d(alpha c)/d(log alpha) = alpha c


def test_continuous_update_matches_the_reference_step_by_step(continuous):
    """One `update`: its critic loss is the reference at the first half of the key, its actor loss the reference
    against the critic after its step (the paper's order) at the second half, and the temperature moves by one Adam
    step (b1 = 0.5) along the reference gradient with the per-task target entropy -|A_i|/2."""
    critic_loss, agent, hyper, learner, batch = continuous
    key = jax.random.PRNGKey(21)
    critic_key, actor_key = jax.random.split(key)
    new, info = jax.jit(agent.update)(learner, hyper, batch, jnp.asarray(REWARD_SCALE), key, jnp.zeros((), jnp.int32))
    np.testing.assert_allclose(float(info["critic_loss"]),
                               reference_critic_loss(critic_loss, agent, learner, batch, REWARD_SCALE, critic_key),
                               rtol=RTOL, atol=ATOL)
    actor_loss, log_prob = reference_actor_loss(critic_loss, agent, learner, batch, actor_key,
                                                critic_params=new.critic_params)
    np.testing.assert_allclose(float(info["actor_loss"]), actor_loss, rtol=RTOL, atol=ATOL)
    target_entropy = -0.5 * ACTION_MASK.sum(-1)[np.asarray(batch["task_id"])]
    grad = TEMPERATURE * (-log_prob - target_entropy).mean()
    lr = float(hyper.temperature_lr)
    expected = np.log(TEMPERATURE) - lr * grad / (abs(grad) + 1e-8)  # Adam's first step: lr * sign(grad)
    np.testing.assert_allclose(float(new.log_temperature), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(float(info["temperature"]), np.exp(expected), rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# The reward scale: return range G_i and the entropy correction (the authors' RewardNormalizer)
# ----------------------------------------------------------------------------------------------------------------------
def reference_return_range(rewards, terminal, truncated, gamma):
    """The authors' variable-length `RewardNormalizer`, per task (all envs of a task pooled): `[T]` G_i, inf for a
    task with no finished episode (their max(-inf, |+inf|))."""
    steps, num_tasks, num_envs = rewards.shape
    max_v, min_v = np.full(num_tasks, -np.inf), np.full(num_tasks, np.inf)
    episode = [[[] for _ in range(num_envs)] for _ in range(num_tasks)]
    for t in range(steps):
        for i in range(num_tasks):
            for e in range(num_envs):
                episode[i][e].append(float(rewards[t, i, e]))
                if terminal[t, i, e] or truncated[t, i, e]:
                    traj = np.asarray(episode[i][e], np.float64)
                    bootstrap = traj.mean() / (1 - gamma) if truncated[t, i, e] and not terminal[t, i, e] else 0.0
                    values = np.zeros_like(traj)
                    for k in reversed(range(len(traj))):
                        values[k] = traj[k] + gamma * bootstrap
                        bootstrap = values[k]
                    max_v[i], min_v[i] = max(max_v[i], values.max()), min(min_v[i], values.min())
                    episode[i][e] = []
    return np.where(max_v > np.abs(min_v), max_v, np.abs(min_v))


def reward_stream(seed: int, steps: int = 40):
    """Three tasks at different reward scales, two envs each: terminal, truncated and both-flag ends, negative
    rewards; task 2 never finishes an episode."""
    rng = np.random.default_rng(seed)
    rewards = rng.normal(0.0, 1.0, (steps, NUM_TASKS, 2)) * np.array([1.0, 30.0, 0.05])[None, :, None] \
        + np.array([0.5, -10.0, 0.0])[None, :, None]
    terminal = rng.random((steps, NUM_TASKS, 2)) < 0.08
    truncated = rng.random((steps, NUM_TASKS, 2)) < 0.08
    terminal[:, 2], truncated[:, 2] = False, False
    truncated[7, 0, 0] = True
    terminal[9, 1, 1] = truncated[9, 1, 1] = True
    return rewards.astype(np.float32), terminal, truncated


def run_normalizer(rewards, terminal, truncated):
    state = normalize.init(NUM_TASKS, rewards.shape[2], rewards.shape[0])
    step = jax.jit(normalize.update)
    for t in range(rewards.shape[0]):
        state = step(state, rewards[t], terminal[t], truncated[t], GAMMA)
    return state


@pytest.mark.parametrize("seed", [0, 1])
def test_reward_scale_matches_the_authors_normalizer(seed):
    rewards, terminal, truncated = reward_stream(seed)
    state = run_normalizer(rewards, terminal, truncated)
    g = reference_return_range(rewards, terminal, truncated, GAMMA)
    finished = np.isfinite(g)
    assert finished.tolist() == [True, True, False]
    np.testing.assert_allclose(np.asarray(normalize.return_range(state))[finished], g[finished], rtol=RTOL)

    # The continuous agent's entropy correction ("fixed"): the authors' -alpha * H_target / 2 / (1 - gamma) with
    # H_target = -|A_i| / 2, i.e. alpha |A_i| / 4 / (1 - gamma), per task.
    config = brc.Config(**SMALL)
    agent = brc.Agent(config, SPEC)
    learner = types_learner(log_temperature=np.log(TEMPERATURE))
    correction = agent.reward_correction(learner, brc.Hyper.from_config(config), jnp.float32(GAMMA))
    target_entropy = -ACTION_MASK.sum(-1) / 2.0
    expected_correction = -TEMPERATURE * target_entropy / 2.0 / (1.0 - GAMMA)
    np.testing.assert_allclose(np.asarray(correction), expected_correction, rtol=RTOL)

    # r_norm = r / ((G_i + correction_i) / V_max): 0 for the task with no finished episode (G_i = inf).
    scale = np.asarray(normalize.scale(state, config.v_max, correction))
    expected_scale = config.v_max / (g + expected_correction)
    np.testing.assert_allclose(scale, expected_scale, rtol=RTOL, atol=0)
    assert scale[2] == 0.0
    # Discrete BRC adds no correction (no temperature).
    discrete_scale = np.asarray(normalize.scale(state, 10.0, 0.0))
    np.testing.assert_allclose(discrete_scale, 10.0 / g, rtol=RTOL, atol=0)


def types_learner(log_temperature: float, policy_entropy: float = -1.5):
    """What `reward_correction` reads of a learner."""
    return dataclasses.make_dataclass("L", ["log_temperature", "policy_entropy"])(
        jnp.float32(log_temperature), jnp.float32(policy_entropy))


def test_policy_entropy_correction_uses_the_entropy_magnitude():
    config = brc.Config(**SMALL, entropy_correction="policy")
    agent = brc.Agent(config, SPEC)
    for entropy in (-1.5, 2.0):
        correction = agent.reward_correction(types_learner(np.log(TEMPERATURE), entropy),
                                             brc.Hyper.from_config(config), jnp.float32(GAMMA))
        np.testing.assert_allclose(np.asarray(correction), TEMPERATURE * abs(entropy) / (1 - GAMMA), rtol=RTOL)
    none = brc.Agent(dataclasses.replace(config, entropy_correction="none"), SPEC)
    assert float(np.max(np.abs(none.reward_correction(types_learner(0.0), brc.Hyper.from_config(config),
                                                      jnp.float32(GAMMA))))) == 0.0


# ----------------------------------------------------------------------------------------------------------------------
# Discrete BRC: double-Q C51
# ----------------------------------------------------------------------------------------------------------------------
NUM_ACTIONS = 4
DISCRETE_MASK = np.array([[True, True, False, True], [True, True, True, True], [False, True, True, False]])
DISCRETE_SPEC = EnvSpec(task_names=("a", "b", "c"), obs_shape=(OBS_DIM,), obs_dtype=np.float32,
                        action=ActionSpec(discrete=True, size=NUM_ACTIONS, mask=DISCRETE_MASK),
                        episode_length=(20,) * NUM_TASKS)


@pytest.fixture(scope="module")
def discrete():
    config = brc_discrete.Config(critic_width=32, critic_depth=1, num_bins=21, embed_dim=4, vector_encoder_width=16)
    agent = brc_discrete.Agent(config, DISCRETE_SPEC)
    hyper = brc_discrete.Hyper.from_config(config)
    learner = agent.init(jax.random.PRNGKey(0), hyper)
    learner = learner.replace(target_params=agent.init(jax.random.PRNGKey(1), hyper).params)
    batch = continuous_batch(4)
    rng = np.random.default_rng(4)
    task_id = np.asarray(batch["task_id"])
    legal = [np.flatnonzero(DISCRETE_MASK[t]) for t in task_id]
    batch["action"] = jnp.asarray([rng.choice(actions) for actions in legal], jnp.int32)
    return agent, hyper, learner, batch


def reference_discrete_loss(agent, learner, batch, reward_scale, params=None, metrics=None):
    params = learner.params if params is None else params
    task_id = np.asarray(batch["task_id"])
    online_next = np.asarray(agent.network.apply(params, batch["next_obs"], batch["task_id"]), np.float64)
    target_next = np.asarray(agent.network.apply(learner.target_params, batch["next_obs"], batch["task_id"]),
                             np.float64)
    logits = np.asarray(agent.network.apply(params, batch["obs"], batch["task_id"]), np.float64)
    support = support_of(logits.shape[-1], 10.0)
    q_next = (softmax(online_next) * support).sum(-1)                                    # [B, A]
    next_action = np.argmax(np.where(DISCRETE_MASK[task_id], q_next, -np.inf), axis=-1)
    next_probs = softmax(target_next)[np.arange(len(task_id)), next_action]
    reward = np.asarray(batch["reward"], np.float64) * np.asarray(reward_scale, np.float64)[task_id]
    mask = np.asarray(batch["discount"], np.float64) * (1.0 - np.asarray(batch["terminal"], np.float64))
    target = c51_projection(reward[:, None] + mask[:, None] * support[None], next_probs, 10.0)
    taken = log_softmax(logits)[np.arange(len(task_id)), np.asarray(batch["action"])]
    if metrics is not None:  # the Q of the taken actions, and of the target distributions
        metrics["q_mean"] = (np.exp(taken) * support).sum(-1).mean()
        metrics["target_q_mean"] = (target * support).sum(-1).mean()
    return -(target * taken).sum(-1).mean()


def test_discrete_critic_loss_matches_the_reference(discrete):
    agent, hyper, learner, batch = discrete
    got, info = jax.jit(agent.critic_loss)(learner.params, learner, batch, jnp.asarray(REWARD_SCALE))
    metrics = {}
    np.testing.assert_allclose(float(got), reference_discrete_loss(agent, learner, batch, REWARD_SCALE,
                                                                   metrics=metrics), rtol=RTOL, atol=ATOL)
    for name, value in metrics.items():
        np.testing.assert_allclose(float(info[name]), value, rtol=RTOL, atol=ATOL, err_msg=name)
    reward = np.asarray(batch["reward"], np.float64) * REWARD_SCALE[np.asarray(batch["task_id"])]
    np.testing.assert_allclose(float(info["normalized_reward"]), reward.mean(), rtol=RTOL, atol=ATOL)
    # The update reports the same loss before its step.
    _, update_info = jax.jit(agent.update)(learner, hyper, batch, jnp.asarray(REWARD_SCALE), jax.random.PRNGKey(0),
                                           jnp.zeros((), jnp.int32))
    np.testing.assert_allclose(float(update_info["critic_loss"]), float(got), rtol=RTOL, atol=ATOL)


def test_discrete_reference_depends_on_each_ingredient(discrete):
    agent, hyper, learner, batch = discrete
    base = reference_discrete_loss(agent, learner, batch, REWARD_SCALE)
    changed = [reference_discrete_loss(agent, learner, {**batch, "terminal": jnp.zeros_like(batch["terminal"])},
                                       REWARD_SCALE),
               reference_discrete_loss(agent, learner.replace(target_params=learner.params), batch, REWARD_SCALE),
               reference_discrete_loss(agent, learner, batch, np.ones(NUM_TASKS))]
    for value in changed:
        assert abs(value - base) > 1e-3

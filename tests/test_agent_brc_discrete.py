"""Discrete BRC: the double-Q C51 target against a float64 NumPy reference, legal-action masking in acting, the
epsilon schedule, the encoders, the update and its target network, config validation, compact MinAtar replay, and
learning CartPole-v1 end to end through the shared loop (`offpolicy.make`)."""

from __future__ import annotations

import dataclasses
import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxmt import envs, nets, offpolicy
from purejaxmt.agents import brc_discrete
from purejaxmt.envs import ActionSpec, EnvSpec

NUM_TASKS, NUM_ACTIONS, PER_TASK, GRID, GAMMA = 2, 4, 8, (6, 6, 3), 0.99
MASK = np.array([[True, False, True, False],      # action 3 is illegal everywhere, 0 and 1 in one task each
                 [False, True, True, False]])
SPEC = EnvSpec(task_names=("a", "b"), obs_shape=GRID, obs_dtype=np.uint8,
               action=ActionSpec(discrete=True, size=NUM_ACTIONS, mask=MASK), episode_length=(50, 50))
CONFIG = brc_discrete.Config(critic_width=32, critic_depth=1, num_bins=11, embed_dim=8, conv_channels=(4,),
                             conv_kernel_sizes=(3,), conv_strides=(1,), vector_encoder_width=16)
AGENT = brc_discrete.Agent(CONFIG, SPEC)
HYPER = brc_discrete.Hyper.from_config(CONFIG)
REWARD_SCALE = jnp.asarray([1.0, 0.5])

update = jax.jit(AGENT.update)


def make_learner(hyper: brc_discrete.Hyper = HYPER, seed: int = 0) -> brc_discrete.Learner:
    # Op by op, as the runner does: a jitted init (the orthogonal initialisers' LAPACK QR calls in one program)
    # intermittently never finished executing on the 2-core CPU (jax 0.10.2).
    return AGENT.init(jax.random.PRNGKey(seed), hyper)


def step(learner: brc_discrete.Learner, batch: dict, num_updates: int = 0, hyper: brc_discrete.Hyper = HYPER):
    return update(learner, hyper, batch, REWARD_SCALE, jax.random.PRNGKey(0), jnp.asarray(num_updates, jnp.int32))


@jax.jit
def make_batch(key: jax.Array) -> dict:
    k = jax.random.split(key, 5)
    shape = (NUM_TASKS * PER_TASK,)
    task_id = jnp.repeat(jnp.arange(NUM_TASKS, dtype=jnp.int32), PER_TASK)
    legal = jnp.asarray(MASK)[task_id]
    return {
        "task_id": task_id,
        "obs": jax.random.bernoulli(k[0], 0.3, (*shape, *GRID)).astype(jnp.uint8),
        "action": brc_discrete.random_legal_action(k[1], legal),
        "reward": jax.random.uniform(k[2], shape),
        "next_obs": jax.random.bernoulli(k[3], 0.3, (*shape, *GRID)).astype(jnp.uint8),
        "terminal": jax.random.bernoulli(k[4], 0.2, shape),
        "truncated": jnp.zeros(shape, bool),
        "discount": jnp.full(shape, GAMMA, jnp.float32),
    }


@pytest.fixture(scope="module")
def batch():
    return make_batch(jax.random.PRNGKey(42))


# ---------------------------------------------------------------------------------------------- double-Q target


def numpy_c51_target(online_next_logits, target_next_logits, reward, terminal, scale, mask, support, gamma):
    """Float64 reference, written independently of categorical.project: the floor/ceil form of the C51 projection.
    `gamma`: a scalar or one discount per row."""
    def softmax(x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    online_next_logits, target_next_logits, support = (np.asarray(x, np.float64) for x in
                                                       (online_next_logits, target_next_logits, support))
    v_min, v_max, delta = support[0], support[-1], support[1] - support[0]
    q = (softmax(online_next_logits) * support).sum(axis=-1)
    gamma = np.broadcast_to(np.asarray(gamma, np.float64), np.shape(reward))
    out = np.zeros((len(reward), len(support)))
    for b in range(len(reward)):
        legal = np.flatnonzero(mask[b])
        next_action = legal[np.argmax(q[b, legal])]
        probs = softmax(target_next_logits[b, next_action])
        for z, p in zip(support, probs):
            atom = np.clip(reward[b] * scale[b] + gamma[b] * (1.0 - terminal[b]) * z, v_min, v_max)
            position = (atom - v_min) / delta
            lower, upper = int(np.floor(position)), int(np.ceil(position))
            if lower == upper:
                out[b, lower] += p
            else:
                out[b, lower] += p * (upper - position)
                out[b, upper] += p * (position - lower)
    return out


def logits_of(probs):
    return np.log(np.asarray(probs, np.float64) + 1e-12).astype(np.float32)


# Two next states, three actions, five atoms on [-2, 2].
SUPPORT = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
# Online network at s'. State 0: action 0 is best (Q = 2) but illegal; of the legal ones action 1 (Q = 0.6) beats
# action 2 (Q = 0.2). State 1: action 2 is best and legal.
ONLINE_PROBS = [[[0.0, 0.0, 0.0, 0.0, 1.0], [0.1, 0.1, 0.2, 0.3, 0.3], [0.2, 0.1, 0.2, 0.3, 0.2]],
                [[0.3, 0.3, 0.2, 0.1, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2], [0.0, 0.1, 0.2, 0.3, 0.4]]]
# Target network at s': it ranks the actions the other way (its argmax over legal actions in state 0 is action 2).
TARGET_PROBS = [[[0.2, 0.2, 0.2, 0.2, 0.2], [0.5, 0.3, 0.1, 0.05, 0.05], [0.0, 0.0, 0.1, 0.3, 0.6]],
                [[0.1, 0.2, 0.4, 0.2, 0.1], [0.6, 0.2, 0.1, 0.05, 0.05], [0.05, 0.05, 0.3, 0.3, 0.3]]]
NEXT_MASK = np.array([[False, True, True], [True, True, True]])
REWARD, SCALE, TARGET_GAMMA = np.array([0.5, 1.3]), np.array([2.0, 0.5]), 0.9


jitted_double_q_target = jax.jit(brc_discrete.double_q_target)


def jax_target(terminal, mask=NEXT_MASK, online=ONLINE_PROBS, target=TARGET_PROBS, discount=TARGET_GAMMA):
    discount = np.broadcast_to(discount, REWARD.shape)  # one shape for every call: one compile
    return np.asarray(jitted_double_q_target(
        jnp.asarray(logits_of(online)), jnp.asarray(logits_of(target)), jnp.asarray(REWARD, jnp.float32),
        jnp.asarray(terminal), jnp.asarray(SCALE, jnp.float32), jnp.asarray(mask),
        jnp.asarray(SUPPORT, jnp.float32), jnp.asarray(discount, jnp.float32)))


def test_double_q_target_matches_a_float64_numpy_reference():
    for terminal in (np.array([False, False]), np.array([False, True]), np.array([True, True])):
        got = jax_target(terminal)
        want = numpy_c51_target(logits_of(ONLINE_PROBS), logits_of(TARGET_PROBS), REWARD, terminal, SCALE, NEXT_MASK,
                                SUPPORT, TARGET_GAMMA)
        np.testing.assert_allclose(got, want, atol=2e-6, err_msg=f"terminal={terminal}")
        np.testing.assert_allclose(got.sum(axis=-1), 1.0, atol=1e-6)


def test_double_q_target_by_hand():
    # State 0 (not terminal): the online argmax over legal actions is action 1, so the TARGET network's action-1
    # distribution [0.5, 0.3, 0.1, 0.05, 0.05] moves to r * scale + 0.9 z = 1 + 0.9 z: atoms -0.8, 0.1, 1.0, 1.9, 2.8.
    # -0.8 -> 0.8 on -1, 0.2 on 0; 0.1 -> 0.9 on 0, 0.1 on 1; 1.0 -> on 1; 1.9 -> 0.1 on 1, 0.9 on 2; 2.8 -> clip to 2.
    by_hand_0 = np.array([0.0, 0.5 * 0.8, 0.5 * 0.2 + 0.3 * 0.9, 0.3 * 0.1 + 0.1 + 0.05 * 0.1, 0.05 * 0.9 + 0.05])
    # State 1 (terminal): no bootstrap, all mass at r * scale = 0.65: 0.35 on atom 0, 0.65 on atom 1.
    by_hand_1 = np.array([0.0, 0.0, 0.35, 0.65, 0.0])
    got = jax_target(np.array([False, True]))
    np.testing.assert_allclose(got[0], by_hand_0, atol=1e-6)
    np.testing.assert_allclose(got[1], by_hand_1, atol=1e-6)


def test_double_q_selects_with_the_online_network_among_legal_actions_only():
    terminal = np.array([False, False])
    got = jax_target(terminal)

    def reference_with_action(b, action):
        # Force `action` in state b by making it the only legal one.
        mask = np.zeros_like(NEXT_MASK)
        mask[b, action] = True
        mask[1 - b] = NEXT_MASK[1 - b]
        return numpy_c51_target(logits_of(ONLINE_PROBS), logits_of(TARGET_PROBS), REWARD, terminal, SCALE, mask,
                                SUPPORT, TARGET_GAMMA)[b]

    np.testing.assert_allclose(got[0], reference_with_action(0, 1), atol=2e-6)          # online argmax over legal
    assert np.abs(got[0] - reference_with_action(0, 2)).max() > 0.1                     # not the target's argmax
    assert np.abs(got[0] - reference_with_action(0, 0)).max() > 0.1                     # not the illegal best action
    # Make the illegal action best by a mile in the online network too: still never chosen.
    online = np.array(ONLINE_PROBS)
    online[0, 0] = [0.0, 0.0, 0.0, 0.0, 1.0]
    np.testing.assert_allclose(jax_target(terminal, online=online)[0], reference_with_action(0, 1), atol=2e-6)

def test_double_q_target_takes_one_discount_per_row():
    """n-step batches bootstrap with gamma^m per row (m <= n, fewer where an episode ended inside the window)."""
    discount = np.array([0.9**3, 0.9])
    terminal = np.array([False, False])
    got = jax_target(terminal, discount=discount)
    want = numpy_c51_target(logits_of(ONLINE_PROBS), logits_of(TARGET_PROBS), REWARD, terminal, SCALE, NEXT_MASK,
                            SUPPORT, discount)
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(got[1], jax_target(terminal)[1], atol=1e-7)      # row 1 keeps gamma^1
    assert np.abs(got[0] - jax_target(terminal)[0]).max() > 0.05               # row 0 bootstraps with gamma^3


# ---------------------------------------------------------------------------------------------- acting


@pytest.fixture(scope="module")
def learner_preferring_illegal_actions():
    """A learner whose head puts the mass of the action that no task may take on v_max: an unmasked argmax would
    pick it everywhere."""
    learner = make_learner()
    params = jax.tree.map(jnp.copy, learner.params)
    head = params["params"]["trunk"][f"Dense_{1 + 2 * CONFIG.critic_depth}"]
    bias = head["bias"].reshape(NUM_ACTIONS, CONFIG.num_bins)
    for action in range(NUM_ACTIONS):
        if not MASK[:, action].any():
            bias = bias.at[action, -1].set(100.0)
    head["bias"] = bias.reshape(-1)
    return learner.replace(params=params)


def test_act_never_chooses_an_illegal_action(learner_preferring_illegal_actions):
    learner = learner_preferring_illegal_actions
    envs_per_task, draws = 16, 64
    obs = jax.random.bernoulli(jax.random.PRNGKey(1), 0.3, (NUM_TASKS, envs_per_task, *GRID)).astype(jnp.uint8)
    keys = jax.random.split(jax.random.PRNGKey(2), draws)
    # Epsilon is data: start = end = epsilon pins it at any step count.
    act_many = jax.jit(jax.vmap(AGENT.act, in_axes=(None, None, None, 0, None)))
    legal = MASK[:, None, :]

    def assert_legal(actions, what):
        chosen_legal = np.take_along_axis(np.broadcast_to(legal, (*actions.shape, NUM_ACTIONS)), actions[..., None],
                                          -1)
        assert chosen_legal.all(), f"{what}: an illegal action was chosen"

    # The premise: without the mask the greedy choice would be illegal everywhere.
    logits = AGENT.network.apply(learner.params, obs, jnp.broadcast_to(jnp.arange(NUM_TASKS)[:, None], obs.shape[:2]))
    unmasked = np.asarray(jnp.argmax(brc_discrete.q_values(logits, AGENT.support), axis=-1))
    assert not np.take_along_axis(np.broadcast_to(legal, (*unmasked.shape, NUM_ACTIONS)), unmasked[..., None], -1).any()

    for epsilon in (0.0, 0.3, 1.0):
        hyper = HYPER.replace(epsilon_start=jnp.float32(epsilon), epsilon_end=jnp.float32(epsilon))
        actions = np.asarray(act_many(learner, hyper, obs, keys, jnp.int32(0)))         # [draws, T, E]
        chex.assert_shape(actions, (draws, NUM_TASKS, envs_per_task))
        assert_legal(actions, f"epsilon={epsilon}")
        if epsilon == 1.0:  # uniform over the legal actions: every legal action shows up, in fair proportion
            for task in range(NUM_TASKS):
                counts = np.bincount(actions[:, task].ravel(), minlength=NUM_ACTIONS)
                expected = actions[:, task].size / MASK[task].sum()
                assert np.all(np.abs(counts[MASK[task]] - expected) < 0.15 * expected), (task, counts)

    # The evaluation policy (explore_steps None) is greedy over the legal actions, and the random phase's actions are
    # uniform over them.
    greedy = np.asarray(jax.jit(AGENT.act, static_argnums=4)(learner, HYPER, obs, keys[0], None))
    chex.assert_shape(greedy, (NUM_TASKS, envs_per_task))
    assert_legal(greedy, "evaluation")
    random_actions = np.asarray(jax.jit(jax.vmap(AGENT.random_action, in_axes=(0, None)), static_argnums=1)(
        keys, envs_per_task))
    assert_legal(random_actions, "random phase")
    for task in range(NUM_TASKS):
        assert set(np.unique(random_actions[:, task])) == set(np.flatnonzero(MASK[task])), task


def test_epsilon_schedule():
    """Linear from start to end over `epsilon_decay_steps` env steps per task past the random phase (the loop counts
    them from the end of its random phase: see the CartPole test), then flat."""
    hyper = brc_discrete.Hyper.from_config(
        dataclasses.replace(CONFIG, epsilon_start=1.0, epsilon_end=0.1, epsilon_decay_steps=100))
    at = lambda explore_steps: float(AGENT.epsilon(hyper, jnp.asarray(explore_steps)))  # noqa: E731
    assert at(0) == 1.0
    assert at(25) == pytest.approx(1.0 - 0.9 * 0.25)
    assert at(50) == pytest.approx(1.0 - 0.9 * 0.5)              # 50 of 100 env steps per task
    assert at(100) == at(500) == pytest.approx(0.1)
    assert AGENT.chunk_extras(None, hyper, jnp.asarray(50))["epsilon"] == pytest.approx(0.55)


# ---------------------------------------------------------------------------------------------- network


def test_encoder_is_chosen_by_observation_rank():
    network = nets.QNetwork(num_actions=NUM_ACTIONS, num_bins=7, num_tasks=NUM_TASKS, width=16, depth=1,
                            embed_dim=8, conv_channels=(4, 8), conv_kernel_sizes=(3, 2), conv_strides=(1, 1),
                            vector_encoder_width=12)
    key, batch_shape = jax.random.PRNGKey(0), (NUM_TASKS, 5)
    task_ids = jnp.broadcast_to(jnp.arange(NUM_TASKS)[:, None], batch_shape)

    image = jnp.zeros((*batch_shape, *GRID), jnp.uint8)
    params = jax.eval_shape(network.init, key, image, task_ids)["params"]
    assert set(params) == {"conv_encoder", "task_embedding", "trunk"}
    # 6x6 grid, 3x3 then 2x2 VALID convs: 3x3x8 = 72 features, plus the 8-wide task embedding.
    chex.assert_shape(params["trunk"]["Dense_0"]["kernel"], (72 + 8, 16))
    chex.assert_shape(jax.eval_shape(network.apply, {"params": params}, image, task_ids),
                      (*batch_shape, NUM_ACTIONS, 7))

    vector = jnp.zeros((*batch_shape, 9), jnp.float32)
    params = jax.eval_shape(network.init, key, vector, task_ids)["params"]
    assert set(params) == {"vector_encoder", "vector_norm", "task_embedding", "trunk"}
    chex.assert_shape(params["vector_encoder"]["kernel"], (9, 12))
    chex.assert_shape(jax.eval_shape(network.apply, {"params": params}, vector, task_ids),
                      (*batch_shape, NUM_ACTIONS, 7))

    single = network.clone(num_tasks=1)
    params = jax.eval_shape(single.init, key, vector[0], jnp.zeros(5, jnp.int32))["params"]
    assert "task_embedding" not in params
    chex.assert_shape(params["trunk"]["Dense_0"]["kernel"], (12, 16))
    with pytest.raises(ValueError, match="observation rank 2"):
        jax.eval_shape(network.init, key, jnp.zeros((*batch_shape, 3, 3)), task_ids)


@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (4, 3)])
def test_conv2d_equals_flax_conv(kernel_size, stride):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 10, 10, 5))
    conv = nets.Conv2D(7, kernel_size, stride)
    params = conv.init(jax.random.PRNGKey(1), x)
    want = nn.Conv(7, (kernel_size, kernel_size), strides=(stride, stride), padding="VALID").apply(params, x)
    np.testing.assert_allclose(conv.apply(params, x), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- update


@jax.jit
def fixed_loss(learner: brc_discrete.Learner, batch: dict) -> jax.Array:
    return AGENT.critic_loss(learner.params, learner, batch, REWARD_SCALE)[0]


def test_loss_decreases_and_target_moves_by_tau(batch):
    learner = make_learner()
    before = float(fixed_loss(learner, batch))
    new_learner, info = step(learner, batch)
    assert set(info) >= {"critic_loss", "q_mean", "target_q_mean", "normalized_reward"}
    np.testing.assert_allclose(info["normalized_reward"], (batch["reward"] * REWARD_SCALE[batch["task_id"]]).mean(),
                               rtol=1e-6)
    expected = jax.tree.map(lambda online, target: CONFIG.tau * online + (1 - CONFIG.tau) * target,
                            new_learner.params, learner.target_params)
    jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7),
                 new_learner.target_params, expected)
    for i in range(1, 41):
        new_learner, info = step(new_learner, batch, i)
    after = float(fixed_loss(new_learner, batch))
    assert np.isfinite(after) and after < 0.8 * before, (before, after)


def test_periodic_hard_target_copy(batch):
    """tau = 1 every 3 updates (data: the same compiled update as the Polyak test): the target is the online network
    after updates 3 and 6, and untouched in between."""
    hyper = brc_discrete.Hyper.from_config(dataclasses.replace(CONFIG, tau=1.0, target_update_period=3))
    learner = make_learner(hyper)
    initial_target = learner.target_params
    for done in range(1, 7):
        learner, _ = step(learner, batch, num_updates=done - 1, hyper=hyper)
        if done % 3:
            jax.tree.map(np.testing.assert_array_equal, learner.target_params, initial_target)
        else:
            jax.tree.map(np.testing.assert_array_equal, learner.target_params, learner.params)
            initial_target = learner.target_params


# ---------------------------------------------------------------------------------------------- config and spec


def test_config_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="tau=0"):
        brc_discrete.Config(tau=0.0)
    with pytest.raises(ValueError, match="epsilon_end=1.5"):
        brc_discrete.Config(epsilon_end=1.5)
    with pytest.raises(ValueError, match=r"conv_channels=\(16, 32\), conv_kernel_sizes=\(3,\)"):
        brc_discrete.Config(conv_kernel_sizes=(3,))
    with pytest.raises(ValueError, match="compute_dtype='fp8'"):
        brc_discrete.Config(compute_dtype="fp8")
    with pytest.raises(ValueError, match="target_update_period=0"):
        brc_discrete.Config(target_update_period=0)
    with pytest.raises(ValueError, match="critic_width=0 must be >= 1"):
        brc_discrete.Config(critic_width=0)
    # ActionSpec refuses a task without legal actions; the agent checks too, for specs built some other way.
    no_legal = [[True, False], [False, False]]
    with pytest.raises(ValueError, match=r"task rows \[1\] no legal action"):
        ActionSpec(discrete=True, size=2, mask=no_legal)
    raw_spec = types.SimpleNamespace(task_names=("a", "b"), num_tasks=2, obs_shape=GRID,
                                     action=types.SimpleNamespace(discrete=True, size=2, mask=np.array(no_legal)))
    with pytest.raises(ValueError, match=r"tasks \[1\] have none"):
        brc_discrete.Agent(CONFIG, raw_spec)
    continuous = dataclasses.replace(SPEC, action=ActionSpec(discrete=False, size=3, mask=np.ones((2, 3), bool)))
    with pytest.raises(ValueError, match=r"tasks \['a', 'b'\] are continuous: use purejaxmt.agents.brc"):
        brc_discrete.Agent(CONFIG, continuous)
    with pytest.raises(ValueError, match=r"obs_shape=\(3, 3\)"):
        brc_discrete.Agent(CONFIG, dataclasses.replace(SPEC, obs_shape=(3, 3)))
    # Lists (a config read back from JSON) become tuples: the config stays hashable, i.e. usable as static.
    config = brc_discrete.Config(conv_channels=[8], conv_kernel_sizes=[3], conv_strides=[1])
    assert hash(config) is not None and config.conv_channels == (8,)


def test_minatar_replay_keeps_compact_observations():
    env = envs.make("Breakout-MinAtar,Asterix-MinAtar", minimal_action_set=True)  # 3 and 5 legal actions
    loop = offpolicy.LoopConfig(replay_capacity=100, batch_size=4, random_steps=10, steps_per_chunk=10)
    example = offpolicy.replay_example(env.spec)
    assert example["obs"].dtype == example["next_obs"].dtype == jnp.uint8
    program = offpolicy.make(brc_discrete.AGENT_SPEC, CONFIG, loop, env)
    state = jax.eval_shape(program.init, jax.random.PRNGKey(0), program.hyper)
    data, finals = state.replay.data, state.replay.finals  # each observation stored once (replay.py)
    assert data["obs"].dtype == finals.obs.dtype == finals.next_obs.dtype == jnp.uint8 and "next_obs" not in data
    chex.assert_shape(data["obs"], (2, 100, 10, 10, 4))
    assert data["action"].dtype == jnp.int32 and data["action"].shape == (2, 100)
    stored = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state.replay))
    assert program.replay_nbytes == stored
    np.testing.assert_array_equal(env.spec.action.mask, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert program.agent.action_mask.shape == (2, 5) and program.agent.action_mask.dtype == bool


# ---------------------------------------------------------------------------------------------- learning


@pytest.mark.parametrize("n_step", [1, 3])
def test_learns_cartpole_within_a_small_budget(n_step):
    """Chunk 1 is all random actions: its mean episode return is the random policy's. Four chunks of learning later
    the greedy policy must do three times better (it reaches ~300 in this budget; random is ~20)."""
    env = envs.make("CartPole-v1")
    config = brc_discrete.Config(critic_width=64, critic_depth=1, num_bins=51, vector_encoder_width=64, embed_dim=8,
                                 learning_rate=1e-3, tau=0.01, epsilon_decay_steps=2000)
    loop = offpolicy.LoopConfig(envs_per_task=4, replay_capacity=10_000, batch_size=64, updates_per_step=1,
                                n_step=n_step, random_steps=1000, total_steps=5000, steps_per_chunk=1000,
                                eval_episodes=8)
    program = offpolicy.make(brc_discrete.AGENT_SPEC, config, loop, env)
    state = program.init(jax.random.PRNGKey(0), program.hyper)  # op by op: see make_learner
    train_chunk = jax.jit(program.train_chunk, donate_argnums=0)
    state, metrics = train_chunk(state)
    random_return = float(metrics["return"][0])
    assert int(metrics["num_updates"]) == 0 and 10 < random_return < 40, metrics
    assert float(metrics["epsilon"]) == 1.0  # epsilon decays from the end of the random phase, not from step 0
    state, metrics = train_chunk(state)
    assert int(metrics["num_updates"]) == 250
    assert float(metrics["epsilon"]) == pytest.approx(1.0 + 1000 / 2000 * (config.epsilon_end - 1.0))
    for _ in range(loop.num_chunks - 2):
        state, metrics = train_chunk(state)
    assert int(metrics["step"]) == 5000 and np.isfinite(float(metrics["critic_loss"]))
    greedy_return = float(jax.jit(program.evaluate)(state, jax.random.PRNGKey(1))["return"][0])
    assert greedy_return > 3 * random_return, (greedy_return, random_return)

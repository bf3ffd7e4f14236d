"""Discrete BRC: the double-Q C51 target against a float64 NumPy reference, legal-action masking in acting, the
encoders, the update and its target network, config validation, and learning CartPole-v1 end to end."""

from __future__ import annotations

import dataclasses
import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxmt import brc_discrete, categorical, envs, nets

NUM_TASKS, NUM_ACTIONS, PER_TASK, GRID = 2, 4, 8, (6, 6, 3)
MASK = np.array([[True, False, True, False],      # action 3 is illegal everywhere, 0 and 1 in one task each
                 [False, True, True, False]])
CONFIG = brc_discrete.Config(width=32, depth=1, num_bins=11, embed_dim=8, conv_channels=(4,), conv_kernel_sizes=(3,),
                             conv_strides=(1,), vector_encoder_width=16, batch_size=NUM_TASKS * PER_TASK)


def make_state(config: brc_discrete.Config = CONFIG, seed: int = 0) -> brc_discrete.TrainState:
    # Jitted: an eager init runs every orthogonal initialiser op by op (seconds on a 2-core CPU).
    return jax.jit(lambda key: brc_discrete.init(key, config, obs_shape=GRID, num_actions=NUM_ACTIONS,
                                                 num_tasks=NUM_TASKS, action_mask=MASK))(jax.random.PRNGKey(seed))


def make_batch(key: jax.Array) -> dict:
    k = jax.random.split(key, 5)
    shape = (NUM_TASKS * PER_TASK,)
    task_id = jnp.repeat(jnp.arange(NUM_TASKS, dtype=jnp.int32), PER_TASK)
    legal = jnp.asarray(MASK)[task_id]
    return {
        "task_id": task_id,
        "obs": jax.random.bernoulli(k[0], 0.3, (*shape, *GRID)).astype(jnp.uint8),
        "action": brc_discrete.random_action(k[1], legal),
        "reward": jax.random.uniform(k[2], shape),
        "next_obs": jax.random.bernoulli(k[3], 0.3, (*shape, *GRID)).astype(jnp.uint8),
        "terminal": jax.random.bernoulli(k[4], 0.2, shape),
        "truncated": jnp.zeros(shape, bool),
    }


update = jax.jit(brc_discrete.update)


@pytest.fixture(scope="module")
def batch():
    return make_batch(jax.random.PRNGKey(42))


# ---------------------------------------------------------------------------------------------- double-Q target


def numpy_c51_target(online_next_logits, target_next_logits, reward, terminal, scale, mask, support, gamma):
    """Float64 reference, written independently of categorical.project: the floor/ceil form of the C51 projection."""
    def softmax(x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    online_next_logits, target_next_logits, support = (np.asarray(x, np.float64) for x in
                                                       (online_next_logits, target_next_logits, support))
    v_min, v_max, delta = support[0], support[-1], support[1] - support[0]
    q = (softmax(online_next_logits) * support).sum(axis=-1)
    out = np.zeros((len(reward), len(support)))
    for b in range(len(reward)):
        legal = np.flatnonzero(mask[b])
        next_action = legal[np.argmax(q[b, legal])]
        probs = softmax(target_next_logits[b, next_action])
        for z, p in zip(support, probs):
            atom = np.clip(reward[b] * scale[b] + gamma * (1.0 - terminal[b]) * z, v_min, v_max)
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
REWARD, SCALE, GAMMA = np.array([0.5, 1.3]), np.array([2.0, 0.5]), 0.9


def jax_target(terminal, mask=NEXT_MASK, online=ONLINE_PROBS, target=TARGET_PROBS):
    return np.asarray(brc_discrete.double_q_target(
        jnp.asarray(logits_of(online)), jnp.asarray(logits_of(target)), jnp.asarray(REWARD, jnp.float32),
        jnp.asarray(terminal), jnp.asarray(SCALE, jnp.float32), jnp.asarray(mask),
        jnp.asarray(SUPPORT, jnp.float32), GAMMA))


def test_double_q_target_matches_a_float64_numpy_reference():
    for terminal in (np.array([False, False]), np.array([False, True]), np.array([True, True])):
        got = jax_target(terminal)
        want = numpy_c51_target(logits_of(ONLINE_PROBS), logits_of(TARGET_PROBS), REWARD, terminal, SCALE, NEXT_MASK,
                                SUPPORT, GAMMA)
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
                                SUPPORT, GAMMA)[b]

    np.testing.assert_allclose(got[0], reference_with_action(0, 1), atol=2e-6)          # online argmax over legal
    assert np.abs(got[0] - reference_with_action(0, 2)).max() > 0.1                     # not the target's argmax
    assert np.abs(got[0] - reference_with_action(0, 0)).max() > 0.1                     # not the illegal best action
    # Make the illegal action best by a mile in the online network too: still never chosen.
    online = np.array(ONLINE_PROBS)
    online[0, 0] = [0.0, 0.0, 0.0, 0.0, 1.0]
    np.testing.assert_allclose(jax_target(terminal, online=online)[0], reference_with_action(0, 1), atol=2e-6)


# ---------------------------------------------------------------------------------------------- acting


@pytest.fixture(scope="module")
def state_preferring_illegal_actions():
    """A learner whose head puts the mass of the action that no task may take on v_max: an unmasked argmax would
    pick it everywhere."""
    state = make_state()
    params = jax.tree.map(jnp.copy, state.params)
    head = params["params"]["trunk"][f"Dense_{1 + 2 * CONFIG.depth}"]
    bias = head["bias"].reshape(NUM_ACTIONS, CONFIG.num_bins)
    for action in range(NUM_ACTIONS):
        if not MASK[:, action].any():
            bias = bias.at[action, -1].set(100.0)
    head["bias"] = bias.reshape(-1)
    return state.replace(params=params)


def test_act_never_chooses_an_illegal_action(state_preferring_illegal_actions):
    state = state_preferring_illegal_actions
    envs_per_task, draws = 16, 64
    obs = jax.random.bernoulli(jax.random.PRNGKey(1), 0.3, (NUM_TASKS, envs_per_task, *GRID)).astype(jnp.uint8)
    keys = jax.random.split(jax.random.PRNGKey(2), draws)
    act_many = jax.jit(jax.vmap(brc_discrete.act, in_axes=(None, None, 0, None)))
    legal = MASK[:, None, :]

    # The premise: without the mask the greedy choice would be illegal everywhere.
    logits = brc_discrete._network(CONFIG, NUM_ACTIONS, NUM_TASKS).apply(
        state.params, obs, jnp.broadcast_to(jnp.arange(NUM_TASKS)[:, None], obs.shape[:2]))
    support = categorical.make_support(CONFIG.num_bins, CONFIG.v_min, CONFIG.v_max)
    unmasked = np.asarray(jnp.argmax(brc_discrete.q_values(logits, support), axis=-1))
    assert not np.take_along_axis(np.broadcast_to(legal, (*unmasked.shape, NUM_ACTIONS)), unmasked[..., None], -1).any()

    for epsilon in (0.0, 0.3, 1.0):
        actions = np.asarray(act_many(state, obs, keys, epsilon))                 # [draws, T, E]
        chex.assert_shape(actions, (draws, NUM_TASKS, envs_per_task))
        chosen_legal = np.take_along_axis(np.broadcast_to(legal, (*actions.shape, NUM_ACTIONS)), actions[..., None],
                                          -1)
        assert chosen_legal.all(), f"epsilon={epsilon}: an illegal action was chosen"
        if epsilon == 1.0:  # uniform over the legal actions: every legal action shows up, in fair proportion
            for task in range(NUM_TASKS):
                counts = np.bincount(actions[:, task].ravel(), minlength=NUM_ACTIONS)
                expected = actions[:, task].size / MASK[task].sum()
                assert np.all(np.abs(counts[MASK[task]] - expected) < 0.15 * expected), (task, counts)


def test_epsilon_schedule():
    config = dataclasses.replace(CONFIG, envs_per_task=2, random_steps=10, epsilon_start=1.0, epsilon_end=0.1,
                                 epsilon_decay_steps=100, steps_per_chunk=10)
    state = make_state(config)
    at = lambda iteration: float(brc_discrete.epsilon(state.replace(iteration=jnp.asarray(iteration))))  # noqa: E731
    assert at(0) == at(4) == 1.0                                   # random phase: 5 iterations of 2 envs
    assert at(5) == pytest.approx(1.0)                             # decay starts when the random phase ends
    assert at(5 + 25) == pytest.approx(1.0 - 0.9 * 0.5)           # 50 of 100 env steps per task
    assert at(5 + 50) == at(5 + 500) == pytest.approx(0.1)


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
def fixed_loss(state: brc_discrete.TrainState, batch: dict) -> jax.Array:
    return brc_discrete.q_loss(state.params, state, batch, brc_discrete.reward_scale(state))[0]


def test_loss_decreases_and_target_moves_by_tau(batch):
    state = make_state()
    before = float(fixed_loss(state, batch))
    new_state, info = update(state, batch)
    assert set(info) >= {"q_loss", "q_mean", "target_q_mean", "normalized_reward"}
    expected = jax.tree.map(lambda online, target: CONFIG.tau * online + (1 - CONFIG.tau) * target,
                            new_state.params, state.target_params)
    jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7),
                 new_state.target_params, expected)
    for _ in range(40):
        new_state, info = update(new_state, batch)
    after = float(fixed_loss(new_state, batch))
    assert np.isfinite(after) and after < 0.8 * before, (before, after)


def test_periodic_hard_target_copy(batch):
    config = dataclasses.replace(CONFIG, tau=1.0, target_update_period=3)
    state = make_state(config)
    hard_update = jax.jit(brc_discrete.update)
    initial_target = state.target_params
    for step in range(1, 7):
        state, _ = hard_update(state, batch)
        if step % 3:
            jax.tree.map(np.testing.assert_array_equal, state.target_params, initial_target)
        else:
            jax.tree.map(np.testing.assert_array_equal, state.target_params, state.params)
            initial_target = state.target_params


# ---------------------------------------------------------------------------------------------- n-step returns


def numpy_n_step(windows: dict, gamma: float) -> dict:
    """Float64 loop: sum rewards until (and including) the first step that ends an episode, bootstrap from there."""
    reward = np.asarray(windows["reward"], np.float64)
    batch_size, n = reward.shape
    out = {name: [] for name in ("obs", "action", "reward", "next_obs", "terminal", "truncated", "discount")}
    for b in range(batch_size):
        total, k = 0.0, 0
        while True:
            total += gamma**k * reward[b, k]
            if windows["terminal"][b, k] or windows["truncated"][b, k] or k == n - 1:
                break
            k += 1
        out["obs"].append(windows["obs"][b, 0])
        out["action"].append(windows["action"][b, 0])
        out["reward"].append(total)
        out["discount"].append(gamma ** (k + 1))
        for name in ("next_obs", "terminal", "truncated"):
            out[name].append(windows[name][b, k])
    return {name: np.array(values) for name, values in out.items()}


def test_n_step_transitions_match_a_float64_reference():
    rng = np.random.default_rng(7)
    batch_size, n, gamma = 128, 4, 0.9
    shape = (batch_size, n)
    windows = {"obs": rng.integers(0, 255, (*shape, 3), dtype=np.uint8), "action": rng.integers(0, 6, shape),
               "reward": rng.normal(size=shape).astype(np.float32),
               "next_obs": rng.integers(0, 255, (*shape, 3), dtype=np.uint8),
               "terminal": rng.random(shape) < 0.2, "truncated": rng.random(shape) < 0.15}
    got = jax.jit(brc_discrete.n_step_transitions, static_argnums=1)(
        jax.tree.map(jnp.asarray, windows), gamma)
    want = numpy_n_step(windows, gamma)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(np.asarray(got[name], np.float64), want[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    # The sample exercises every case: windows cut at each step and windows that run all n steps.
    steps = np.round(np.log(want["discount"]) / np.log(gamma)).astype(int)
    assert set(steps.ravel()) == set(range(1, n + 1))


def test_one_step_windows_give_the_plain_one_step_update(batch):
    transitions = {name: value for name, value in batch.items() if name != "task_id"}
    windows = jax.tree.map(lambda x: x[:, None], transitions)
    folded = brc_discrete.n_step_transitions(windows, CONFIG.gamma)
    np.testing.assert_allclose(folded["discount"], CONFIG.gamma, rtol=1e-6)
    for name in transitions:
        np.testing.assert_array_equal(folded[name], batch[name])
    folded["task_id"] = batch["task_id"]
    state = make_state()
    plain, _ = update(state, batch)
    n_step, _ = update(state, folded)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), plain.params, n_step.params)


# ---------------------------------------------------------------------------------------------- config and init


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
    with pytest.raises(ValueError, match="n_step=3 needs replay_capacity=1001 to be a multiple of envs_per_task=2"):
        brc_discrete.Config(n_step=3, replay_capacity=1001, envs_per_task=2)
    with pytest.raises(ValueError, match=r"random_steps=3 must be at least \(n_step - 1\) \* envs_per_task = 4"):
        brc_discrete.Config(n_step=3, random_steps=3, envs_per_task=2)
    with pytest.raises(ValueError, match="batch_size=1 is smaller than the number of tasks 2"):
        make_state(dataclasses.replace(CONFIG, batch_size=1))
    with pytest.raises(ValueError, match=r"tasks \[1\] have none"):
        brc_discrete.init(jax.random.PRNGKey(0), CONFIG, obs_shape=GRID, num_actions=2, num_tasks=2,
                          action_mask=[[True, False], [False, False]])
    continuous = types.SimpleNamespace(discrete=False, task_names=("cheetah-run",))
    with pytest.raises(ValueError, match="continuous: use purejaxmt.brc"):
        brc_discrete.init(jax.random.PRNGKey(0), CONFIG, continuous)
    # Lists (a config read back from JSON) become tuples: the config stays hashable, i.e. usable as static.
    assert hash(brc_discrete.Config(conv_channels=[8], conv_kernel_sizes=[3], conv_strides=[1])) is not None


def test_minatar_replay_keeps_compact_observations():
    env = envs.make("Breakout-MinAtar,Asterix-MinAtar", minimal_action_set=True)  # 3 and 5 legal actions
    config = dataclasses.replace(CONFIG, replay_capacity=100, batch_size=4)
    state = jax.eval_shape(lambda key: brc_discrete.init(key, config, env), jax.random.PRNGKey(0))
    data = state.replay.data
    assert data["obs"].dtype == data["next_obs"].dtype == jnp.uint8
    chex.assert_shape(data["obs"], (2, 100, 10, 10, 4))
    assert data["action"].dtype == jnp.int32 and data["action"].shape == (2, 100)
    stored = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(data))
    assert brc_discrete.replay_nbytes(config, env) == stored + 2 * 2 * 4       # + pointer and size counters
    np.testing.assert_array_equal(env.action_mask, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert state.action_mask.shape == (2, 5) and state.action_mask.dtype == bool


# ---------------------------------------------------------------------------------------------- learning


@pytest.mark.parametrize("n_step", [1, 3])
def test_learns_cartpole_within_a_small_budget(n_step):
    """Chunk 1 is all random actions: its mean episode return is the random policy's. Four chunks of learning later
    the greedy policy must do three times better (it reaches ~300 in this budget; random is ~20)."""
    env = envs.make("CartPole-v1")
    config = brc_discrete.Config(width=64, depth=1, num_bins=51, vector_encoder_width=64, embed_dim=8, n_step=n_step,
                                 learning_rate=1e-3, tau=0.01, batch_size=64, envs_per_task=4, updates_per_step=1,
                                 replay_capacity=10_000, random_steps=1000, epsilon_decay_steps=2000,
                                 total_steps=5000, steps_per_chunk=1000, eval_episodes=8)
    state = brc_discrete.init(jax.random.PRNGKey(0), config, env)
    train_chunk = jax.jit(brc_discrete.train_chunk, donate_argnums=0)
    state, metrics = train_chunk(state)
    random_return = float(metrics["episode_return"][0])
    assert int(metrics["num_updates"]) == 0 and 10 < random_return < 40, metrics
    for _ in range(4):
        state, metrics = train_chunk(state)
    assert int(metrics["env_steps"]) == 5000 and np.isfinite(float(metrics["q_loss"]))
    greedy_return = float(jax.jit(brc_discrete.evaluate)(state, jax.random.PRNGKey(1))["return"][0])
    assert greedy_return > 3 * random_return, (greedy_return, random_return)

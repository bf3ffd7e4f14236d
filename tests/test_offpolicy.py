"""The shared off-policy loop: n-step transitions against a float64 NumPy reference, loop config validation, settings
as data (one compiled program, a vmapped batch of learning rates, each row equal to its own single run), the chunk's
counters, n-step returns for continuous BRC, and reward normalisation switched off."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxmt import envs, offpolicy, replay
from purejaxmt.agents import brc, brc_discrete
from purejaxmt.envs import ActionSpec, EnvSpec
from purejaxmt.runner import devices

GAMMA = 0.99  # LoopConfig's default
# Pendulum (continuous BRC, n-step returns): 2 envs per task, 30 iterations a chunk, the first 10 random (20 env steps
# per task), episodes cut at 20 steps so that every env finishes one inside the first chunk, and n-step windows get
# cut at the time limit.
LOOP = offpolicy.LoopConfig(envs_per_task=2, replay_capacity=256, batch_size=32, updates_per_step=1, n_step=3,
                            random_steps=20, total_steps=120, steps_per_chunk=60, eval_episodes=2)
AGENT_CONFIG = brc.Config(critic_width=32, critic_depth=1, actor_width=16, num_bins=21, embed_dim=8)
LEARNING_RATES = (1e-3, 1e-2)


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


def random_windows(rng: np.random.Generator, batch_size: int, n: int) -> dict:
    shape = (batch_size, n)
    return {"obs": rng.integers(0, 255, (*shape, 3), dtype=np.uint8), "action": rng.integers(0, 6, shape),
            "reward": rng.normal(size=shape).astype(np.float32),
            "next_obs": rng.integers(0, 255, (*shape, 3), dtype=np.uint8),
            "terminal": rng.random(shape) < 0.2, "truncated": rng.random(shape) < 0.15}


# ---------------------------------------------------------------------------------------------- n-step transitions


def test_n_step_transitions_match_a_float64_reference():
    batch_size, n, gamma = 128, 4, 0.9
    windows = random_windows(np.random.default_rng(7), batch_size, n)
    got = jax.jit(offpolicy.n_step_transitions)(jax.tree.map(jnp.asarray, windows), gamma)  # gamma is data
    want = numpy_n_step(windows, gamma)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(np.asarray(got[name], np.float64), want[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    # The sample exercises every case: windows cut at each step and windows that run all n steps.
    steps = np.round(np.log(want["discount"]) / np.log(gamma)).astype(int)
    assert set(steps.ravel()) == set(range(1, n + 1))


def test_one_step_windows_are_the_one_step_transition():
    """n_step = 1: the fold changes nothing and bootstraps with gamma, as the loop's plain one-step batches do."""
    transitions = jax.tree.map(lambda x: jnp.asarray(x[:, 0]), random_windows(np.random.default_rng(3), 64, 1))
    folded = offpolicy.n_step_transitions(jax.tree.map(lambda x: x[:, None], transitions), 0.97)
    assert set(folded) == set(transitions) | {"discount"}
    for name in transitions:
        assert folded[name].dtype == transitions[name].dtype, name
        np.testing.assert_array_equal(folded[name], transitions[name], err_msg=name)
    np.testing.assert_allclose(folded["discount"], np.full(64, 0.97, np.float32), rtol=1e-7)


# ---------------------------------------------------------------------------------------------- configs


def test_loop_config_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="n_step=3 needs replay_capacity=1001 to be a multiple of envs_per_task=2"):
        offpolicy.LoopConfig(n_step=3, replay_capacity=1001, envs_per_task=2)
    with pytest.raises(ValueError, match=r"random_steps=3 must be at least \(n_step - 1\) \* envs_per_task = 4"):
        offpolicy.LoopConfig(n_step=3, random_steps=3, envs_per_task=2)
    with pytest.raises(ValueError, match="steps_per_chunk=15 must be a multiple of envs_per_task=2"):
        offpolicy.LoopConfig(steps_per_chunk=15, envs_per_task=2)
    with pytest.raises(ValueError, match=r"gamma=1.0 must be in \[0, 1\)"):
        offpolicy.LoopConfig(gamma=1.0)
    with pytest.raises(ValueError, match="batch_size=0 must be >= 1"):
        offpolicy.LoopConfig(batch_size=0)
    with pytest.raises(ValueError, match="random_steps=-1 must be >= 0"):
        offpolicy.LoopConfig(random_steps=-1)
    assert LOOP.iterations_per_chunk == 30 and LOOP.random_iterations == 10 and LOOP.num_chunks == 2
    assert dataclasses.replace(LOOP, random_steps=21).random_iterations == 11
    # make checks what needs the env: batches are task-balanced.
    with pytest.raises(ValueError, match="batch_size=1 is smaller than the number of tasks 2"):
        offpolicy.make(brc_discrete.AGENT_SPEC, brc_discrete.Config(), dataclasses.replace(LOOP, batch_size=1),
                       envs.make("CartPole-v1,Acrobot-v1"))


# ---------------------------------------------------------------------------------------------- one program, many runs


class DiscountSpy(brc.Agent):
    """BRC that also reports what its batches held, as update metrics (averaged by the chunk): whether every
    `discount` is gamma^m with m <= 3, the share of full 3-step windows, terminals, and the raw reward."""

    def update(self, learner, hyper, batch, reward_scale, key, num_updates):
        learner, info = super().update(learner, hyper, batch, reward_scale, key, num_updates)
        discount = batch["discount"]
        powers = GAMMA ** jnp.arange(1, 4, dtype=jnp.float32)                                        # [3]
        nearest = jnp.abs(discount[:, None] - powers).min(axis=-1)
        return learner, {**info,
                         "discount_is_a_power": (nearest < 1e-6).mean(),
                         "discount_full_window": (jnp.abs(discount - powers[-1]) < 1e-6).mean(),
                         "terminal_fraction": batch["terminal"].mean(),
                         "raw_reward": batch["reward"].mean()}


SPY = dataclasses.replace(brc.AGENT_SPEC, make_agent=DiscountSpy)


def hyper_with(learning_rate: float = LEARNING_RATES[0], **loop_changes) -> offpolicy.Hyper:
    return offpolicy.hyper_of(brc.AGENT_SPEC, dataclasses.replace(AGENT_CONFIG, learning_rate=learning_rate),
                              dataclasses.replace(LOOP, **loop_changes))


def lockstep_axes(state: offpolicy.RunState) -> offpolicy.RunState:
    """vmap axes of a batched run state: 0 everywhere but the lockstep counters (`runner.devices.runs_axes`)."""
    axes = jax.tree.map(lambda _: 0, state)
    return axes.replace(**{name: None for name in offpolicy.RunState.LOCKSTEP_FIELDS})


def row_of(state: offpolicy.RunState, row: int) -> offpolicy.RunState:
    lockstep = {name: getattr(state, name) for name in offpolicy.RunState.LOCKSTEP_FIELDS}
    return jax.tree.map(lambda x: x[row], state.replace(**{name: None for name in lockstep})).replace(**lockstep)


@dataclasses.dataclass(frozen=True)
class Trained:
    program: offpolicy.Program
    train_chunk: Callable
    key: jax.Array
    runs: list  # (initial state, state after one chunk, its metrics) per learning rate


@pytest.fixture(scope="module")
def pendulum() -> Trained:
    """One Pendulum program, its jitted chunk (not donated: tests reuse states) and one single run per learning
    rate, all from the same key."""
    assert LOOP.gamma == GAMMA
    program = offpolicy.make(SPY, AGENT_CONFIG, LOOP, envs.make("Pendulum-v1", episode_length=20))
    train_chunk = jax.jit(program.train_chunk)
    key = jax.random.PRNGKey(5)
    runs = []
    for learning_rate in LEARNING_RATES:
        # Op by op, as the runner does: a jitted init (the orthogonal initialisers' LAPACK QR calls in one program)
        # intermittently never finished executing on the 2-core CPU (jax 0.10.2).
        initial = program.init(key, hyper_with(learning_rate))
        state, metrics = train_chunk(initial)
        runs.append((initial, state, metrics))
    return Trained(program=program, train_chunk=train_chunk, key=key, runs=runs)


def test_one_program_runs_a_vmapped_batch_of_learning_rates(pendulum):
    """Two configs that differ only in learning rate, stacked as data: one vmapped init and one vmapped chunk of the
    same program give, row by row, the single run with that rate (same key), and the rows differ."""
    program = pendulum.program
    hypers = jax.tree.map(lambda a, b: jnp.stack([a, b]), *[hyper_with(rate) for rate in LEARNING_RATES])
    np.testing.assert_allclose(hypers.agent.learning_rate, LEARNING_RATES)
    keys = jnp.stack([pendulum.key, pendulum.key])  # the same key: only the learning rate tells the rows apart
    states = jax.vmap(program.init)(keys, hypers)  # op by op: see the fixture
    states = states.replace(**{name: getattr(states, name)[0] for name in offpolicy.RunState.LOCKSTEP_FIELDS})
    axes = lockstep_axes(states)
    train_chunks = jax.jit(jax.vmap(program.train_chunk, in_axes=(axes,), out_axes=(axes, 0)))
    states_after, metrics = train_chunks(states)
    assert states_after.iteration.shape == () and int(states_after.num_updates) == 20

    for row, (initial, single, single_metrics) in enumerate(pendulum.runs):
        jax.tree.map(np.testing.assert_array_equal, row_of(states, row), initial)
        jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6),
                     row_of(states_after, row), single)
        jax.tree.map(lambda got, want: np.testing.assert_allclose(got[row], want, rtol=1e-5, atol=1e-6),
                     metrics, single_metrics)
    # The rows differ: the learning rate reached the updates.
    first, second = (run[1].learner.critic_params for run in pendulum.runs)
    difference = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)))
    assert difference > 1e-3, difference
    assert not np.allclose(metrics["critic_loss"][0], metrics["critic_loss"][1])


def test_a_runs_axis_of_one_run_is_the_run_itself(pendulum):
    """The runner batches a single run too: over a runs axis of size 1 the chunk and the evaluation run un-vmapped
    (`runner.devices.vmap_train_chunk`), so they give the single run bit for bit (a batched size-1 program differs in
    float rounding and, on XLA:CPU, ran ~1.4x slower), and the lockstep counters stay unbatched."""
    program, (initial, single, single_metrics) = pendulum.program, pendulum.runs[0]
    states = jax.tree.map(lambda x: x[None], initial.replace(iteration=None, num_updates=None)).replace(
        iteration=initial.iteration, num_updates=initial.num_updates)
    states_after, metrics = jax.jit(devices.vmap_train_chunk(program, states))(states)
    assert states_after.iteration.shape == () and states_after.num_updates.shape == ()
    jax.tree.map(np.testing.assert_array_equal, row_of(states_after, 0), single)
    jax.tree.map(lambda got, want: np.testing.assert_array_equal(got[0], want), metrics, single_metrics)

    keys = jax.random.split(pendulum.key, 1)
    evaluation = jax.jit(devices.vmap_evaluate(program, states_after))(states_after, keys)
    want = jax.jit(program.evaluate)(single, keys[0])
    jax.tree.map(lambda got, want: np.testing.assert_array_equal(got[0], want), evaluation, want)


def test_continuous_brc_updates_on_n_step_batches(pendulum):
    """n_step = 3: the chunk's metrics are finite, and every batch the BRC update saw bootstraps with gamma^m,
    m <= 3: gamma^3 for most rows, less where a window reached an episode's time limit (20 steps). (That the n-step
    target is right is `test_n_step_transitions_match_a_float64_reference` and tests/test_references.py; this run is
    too short to show learning.)"""
    _, _, metrics = pendulum.runs[0]
    for name, value in metrics.items():
        assert np.isfinite(np.asarray(value)).all(), (name, value)
    assert float(metrics["discount_is_a_power"]) == 1.0
    assert 0.5 < float(metrics["discount_full_window"]) < 1.0, metrics["discount_full_window"]
    assert float(metrics["terminal_fraction"]) == 0.0  # Pendulum never terminates: the cut windows were truncated


def test_chunk_counts_steps_and_updates_from_the_end_of_the_random_phase(pendulum):
    """30 iterations of 2 envs: the first 10 are random, each of the other 20 makes one update; every env finished an
    episode (limit 20). The next chunk updates at every iteration."""
    _, state, metrics = pendulum.runs[0]
    assert int(metrics["step"]) == 60 and int(state.iteration) == 30
    assert int(metrics["num_updates"]) == int(state.num_updates) == 20
    assert float(metrics["episodes"][0]) == 2 and np.isfinite(metrics["return"]).all()
    state, metrics = pendulum.train_chunk(state)
    assert int(metrics["step"]) == 120 and int(metrics["num_updates"]) == 50
    assert float(metrics["episodes"][0]) == 4  # each env's episodes end at its steps 40 and 60


def test_normalize_rewards_off_gives_unit_reward_scale(pendulum):
    """`normalize_rewards` is data: the same compiled chunk with it off scales every task's rewards by 1 (the batches'
    normalised reward is their raw reward), while on it is V_max / (G + the entropy term)."""
    initial, _, normalized = pendulum.runs[0]
    assert not np.allclose(normalized["reward_scale"], 1.0)             # the premise: a return range was measured
    assert not np.allclose(normalized["normalized_reward"], normalized["raw_reward"], rtol=1e-3)
    _, metrics = pendulum.train_chunk(initial.replace(hyper=hyper_with(normalize_rewards=False)))
    np.testing.assert_array_equal(metrics["reward_scale"], np.ones(1, np.float32))
    np.testing.assert_allclose(metrics["normalized_reward"], metrics["raw_reward"], rtol=1e-6)
    assert int(metrics["num_updates"]) == 20 and np.isfinite(float(metrics["critic_loss"]))


# ---------------------------------------------------------------------------------------------- replay of real envs


@pytest.mark.parametrize("tasks, episode_length, falls", [("Pendulum-v1,MountainCarContinuous-v0", 7, False),
                                                          ("CartPole-v1", 15, True),
                                                          ("Breakout-MinAtar,Freeway-MinAtar", 15, False)])
def test_the_observation_once_replay_reads_back_every_transition_of_real_envs(tasks, episode_length, falls):
    """The env contract the replay relies on (`next_obs` is the next observation acted on unless the episode ended)
    holds for real envs: their transitions, truncated (time limit 7 or 15) and terminal (CartPole), MinAtar's uint8
    grids among them, read back from the observation-once layout exactly as the every-field layout stores them,
    across the ring's wrap."""
    env, num_envs, capacity = envs.make(tasks, episode_length=episode_length), 3, 30
    example = offpolicy.replay_example(env.spec)
    agent_spec = brc_discrete.AGENT_SPEC if env.spec.action.discrete else brc.AGENT_SPEC
    agent = agent_spec.make_agent(agent_spec.config_type(critic_width=8, critic_depth=1, embed_dim=4), env.spec)

    def step(env_state, key):
        env_state, transition = env.step(env_state, agent.random_action(key, num_envs))
        return env_state, {name: getattr(transition, name) for name in example}

    env_state, _ = env.reset(jax.random.PRNGKey(0), num_envs)
    _, stream = jax.jit(lambda s: jax.lax.scan(step, s, jax.random.split(jax.random.PRNGKey(1), 40)))(env_state)
    assert np.asarray(stream["truncated"]).any()
    assert np.asarray(stream["terminal"]).any() or not falls  # CartPole falls within 15 steps
    plain, once = replay.init(example, capacity), replay.init(example, capacity, num_envs)
    add = jax.jit(replay.add)
    for k in range(40):
        batch = jax.tree.map(lambda x, k=k: x[k], stream)
        plain, once = add(plain, batch), add(once, batch)
    task_id = jnp.repeat(jnp.arange(env.num_tasks), capacity)
    slots = jnp.tile(jnp.arange(capacity), env.num_tasks)
    got = replay._read(once, task_id, slots)
    for name in example:
        np.testing.assert_array_equal(got[name], plain.data[name][task_id, slots], err_msg=name)


def test_compact_obs_stores_bfloat16_and_the_update_gets_float32():
    """`compact_obs`: float observations stored as bfloat16 (half the bytes), handed to the agent as float32 rounded
    to bfloat16; the other fields and integer observations untouched."""
    spec = EnvSpec(task_names=("a", "b"), obs_shape=(5,), obs_dtype=np.float32,
                   action=ActionSpec(discrete=False, size=2, mask=np.ones((2, 2), bool)), episode_length=(10, 10))
    example, compact = offpolicy.replay_example(spec), offpolicy.replay_example(spec, compact_obs=True)
    assert compact["obs"].dtype == compact["next_obs"].dtype == jnp.bfloat16
    assert {name: leaf.dtype for name, leaf in compact.items() if "obs" not in name} == {
        name: leaf.dtype for name, leaf in example.items() if "obs" not in name}
    minatar = dataclasses.replace(spec, obs_dtype=np.uint8)
    assert offpolicy.replay_example(minatar, compact_obs=True)["obs"].dtype == jnp.uint8
    loop = offpolicy.LoopConfig(envs_per_task=2, replay_capacity=8, batch_size=16, random_steps=0, steps_per_chunk=2)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(2, 2, 5)).astype(np.float32)
    batch = {"obs": obs, "action": np.zeros((2, 2, 2), np.float32), "reward": np.zeros((2, 2), np.float32),
             "next_obs": obs + 1, "terminal": np.zeros((2, 2), bool), "truncated": np.ones((2, 2), bool)}
    state = replay.init(compact, 8, 2, loop.final_capacity)
    state = replay.add(state, {name: jnp.asarray(value, compact[name].dtype) for name, value in batch.items()})
    assert replay.nbytes(compact, 8, 2, 8) < 0.8 * replay.nbytes(example, 8, 2, 8)
    sampled = offpolicy.sample_batch(state, jax.random.PRNGKey(0), loop, jnp.float32(0.9), spec.obs_dtype)
    assert sampled["obs"].dtype == sampled["next_obs"].dtype == jnp.float32
    rounded = np.asarray(jnp.asarray(obs, jnp.bfloat16).astype(jnp.float32))
    for row, task in zip(np.asarray(sampled["obs"]), np.asarray(sampled["task_id"])):
        assert any(np.array_equal(row, rounded[task, e]) for e in range(2))

"""BRC for discrete actions: a big, regularised, categorical, task-conditioned Q-network (C51 with double Q).

The discrete, vision-based variant of Nauman et al. (2025), "Bigger, Regularized, Categorical" (BRC), for which no
public code exists (BRC.md): a conv encoder (Dense for vector observations), the unit-norm task embedding joined
after it, a BroNet trunk and a `num_actions x num_bins` categorical head; a target network; the per-task reward
normalisation of continuous BRC (without the entropy term: there is no temperature); epsilon-greedy acting over each
task's legal actions; task-balanced replay; optional n-step returns (`Config.n_step`, default 1 as in BRC).

1. `Config`      defaults from BRC.md where it gives them, C51/DQN-on-MinAtar values otherwise.
2. `TrainState`  everything a run is, so one checkpoint restores one run.
3. `init`        builds the state; every random draw descends from the one key.
4. loss          `double_q_target` (a pure function of logits) and `q_loss` (categorical cross-entropy).
5. `update`      `n_step_transitions` folds sampled windows into n-step transitions; a Q-network step, then the
                 target network (Polyak, or a hard copy every N updates).
6. `train_chunk` a `lax.scan` of iterations: act (epsilon-greedy), step all `[T, E]` envs, store, update.
7. `evaluate`    greedy policy, fresh episodes, per-task returns.

Shapes: `T` tasks, `E` envs per task, `B` transitions in a batch (task-balanced: `B // T` per task), `K` atoms,
`A` actions (one shared action set; `action_mask [T, A]` marks each task's legal ones), `*O` the observation shape
(`[H, W, C]` for MinAtar, `[D]` for classic control).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import chex
import flax.struct as struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from purejaxmt import categorical, chunk_metrics, nets, normalize, replay

Params = Any
Metrics = dict[str, jax.Array]


# ----------------------------------------------------------------------------------------------------------------------
# 1. Config
# ----------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Config:
    """Discrete BRC hyperparameters. Defaults: BRC.md's settings (critic size, support, optimiser, gamma, tau,
    updates per step, batch, replay, random phase, budget, evaluation); DQN-on-MinAtar values for what BRC.md does not
    give (encoder, epsilon schedule)."""

    # -- network --
    width: int = 4096
    """BroNet trunk width (BRC.md's critic; a single network, no ensemble)."""
    depth: int = 2
    """Residual blocks of the trunk."""
    embed_dim: int = 32
    """Width of the unit-norm task embedding (unused when there is a single task)."""
    conv_channels: tuple[int, ...] = (16, 32)
    """Output channels of each conv layer of the image encoder (VALID padding, ReLU after each)."""
    conv_kernel_sizes: tuple[int, ...] = (3, 3)
    conv_strides: tuple[int, ...] = (1, 1)
    vector_encoder_width: int = 256
    """Width of the `Dense -> LN -> ReLU` encoder used for vector observations."""
    num_bins: int = 101
    v_min: float = -10.0
    v_max: float = 10.0
    compute_dtype: str = "float32"
    """Dtype of the convs and matmuls ("bfloat16" on GPU/TPU); parameters, optimiser state and losses stay float32."""

    # -- optimisation --
    learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    """AdamW weight decay (optax's default, as in continuous BRC)."""
    gamma: float = 0.99
    n_step: int = 1
    """Steps of the bootstrapped return: 1 is BRC's one-step target; n > 1 sums n discounted rewards (fewer where an
    episode ends sooner) before bootstrapping with gamma^n, propagating sparse rewards n times faster (Rainbow's
    n-step). Needs `replay_capacity` to be a multiple of `envs_per_task`."""
    tau: float = 0.005
    """Target update step: `target <- tau * online + (1 - tau) * target`; tau = 1 is a hard copy."""
    target_update_period: int = 1
    """Update the target every this many gradient updates (DQN's hard copy: tau=1, period e.g. 1000)."""
    updates_per_step: int = 2
    """Gradient updates per environment iteration (one iteration steps all `T x E` envs once)."""
    batch_size: int = 1024
    """Transitions per update, drawn task-balanced (`batch_size // T` from each task, the remainder from tasks drawn
    at random per update)."""

    # -- exploration --
    epsilon_start: float = 1.0
    epsilon_end: float = 0.01
    epsilon_decay_steps: int = 100_000
    """Env steps per task over which epsilon falls linearly from start to end, counted from the end of the random
    phase (MinAtar's DQN convention)."""

    # -- replay and schedule --
    replay_capacity: int = 1_000_000
    """Transitions kept per task (observations in the env's compact dtype)."""
    envs_per_task: int = 1
    random_steps: int = 5000
    """Env steps per task of uniform random legal actions before the first update."""
    total_steps: int = 1_000_000
    """Env steps per task of the whole run."""
    steps_per_chunk: int = 10_000
    """Env steps per task in one compiled chunk (the host logs between chunks)."""
    eval_episodes: int = 10
    """Greedy evaluation episodes per task."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("width", "num_bins", "vector_encoder_width", "n_step", "target_update_period", "updates_per_step",
                     "batch_size", "epsilon_decay_steps", "replay_capacity", "envs_per_task", "total_steps",
                     "steps_per_chunk", "eval_episodes"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("depth", "embed_dim", "random_steps"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        if self.num_bins < 2:
            problems.append(f"num_bins={self.num_bins} must be >= 2")
        conv = (tuple(self.conv_channels), tuple(self.conv_kernel_sizes), tuple(self.conv_strides))
        if not len(conv[0]) == len(conv[1]) == len(conv[2]):
            problems.append(f"conv_channels={conv[0]}, conv_kernel_sizes={conv[1]} and conv_strides={conv[2]} must "
                            "have one entry per conv layer (the same length)")
        if any(v < 1 for v in (*conv[0], *conv[1], *conv[2])):
            problems.append(f"conv_channels={conv[0]}, conv_kernel_sizes={conv[1]}, conv_strides={conv[2]}: every "
                            "entry must be >= 1")
        if not self.v_min < self.v_max:
            problems.append(f"v_min={self.v_min} must be < v_max={self.v_max}")
        if not 0.0 <= self.gamma < 1.0:
            problems.append(f"gamma={self.gamma} must be in [0, 1)")
        if not 0.0 < self.tau <= 1.0:
            problems.append(f"tau={self.tau} must be in (0, 1]")
        for name in ("epsilon_start", "epsilon_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name}={getattr(self, name)} must be in [0, 1]")
        if self.compute_dtype not in ("float32", "bfloat16", "float16"):
            problems.append(f"compute_dtype={self.compute_dtype!r}; choose 'float32', 'bfloat16' or 'float16'")
        if self.envs_per_task >= 1 and self.steps_per_chunk % self.envs_per_task:
            problems.append(f"steps_per_chunk={self.steps_per_chunk} must be a multiple of "
                            f"envs_per_task={self.envs_per_task}")
        if self.replay_capacity < self.envs_per_task:
            problems.append(f"replay_capacity={self.replay_capacity} is smaller than envs_per_task="
                            f"{self.envs_per_task}")
        if self.n_step > 1 and self.envs_per_task >= 1 and (self.replay_capacity % self.envs_per_task or
                                                             self.replay_capacity <= self.n_step * self.envs_per_task):
            problems.append(f"n_step={self.n_step} needs replay_capacity={self.replay_capacity} to be a multiple of "
                            f"envs_per_task={self.envs_per_task} (so each env's steps stay in order across the ring's "
                            f"wrap) and larger than n_step * envs_per_task")
        if self.random_steps < (self.n_step - 1) * self.envs_per_task:
            problems.append(f"random_steps={self.random_steps} must be at least (n_step - 1) * envs_per_task = "
                            f"{(self.n_step - 1) * self.envs_per_task}: the first update needs one n-step window "
                            "of every env in the buffer")
        if problems:
            raise ValueError("Invalid discrete BRC config: " + "; ".join(problems))
        # Tuples, also when given as lists (a config read back from JSON): the config must stay hashable (static).
        for name in ("conv_channels", "conv_kernel_sizes", "conv_strides"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))

    @property
    def iterations_per_chunk(self) -> int:
        return self.steps_per_chunk // self.envs_per_task

    @property
    def random_iterations(self) -> int:
        return math.ceil(self.random_steps / self.envs_per_task)


def _network(config: Config, num_actions: int, num_tasks: int) -> nets.QNetwork:
    return nets.QNetwork(num_actions=num_actions, num_bins=config.num_bins, num_tasks=num_tasks, width=config.width,
                         depth=config.depth, embed_dim=config.embed_dim, conv_channels=config.conv_channels,
                         conv_kernel_sizes=config.conv_kernel_sizes, conv_strides=config.conv_strides,
                         vector_encoder_width=config.vector_encoder_width, dtype=jnp.dtype(config.compute_dtype))


def _optimizer(config: Config) -> optax.GradientTransformation:
    return optax.adamw(config.learning_rate, weight_decay=config.weight_decay)


# ----------------------------------------------------------------------------------------------------------------------
# 2. TrainState
# ----------------------------------------------------------------------------------------------------------------------
@struct.dataclass
class TrainState:
    """Everything a run is. Arrays are pytree leaves; `config` and `env` are static (part of the tree structure).
    `LOCKSTEP_FIELDS` are the same in every run of a vmapped batch: the runner keeps them outside the vmapped axis
    (see `brc.TrainState`)."""

    LOCKSTEP_FIELDS: ClassVar[tuple[str, ...]] = ("iteration", "num_updates")

    params: Params                       # the online Q-network (encoder, task embedding, trunk, head)
    target_params: Params
    opt_state: optax.OptState
    normalizer: normalize.NormalizerState
    action_mask: jax.Array               # [T, A] bool: each task's legal actions
    key: jax.Array
    iteration: jax.Array                 # [] int32, env iterations done (env steps per task = iteration * E)
    num_updates: jax.Array               # [] int32
    replay: replay.ReplayState | None = None
    env_state: Any = None                # envs.EnvState; None for a learner-only state (see `init`)
    config: Config = struct.field(pytree_node=False, default=None)
    env: Any = struct.field(pytree_node=False, default=None)

    @property
    def num_tasks(self) -> int:
        return self.action_mask.shape[-2]

    @property
    def num_actions(self) -> int:
        return self.action_mask.shape[-1]

    @property
    def env_steps(self) -> jax.Array:
        """Env steps per task so far."""
        return self.iteration * self.config.envs_per_task


# ----------------------------------------------------------------------------------------------------------------------
# 3. init
# ----------------------------------------------------------------------------------------------------------------------
def init(key: jax.Array, config: Config, env: Any = None, *, obs_shape: tuple[int, ...] | None = None,
         num_actions: int | None = None, num_tasks: int | None = None,
         action_mask: Any = None) -> TrainState:
    """Builds a run's state from one key.

    `init(key, config, env)` builds a full run: network, optimiser, normaliser, replay buffer and environments.
    `init(key, config, obs_shape=..., num_actions=..., num_tasks=..., action_mask=None)` builds only the learner (no
    replay, no env), for driving `update` and `act` with your own batches; `action_mask` (bool `[T, A]`) defaults to
    every action legal.
    """
    learner_only = (obs_shape, num_actions, num_tasks)
    if (env is None) == any(v is None for v in learner_only):
        raise ValueError("init takes either an env or all of obs_shape, num_actions and num_tasks, not both/neither; "
                         f"got env={env!r}, obs_shape={obs_shape}, num_actions={num_actions}, num_tasks={num_tasks}")
    if env is not None:
        if not env.discrete:
            raise ValueError(f"brc_discrete is for discrete actions; tasks {env.task_names} are continuous: use "
                             "purejaxmt.brc")
        obs_shape, num_actions, num_tasks = tuple(env.obs_shape), env.num_actions, len(env.task_names)
        action_mask = env.action_mask
    elif action_mask is None:
        action_mask = np.ones((num_tasks, num_actions), bool)
    action_mask = np.asarray(action_mask, dtype=bool)
    if action_mask.shape != (num_tasks, num_actions):
        raise ValueError(f"action_mask has shape {action_mask.shape}, expected (num_tasks, num_actions) = "
                         f"{(num_tasks, num_actions)}")
    if not action_mask.any(axis=-1).all():
        raise ValueError(f"every task needs a legal action; tasks {np.flatnonzero(~action_mask.any(axis=-1))} have "
                         f"none in action_mask={action_mask.tolist()}")
    if len(obs_shape) not in (1, 3):
        raise ValueError(f"brc_discrete expects image [H, W, C] or vector [D] observations, got obs_shape={obs_shape}")
    if config.batch_size < num_tasks:
        raise ValueError(f"batch_size={config.batch_size} is smaller than the number of tasks {num_tasks}: batches "
                         "are task-balanced, with at least one transition of every task")

    network = _network(config, num_actions, num_tasks)
    key, network_key, env_key = jax.random.split(key, 3)
    params = network.init(network_key, jnp.zeros((1, *obs_shape), jnp.float32), jnp.zeros((1,), jnp.int32))
    state = TrainState(
        params=params,
        target_params=jax.tree.map(jnp.copy, params),  # own buffers: chunks donate the state
        opt_state=_optimizer(config).init(params),
        # A learner-only state never steps an env: a one-step reward history stands in.
        normalizer=normalize.init(num_tasks, config.envs_per_task,
                                  max(env.episode_length) if env is not None else 1),
        action_mask=jnp.asarray(action_mask),
        key=key,
        iteration=jnp.zeros((), jnp.int32),
        num_updates=jnp.zeros((), jnp.int32),
        config=config,
        env=env,
    )
    if env is None:
        return state
    env_state, _ = env.reset(env_key, config.envs_per_task)
    return state.replace(env_state=env_state, replay=replay.init(replay_example(env), config.replay_capacity))


def _replay_item(transition: Any) -> dict[str, jax.Array]:
    """The fields the buffer stores: raw rewards, so the normaliser can change after storage."""
    get = transition.get if isinstance(transition, dict) else lambda name: getattr(transition, name)
    return {name: get(name) for name in ("obs", "action", "reward", "next_obs", "terminal", "truncated")}


def replay_example(env: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """One env's worth of each stored field, `[T, ...]`, in the dtypes the buffer keeps (observations compact)."""
    num_tasks, obs_dtype = len(env.task_names), jnp.dtype(env.obs_dtype)
    return dict(obs=jax.ShapeDtypeStruct((num_tasks, *env.obs_shape), obs_dtype),
                action=jax.ShapeDtypeStruct((num_tasks,), jnp.int32),
                reward=jax.ShapeDtypeStruct((num_tasks,), jnp.float32),
                next_obs=jax.ShapeDtypeStruct((num_tasks, *env.obs_shape), obs_dtype),
                terminal=jax.ShapeDtypeStruct((num_tasks,), bool),
                truncated=jax.ShapeDtypeStruct((num_tasks,), bool))


def replay_nbytes(config: Config, env: Any) -> int:
    """Bytes the replay buffer of a run will take (per seed), computed without allocating it."""
    return replay.nbytes(replay_example(env), config.replay_capacity)


# ----------------------------------------------------------------------------------------------------------------------
# 4. Loss
# ----------------------------------------------------------------------------------------------------------------------
def q_values(logits: jax.Array, support: jax.Array) -> jax.Array:
    """Expected return of each action: logits `[..., A, K]` -> `[..., A]`."""
    return categorical.expectation(jax.nn.softmax(logits, axis=-1), support)


def greedy_action(q_value: jax.Array, action_mask: jax.Array) -> jax.Array:
    """argmax of `q_value [..., A]` over the legal actions (`action_mask`, broadcastable bool) -> int32 `[...]`."""
    action_mask = jnp.broadcast_to(action_mask, q_value.shape)
    return jnp.argmax(jnp.where(action_mask, q_value, -jnp.inf), axis=-1).astype(jnp.int32)


def double_q_target(online_next_logits: jax.Array, target_next_logits: jax.Array, reward: jax.Array,
                    terminal: jax.Array, reward_scale: jax.Array, action_mask: jax.Array, support: jax.Array,
                    gamma: float | jax.Array) -> jax.Array:
    """The C51 double-Q target distribution `[B, K]`.

    The online network picks a' = argmax over legal actions of its expected value at s' (`online_next_logits`
    `[B, A, K]`, `action_mask` bool `[B, A]`); the target network's distribution for a' (`target_next_logits`) is
    shifted to `z' = r * scale + gamma * (1 - terminal) * z` and projected onto the support. `reward`, `terminal`,
    `reward_scale`: `[B]`; `gamma` a scalar or `[B]` (`gamma^m` for an m-step return, `reward` its discounted sum).
    Truncated transitions are not terminal: they bootstrap.
    """
    next_action = greedy_action(q_values(online_next_logits, support), action_mask)                    # [B]
    target_probs = jax.nn.softmax(target_next_logits, axis=-1)                                         # [B, A, K]
    next_probs = jnp.take_along_axis(target_probs, next_action[:, None, None], axis=1)[:, 0]           # [B, K]
    bootstrap = gamma * (1.0 - terminal.astype(jnp.float32))
    target_atoms = (reward * reward_scale)[:, None] + bootstrap[:, None] * support[None, :]           # [B, K]
    return categorical.project(target_atoms, next_probs, support)


def q_loss(params: Params, state: TrainState, batch: dict[str, jax.Array], reward_scale: jax.Array
           ) -> tuple[jax.Array, Metrics]:
    """Cross-entropy of the taken action's logits against the projected double-Q target, mean over the batch.
    `batch` leaves are flat `[B, ...]` with a `task_id` field; `reward_scale` is `[T]`."""
    config = state.config
    network = _network(config, state.num_actions, state.num_tasks)
    support = categorical.make_support(config.num_bins, config.v_min, config.v_max)
    task_id = batch["task_id"]
    discount = batch.get("discount", config.gamma)  # gamma^m of an m-step return; gamma for one-step transitions
    batch_size = task_id.shape[0]

    # Target: the online network picks a' at s', the target network scores it. Neither pass carries a gradient (a
    # separate pass rather than one over [s, s']: the backward pass then runs over s alone).
    online_next_logits = network.apply(jax.lax.stop_gradient(params), batch["next_obs"], task_id)    # [B, A, K]
    target_next_logits = network.apply(state.target_params, batch["next_obs"], task_id)             # [B, A, K]
    target_probs = jax.lax.stop_gradient(double_q_target(
        online_next_logits, target_next_logits, batch["reward"], batch["terminal"], reward_scale[task_id],
        state.action_mask[task_id], support, discount))                                                # [B, K]

    logits = network.apply(params, batch["obs"], task_id)                                              # [B, A, K]

    taken_logits = logits[jnp.arange(batch_size), batch["action"]]                                    # [B, K]
    loss = categorical.cross_entropy(taken_logits, target_probs).mean()
    q_value = categorical.expectation(jax.nn.softmax(taken_logits, axis=-1), support)
    return loss, {"q_loss": loss, "q_mean": q_value.mean(),
                  "target_q_mean": categorical.expectation(target_probs, support).mean(),
                  "normalized_reward": (batch["reward"] * reward_scale[task_id]).mean()}


def reward_scale(state: TrainState) -> jax.Array:
    """Per-task reward scale `V_max / G_i`, `[T]` (no entropy correction: Q-learning has no temperature)."""
    return normalize.scale(state.normalizer, state.config.v_max, 0.0)


# ----------------------------------------------------------------------------------------------------------------------
# 5. update
# ----------------------------------------------------------------------------------------------------------------------
def n_step_transitions(windows: dict[str, jax.Array], gamma: float) -> dict[str, jax.Array]:
    """Folds windows of n consecutive transitions of one env (leaves `[B, n, ...]`, from `replay.sample_windows`)
    into n-step transitions `[B, ...]`.

    A window is summed up to and including its first step that ends an episode (terminal or truncated), or over all
    n steps: m steps in all. The result keeps the first step's `obs` and `action`, the discounted raw reward sum
    `sum_{k<m} gamma^k r_k`, the m-th step's `next_obs`, `terminal` and `truncated`, and `discount = gamma^m`, the
    factor of the bootstrap (multiplied by `1 - terminal` in the target)."""
    reward = windows["reward"]
    chex.assert_rank(reward, 2)
    batch_size, n = reward.shape
    ended = windows["terminal"] | windows["truncated"]                                                 # [B, n]
    ended_before = (jnp.cumsum(ended, axis=-1) - ended) > 0       # an earlier step of the window ended the episode
    counted = ~ended_before
    num_counted = counted.sum(axis=-1)                                                                 # [B], >= 1
    powers = jnp.asarray(gamma, jnp.float32) ** jnp.arange(n, dtype=jnp.float32)
    rows, last = jnp.arange(batch_size), num_counted - 1

    return {"obs": windows["obs"][:, 0], "action": windows["action"][:, 0],
            "reward": jnp.sum(jnp.where(counted, reward * powers, 0.0), axis=-1),
            "next_obs": windows["next_obs"][rows, last],
            "terminal": windows["terminal"][rows, last], "truncated": windows["truncated"][rows, last],
            "discount": jnp.asarray(gamma, jnp.float32) ** num_counted.astype(jnp.float32)}


def update(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, Metrics]:
    """One update on a task-balanced batch (flat leaves `[B, ...]`, raw rewards, int32 `task_id [B]`): an AdamW step
    of the Q-network, then the target network moves by `tau` towards it every `target_update_period` updates. An
    optional `discount` field `[B]` is each transition's bootstrap factor (`n_step_transitions`); without it,
    `gamma`."""
    chex.assert_rank(batch["reward"], 1)
    chex.assert_equal_shape([batch["reward"], batch["task_id"]])
    config = state.config

    (_, info), grads = jax.value_and_grad(q_loss, has_aux=True)(state.params, state, batch, reward_scale(state))
    updates, opt_state = _optimizer(config).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    num_updates = state.num_updates + 1
    moved_target = optax.incremental_update(params, state.target_params, config.tau)
    due = num_updates % config.target_update_period == 0
    target_params = jax.tree.map(lambda moved, old: jnp.where(due, moved, old), moved_target, state.target_params)

    state = state.replace(params=params, target_params=target_params, opt_state=opt_state, num_updates=num_updates)
    return state, info


# ----------------------------------------------------------------------------------------------------------------------
# 6. train_chunk
# ----------------------------------------------------------------------------------------------------------------------
def epsilon(state: TrainState) -> jax.Array:
    """Exploration rate now: 1 during the random phase, then linear from `epsilon_start` to `epsilon_end` over
    `epsilon_decay_steps` env steps per task."""
    config = state.config
    steps = (state.iteration - config.random_iterations) * config.envs_per_task
    fraction = jnp.clip(steps / config.epsilon_decay_steps, 0.0, 1.0)
    decayed = config.epsilon_start + fraction * (config.epsilon_end - config.epsilon_start)
    return jnp.where(state.iteration < config.random_iterations, 1.0, decayed).astype(jnp.float32)


def random_action(key: jax.Array, action_mask: jax.Array) -> jax.Array:
    """Uniform over the legal actions of `action_mask` (bool `[..., A]`) -> int32 `[...]`."""
    return jax.random.categorical(key, jnp.where(action_mask, 0.0, -jnp.inf), axis=-1).astype(jnp.int32)


def act(state: TrainState, obs: jax.Array, key: jax.Array, epsilon: float | jax.Array = 0.0) -> jax.Array:
    """Epsilon-greedy actions for `obs [T, E, *O]` -> int32 `[T, E]`: with probability `epsilon` a uniform legal
    action, else the legal action of largest expected return. `epsilon = 0` is the greedy (evaluation) policy."""
    config = state.config
    network = _network(config, state.num_actions, state.num_tasks)
    support = categorical.make_support(config.num_bins, config.v_min, config.v_max)
    num_tasks, num_envs = obs.shape[:2]
    task_id = jnp.broadcast_to(jnp.arange(num_tasks, dtype=jnp.int32)[:, None], (num_tasks, num_envs))
    action_mask = jnp.broadcast_to(state.action_mask[:, None], (num_tasks, num_envs, state.num_actions))
    greedy = greedy_action(q_values(network.apply(state.params, obs, task_id), support), action_mask)
    explore_key, random_key = jax.random.split(key)
    explore = jax.random.uniform(explore_key, (num_tasks, num_envs)) < epsilon
    return jnp.where(explore, random_action(random_key, action_mask), greedy)


def _update_many(state: TrainState) -> tuple[TrainState, Metrics]:
    """`updates_per_step` updates, each on a fresh task-balanced batch of `n_step` transitions; returns the mean of
    their metrics."""
    config = state.config

    def one_update(state: TrainState, _: None) -> tuple[TrainState, Metrics]:
        key, sample_key = jax.random.split(state.key)
        windows, task_id = replay.sample_windows(state.replay, sample_key, config.batch_size, length=config.n_step,
                                                 stride=config.envs_per_task)
        return update(state.replace(key=key), {**n_step_transitions(windows, config.gamma), "task_id": task_id})

    state, infos = jax.lax.scan(one_update, state, None, length=config.updates_per_step)
    return state, jax.tree.map(lambda x: x.mean(axis=0), infos)


def _zero_update_metrics(state: TrainState) -> Metrics:
    shapes = jax.eval_shape(lambda s: _update_many(s)[1], state)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def train_chunk(state: TrainState) -> tuple[TrainState, Metrics]:
    """`config.iterations_per_chunk` iterations of: act epsilon-greedily in all `[T, E]` envs (uniform random legal
    actions during the first `random_steps`), step them, store the transitions, update the normaliser, then
    `updates_per_step` updates once the random phase is over. Metrics are reduced inside the chunk (`chunk_metrics`): per-task sums and
    counts, means of the update metrics over the iterations that updated, last values of the rest."""
    config, env = state.config, state.env
    if env is None:
        raise ValueError("train_chunk needs a state built with init(key, config, env)")

    def iteration(carry: tuple[TrainState, Metrics], _: None) -> tuple[tuple[TrainState, Metrics], None]:
        state, totals = carry
        key, act_key = jax.random.split(state.key)
        state = state.replace(key=key)
        exploring = state.iteration < config.random_iterations
        action = act(state, state.env_state.obs, act_key, epsilon(state))
        env_state, transition = env.step(state.env_state, action)
        state = state.replace(
            env_state=env_state,
            replay=replay.add(state.replay, _replay_item(transition)),
            normalizer=normalize.update(state.normalizer, transition.reward, transition.terminal,
                                        transition.truncated, config.gamma),
            iteration=state.iteration + 1,
        )
        learning = ~exploring
        state, update_info = jax.lax.cond(learning, _update_many, lambda s: (s, _zero_update_metrics(s)), state)

        totals = chunk_metrics.accumulate(totals, env_state.stats, transition.reward, learning, update_info)
        return (state, totals), None

    totals = chunk_metrics.init_totals(state.num_tasks, _zero_update_metrics(state))
    (state, totals), _ = jax.lax.scan(iteration, (state, totals), None, length=config.iterations_per_chunk)
    metrics = {
        **chunk_metrics.finalize(totals, env_steps_per_task=config.iterations_per_chunk * config.envs_per_task),
        "reward_scale": reward_scale(state),                                                     # [T]
        "env_steps": state.env_steps,
        "num_updates": state.num_updates,
        "epsilon": epsilon(state),
    }
    return state, metrics


# ----------------------------------------------------------------------------------------------------------------------
# 7. evaluate
# ----------------------------------------------------------------------------------------------------------------------
def evaluate(state: TrainState, key: jax.Array) -> dict[str, jax.Array]:
    """Greedy policy on `eval_episodes` fresh episodes per task (run side by side, one env each); returns the
    per-task mean and std of the undiscounted return `[T]`. The training envs are untouched."""
    config, env = state.config, state.env
    env_state, _ = env.reset(key, config.eval_episodes, reset_pool_size=1)  # eval episodes are never restarted

    def step(carry: tuple[Any, jax.Array, jax.Array], _: None) -> tuple[tuple[Any, jax.Array, jax.Array], None]:
        env_state, returns, alive = carry
        action = act(state, env_state.obs, key, epsilon=0.0)
        env_state, transition = env.step(env_state, action)
        returns = returns + jnp.where(alive, transition.reward, 0.0)
        alive = alive & ~(transition.terminal | transition.truncated)
        return (env_state, returns, alive), None

    num_tasks = state.num_tasks
    returns = jnp.zeros((num_tasks, config.eval_episodes), jnp.float32)
    alive = jnp.ones((num_tasks, config.eval_episodes), bool)
    (_, returns, _), _ = jax.lax.scan(step, (env_state, returns, alive), None, length=max(env.episode_length))
    return {"return": returns.mean(axis=1), "return_std": returns.std(axis=1)}

"""BRC for continuous control: SAC with a big, regularised, categorical, task-conditioned critic.

Reads as the method section of Nauman et al. (2025), "Bigger, Regularized, Categorical" (BRC):

1. `Config`      the paper's defaults, grouped; presets live with the experiments.
2. `TrainState`  everything a run is, so one checkpoint restores one run.
3. `init`        builds the state; every random draw descends from the one key.
4. losses        `critic_loss` (categorical TD), `actor_loss`, `temperature_loss`.
5. `update`      critic step, Polyak target update, actor step, temperature step.
6. `train_chunk` a `lax.scan` of iterations: act, step all `[T, E]` envs, store, `updates_per_step` updates.
7. `evaluate`    deterministic policy, fresh episodes, per-task returns.

Shapes: `T` tasks, `E` envs per task, `B` transitions in a batch (task-balanced: `B // T` per task), `K` atoms,
`A` padded action size, `O` padded observation size.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import chex
import flax.struct as struct
import jax
import jax.numpy as jnp
import optax

from purejaxmt import categorical, chunk_metrics, nets, normalize, replay

Params = Any
Metrics = dict[str, jax.Array]


# ----------------------------------------------------------------------------------------------------------------------
# 1. Config
# ----------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Config:
    """BRC hyperparameters. Defaults are the paper's multi-task settings (BRC.md)."""

    # -- network --
    critic_width: int = 4096
    """BroNet width of each critic member (BRO used 512; the paper scales up to ~1B parameters)."""
    critic_depth: int = 2
    """Residual blocks per critic member."""
    num_critics: int = 2
    actor_width: int = 256
    actor_depth: int = 1
    embed_dim: int = 32
    """Width of the unit-norm task embedding (unused when there is a single task)."""
    num_bins: int = 101
    v_min: float = -10.0
    v_max: float = 10.0
    compute_dtype: str = "float32"
    """Dtype of the big matmuls ("bfloat16" on GPU/TPU); parameters, optimiser state and losses stay float32."""

    # -- optimisation --
    learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    """AdamW weight decay of actor and critic (optax's default)."""
    gamma: float = 0.99
    tau: float = 0.005
    updates_per_step: int = 2
    """Gradient updates per environment iteration (one iteration steps all `T x E` envs once)."""
    batch_size: int = 1024
    """Transitions per update, drawn task-balanced (`batch_size // T` from each task, the remainder from tasks drawn
    at random per update; see `replay.balanced_task_ids`); 256 for single-task runs."""

    # -- temperature --
    init_temperature: float = 0.1
    temperature_lr: float = 3e-4
    temperature_b1: float = 0.5
    target_entropy_per_dim: float = -0.5
    """Target entropy is this times a task's action count (-|A|/2)."""

    # -- reward normalisation --
    entropy_correction: str = "fixed"
    """Entropy term `alpha * |H| / (1 - gamma)` added to the return range: "fixed" uses |H| = |A|/4 (the authors'
    stand-in, minus half the target entropy), "policy" the magnitude of the last actor batch's policy entropy, "none"
    drops the term. Either way the term is non-negative: it makes room in the support for the soft-value bonus,
    whatever its sign."""

    # -- replay and schedule --
    replay_capacity: int = 1_000_000
    """Transitions kept per task."""
    envs_per_task: int = 1
    random_steps: int = 5000
    """Env steps per task of uniform random actions before the first update."""
    total_steps: int = 1_000_000
    """Env steps per task of the whole run."""
    steps_per_chunk: int = 10_000
    """Env steps per task in one compiled chunk (the host logs between chunks)."""
    eval_episodes: int = 10
    """Deterministic evaluation episodes per task."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("critic_width", "critic_depth", "num_critics", "actor_width", "num_bins", "updates_per_step",
                     "batch_size", "replay_capacity", "envs_per_task", "total_steps", "steps_per_chunk",
                     "eval_episodes"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.actor_depth < 0 or self.random_steps < 0:
            problems.append(f"actor_depth={self.actor_depth} and random_steps={self.random_steps} must be >= 0")
        if not self.v_min < self.v_max:
            problems.append(f"v_min={self.v_min} must be < v_max={self.v_max}")
        if not 0.0 <= self.gamma < 1.0:
            problems.append(f"gamma={self.gamma} must be in [0, 1)")
        if not 0.0 < self.tau <= 1.0:
            problems.append(f"tau={self.tau} must be in (0, 1]")
        if self.compute_dtype not in ("float32", "bfloat16", "float16"):
            problems.append(f"compute_dtype={self.compute_dtype!r}; choose 'float32', 'bfloat16' or 'float16'")
        if self.entropy_correction not in ("fixed", "policy", "none"):
            problems.append(f"entropy_correction={self.entropy_correction!r}; choose 'fixed', 'policy' or 'none'")
        if self.envs_per_task >= 1 and self.steps_per_chunk % self.envs_per_task:
            problems.append(f"steps_per_chunk={self.steps_per_chunk} must be a multiple of "
                            f"envs_per_task={self.envs_per_task}")
        if self.replay_capacity < self.envs_per_task:
            problems.append(f"replay_capacity={self.replay_capacity} is smaller than envs_per_task="
                            f"{self.envs_per_task}")
        if problems:
            raise ValueError("Invalid BRC config: " + "; ".join(problems))

    @property
    def iterations_per_chunk(self) -> int:
        return self.steps_per_chunk // self.envs_per_task

    @property
    def random_iterations(self) -> int:
        return math.ceil(self.random_steps / self.envs_per_task)


def _networks(config: Config, action_dim: int, num_tasks: int) -> tuple[nets.Critic, nets.Actor]:
    dtype = jnp.dtype(config.compute_dtype)
    critic = nets.Critic(width=config.critic_width, depth=config.critic_depth, num_bins=config.num_bins,
                         num_tasks=num_tasks, embed_dim=config.embed_dim, num_members=config.num_critics, dtype=dtype)
    actor = nets.Actor(action_dim=action_dim, width=config.actor_width, depth=config.actor_depth, dtype=dtype)
    return critic, actor


def _optimizers(config: Config) -> tuple[optax.GradientTransformation, optax.GradientTransformation,
                                          optax.GradientTransformation]:
    critic_opt = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
    actor_opt = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
    temperature_opt = optax.adam(config.temperature_lr, b1=config.temperature_b1)
    return critic_opt, actor_opt, temperature_opt


# ----------------------------------------------------------------------------------------------------------------------
# 2. TrainState
# ----------------------------------------------------------------------------------------------------------------------
@struct.dataclass
class TrainState:
    """Everything a run is. Arrays are pytree leaves; `config` and `env` are static (part of the tree structure).

    `LOCKSTEP_FIELDS` are the same in every run of a vmapped batch (they count iterations and updates): the runner
    keeps them outside the vmapped axis, so the `lax.cond` that skips updates in the random phase stays a cond
    instead of becoming a select that runs the updates anyway.
    """

    LOCKSTEP_FIELDS: ClassVar[tuple[str, ...]] = ("iteration", "num_updates")

    critic_params: Params
    critic_target_params: Params
    actor_params: Params
    log_temperature: jax.Array           # [] float32, log alpha
    critic_opt_state: optax.OptState
    actor_opt_state: optax.OptState
    temperature_opt_state: optax.OptState
    normalizer: normalize.NormalizerState
    action_mask: jax.Array               # [T, A] bool: the action entries each task reads
    key: jax.Array
    policy_entropy: jax.Array            # [] float32, entropy of the last actor batch (for "policy" correction)
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
    def env_steps(self) -> jax.Array:
        """Env steps per task so far."""
        return self.iteration * self.config.envs_per_task


# ----------------------------------------------------------------------------------------------------------------------
# 3. init
# ----------------------------------------------------------------------------------------------------------------------
def init(key: jax.Array, config: Config, env: Any = None, *, obs_dim: int | None = None,
         action_dim: int | None = None, num_tasks: int | None = None) -> TrainState:
    """Builds a run's state from one key.

    `init(key, config, env)` builds a full run: networks, optimisers, normaliser, replay buffer and environments.
    `init(key, config, obs_dim=..., action_dim=..., num_tasks=...)` builds only the learner (no replay, no env), for
    driving `update` with your own batches.
    """
    if (env is None) == (obs_dim is None or action_dim is None or num_tasks is None):
        raise ValueError("init takes either an env or all of obs_dim, action_dim and num_tasks, not both/neither; got "
                         f"env={env!r}, obs_dim={obs_dim}, action_dim={action_dim}, num_tasks={num_tasks}")
    if env is not None:
        if env.action_size is None:
            raise ValueError(f"brc is for continuous actions; tasks {env.task_names} are discrete: use "
                             "purejaxmt.brc_discrete")
        if len(env.obs_shape) != 1:
            raise ValueError(f"brc expects vector observations, got obs_shape={env.obs_shape}")
        obs_dim, action_dim, num_tasks = env.obs_shape[0], env.action_size, len(env.task_names)
        action_mask = jnp.asarray(env.action_mask, dtype=bool)
    else:
        action_mask = jnp.ones((num_tasks, action_dim), dtype=bool)
    if config.batch_size < num_tasks:
        raise ValueError(f"batch_size={config.batch_size} is smaller than the number of tasks {num_tasks}: batches "
                         "are task-balanced, with at least one transition of every task")

    critic, actor = _networks(config, action_dim, num_tasks)
    critic_opt, actor_opt, temperature_opt = _optimizers(config)
    key, critic_key, actor_key, env_key = jax.random.split(key, 4)

    dummy_obs = jnp.zeros((1, obs_dim), jnp.float32)
    dummy_action = jnp.zeros((1, action_dim), jnp.float32)
    dummy_task = jnp.zeros((1,), jnp.int32)
    critic_params = critic.init(critic_key, dummy_obs, dummy_action, dummy_task)
    task_embedding = critic.apply(critic_params, dummy_task, method=nets.Critic.embed)
    actor_params = actor.init(actor_key, dummy_obs, task_embedding)
    log_temperature = jnp.asarray(math.log(config.init_temperature), jnp.float32)

    state = TrainState(
        critic_params=critic_params,
        critic_target_params=jax.tree.map(jnp.copy, critic_params),  # own buffers: chunks donate the state
        actor_params=actor_params,
        log_temperature=log_temperature,
        critic_opt_state=critic_opt.init(critic_params),
        actor_opt_state=actor_opt.init(actor_params),
        temperature_opt_state=temperature_opt.init(log_temperature),
        # A learner-only state never steps an env: a one-step reward history stands in.
        normalizer=normalize.init(num_tasks, config.envs_per_task,
                                  max(env.episode_length) if env is not None else 1),
        action_mask=action_mask,
        key=key,
        # Before the first update the policy's entropy is unknown: its target (-|A|/2) stands in.
        policy_entropy=config.target_entropy_per_dim * action_mask.sum(axis=-1).max().astype(jnp.float32),
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
    """One env's worth of each stored field, `[T, ...]`, in the dtypes the buffer keeps."""
    num_tasks, obs_dtype = len(env.task_names), jnp.dtype(env.obs_dtype)
    return dict(obs=jax.ShapeDtypeStruct((num_tasks, *env.obs_shape), obs_dtype),
                action=jax.ShapeDtypeStruct((num_tasks, env.action_size), jnp.float32),
                reward=jax.ShapeDtypeStruct((num_tasks,), jnp.float32),
                next_obs=jax.ShapeDtypeStruct((num_tasks, *env.obs_shape), obs_dtype),
                terminal=jax.ShapeDtypeStruct((num_tasks,), bool),
                truncated=jax.ShapeDtypeStruct((num_tasks,), bool))


def replay_nbytes(config: Config, env: Any) -> int:
    """Bytes the replay buffer of a run will take (per seed), computed without allocating it."""
    return replay.nbytes(replay_example(env), config.replay_capacity)


# ----------------------------------------------------------------------------------------------------------------------
# 4. Losses
# ----------------------------------------------------------------------------------------------------------------------
def _policy(actor: nets.Actor, actor_params: Params, obs: jax.Array, task_embedding: jax.Array, key: jax.Array,
            action_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    mean, log_std = actor.apply(actor_params, obs, task_embedding)
    return nets.sample_tanh_gaussian(key, mean, log_std, action_mask)


def critic_loss(critic_params: Params, state: TrainState, batch: dict[str, jax.Array], reward_scale: jax.Array,
                key: jax.Array) -> tuple[jax.Array, Metrics]:
    """Cross-entropy of each critic against the projected categorical soft-TD target, mean over the batch, summed
    over the critics. `batch` leaves are flat `[B, ...]` with a `task_id` field."""
    config = state.config
    critic, actor = _networks(config, state.action_mask.shape[-1], state.num_tasks)
    support = categorical.make_support(config.num_bins, config.v_min, config.v_max)
    task_id, action_mask = batch["task_id"], state.action_mask[batch["task_id"]]
    temperature = jnp.exp(state.log_temperature)

    # Target: a' ~ pi(s'); mean of the target critics' probabilities; shift atoms by r + gamma (z - alpha log pi).
    task_embedding = jax.lax.stop_gradient(critic.apply(critic_params, task_id, method=nets.Critic.embed))
    next_action, next_log_prob = _policy(actor, state.actor_params, batch["next_obs"], task_embedding, key,
                                         action_mask)
    target_logits = critic.apply(state.critic_target_params, batch["next_obs"], next_action, task_id)  # [M, B, K]
    target_probs = jax.nn.softmax(target_logits, axis=-1).mean(axis=0)                            # [B, K]
    reward = batch["reward"] * reward_scale[task_id]
    bootstrap = config.gamma * (1.0 - batch["terminal"].astype(jnp.float32))   # truncated episodes bootstrap
    target_atoms = reward[:, None] + bootstrap[:, None] * (support[None, :] - temperature * next_log_prob[:, None])
    target_probs = jax.lax.stop_gradient(categorical.project(target_atoms, target_probs, support))  # [B, K]

    logits = critic.apply(critic_params, batch["obs"], batch["action"], task_id)                   # [M, B, K]
    loss = categorical.cross_entropy(logits, jnp.broadcast_to(target_probs, logits.shape)).mean(axis=-1).sum()
    q_value = categorical.expectation(jax.nn.softmax(logits, axis=-1).mean(axis=0), support)
    return loss, {"critic_loss": loss, "q_mean": q_value.mean(), "normalized_reward": reward.mean()}


def actor_loss(actor_params: Params, state: TrainState, batch: dict[str, jax.Array], key: jax.Array
               ) -> tuple[jax.Array, Metrics]:
    """alpha * log pi(a|s) - Q(s, a), with Q the expectation of the ensemble-mean probabilities. The actor reads the
    task embedding through a stop-gradient: the embedding is learned by the critic loss alone."""
    config = state.config
    critic, actor = _networks(config, state.action_mask.shape[-1], state.num_tasks)
    support = categorical.make_support(config.num_bins, config.v_min, config.v_max)
    task_id, action_mask = batch["task_id"], state.action_mask[batch["task_id"]]
    task_embedding = jax.lax.stop_gradient(critic.apply(state.critic_params, task_id, method=nets.Critic.embed))
    action, log_prob = _policy(actor, actor_params, batch["obs"], task_embedding, key, action_mask)
    logits = critic.apply(state.critic_params, batch["obs"], action, task_id)
    q_value = categorical.expectation(jax.nn.softmax(logits, axis=-1).mean(axis=0), support)
    loss = (jnp.exp(state.log_temperature) * log_prob - q_value).mean()
    return loss, {"actor_loss": loss, "entropy": -log_prob.mean(), "log_prob": log_prob}


def temperature_loss(log_temperature: jax.Array, log_prob: jax.Array, target_entropy: jax.Array) -> jax.Array:
    """Raises alpha while the policy's entropy is below its target, lowers it above."""
    return -(jnp.exp(log_temperature) * jax.lax.stop_gradient(log_prob + target_entropy)).mean()


def reward_scale(state: TrainState) -> jax.Array:
    """Per-task reward scale `V_max / (G_i + alpha |H| / (1 - gamma))`, `[T]`.

    The authors' normaliser divides by `G_i - alpha * target_entropy / 2 / (1 - gamma)` with the target entropy
    `-|A|/2`: a positive term, `|H| = |A|/4`. "policy" puts the policy's own entropy in its place, by magnitude:
    the entropy of a tanh-Gaussian policy is negative once it is near its target, and a negative term would shrink
    the denominator (even below zero) instead of making room for the soft-value bonus."""
    config = state.config
    temperature = jnp.exp(state.log_temperature)
    if config.entropy_correction == "fixed":
        entropy_magnitude = state.action_mask.sum(axis=-1) / 4.0        # [T], the authors' stand-in |A|/4
    elif config.entropy_correction == "policy":
        entropy_magnitude = jnp.abs(state.policy_entropy)
    else:
        entropy_magnitude = jnp.zeros(())
    correction = temperature * entropy_magnitude / (1.0 - config.gamma)
    return normalize.scale(state.normalizer, config.v_max, jax.lax.stop_gradient(correction))


# ----------------------------------------------------------------------------------------------------------------------
# 5. update
# ----------------------------------------------------------------------------------------------------------------------
def update(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, Metrics]:
    """One BRC update on a task-balanced batch (flat leaves `[B, ...]`, raw rewards, int32 `task_id [B]`) in the
    paper's order: critic step, Polyak target update, actor step (against the new critic), temperature step."""
    chex.assert_rank(batch["reward"], 1)
    chex.assert_equal_shape([batch["reward"], batch["task_id"]])
    config = state.config
    critic_opt, actor_opt, temperature_opt = _optimizers(config)
    key, critic_key, actor_key = jax.random.split(state.key, 3)
    scale = reward_scale(state)

    # Critic step.
    (_, critic_info), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(
        state.critic_params, state, batch, scale, critic_key)
    critic_updates, critic_opt_state = critic_opt.update(critic_grads, state.critic_opt_state, state.critic_params)
    critic_params = optax.apply_updates(state.critic_params, critic_updates)
    # Polyak target update.
    critic_target_params = optax.incremental_update(critic_params, state.critic_target_params, config.tau)
    state = state.replace(critic_params=critic_params, critic_target_params=critic_target_params,
                          critic_opt_state=critic_opt_state)

    # Actor step.
    (_, actor_info), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(
        state.actor_params, state, batch, actor_key)
    actor_updates, actor_opt_state = actor_opt.update(actor_grads, state.actor_opt_state, state.actor_params)
    actor_params = optax.apply_updates(state.actor_params, actor_updates)

    # Temperature step, towards -|A|/2 per task.
    target_entropy = config.target_entropy_per_dim * state.action_mask[batch["task_id"]].sum(axis=-1)
    temperature_grad = jax.grad(temperature_loss)(state.log_temperature, actor_info.pop("log_prob"), target_entropy)
    temperature_updates, temperature_opt_state = temperature_opt.update(temperature_grad, state.temperature_opt_state)
    log_temperature = optax.apply_updates(state.log_temperature, temperature_updates)

    state = state.replace(actor_params=actor_params, actor_opt_state=actor_opt_state,
                          log_temperature=log_temperature, temperature_opt_state=temperature_opt_state,
                          policy_entropy=actor_info["entropy"], key=key, num_updates=state.num_updates + 1)
    info = {**critic_info, **actor_info, "temperature": jnp.exp(log_temperature)}
    return state, info


# ----------------------------------------------------------------------------------------------------------------------
# 6. train_chunk
# ----------------------------------------------------------------------------------------------------------------------
def act(state: TrainState, obs: jax.Array, key: jax.Array, deterministic: bool = False) -> jax.Array:
    """Policy actions for `obs [T, E, O]` -> `[T, E, A]` (padded entries 0)."""
    critic, actor = _networks(state.config, state.action_mask.shape[-1], state.num_tasks)
    num_tasks, num_envs = obs.shape[:2]
    task_id = jnp.broadcast_to(jnp.arange(num_tasks)[:, None], (num_tasks, num_envs))
    task_embedding = critic.apply(state.critic_params, task_id, method=nets.Critic.embed)
    action_mask = jnp.broadcast_to(state.action_mask[:, None], (num_tasks, num_envs, state.action_mask.shape[-1]))
    mean, log_std = actor.apply(state.actor_params, obs.astype(jnp.float32), task_embedding)
    if deterministic:
        return nets.deterministic_action(mean, action_mask)
    return nets.sample_tanh_gaussian(key, mean, log_std, action_mask)[0]


def _random_action(state: TrainState, key: jax.Array) -> jax.Array:
    num_tasks, num_envs = state.action_mask.shape[0], state.config.envs_per_task
    action = jax.random.uniform(key, (num_tasks, num_envs, state.action_mask.shape[-1]), minval=-1.0, maxval=1.0)
    return jnp.where(state.action_mask[:, None], action, 0.0)


def _update_many(state: TrainState) -> tuple[TrainState, Metrics]:
    """`updates_per_step` updates, each on a fresh task-balanced batch; returns the mean of their metrics."""

    def one_update(state: TrainState, _: None) -> tuple[TrainState, Metrics]:
        key, sample_key = jax.random.split(state.key)
        items, task_id = replay.sample(state.replay, sample_key, state.config.batch_size)
        return update(state.replace(key=key), {**items, "task_id": task_id})

    state, infos = jax.lax.scan(one_update, state, None, length=state.config.updates_per_step)
    return state, jax.tree.map(lambda x: x.mean(axis=0), infos)


def _zero_update_metrics(state: TrainState) -> Metrics:
    shapes = jax.eval_shape(lambda s: _update_many(s)[1], state)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def train_chunk(state: TrainState) -> tuple[TrainState, Metrics]:
    """`config.iterations_per_chunk` iterations of: act in all `[T, E]` envs (uniform random during the first
    `random_steps`), step them, store the transitions, update the normaliser, then `updates_per_step` updates once
    the random phase is over. Metrics are reduced inside the chunk (`chunk_metrics`): per-task sums and counts, means of the update
    metrics over the iterations that updated, last values of the rest."""
    config, env = state.config, state.env
    if env is None:
        raise ValueError("train_chunk needs a state built with init(key, config, env)")

    def iteration(carry: tuple[TrainState, Metrics], _: None) -> tuple[tuple[TrainState, Metrics], None]:
        state, totals = carry
        key, act_key, random_key = jax.random.split(state.key, 3)
        state = state.replace(key=key)
        obs = state.env_state.obs
        exploring = state.iteration < config.random_iterations
        action = jnp.where(exploring, _random_action(state, random_key), act(state, obs, act_key))
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
        "temperature": jnp.exp(state.log_temperature),
    }
    return state, metrics


# ----------------------------------------------------------------------------------------------------------------------
# 7. evaluate
# ----------------------------------------------------------------------------------------------------------------------
def evaluate(state: TrainState, key: jax.Array) -> dict[str, jax.Array]:
    """Deterministic policy on `eval_episodes` fresh episodes per task (run side by side, one env each); returns the
    per-task mean and std of the undiscounted return `[T]`. The training envs are untouched."""
    config, env = state.config, state.env
    env_state, _ = env.reset(key, config.eval_episodes, reset_pool_size=1)  # eval episodes are never restarted

    def step(carry: tuple[Any, jax.Array, jax.Array], _: None) -> tuple[tuple[Any, jax.Array, jax.Array], None]:
        env_state, returns, alive = carry
        action = act(state, env_state.obs, key, deterministic=True)
        env_state, transition = env.step(env_state, action)
        returns = returns + jnp.where(alive, transition.reward, 0.0)
        alive = alive & ~(transition.terminal | transition.truncated)
        return (env_state, returns, alive), None

    num_tasks = state.num_tasks
    returns = jnp.zeros((num_tasks, config.eval_episodes), jnp.float32)
    alive = jnp.ones((num_tasks, config.eval_episodes), bool)
    (_, returns, _), _ = jax.lax.scan(step, (env_state, returns, alive), None, length=max(env.episode_length))
    return {"return": returns.mean(axis=1), "return_std": returns.std(axis=1)}

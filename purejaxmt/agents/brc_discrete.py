"""BRC for discrete actions: a big, regularised, categorical, task-conditioned Q-network (C51 with double Q).

The discrete, vision-based variant of Nauman et al. (2025), "Bigger, Regularized, Categorical" (BRC), for which no
public code exists (BRC.md): a conv encoder (Dense for vector observations), the unit-norm task embedding joined
after it, a BroNet trunk and a `num_actions x num_bins` categorical head; a target network; the per-task reward
normalisation of continuous BRC (without the entropy term: there is no temperature); epsilon-greedy acting over each
task's legal actions. Task-balanced replay, n-step returns and evaluation are the shared loop's
(`purejaxmt.offpolicy`).

1. `Config`, `Hyper`  BRC.md's values where it gives them, C51/DQN-on-MinAtar values otherwise.
2. `Learner`          Q-network, target network, optimiser state.
3. `Agent`            the network and support, built once: `init`, `act` (epsilon-greedy), `random_action`.
4. loss               `double_q_target` (a pure function of logits) and `critic_loss` (categorical cross-entropy).
5. `update`           a Q-network step, then the target network (Polyak, or a hard copy every N updates).

Shapes: `T` tasks, `E` envs per task, `B` transitions in a batch, `K` atoms, `A` actions (one shared action set;
`action_mask [T, A]` marks each task's legal ones), `*O` the observation shape (`[H, W, C]` for MinAtar, `[D]` for
classic control).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import flax.struct as struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from purejaxmt import categorical, nets
from purejaxmt.agents import AgentSpec

Params = Any
Metrics = dict[str, jax.Array]


# ----------------------------------------------------------------------------------------------------------------------
# 1. Config and Hyper
# ----------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Config:
    """Discrete BRC's settings. Defaults: BRC.md's (critic size, support, optimiser, tau); DQN-on-MinAtar values for
    what BRC.md does not give (encoder, epsilon schedule). The loop's settings are `offpolicy.LoopConfig`'s."""

    critic_width: int = 4096
    """BroNet trunk width (BRC.md's critic; a single network, no ensemble)."""
    critic_depth: int = 2
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

    learning_rate: float = 3e-4
    """AdamW step size (data: `Hyper`, like every field below)."""
    weight_decay: float = 1e-4
    """AdamW weight decay (optax's default, as in continuous BRC)."""
    tau: float = 0.005
    """Target update step: `target <- tau * online + (1 - tau) * target`; tau = 1 is a hard copy."""
    target_update_period: int = 1
    """Update the target every this many gradient updates (DQN's hard copy: tau=1, period e.g. 1000)."""
    epsilon_start: float = 1.0
    epsilon_end: float = 0.01
    epsilon_decay_steps: int = 100_000
    """Env steps per task over which epsilon falls linearly from start to end, counted from the end of the random
    phase (MinAtar's DQN convention)."""

    def __post_init__(self) -> None:
        problems = [f"{name}={getattr(self, name)} must be >= 1"
                    for name in ("critic_width", "vector_encoder_width", "target_update_period", "epsilon_decay_steps")
                    if getattr(self, name) < 1]
        problems += [f"{name}={getattr(self, name)} must be >= 0" for name in ("critic_depth", "embed_dim")
                     if getattr(self, name) < 0]
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
        if not 0.0 < self.tau <= 1.0:
            problems.append(f"tau={self.tau} must be in (0, 1]")
        if not self.learning_rate > 0.0:
            problems.append(f"learning_rate={self.learning_rate} must be > 0")
        for name in ("epsilon_start", "epsilon_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name}={getattr(self, name)} must be in [0, 1]")
        if self.compute_dtype not in ("float32", "bfloat16", "float16"):
            problems.append(f"compute_dtype={self.compute_dtype!r}; choose 'float32', 'bfloat16' or 'float16'")
        if problems:
            raise ValueError("Invalid discrete BRC config: " + "; ".join(problems))
        # Tuples, also when given as lists (a config read back from JSON): the config must stay hashable.
        for name in ("conv_channels", "conv_kernel_sizes", "conv_strides"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))


@struct.dataclass
class Hyper:
    """The settings that are data (scalars, or `[R]` under a vmap over runs), read inside the jitted code."""

    learning_rate: jax.Array
    weight_decay: jax.Array
    tau: jax.Array
    target_update_period: jax.Array      # int32
    epsilon_start: jax.Array
    epsilon_end: jax.Array
    epsilon_decay_steps: jax.Array

    @classmethod
    def from_config(cls, config: Config) -> Hyper:
        return cls(**{field.name: jnp.asarray(getattr(config, field.name),
                                              jnp.int32 if field.name == "target_update_period" else jnp.float32)
                      for field in dataclasses.fields(cls)})


# ----------------------------------------------------------------------------------------------------------------------
# 2. Learner
# ----------------------------------------------------------------------------------------------------------------------
@struct.dataclass
class Learner:
    params: Params                       # the online Q-network (encoder, task embedding, trunk, head)
    target_params: Params
    opt_state: optax.OptState


def _adamw(hyper: Hyper) -> optax.GradientTransformation:
    # Built from data on every call: optax takes traced step sizes, and the optimiser state does not depend on them.
    return optax.adamw(hyper.learning_rate, weight_decay=hyper.weight_decay)


# ----------------------------------------------------------------------------------------------------------------------
# 4. Loss (pure functions of logits, used by the Agent below)
# ----------------------------------------------------------------------------------------------------------------------
def q_values(logits: jax.Array, support: jax.Array) -> jax.Array:
    """Expected return of each action: logits `[..., A, K]` -> `[..., A]`."""
    return categorical.expectation(jax.nn.softmax(logits, axis=-1), support)


def greedy_action(q_value: jax.Array, action_mask: jax.Array) -> jax.Array:
    """argmax of `q_value [..., A]` over the legal actions (`action_mask`, broadcastable bool) -> int32 `[...]`."""
    action_mask = jnp.broadcast_to(action_mask, q_value.shape)
    return jnp.argmax(jnp.where(action_mask, q_value, -jnp.inf), axis=-1).astype(jnp.int32)


def random_legal_action(key: jax.Array, action_mask: jax.Array) -> jax.Array:
    """Uniform over the legal actions of `action_mask` (bool `[..., A]`) -> int32 `[...]`."""
    return jax.random.categorical(key, jnp.where(action_mask, 0.0, -jnp.inf), axis=-1).astype(jnp.int32)


def double_q_target(online_next_logits: jax.Array, target_next_logits: jax.Array, reward: jax.Array,
                    terminal: jax.Array, reward_scale: jax.Array, action_mask: jax.Array, support: jax.Array,
                    discount: float | jax.Array) -> jax.Array:
    """The C51 double-Q target distribution `[B, K]`.

    The online network picks a' = argmax over legal actions of its expected value at s' (`online_next_logits`
    `[B, A, K]`, `action_mask` bool `[B, A]`); the target network's distribution for a' (`target_next_logits`) is
    shifted to `z' = r * scale + discount * (1 - terminal) * z` and projected onto the support. `reward`,
    `terminal`, `reward_scale`: `[B]`; `discount` a scalar or `[B]` (`gamma^m` for an m-step return, `reward` its
    discounted sum). Truncated transitions are not terminal: they bootstrap.
    """
    next_action = greedy_action(q_values(online_next_logits, support), action_mask)                    # [B]
    target_probs = jax.nn.softmax(target_next_logits, axis=-1)                                         # [B, A, K]
    next_probs = jnp.take_along_axis(target_probs, next_action[:, None, None], axis=1)[:, 0]           # [B, K]
    bootstrap = discount * (1.0 - terminal.astype(jnp.float32))
    target_atoms = (reward * reward_scale)[:, None] + bootstrap[:, None] * support[None, :]           # [B, K]
    return categorical.project(target_atoms, next_probs, support)


# ----------------------------------------------------------------------------------------------------------------------
# 3. Agent: the network built once; init, acting
# ----------------------------------------------------------------------------------------------------------------------
class Agent:
    """Discrete BRC for one `EnvSpec` (discrete actions; image or vector observations). See
    `purejaxmt.agents.Agent`."""

    def __init__(self, config: Config, spec: Any) -> None:
        if not spec.action.discrete:
            raise ValueError(f"brc_discrete is for discrete actions; tasks {list(spec.task_names)} are continuous: "
                             "use purejaxmt.agents.brc")
        if len(spec.obs_shape) not in (1, 3):
            raise ValueError(f"brc_discrete expects image [H, W, C] or vector [D] observations, got obs_shape="
                             f"{spec.obs_shape}")
        action_mask = np.asarray(spec.action.mask, bool)
        if not action_mask.any(axis=-1).all():
            raise ValueError(f"every task needs a legal action; tasks {np.flatnonzero(~action_mask.any(axis=-1))} "
                             f"have none in action_mask={action_mask.tolist()}")
        self.num_tasks, self.obs_shape, self.num_actions = spec.num_tasks, tuple(spec.obs_shape), spec.action.size
        self.action_mask = jnp.asarray(action_mask)                                      # [T, A]
        self.v_max = config.v_max
        self.support = categorical.make_support(config.num_bins, config.v_min, config.v_max)
        self.network = nets.QNetwork(
            num_actions=self.num_actions, num_bins=config.num_bins, num_tasks=self.num_tasks,
            width=config.critic_width, depth=config.critic_depth, embed_dim=config.embed_dim,
            conv_channels=config.conv_channels, conv_kernel_sizes=config.conv_kernel_sizes,
            conv_strides=config.conv_strides, vector_encoder_width=config.vector_encoder_width,
            dtype=jnp.dtype(config.compute_dtype))

    def init(self, key: jax.Array, hyper: Hyper) -> Learner:
        params = self.network.init(key, jnp.zeros((1, *self.obs_shape), jnp.float32), jnp.zeros((1,), jnp.int32))
        return Learner(params=params,
                       target_params=jax.tree.map(jnp.copy, params),  # own buffers: chunks donate the state
                       opt_state=_adamw(hyper).init(params))

    @staticmethod
    def epsilon(hyper: Hyper, explore_steps: jax.Array) -> jax.Array:
        """Exploration rate after `explore_steps` env steps per task past the random phase: linear from
        `epsilon_start` to `epsilon_end` over `epsilon_decay_steps`."""
        fraction = jnp.clip(explore_steps / hyper.epsilon_decay_steps, 0.0, 1.0)
        return (hyper.epsilon_start + fraction * (hyper.epsilon_end - hyper.epsilon_start)).astype(jnp.float32)

    def act(self, learner: Learner, hyper: Hyper, obs: jax.Array, key: jax.Array,
            explore_steps: jax.Array | None) -> jax.Array:
        """Epsilon-greedy actions for `obs [T, E, *O]` -> int32 `[T, E]`: with probability epsilon a uniform legal
        action, else the legal action of largest expected return; greedy when `explore_steps` is None."""
        num_tasks, num_envs = obs.shape[:2]
        task_id = jnp.broadcast_to(jnp.arange(num_tasks, dtype=jnp.int32)[:, None], (num_tasks, num_envs))
        action_mask = jnp.broadcast_to(self.action_mask[:, None], (num_tasks, num_envs, self.num_actions))
        greedy = greedy_action(q_values(self.network.apply(learner.params, obs, task_id), self.support), action_mask)
        if explore_steps is None:
            return greedy
        explore_key, random_key = jax.random.split(key)
        explore = jax.random.uniform(explore_key, (num_tasks, num_envs)) < self.epsilon(hyper, explore_steps)
        return jnp.where(explore, random_legal_action(random_key, action_mask), greedy)

    def random_action(self, key: jax.Array, envs_per_task: int) -> jax.Array:
        action_mask = jnp.broadcast_to(self.action_mask[:, None], (self.num_tasks, envs_per_task, self.num_actions))
        return random_legal_action(key, action_mask)

    def critic_loss(self, params: Params, learner: Learner, batch: dict[str, jax.Array], reward_scale: jax.Array
                    ) -> tuple[jax.Array, Metrics]:
        """Cross-entropy of the taken action's logits against the projected double-Q target, mean over the batch."""
        task_id = batch["task_id"]
        # Target: the online network picks a' at s', the target network scores it. Neither pass carries a gradient (a
        # separate pass rather than one over [s, s']: the backward pass then runs over s alone).
        online_next_logits = self.network.apply(jax.lax.stop_gradient(params), batch["next_obs"], task_id)
        target_next_logits = self.network.apply(learner.target_params, batch["next_obs"], task_id)   # [B, A, K]
        target_probs = jax.lax.stop_gradient(double_q_target(
            online_next_logits, target_next_logits, batch["reward"], batch["terminal"], reward_scale[task_id],
            self.action_mask[task_id], self.support, batch["discount"]))                               # [B, K]

        logits = self.network.apply(params, batch["obs"], task_id)                                     # [B, A, K]
        taken_logits = jnp.take_along_axis(logits, batch["action"][:, None, None], axis=1)[:, 0]       # [B, K]
        loss = categorical.cross_entropy(taken_logits, target_probs).mean()
        q_value = categorical.expectation(jax.nn.softmax(taken_logits, axis=-1), self.support)
        return loss, {"critic_loss": loss, "q_mean": q_value.mean(),
                      "target_q_mean": categorical.expectation(target_probs, self.support).mean(),
                      "normalized_reward": (batch["reward"] * reward_scale[task_id]).mean()}

    def reward_correction(self, learner: Learner, hyper: Hyper, gamma: jax.Array) -> jax.Array:
        return jnp.zeros(())  # Q-learning adds nothing to the rewards (no temperature)

    def chunk_extras(self, learner: Learner, hyper: Hyper, explore_steps: jax.Array) -> Metrics:
        return {"epsilon": self.epsilon(hyper, explore_steps)}

    # ------------------------------------------------------------------------------------------------------------------
    # 5. update
    # ------------------------------------------------------------------------------------------------------------------
    def update(self, learner: Learner, hyper: Hyper, batch: dict[str, jax.Array], reward_scale: jax.Array,
               key: jax.Array, num_updates: jax.Array) -> tuple[Learner, Metrics]:
        """An AdamW step of the Q-network, then the target network moves by `tau` towards it every
        `target_update_period` updates."""
        chex.assert_rank(batch["reward"], 1)
        chex.assert_equal_shape([batch["reward"], batch["task_id"], batch["discount"]])
        chex.assert_shape(reward_scale, (self.num_tasks,))
        adamw = _adamw(hyper)
        (_, info), grads = jax.value_and_grad(self.critic_loss, has_aux=True)(learner.params, learner, batch,
                                                                              reward_scale)
        updates, opt_state = adamw.update(grads, learner.opt_state, learner.params)
        params = optax.apply_updates(learner.params, updates)

        moved_target = optax.incremental_update(params, learner.target_params, hyper.tau)
        due = (num_updates + 1) % hyper.target_update_period == 0
        target_params = jax.tree.map(lambda moved, old: jnp.where(due, moved, old), moved_target, learner.target_params)
        return Learner(params=params, target_params=target_params, opt_state=opt_state), info


AGENT_SPEC = AgentSpec(name=__name__, config_type=Config, hyper_type=Hyper, make_agent=Agent)

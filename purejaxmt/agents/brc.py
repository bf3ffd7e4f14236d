"""BRC for continuous control: SAC with a big, regularised, categorical, task-conditioned critic.

Reads as the method section of Nauman et al. (2025), "Bigger, Regularized, Categorical" (BRC):

1. `Config`, `Hyper`  the paper's defaults; `Hyper` holds the ones that are data (vmappable), `Config` all of them.
2. `Learner`          what the updates change: critic, target critic, actor, temperature and their optimisers.
3. `Agent`            networks and support, built once: `init`, `act`, `random_action`.
4. losses             `critic_loss` (categorical soft TD), `actor_loss`, `temperature_loss`.
5. `update`           critic step, Polyak target update, actor step, temperature step.

Two of the paper's ablations are `Config` switches (they change parameter shapes, so they are not `Hyper` data):
`critic_loss="mse"` (scalar Q heads, squared soft-TD error) and `task_conditioning="one_hot" | "none"`.

The loop that acts, stores, samples and evaluates is `purejaxmt.offpolicy`, shared with every agent. What is not the
method (observation statistics, transfer's new task rows) is `purejaxmt.agents.brc_extras`.
Shapes: `T` tasks, `E` envs per task, `B` transitions in a batch, `M` critics, `K` atoms, `A` padded action size.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import flax.struct as struct
import jax
import jax.numpy as jnp
import optax

from purejaxmt import categorical, nets
from purejaxmt.agents import AgentSpec, brc_extras
from purejaxmt.agents.brc_extras import normalized_observations, observation_statistics

Params = Any
Metrics = dict[str, jax.Array]


# ----------------------------------------------------------------------------------------------------------------------
# 1. Config and Hyper
# ----------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Config:
    """BRC's settings, with the paper's multi-task defaults (BRC.md). The loop's settings (batch, replay, updates per
    step, gamma, n-step, schedule) are `offpolicy.LoopConfig`'s."""

    critic_width: int = 4096
    """BroNet width of each critic member (BRO used 512; the paper scales up to ~1B parameters)."""
    critic_depth: int = 2
    """Residual blocks per critic member."""
    num_critics: int = 2
    actor_width: int = 256
    actor_depth: int = 1
    embed_dim: int = 32
    """Width of the unit-norm task embedding (unused when there is a single task)."""
    task_conditioning: str = "embedding"
    """What tells critic and actor the task, fed where the paper feeds the embedding: "embedding" the learned
    unit-norm table, "one_hot" a fixed one-hot of the task id (no parameters), "none" nothing (ablations)."""
    critic_loss: str = "categorical"
    """The paper's "categorical" cross-entropy against the projected target, or the "mse" ablation: one scalar head
    per member regressed on the soft TD target by squared error (`num_bins`, `v_min` then unused by the critic)."""
    num_bins: int = 101
    v_min: float = -10.0
    v_max: float = 10.0
    compute_dtype: str = "float32"
    """Dtype of the big matmuls ("bfloat16" on GPU/TPU); parameters, optimiser state and losses stay float32."""
    entropy_correction: str = "fixed"
    """Entropy term `alpha * |H| / (1 - gamma)` added to the return range: "fixed" uses |H| = |A|/4 (the authors'
    stand-in, minus half the target entropy), "policy" the magnitude of the last actor batch's policy entropy, "none"
    drops the term. Either way the term is non-negative: it makes room in the support for the soft-value bonus,
    whatever its sign."""

    learning_rate: float = 3e-4
    """AdamW step size of critic and actor (data: `Hyper`, like every field below)."""
    weight_decay: float = 1e-4
    """AdamW weight decay of actor and critic (optax's default)."""
    tau: float = 0.005
    """Polyak step of the target critic."""
    init_temperature: float = 0.1
    temperature_lr: float = 3e-4
    temperature_b1: float = 0.5
    target_entropy_per_dim: float = -0.5
    """Target entropy is this times a task's action count (-|A|/2)."""
    normalize_observations: bool = False
    """Feed actor and critic `(obs - mean) / std` (clipped to +-10) with the running mean and variance of every
    observation the updates have drawn, all tasks pooled (task-balanced batches: each task weighs alike). Not in BRC
    (off by default); FastTD3 and REPPO normalise observations in the massively parallel regime (the `fast` preset).
    The statistics are kept either way (they are the learner's: evaluation, videos and transfer use them)."""

    new_task_rows: tuple[int, ...] = ()
    """Transfer (`purejaxmt.studies.transfer`): the task-embedding rows of the tasks a loaded agent has not been
    trained on. Only with rows named here does `freeze_trained` act (and cost anything). Their AdamW steps take
    Adam's bias correction at their own step count (the run's `num_updates + 1`), not the source's
    (`brc_extras.new_rows_update`)."""
    freeze_trained: bool = False
    """Transfer's `embedding` mode (data, so the three transfer modes share one program): only the `new_task_rows`
    of the embedding table (online and target) and their optimiser moments learn; critic and actor trunks, the
    other rows, the temperature and their optimiser states keep their loaded values (the critic optimiser's step
    count advances, as in `all` mode)."""

    def __post_init__(self) -> None:
        problems = [f"{name}={getattr(self, name)} must be >= 1"
                    for name in ("critic_width", "critic_depth", "num_critics", "actor_width", "embed_dim")
                    if getattr(self, name) < 1]
        if self.actor_depth < 0:
            problems.append(f"actor_depth={self.actor_depth} must be >= 0")
        if self.num_bins < 2:
            problems.append(f"num_bins={self.num_bins} must be >= 2")
        if not self.v_min < self.v_max:
            problems.append(f"v_min={self.v_min} must be < v_max={self.v_max}")
        if not 0.0 < self.tau <= 1.0:
            problems.append(f"tau={self.tau} must be in (0, 1]")
        for name in ("learning_rate", "temperature_lr", "init_temperature"):
            if not getattr(self, name) > 0.0:
                problems.append(f"{name}={getattr(self, name)} must be > 0")
        if self.compute_dtype not in ("float32", "bfloat16", "float16"):
            problems.append(f"compute_dtype={self.compute_dtype!r}; choose 'float32', 'bfloat16' or 'float16'")
        if self.entropy_correction not in ("fixed", "policy", "none"):
            problems.append(f"entropy_correction={self.entropy_correction!r}; choose 'fixed', 'policy' or 'none'")
        if self.task_conditioning not in nets.TASK_CONDITIONINGS:
            problems.append(f"task_conditioning={self.task_conditioning!r}; choose 'embedding', 'one_hot' or 'none'")
        if self.critic_loss not in ("categorical", "mse"):
            problems.append(f"critic_loss={self.critic_loss!r}; choose 'categorical' or 'mse'")
        if self.freeze_trained and not self.new_task_rows:
            problems.append("freeze_trained=True needs new_task_rows (the embedding rows that learn)")
        if self.new_task_rows and self.task_conditioning != "embedding":
            problems.append(f"new_task_rows={self.new_task_rows} need task_conditioning='embedding', not "
                            f"{self.task_conditioning!r}")
        if len(set(self.new_task_rows)) != len(self.new_task_rows) or any(row < 0 for row in self.new_task_rows):
            problems.append(f"new_task_rows={self.new_task_rows} must be distinct rows >= 0")
        if problems:
            raise ValueError("Invalid BRC config: " + "; ".join(problems))


@struct.dataclass
class Hyper:
    """The settings that are data: float32 scalars (or `[R]` under a vmap over runs), read inside the jitted code."""

    learning_rate: jax.Array
    weight_decay: jax.Array
    tau: jax.Array
    init_temperature: jax.Array
    temperature_lr: jax.Array
    temperature_b1: jax.Array
    target_entropy_per_dim: jax.Array
    normalize_observations: jax.Array
    freeze_trained: jax.Array

    @classmethod
    def from_config(cls, config: Config) -> Hyper:
        return cls(**{field.name: jnp.asarray(getattr(config, field.name), jnp.float32)
                      for field in dataclasses.fields(cls)})


# ----------------------------------------------------------------------------------------------------------------------
# 2. Learner
# ----------------------------------------------------------------------------------------------------------------------
@struct.dataclass
class Learner:
    critic_params: Params
    critic_target_params: Params
    actor_params: Params
    log_temperature: jax.Array           # [] float32, log alpha
    critic_opt_state: optax.OptState
    actor_opt_state: optax.OptState
    temperature_opt_state: optax.OptState
    policy_entropy: jax.Array            # [] float32, entropy of the last actor batch (for the "policy" correction)
    obs_mean: jax.Array                  # [O] float32, running mean of the observations the updates drew
    obs_var: jax.Array                   # [O] float32, their running (population) variance
    obs_count: jax.Array                 # [] float32, how many


ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8  # optax's AdamW defaults, named: brc_extras.new_rows_update repeats it


def _adamw(hyper: Hyper) -> optax.GradientTransformation:
    # Built from data on every call: optax takes traced step sizes, and the optimiser state does not depend on them.
    return optax.adamw(hyper.learning_rate, b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS, weight_decay=hyper.weight_decay)


def _temperature_adam(hyper: Hyper) -> optax.GradientTransformation:
    return optax.adam(hyper.temperature_lr, b1=hyper.temperature_b1)


# ----------------------------------------------------------------------------------------------------------------------
# 3. Agent: networks built once; init, acting
# ----------------------------------------------------------------------------------------------------------------------
class Agent:
    """BRC for one `EnvSpec` (continuous actions, vector observations). See `purejaxmt.agents.Agent`."""

    def __init__(self, config: Config, spec: Any) -> None:
        if spec.action.discrete:
            raise ValueError(f"brc is for continuous actions; tasks {list(spec.task_names)} are discrete: use "
                             "purejaxmt.agents.brc_discrete")
        if len(spec.obs_shape) != 1:
            raise ValueError(f"brc expects vector observations, got obs_shape={spec.obs_shape}")
        self.num_tasks, self.obs_dim, self.action_dim = spec.num_tasks, spec.obs_shape[0], spec.action.size
        self.action_mask = jnp.asarray(spec.action.mask, bool)                         # [T, A]
        self.entropy_correction = config.entropy_correction
        self.v_max = config.v_max  # read by the reward normaliser whatever the critic loss
        self.categorical = config.critic_loss == "categorical"
        self.support = categorical.make_support(config.num_bins, config.v_min, config.v_max)
        dtype = jnp.dtype(config.compute_dtype)
        # The "mse" ablation gives each member one scalar output in place of the num_bins logits; the task input
        # (embedding, one-hot or none) is the critic's, and the actor reads the same through `embed`.
        self.critic = nets.Critic(width=config.critic_width, depth=config.critic_depth,
                                  num_bins=config.num_bins if self.categorical else 1, num_tasks=self.num_tasks,
                                  embed_dim=config.embed_dim, num_members=config.num_critics, dtype=dtype,
                                  conditioning=config.task_conditioning)
        self.actor = nets.Actor(action_dim=self.action_dim, width=config.actor_width, depth=config.actor_depth,
                                dtype=dtype)
        out_of_range = [row for row in config.new_task_rows if row >= self.num_tasks]
        if out_of_range or (config.new_task_rows and self.num_tasks == 1):
            raise ValueError(f"new_task_rows={config.new_task_rows}: rows of a table of {self.num_tasks} tasks "
                             f"{list(spec.task_names)} (a single task has no embedding table)")
        self.new_task_rows = jnp.zeros(self.num_tasks, bool).at[jnp.asarray(config.new_task_rows, int)].set(True) \
            if config.new_task_rows else None                                                      # [T] or None

    def init(self, key: jax.Array, hyper: Hyper) -> Learner:
        critic_key, actor_key = jax.random.split(key)
        dummy_obs = jnp.zeros((1, self.obs_dim), jnp.float32)
        dummy_task = jnp.zeros((1,), jnp.int32)
        critic_params = self.critic.init(critic_key, dummy_obs, jnp.zeros((1, self.action_dim)), dummy_task)
        task_embedding = self.critic.apply(critic_params, dummy_task, method=nets.Critic.embed)
        actor_params = self.actor.init(actor_key, dummy_obs, task_embedding)
        log_temperature = jnp.log(hyper.init_temperature).astype(jnp.float32)
        return Learner(
            critic_params=critic_params,
            critic_target_params=jax.tree.map(jnp.copy, critic_params),  # own buffers: chunks donate the state
            actor_params=actor_params,
            log_temperature=log_temperature,
            critic_opt_state=_adamw(hyper).init(critic_params),
            actor_opt_state=_adamw(hyper).init(actor_params),
            temperature_opt_state=_temperature_adam(hyper).init(log_temperature),
            # Before the first update the policy's entropy is unknown: its target (-|A|/2) stands in.
            policy_entropy=(hyper.target_entropy_per_dim * self.action_mask.sum(axis=-1).max()).astype(jnp.float32),
            obs_mean=jnp.zeros(self.obs_dim, jnp.float32),
            obs_var=jnp.ones(self.obs_dim, jnp.float32),
            obs_count=jnp.zeros((), jnp.float32),
        )

    def _policy(self, actor_params: Params, obs: jax.Array, task_embedding: jax.Array, key: jax.Array,
                action_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean, log_std = self.actor.apply(actor_params, obs, task_embedding)
        return nets.sample_tanh_gaussian(key, mean, log_std, action_mask)

    def act(self, learner: Learner, hyper: Hyper, obs: jax.Array, key: jax.Array,
            explore_steps: jax.Array | None) -> jax.Array:
        """Actions for `obs [T, E, O]` -> `[T, E, A]` (padded entries 0): a sample of the tanh-Gaussian policy, or
        its mode when `explore_steps` is None (evaluation)."""
        num_tasks, num_envs = obs.shape[:2]
        task_id = jnp.broadcast_to(jnp.arange(num_tasks)[:, None], (num_tasks, num_envs))
        task_embedding = self.critic.apply(learner.critic_params, task_id, method=nets.Critic.embed)
        action_mask = jnp.broadcast_to(self.action_mask[:, None], (num_tasks, num_envs, self.action_dim))
        mean, log_std = self.actor.apply(learner.actor_params, normalized_observations(learner, hyper, obs),
                                         task_embedding)
        if explore_steps is None:
            return nets.deterministic_action(mean, action_mask)
        return nets.sample_tanh_gaussian(key, mean, log_std, action_mask)[0]

    def random_action(self, key: jax.Array, envs_per_task: int) -> jax.Array:
        action = jax.random.uniform(key, (self.num_tasks, envs_per_task, self.action_dim), minval=-1.0, maxval=1.0)
        return jnp.where(self.action_mask[:, None], action, 0.0)

    # ------------------------------------------------------------------------------------------------------------------
    # 4. Losses
    # ------------------------------------------------------------------------------------------------------------------
    def q_value(self, critic_outputs: jax.Array) -> jax.Array:
        """Q(s, a) `[...]` from the members' outputs `[M, ..., K]`: the expectation of the ensemble-mean
        probabilities, or (critic_loss "mse") the ensemble-mean scalar `[M, ..., 1]`."""
        if self.categorical:
            return categorical.expectation(jax.nn.softmax(critic_outputs, axis=-1).mean(axis=0), self.support)
        return critic_outputs[..., 0].mean(axis=0)

    def critic_loss(self, critic_params: Params, learner: Learner, batch: dict[str, jax.Array],
                    reward_scale: jax.Array, key: jax.Array) -> tuple[jax.Array, Metrics]:
        """Cross-entropy of each critic against the projected categorical soft-TD target (or, critic_loss "mse",
        squared error against the scalar soft-TD target), mean over the batch, summed over the critics."""
        task_id, action_mask = batch["task_id"], self.action_mask[batch["task_id"]]
        temperature = jnp.exp(learner.log_temperature)

        # Target side: a' ~ pi(s') and the target critic at (s', a'); d = gamma^m (1 - terminal), so truncated
        # episodes still bootstrap.
        task_embedding = jax.lax.stop_gradient(self.critic.apply(critic_params, task_id, method=nets.Critic.embed))
        next_action, next_log_prob = self._policy(learner.actor_params, batch["next_obs"], task_embedding, key,
                                                  action_mask)
        target_outputs = self.critic.apply(learner.critic_target_params, batch["next_obs"], next_action, task_id)
        reward = batch["reward"] * reward_scale[task_id]
        bootstrap = batch["discount"] * (1.0 - batch["terminal"].astype(jnp.float32))
        outputs = self.critic.apply(critic_params, batch["obs"], batch["action"], task_id)     # [M, B, K] or [M, B, 1]
        if self.categorical:
            # Mean of the target critics' probabilities, atoms shifted to r + d (z - alpha log pi), projected back.
            target_probs = jax.nn.softmax(target_outputs, axis=-1).mean(axis=0)                       # [B, K]
            target_atoms = reward[:, None] + bootstrap[:, None] * (self.support - temperature * next_log_prob[:, None])
            target_probs = jax.lax.stop_gradient(categorical.project(target_atoms, target_probs, self.support))
            loss = categorical.cross_entropy(outputs, jnp.broadcast_to(target_probs, outputs.shape)).mean(axis=-1).sum()
        else:
            # The ablation: y = r + d (Q'(s', a') - alpha log pi(a'|s')) with Q' the MEAN of the target members, as
            # the categorical target averages their probabilities (not SAC's minimum): only the loss changes.
            next_q = self.q_value(target_outputs)                                                     # [B]
            target_q = jax.lax.stop_gradient(reward + bootstrap * (next_q - temperature * next_log_prob))
            loss = jnp.square(outputs[..., 0] - target_q).mean(axis=-1).sum()
        q_value = self.q_value(outputs)
        return loss, {"critic_loss": loss, "q_mean": q_value.mean(), "normalized_reward": reward.mean()}

    def actor_loss(self, actor_params: Params, learner: Learner, batch: dict[str, jax.Array], key: jax.Array
                   ) -> tuple[jax.Array, Metrics]:
        """alpha * log pi(a|s) - Q(s, a), with Q the expectation of the ensemble-mean probabilities (`q_value`). The
        actor reads the task embedding through a stop-gradient: the embedding is learned by the critic loss alone."""
        task_id, action_mask = batch["task_id"], self.action_mask[batch["task_id"]]
        task_embedding = jax.lax.stop_gradient(
            self.critic.apply(learner.critic_params, task_id, method=nets.Critic.embed))
        action, log_prob = self._policy(actor_params, batch["obs"], task_embedding, key, action_mask)
        q_value = self.q_value(self.critic.apply(learner.critic_params, batch["obs"], action, task_id))
        loss = (jnp.exp(learner.log_temperature) * log_prob - q_value).mean()
        return loss, {"actor_loss": loss, "entropy": -log_prob.mean(), "log_prob": log_prob}

    @staticmethod
    def temperature_loss(log_temperature: jax.Array, log_prob: jax.Array, target_entropy: jax.Array) -> jax.Array:
        """Raises alpha while the policy's entropy is below its target, lowers it above."""
        return -(jnp.exp(log_temperature) * jax.lax.stop_gradient(log_prob + target_entropy)).mean()

    def reward_correction(self, learner: Learner, hyper: Hyper, gamma: jax.Array) -> jax.Array:
        """`alpha |H| / (1 - gamma)` per task, added to the return range `G_i` of the reward scale `V_max / (G_i +
        ...)`. The authors divide by `G_i - alpha * target_entropy / 2 / (1 - gamma)` with the target entropy
        `-|A|/2`: a positive term, `|H| = |A|/4` ("fixed"). "policy" puts the policy's own entropy in its place, by
        magnitude: a tanh-Gaussian's entropy is negative near its target, and a negative term would shrink the
        denominator (even below zero) instead of making room for the soft-value bonus."""
        if self.entropy_correction == "fixed":
            entropy_magnitude = self.action_mask.sum(axis=-1) / 4.0        # [T], the authors' stand-in |A|/4
        elif self.entropy_correction == "policy":
            entropy_magnitude = jnp.abs(learner.policy_entropy)
        else:
            entropy_magnitude = jnp.zeros(())
        return jax.lax.stop_gradient(jnp.exp(learner.log_temperature) * entropy_magnitude / (1.0 - gamma))

    def chunk_extras(self, learner: Learner, hyper: Hyper, explore_steps: jax.Array) -> Metrics:
        return {"temperature": jnp.exp(learner.log_temperature)}

    # ------------------------------------------------------------------------------------------------------------------
    # 5. update
    # ------------------------------------------------------------------------------------------------------------------
    def update(self, learner: Learner, hyper: Hyper, batch: dict[str, jax.Array], reward_scale: jax.Array,
               key: jax.Array, num_updates: jax.Array) -> tuple[Learner, Metrics]:
        """One BRC update in the paper's order: critic step, Polyak target update, actor step (against the new
        critic), temperature step."""
        chex.assert_rank(batch["reward"], 1)
        chex.assert_equal_shape([batch["reward"], batch["task_id"], batch["discount"]])
        chex.assert_shape(reward_scale, (self.num_tasks,))
        critic_key, actor_key = jax.random.split(key)
        adamw = _adamw(hyper)
        learner_before = learner

        # Observation statistics first (this batch included), then both losses read standardised observations.
        obs_mean, obs_var, obs_count = observation_statistics(learner.obs_mean, learner.obs_var, learner.obs_count,
                                                              batch["obs"])
        learner = learner.replace(obs_mean=obs_mean, obs_var=obs_var, obs_count=obs_count)
        batch = {**batch, "obs": normalized_observations(learner, hyper, batch["obs"]),
                 "next_obs": normalized_observations(learner, hyper, batch["next_obs"])}

        # Critic step.
        (_, critic_info), critic_grads = jax.value_and_grad(self.critic_loss, has_aux=True)(
            learner.critic_params, learner, batch, reward_scale, critic_key)
        critic_updates, critic_opt_state = adamw.update(critic_grads, learner.critic_opt_state, learner.critic_params)
        if self.new_task_rows is not None:  # transfer: the new task rows' own Adam bias correction (brc_extras)
            critic_updates = brc_extras.new_rows_update(
                self.new_task_rows, critic_updates, critic_opt_state, learner.critic_params, hyper.learning_rate,
                hyper.weight_decay, num_updates, ADAM_B1, ADAM_B2, ADAM_EPS)
        critic_params = optax.apply_updates(learner.critic_params, critic_updates)
        # Polyak target update.
        critic_target_params = optax.incremental_update(critic_params, learner.critic_target_params, hyper.tau)
        learner = learner.replace(critic_params=critic_params, critic_target_params=critic_target_params,
                                  critic_opt_state=critic_opt_state)

        # Actor step.
        (_, actor_info), actor_grads = jax.value_and_grad(self.actor_loss, has_aux=True)(
            learner.actor_params, learner, batch, actor_key)
        actor_updates, actor_opt_state = adamw.update(actor_grads, learner.actor_opt_state, learner.actor_params)
        actor_params = optax.apply_updates(learner.actor_params, actor_updates)

        # Temperature step, towards -|A|/2 per task.
        target_entropy = hyper.target_entropy_per_dim * self.action_mask[batch["task_id"]].sum(axis=-1)
        temperature_grad = jax.grad(self.temperature_loss)(learner.log_temperature, actor_info.pop("log_prob"),
                                                           target_entropy)
        temperature_updates, temperature_opt_state = _temperature_adam(hyper).update(
            temperature_grad, learner.temperature_opt_state)
        log_temperature = optax.apply_updates(learner.log_temperature, temperature_updates)

        new_learner = learner.replace(actor_params=actor_params, actor_opt_state=actor_opt_state,
                                      log_temperature=log_temperature, temperature_opt_state=temperature_opt_state,
                                      policy_entropy=actor_info["entropy"])
        if self.new_task_rows is not None:
            new_learner = brc_extras.freeze(self.new_task_rows, learner_before, new_learner, hyper.freeze_trained > 0)
        return new_learner, {**critic_info, **actor_info, "temperature": jnp.exp(new_learner.log_temperature)}


AGENT_SPEC = AgentSpec(name=__name__, config_type=Config, hyper_type=Hyper, make_agent=Agent)

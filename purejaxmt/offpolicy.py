"""The off-policy loop, written once for every agent: act, step, store, normalise, n-step, update, evaluate.

`make(agent_spec, agent_config, loop_config, env)` builds the agent's networks once, closes over them and the env
(PureJaxRL's `make_train`), and returns a `Program` of pure, jittable functions:

    program = offpolicy.make(brc.AGENT_SPEC, brc.Config(), LoopConfig(), envs.make("humanoid"))
    state = program.init(key, program.hyper)            # a RunState: arrays only, no static fields
    state, metrics = program.train_chunk(state)         # `iterations_per_chunk` iterations in one lax.scan
    evaluation = program.evaluate(state, key)           # fresh episodes, the evaluation policy

An iteration steps all `[T, E]` envs once (uniform random actions during the first `random_steps`, the agent's
behaviour policy after), stores the raw transitions, updates the per-task return range of the reward normaliser,
and, once the random phase is over, runs `updates_per_step` agent updates, each on a fresh task-balanced batch of
`n_step` transitions. Settings that do not change shapes (`Hyper`: gamma, reward normalisation on/off, and the
agent's learning rates, tau, ...) are data in the state, so one compiled program serves a vmapped batch of them.

Shapes: `T` tasks, `E` envs per task, `B` batch rows, `n` the n-step window.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import chex
import flax.struct as struct
import jax
import jax.numpy as jnp

from purejaxmt import chunk_metrics, normalize, replay
from purejaxmt.agents import AgentSpec

Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How the loop drives an agent. Defaults: BRC.md's multi-task settings."""

    envs_per_task: int = 1
    replay_capacity: int = 1_000_000
    """Transitions kept per task (each observation stored once: `replay` module docstring)."""
    replay_final_capacity: int = 16384
    """Ended episodes per task whose true final observation the replay keeps (`final_capacity`: at least
    `envs_per_task`, at most `replay_capacity`). Sampling is exact while the ring holds no more ended transitions
    than this (C / the mean episode length + E); beyond it the oldest finals are overwritten and counted in the
    chunk metric `replay_lost_finals`."""
    compact_obs: bool = False
    """Store float observations as bfloat16 in the replay (half their bytes); the agent gets them back as float32,
    rounded to bfloat16's 8 significant bits. Integer and bool observations are stored as they are."""
    batch_size: int = 1024
    """Transitions per update, drawn task-balanced (`batch_size // T` from each task, the remainder from tasks drawn
    at random per update; see `replay.balanced_task_ids`); 256 for single-task runs."""
    updates_per_step: int = 2
    """Gradient updates per iteration (one iteration steps all `T x E` envs once)."""
    n_step: int = 1
    """Steps of the bootstrapped return: 1 is BRC's one-step target; n > 1 sums n discounted rewards (fewer where an
    episode ends sooner) before bootstrapping with gamma^n (Rainbow's n-step). Needs `replay_capacity` to be a
    multiple of `envs_per_task`."""
    random_steps: int = 5000
    """Env steps per task of uniform random actions before the first update."""
    total_steps: int = 1_000_000
    """Env steps per task of the whole run."""
    steps_per_chunk: int = 10_000
    """Env steps per task in one compiled chunk (the host logs between chunks)."""
    eval_episodes: int = 10
    """Evaluation episodes per task (the agent's evaluation policy, fresh episodes side by side)."""
    gamma: float = 0.99
    """Discount (data: `Hyper`)."""
    normalize_rewards: bool = True
    """Scale each task's rewards by `V_max / (its return range + the agent's correction)` (data: `Hyper`)."""

    def __post_init__(self) -> None:
        problems = [f"{name}={getattr(self, name)} must be >= 1"
                    for name in ("envs_per_task", "replay_capacity", "replay_final_capacity", "batch_size",
                                 "updates_per_step", "n_step",
                                 "total_steps", "steps_per_chunk", "eval_episodes")
                    if getattr(self, name) < 1]
        if self.random_steps < 0:
            problems.append(f"random_steps={self.random_steps} must be >= 0")
        if not 0.0 <= self.gamma < 1.0:
            problems.append(f"gamma={self.gamma} must be in [0, 1)")
        if problems:  # the checks below divide by these
            raise ValueError("Invalid loop config: " + "; ".join(problems))
        if self.steps_per_chunk % self.envs_per_task:
            problems.append(f"steps_per_chunk={self.steps_per_chunk} must be a multiple of "
                            f"envs_per_task={self.envs_per_task}")
        if self.replay_capacity < self.envs_per_task:
            problems.append(f"replay_capacity={self.replay_capacity} is smaller than envs_per_task="
                            f"{self.envs_per_task}")
        if self.n_step > 1 and (self.replay_capacity % self.envs_per_task
                                or self.replay_capacity <= self.n_step * self.envs_per_task):
            problems.append(f"n_step={self.n_step} needs replay_capacity={self.replay_capacity} to be a multiple of "
                            f"envs_per_task={self.envs_per_task} (so each env's steps stay in order across the ring's "
                            f"wrap) and larger than n_step * envs_per_task")
        if self.random_steps < (self.n_step - 1) * self.envs_per_task:
            problems.append(f"random_steps={self.random_steps} must be at least (n_step - 1) * envs_per_task = "
                            f"{(self.n_step - 1) * self.envs_per_task}: the first update needs one n-step window "
                            "of every env in the buffer")
        if problems:
            raise ValueError("Invalid loop config: " + "; ".join(problems))

    @property
    def final_capacity(self) -> int:
        """Finals the replay keeps per task: `replay_final_capacity` clipped to [envs_per_task, replay_capacity]."""
        return min(self.replay_capacity, max(self.envs_per_task, self.replay_final_capacity))

    @property
    def iterations_per_chunk(self) -> int:
        return self.steps_per_chunk // self.envs_per_task

    @property
    def random_iterations(self) -> int:
        return math.ceil(self.random_steps / self.envs_per_task)

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_chunk)


@struct.dataclass
class Hyper:
    """The run's settings that are data: the loop's and the agent's (`agent`, its module's `Hyper`)."""

    gamma: jax.Array                     # [] float32
    normalize_rewards: jax.Array         # [] bool
    agent: Any


@struct.dataclass
class RunState:
    """Everything a run is, arrays only (the env, agent and configs are closed over by the `Program`), so one
    checkpoint restores one run and `vmap` batches runs.

    `LOCKSTEP_FIELDS` are the same in every run of a vmapped batch (they count iterations and updates): the runner
    keeps them outside the vmapped axis, so the `lax.cond` that skips updates in the random phase stays a cond
    instead of becoming a select that runs the updates anyway."""

    LOCKSTEP_FIELDS: ClassVar[tuple[str, ...]] = ("iteration", "num_updates")

    learner: Any
    hyper: Hyper
    normalizer: normalize.NormalizerState
    replay: replay.ReplayState
    env_state: Any                       # envs.EnvState: `[T, E]` envs, the observation to act on next
    key: jax.Array
    iteration: jax.Array                 # [] int32, iterations done (env steps per task = iteration * E)
    num_updates: jax.Array               # [] int32


class Program(NamedTuple):
    """A compiled-once run: pure functions of `RunState`s, plus what the host needs to drive them."""

    init: Callable[[jax.Array, Hyper], RunState]
    train_chunk: Callable[[RunState], tuple[RunState, Metrics]]
    evaluate: Callable[[RunState, jax.Array], Metrics]
    update: Callable[[RunState], tuple[RunState, Metrics]]  # one iteration's updates (the memory pre-flight's)
    hyper: Hyper                         # the configs' settings as data (the default for `init`)
    replay_nbytes: int                   # bytes of one run's replay buffer
    loop_config: LoopConfig
    task_names: tuple[str, ...]
    agent: Any


def hyper_of(agent_spec: AgentSpec, agent_config: Any, loop_config: LoopConfig) -> Hyper:
    """The settings of these configs that are data. Stack several to vmap runs:
    `jax.tree.map(lambda *xs: jnp.stack(xs), h1, h2)`."""
    return Hyper(gamma=jnp.asarray(loop_config.gamma, jnp.float32),
                 normalize_rewards=jnp.asarray(loop_config.normalize_rewards, bool),
                 agent=agent_spec.hyper_type.from_config(agent_config))


def replay_example(spec: Any, compact_obs: bool = False) -> dict[str, jax.ShapeDtypeStruct]:
    """One env's worth of each stored field, `[T, ...]`, in the dtypes the buffer keeps (observations in the env's
    dtype: MinAtar's uint8; with `compact_obs` float observations as bfloat16)."""
    obs_dtype = jnp.dtype(spec.obs_dtype)
    if compact_obs and jnp.issubdtype(obs_dtype, jnp.floating):
        obs_dtype = jnp.dtype(jnp.bfloat16)
    num_tasks, obs = spec.num_tasks, jax.ShapeDtypeStruct((spec.num_tasks, *spec.obs_shape), obs_dtype)
    action = (jax.ShapeDtypeStruct((num_tasks,), jnp.int32) if spec.action.discrete
              else jax.ShapeDtypeStruct((num_tasks, spec.action.size), jnp.float32))
    flag = jax.ShapeDtypeStruct((num_tasks,), bool)
    return dict(obs=obs, action=action, reward=jax.ShapeDtypeStruct((num_tasks,), jnp.float32), next_obs=obs,
                terminal=flag, truncated=flag)


def n_step_transitions(windows: dict[str, jax.Array], gamma: float | jax.Array) -> dict[str, jax.Array]:
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
    gamma = jnp.asarray(gamma, jnp.float32)
    powers = gamma ** jnp.arange(n, dtype=jnp.float32)
    rows, last = jnp.arange(batch_size), num_counted - 1
    return {"obs": windows["obs"][:, 0], "action": windows["action"][:, 0],
            "reward": jnp.sum(jnp.where(counted, reward * powers, 0.0), axis=-1),
            "next_obs": windows["next_obs"][rows, last],
            "terminal": windows["terminal"][rows, last], "truncated": windows["truncated"][rows, last],
            "discount": gamma ** num_counted.astype(jnp.float32)}


def reward_scale(agent: Any, learner: Any, hyper: Hyper, normalizer: normalize.NormalizerState) -> jax.Array:
    """`[T]`: the scale of every update's raw rewards, `V_max / (G_i + correction)` (ones with normalisation off)."""
    correction = agent.reward_correction(learner, hyper.agent, hyper.gamma)
    scale = normalize.scale(normalizer, agent.v_max, correction)
    return jnp.where(hyper.normalize_rewards, scale, jnp.ones_like(scale))


def sample_batch(replay_state: replay.ReplayState, key: jax.Array, loop_config: LoopConfig, gamma: jax.Array,
                 obs_dtype: Any = None) -> dict[str, jax.Array]:
    """A task-balanced batch of `loop_config.batch_size` (n-step) transitions as the update takes it: flat
    `[B, ...]` leaves with `discount` (gamma^m of an m-step transition) and `task_id`; observations cast to
    `obs_dtype` (the env's: undoes `compact_obs`), when given."""
    if loop_config.n_step == 1:
        items, task_id = replay.sample(replay_state, key, loop_config.batch_size)
        batch = {**items, "discount": jnp.full(task_id.shape, gamma, jnp.float32), "task_id": task_id}
    else:
        windows, task_id = replay.sample_windows(replay_state, key, loop_config.batch_size,
                                                 length=loop_config.n_step, stride=loop_config.envs_per_task)
        batch = {**n_step_transitions(windows, gamma), "task_id": task_id}
    if obs_dtype is not None:
        batch.update(obs=batch["obs"].astype(obs_dtype), next_obs=batch["next_obs"].astype(obs_dtype))
    return batch


def evaluation_rollout(env: Any, agent: Any, learner: Any, agent_hyper: Any, key: jax.Array, num_episodes: int,
                       num_steps: int, record: Callable[[Any, jax.Array], Any] | None = None
                       ) -> tuple[jax.Array, Any]:
    """The evaluation policy (`agent.act(..., None)`) on `num_episodes` fresh episodes per task, side by side (one
    env each, never restarted: a finished episode's later rewards are not counted), for `num_steps` steps in one
    `lax.scan`. Returns the undiscounted returns `[T, N]` and, with `record`, the per-step stack of
    `{**record(env_state, alive), "reward": reward}` (the state acted on, whether its episode is still going on, and
    the counted reward `[T, N]`); None without."""
    env_state, _ = env.reset(key, num_episodes, reset_pool_size=1)  # evaluation episodes never restart

    def step(carry: tuple[Any, jax.Array, jax.Array], _: None) -> tuple[tuple[Any, jax.Array, jax.Array], Any]:
        env_state, returns, alive = carry
        action = agent.act(learner, agent_hyper, env_state.obs, key, None)
        seen = None if record is None else record(env_state, alive)
        env_state, transition = env.step(env_state, action)
        reward = jnp.where(alive, transition.reward, 0.0)
        alive = alive & ~(transition.terminal | transition.truncated)
        return (env_state, returns + reward, alive), None if record is None else {**seen, "reward": reward}

    returns = jnp.zeros((env.spec.num_tasks, num_episodes), jnp.float32)
    alive = jnp.ones((env.spec.num_tasks, num_episodes), bool)
    (_, returns, _), seen = jax.lax.scan(step, (env_state, returns, alive), None, length=num_steps)
    return returns, seen


def make(agent_spec: AgentSpec, agent_config: Any, loop_config: LoopConfig, env: Any) -> Program:
    """The `Program` of the agent `agent_spec` describes, with `agent_config`, on `env`."""
    spec = env.spec
    agent = agent_spec.make_agent(agent_config, spec)
    num_tasks, num_envs = spec.num_tasks, loop_config.envs_per_task
    if loop_config.batch_size < num_tasks:
        raise ValueError(f"batch_size={loop_config.batch_size} is smaller than the number of tasks {num_tasks}: "
                         "batches are task-balanced, with at least one transition of every task")
    example = replay_example(spec, loop_config.compact_obs)
    final_capacity = loop_config.final_capacity
    max_episode_length = max(spec.episode_length)

    def init(key: jax.Array, hyper: Hyper) -> RunState:
        key, learner_key, env_key = jax.random.split(key, 3)
        env_state, _ = env.reset(env_key, num_envs)
        return RunState(learner=agent.init(learner_key, hyper.agent), hyper=hyper,
                        normalizer=normalize.init(num_tasks, num_envs, max_episode_length),
                        replay=replay.init(example, loop_config.replay_capacity, num_envs, final_capacity),
                        env_state=env_state, key=key, iteration=jnp.zeros((), jnp.int32),
                        num_updates=jnp.zeros((), jnp.int32))

    def scale_of(state: RunState) -> jax.Array:
        return reward_scale(agent, state.learner, state.hyper, state.normalizer)

    def explore_steps(state: RunState) -> jax.Array:
        return (state.iteration - loop_config.random_iterations) * num_envs

    def update_many(state: RunState) -> tuple[RunState, Metrics]:
        """`updates_per_step` updates, each on a fresh batch; returns the mean of their metrics."""
        scale = scale_of(state)  # the normaliser does not move between the updates of one iteration

        def one_update(state: RunState, _: None) -> tuple[RunState, Metrics]:
            key, sample_key, update_key = jax.random.split(state.key, 3)
            batch = sample_batch(state.replay, sample_key, loop_config, state.hyper.gamma, spec.obs_dtype)
            learner, info = agent.update(state.learner, state.hyper.agent, batch, scale, update_key,
                                         state.num_updates)
            return state.replace(learner=learner, key=key, num_updates=state.num_updates + 1), info

        state, infos = jax.lax.scan(one_update, state, None, length=loop_config.updates_per_step)
        return state, jax.tree.map(lambda x: x.mean(axis=0), infos)

    def zero_update_metrics(state: RunState) -> Metrics:
        shapes = jax.eval_shape(lambda s: update_many(s)[1], state)
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def iteration(carry: tuple[RunState, chunk_metrics.Totals], _: None
                  ) -> tuple[tuple[RunState, chunk_metrics.Totals], None]:
        state, totals = carry
        key, act_key = jax.random.split(state.key)
        exploring = state.iteration < loop_config.random_iterations  # lockstep across runs: a cond, not a select
        action = jax.lax.cond(
            exploring,
            lambda: agent.random_action(act_key, num_envs),
            lambda: agent.act(state.learner, state.hyper.agent, state.env_state.obs, act_key, explore_steps(state)))
        env_state, transition = env.step(state.env_state, action)
        state = state.replace(
            key=key,
            env_state=env_state,
            replay=replay.add(state.replay, {name: getattr(transition, name).astype(leaf.dtype)
                                             for name, leaf in example.items()}),
            normalizer=normalize.update(state.normalizer, transition.reward, transition.terminal,
                                        transition.truncated, state.hyper.gamma),
            iteration=state.iteration + 1,
        )
        learning = ~exploring
        state, update_info = jax.lax.cond(learning, update_many, lambda s: (s, zero_update_metrics(s)), state)
        totals = chunk_metrics.accumulate(totals, env_state.stats, transition.reward, learning, update_info)
        return (state, totals), None

    def train_chunk(state: RunState) -> tuple[RunState, Metrics]:
        """`iterations_per_chunk` iterations; metrics reduced inside the chunk (`chunk_metrics`): per-task `[T]`
        episode returns and counts, means of the update metrics over the iterations that updated, and the state of
        the run at the chunk's end."""
        totals = chunk_metrics.init_totals(num_tasks, zero_update_metrics(state))
        (state, totals), _ = jax.lax.scan(iteration, (state, totals), None, length=loop_config.iterations_per_chunk)
        return state, {
            **chunk_metrics.finalize(totals, env_steps_per_task=loop_config.steps_per_chunk),
            **agent.chunk_extras(state.learner, state.hyper.agent, jnp.maximum(explore_steps(state), 0)),
            "reward_scale": scale_of(state),                                                            # [T]
            "replay_lost_finals": state.replay.finals.lost,                                             # [T]
            "step": state.iteration * num_envs,                                      # env steps per task so far
            "num_updates": state.num_updates,
        }

    def evaluate(state: RunState, key: jax.Array) -> Metrics:
        """The evaluation policy on `eval_episodes` fresh episodes per task (side by side, one env each); per-task
        mean and std of the undiscounted return `[T]`. The training envs are untouched."""
        returns, _ = evaluation_rollout(env, agent, state.learner, state.hyper.agent, key, loop_config.eval_episodes,
                                        max_episode_length)
        return {"return": returns.mean(axis=1), "return_std": returns.std(axis=1)}

    return Program(init=init, train_chunk=train_chunk, evaluate=evaluate, update=update_many,
                   hyper=hyper_of(agent_spec, agent_config, loop_config),
                   replay_nbytes=replay.nbytes(example, loop_config.replay_capacity, num_envs, final_capacity),
                   loop_config=loop_config,
                   task_names=tuple(spec.task_names), agent=agent)

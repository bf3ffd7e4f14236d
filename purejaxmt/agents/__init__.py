"""Algorithm cores behind one `Agent` protocol; `purejaxmt.offpolicy` drives any of them.

An agent module defines a frozen `Config` (its settings, with the paper's defaults), a `Hyper` pytree (the settings
that do not change array shapes, as data: vmappable, so one compiled program serves many of them) with
`Hyper.from_config(config)`, and an `Agent(config, spec)` class built once per run: networks, support and optimiser
structure are made in its constructor, and its methods are pure functions of arrays. An agent knows nothing of
environments, replay buffers or the loop: it sees an env's `EnvSpec` (task count, observation shape, action spec),
batches of flat transitions and the per-task reward scale.

    agent = brc.Agent(config, env.spec)                   # brc.AGENT_SPEC.make_agent(config, env.spec)
    hyper = brc.Hyper.from_config(config)                 # or a stack of them, vmapped
    learner = agent.init(key, hyper)
    action = agent.act(learner, hyper, obs, key, explore_steps)      # obs [T, E, *O]; None: evaluation policy
    learner, metrics = agent.update(learner, hyper, batch, reward_scale, key, num_updates)

The loop, the runner and the studies take an agent as its `AgentSpec` (`brc.AGENT_SPEC`): the three types, typed,
and the name a run directory records, by which `load_spec` finds it again.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import jax

if TYPE_CHECKING:
    from purejaxmt.envs import EnvSpec

Learner = Any
Hyper = Any
Metrics = dict[str, jax.Array]


class Agent(Protocol):
    """What `offpolicy.make` needs of an algorithm. Shapes: `T` tasks, `E` envs per task, `B` batch rows."""

    v_max: float
    """Upper end of the value support: rewards are normalised so that returns land inside it."""

    def init(self, key: jax.Array, hyper: Hyper) -> Learner:
        """Parameters, target parameters, optimiser states and any other learned state, from one key."""

    def act(self, learner: Learner, hyper: Hyper, obs: jax.Array, key: jax.Array,
            explore_steps: jax.Array | None) -> jax.Array:
        """Actions for `obs [T, E, *O]`. `explore_steps` (env steps per task since the random phase ended) selects
        the behaviour policy and drives exploration schedules; None selects the evaluation policy (deterministic or
        greedy)."""

    def random_action(self, key: jax.Array, envs_per_task: int) -> jax.Array:
        """Uniform random actions `[T, E, ...]` of the random phase (legal and unpadded entries only)."""

    def update(self, learner: Learner, hyper: Hyper, batch: dict[str, jax.Array], reward_scale: jax.Array,
               key: jax.Array, num_updates: jax.Array) -> tuple[Learner, Metrics]:
        """One gradient update on a task-balanced batch: flat leaves `[B, ...]` (`obs`, `action`, raw `reward`,
        `next_obs`, `terminal`, `discount` (the bootstrap factor, gamma^m for an m-step transition), int32
        `task_id`); `reward_scale [T]`; `num_updates` the updates done before this one (same in every run)."""

    def reward_correction(self, learner: Learner, hyper: Hyper, gamma: jax.Array) -> jax.Array:
        """A non-negative term added to each task's return range before normalising (`[T]` or scalar): room in the
        support for what the agent adds to rewards (SAC's entropy bonus); 0 for agents that add nothing."""

    def chunk_extras(self, learner: Learner, hyper: Hyper, explore_steps: jax.Array) -> Metrics:
        """Scalars worth logging once per chunk (temperature, epsilon, ...)."""


class HyperType(Protocol):
    """An agent's `Hyper` class: a pytree of the settings that are data, made from its `Config`."""

    @classmethod
    def from_config(cls, config: Any) -> Hyper: ...


@dataclasses.dataclass(frozen=True)
class AgentSpec:
    """One algorithm, as everything above the agent takes it."""

    name: str
    """The agent's module (`"purejaxmt.agents.brc"`): recorded in a run's config.json, found again by `load_spec`."""
    config_type: type
    """Its frozen `Config` (the paper's defaults)."""
    hyper_type: type[HyperType]
    """Its `Hyper`: `hyper_type.from_config(config)`."""
    make_agent: Callable[[Any, EnvSpec], Agent]
    """`make_agent(config, env_spec)`: the agent of a run, built once."""


def load_spec(name: str) -> AgentSpec:
    """The `AgentSpec` a run directory names (`AGENT_SPEC` of module `name`); `ValueError` when there is none."""
    try:
        spec = importlib.import_module(name).AGENT_SPEC
    except (ImportError, AttributeError) as error:
        raise ValueError(f"agent {name!r} cannot be loaded: {error}") from error
    if not isinstance(spec, AgentSpec):
        raise ValueError(f"{name}.AGENT_SPEC is a {type(spec).__name__}, not an AgentSpec")
    return spec

"""Gymnax's continuous classic-control envs as task-axis families (continuous actions): cheap continuous tasks.

Tasks: `Pendulum-v1` and `MountainCarContinuous-v0` under Gymnax's own names, task set `classic-continuous`. They
exist so that continuous agents and the loop can be tested and debugged on envs that build and compile in about a
second on a CPU (no MuJoCo / MJX: a Playground task takes tens of seconds to compile). Gymnax's other continuous
envs (`PointRobot-misc`, `Reacher-misc`, `Swimmer-misc`) are not offered. Gymnax itself is imported only when a
family is built (importing it takes seconds: it pulls in matplotlib and seaborn).

    env = purejaxmt.envs.make("classic-continuous")  # Pendulum-v1, MountainCarContinuous-v0: T = 2
    state, obs = env.reset(key, envs_per_task=32)    # obs f32[2, 32, 3] (MountainCar's 2-vector zero-padded)
    state, transition = env.step(state, action)      # action f32[2, 32, 1] in [-1, 1]

Actions: like every continuous task here, one entry per action dim in [-1, 1] (what a tanh-squashed policy emits),
scaled linearly to the env's action bounds before Gymnax sees it: `center + a * half_range`, i.e. Pendulum's torque
`2 a` (bounds [-2, 2]), MountainCarContinuous's force `a` (bounds [-1, 1]). Entries outside [-1, 1] are clipped
first (Gymnax clips the force too, but MountainCarContinuous charges its control cost `0.1 a^2` on the unclipped
action).

Stepping, terminal vs truncated and time limits are those of the discrete Gymnax families
(`purejaxmt.envs.gymnax_tasks`): Gymnax's `reset_env`/`step_env` with default params, `terminal` is `step_env`'s
termination flag (Pendulum never terminates; MountainCarContinuous terminates at the goal), `truncated` comes from
the `TaskEnv` time limit, which defaults to Gymnax's `params.max_steps_in_episode` (Pendulum-v1 200,
MountainCarContinuous-v0 999). Observations are float32 vectors (Pendulum: cos, sin, angular velocity;
MountainCarContinuous: position, velocity); rewards float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from purejaxmt.envs.base import Family
from purejaxmt.envs.gymnax_tasks import GymnaxEnvFamily

# Gymnax 1.0's continuous classic-control envs (the `-v*` names with a Box action space), in registry order. A literal
# so that `task_names()` does not import Gymnax; tests/test_gymnax_continuous_envs.py checks it against the registry.
CONTINUOUS_TASKS: tuple[str, ...] = ("Pendulum-v1", "MountainCarContinuous-v0")


def task_names() -> tuple[str, ...]:
    return CONTINUOUS_TASKS


def build(tasks: Sequence[str]) -> list[Family]:
    """One `GymnaxContinuousFamily` per task, in the given order."""
    return [GymnaxContinuousFamily(task) for task in tasks]


class GymnaxContinuousFamily(GymnaxEnvFamily):
    """One continuous Gymnax env (see `gymnax_tasks.GymnaxEnvFamily`: stepping, time limits, terminal flags); actions
    in [-1, 1] are scaled to the env's bounds (see the module docstring).

    Attributes (besides `GymnaxEnvFamily`'s): `low`, `high` (np f32[action_size]: the env's action bounds, what -1
    and 1 map to).
    """

    def __init__(self, task_name: str):
        if task_name not in CONTINUOUS_TASKS:
            raise ValueError(f"Unknown continuous Gymnax task {task_name!r}; known: {list(CONTINUOUS_TASKS)} (the "
                             "discrete Gymnax envs are in purejaxmt.envs.gymnax_tasks).")
        from gymnax.environments import spaces  # here, not at the top: importing Gymnax takes seconds

        self._load(task_name, obs_dtype=np.float32)
        space = self.env.action_space(self.params)
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"{task_name}: expected a Box action space of rank 1, got {space}.")
        if len(self.obs_shape) != 1:
            raise ValueError(f"{task_name}: only flat vector observations are supported, got shape {self.obs_shape}.")
        self.action_size = int(space.shape[0])
        self.low = np.broadcast_to(np.asarray(space.low, np.float32), space.shape).copy()
        self.high = np.broadcast_to(np.asarray(space.high, np.float32), space.shape).copy()
        if not (np.isfinite(self.low).all() and np.isfinite(self.high).all() and (self.low < self.high).all()):
            raise ValueError(f"{task_name}: action bounds must be finite with low < high, got [{self.low}, "
                             f"{self.high}].")
        self._center = (self.high + self.low) / 2
        self._half_range = (self.high - self.low) / 2

    def scale(self, action: jax.Array) -> jax.Array:
        """Actions in [-1, 1] (`[..., action_size]`, clipped to it first) -> the env's bounds."""
        return self._center + jnp.clip(action.astype(jnp.float32), -1.0, 1.0) * self._half_range

    def _env_action(self, action: jax.Array) -> jax.Array:
        return self.scale(action)

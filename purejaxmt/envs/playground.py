"""MuJoCo Playground DM Control tasks as task-axis families (continuous actions).

Task names are kebab-case versions of Playground's names (`CheetahRun` -> `cheetah-run`, `BallInCup` ->
`ball-in-cup`, `CartpoleSwingup` -> `cartpole-swingup`): `DM_CONTROL_TASKS`, a literal list that
tests/test_envs.py checks against `registry.dm_control_suite.ALL_ENVS`. Every env is loaded with
`registry.load(name, config_overrides={"impl": "jax"})` (the default Warp impl is NVIDIA-only).

Importing this module imports neither MuJoCo nor MuJoCo Playground (that takes seconds, and `envs.resolve`,
`envs.list_tasks` and `envs.make` of other providers' tasks import every provider module): they are imported when a
family is built.

- `PlaygroundFamily`: any one Playground DM Control env, vmapped over `[1, E]`; Playground's own `reset`/`step`.
- `HumanoidFamily`: humanoid-stand / -walk / -run and `humanoid-speed-X` (any target speed X m/s) as ONE MJX
  model vmapped over `[n_tasks, E]`; the target move speed (0, 1, 10, X m/s) is a per-env array in the state and
  the reward is `humanoid_reward`, a traced-speed version of Playground's `Humanoid._get_reward` that equals it for
  each task.

Differences to dm_control (say so wherever returns are compared with dm_control numbers): these are Playground's
MJX re-implementations, not dm_control itself.
- Humanoid: physics timestep 0.005 s (dm_control: 0.0025 s; control step 0.025 s in both); the reset is
  deterministic (the default standing pose, no random initial joint angles as in dm_control); Playground's `done`
  fires only on a NaN state (the `TaskEnv` non-finite guard handles that case).
- All: observations are one flat float32 vector in Playground's order (dm_control: a dict of named arrays); other
  tasks' timesteps and integrators may differ from dm_control too (e.g. finger uses `implicitfast`); read the
  Playground source of the task you compare.
- The time limit is 1000 steps for every task here (as in dm_control, where it is given in seconds); there is no
  action repeat.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from purejaxmt.envs.base import Family, vmap_envs

if TYPE_CHECKING:  # annotations only: the module must not import MuJoCo (see the module docstring)
    from mujoco import mjx

# Every Playground DM Control env (`registry.dm_control_suite.ALL_ENVS` of Playground 0.2.0, in its order) under its
# kebab-case name. A literal so that `task_names()`, which `envs.resolve` and `envs.make` call for every provider,
# does not import Playground; tests/test_envs.py checks it against Playground's registry.
DM_CONTROL_TASKS: tuple[str, ...] = (
    "acrobot-swingup",
    "acrobot-swingup-sparse",
    "ball-in-cup",
    "cartpole-balance",
    "cartpole-balance-sparse",
    "cartpole-swingup",
    "cartpole-swingup-sparse",
    "cheetah-run",
    "finger-spin",
    "finger-turn-easy",
    "finger-turn-hard",
    "fish-swim",
    "hopper-hop",
    "hopper-stand",
    "humanoid-stand",
    "humanoid-walk",
    "humanoid-run",
    "pendulum-swingup",
    "point-mass",
    "reacher-easy",
    "reacher-hard",
    "swimmer-swimmer6",
    "walker-run",
    "walker-stand",
    "walker-walk",
)

# Target horizontal speed of the centre of mass (m/s) per humanoid task; 0 selects the "stand still" reward. Literal
# values of Playground's `humanoid.WALK_SPEED` and `RUN_SPEED` (tests/test_envs.py checks them), for the same reason.
HUMANOID_SPEEDS = {
    "humanoid-stand": 0.0,
    "humanoid-walk": 1.0,
    "humanoid-run": 10.0,
}
# Humanoid tasks of any target speed on the same model: `humanoid-speed-4`, `humanoid-speed-0.5` (m/s; 0 is stand).
# Held-out speeds are natural new tasks for transfer (experiments/transfer.py).
SPEED_TASK_PREFIX = "humanoid-speed-"
TASK_PATTERNS = (SPEED_TASK_PREFIX + "<m/s>",)


def humanoid_speed(task: str) -> float | None:
    """The target speed (m/s) of a humanoid task, stand / walk / run's or X of `humanoid-speed-X`; None for a task
    that is not a humanoid task. A malformed speed (`humanoid-speed-fast`, `humanoid-speed--1`) is a `ValueError`."""
    if task in HUMANOID_SPEEDS:
        return HUMANOID_SPEEDS[task]
    if not task.startswith(SPEED_TASK_PREFIX):
        return None
    speed = task[len(SPEED_TASK_PREFIX):]
    if not re.fullmatch(r"\d+(\.\d+)?", speed):
        raise ValueError(f"Task {task!r}: a humanoid speed task is named {SPEED_TASK_PREFIX}X with X its target speed "
                         f"in m/s as a non-negative decimal number (humanoid-speed-4, humanoid-speed-0.5); got "
                         f"X={speed!r}.")
    return float(speed)


def accepts(task: str) -> bool:
    """True for the parameterised task names this provider builds beyond `task_names()` (`humanoid-speed-X`)."""
    return task.startswith(SPEED_TASK_PREFIX) and humanoid_speed(task) is not None


def kebab(playground_name: str) -> str:
    """`CheetahRun` -> `cheetah-run`, `BallInCup` -> `ball-in-cup`, `SwimmerSwimmer6` -> `swimmer-swimmer6`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", playground_name).lower()


def playground_names() -> dict[str, str]:
    """kebab-case task name -> Playground env name, for every Playground DM Control env (imports Playground)."""
    from mujoco_playground import registry

    return {kebab(name): name for name in registry.dm_control_suite.ALL_ENVS}


def task_names() -> tuple[str, ...]:
    return DM_CONTROL_TASKS


def load(task_name: str) -> Any:
    """The Playground env of a task, always with the pure-JAX MJX implementation."""
    from mujoco_playground import registry  # here, not at the top: importing Playground takes seconds

    names = playground_names()
    if task_name not in names:
        raise ValueError(f"Unknown Playground DM Control task {task_name!r}; known: {sorted(names)}.")
    return registry.load(names[task_name], config_overrides={"impl": "jax"})


def build(tasks: Sequence[str]) -> list[Family]:
    """Families for the requested tasks: all humanoid tasks share one `HumanoidFamily`; every other task gets a
    `PlaygroundFamily` of its own. Family order follows the first appearance of its tasks in `tasks`."""
    humanoid_tasks = tuple(t for t in tasks if humanoid_speed(t) is not None)
    families: list[Family] = []
    for task in tasks:
        if humanoid_speed(task) is not None:
            if task == humanoid_tasks[0]:
                families.append(_family(HumanoidFamily, humanoid_tasks))
        else:
            families.append(_family(PlaygroundFamily, task))
    return families


@functools.cache
def _family(kind: type[Family], tasks: Any) -> Family:
    """One family per task (or humanoid task set) and process. A family holds no run state, and building one costs
    seconds (Playground parses the model's MJCF and builds its MJX model) as does tracing its one-env reset and step
    (`vmap_envs`): a later env of the same tasks (a transfer's grown task set, the next member of a study, the
    renderer) reuses both."""
    return kind(tasks)


@functools.cache
def _humanoid_functions() -> tuple[Any, Callable, Callable]:
    """The humanoid model (`humanoid-stand`'s Playground env: the tasks differ only in their move speed) and its
    batched one-env reset and step, shared by the `HumanoidFamily` of every humanoid task set (see `_family`)."""
    from mujoco_playground._src import mjx_env

    env = load("humanoid-stand")

    def step_one(data, action, move_speed):
        data = mjx_env.step(env.mjx_model, data, action, env.n_substeps)
        return data, env._get_obs(data, {}), humanoid_reward(env, data, action, move_speed)

    return env, vmap_envs(env.reset), vmap_envs(step_one)


def _physics_finite(data: mjx.Data) -> jax.Array:
    """bool[n, E]: qpos, qvel and actuator activations are finite (what NaN-ing physics shows up in first)."""
    finite = jnp.isfinite(data.qpos).all(-1) & jnp.isfinite(data.qvel).all(-1)
    return finite & jnp.isfinite(data.act).all(-1)


class PlaygroundFamily(Family):
    """One Playground DM Control task, vmapped over `[1, E]` with Playground's own `reset` and `step`.

    The inner state is Playground's `mjx_env.State` (its `info["rng"]` descends from the key given to `reset`).
    `terminal` is Playground's `done` (for the DM Control tasks: a NaN state only).
    """

    def __init__(self, task_name: str):
        self.env = load(task_name)
        self.task_names = (task_name,)
        obs_size = self.env.observation_size
        if not isinstance(obs_size, int):
            raise ValueError(f"{task_name}: only flat vector observations are supported, got {obs_size}.")
        self.obs_shape = (obs_size,)
        self.obs_dtype = np.float32
        self.action_size = int(self.env.action_size)
        self.episode_length = int(self.env._config.episode_length)
        self.pooled_reset = True  # every MJX reset runs a forward pass; some (cheetah) run hundreds of steps
        # Built once, so that every E reuses the one-env traces (see `vmap_envs`).
        self._reset_envs = vmap_envs(self.env.reset)
        self._step_envs = vmap_envs(self.env.step)

    def reset(self, keys):
        state = self._reset_envs(keys)
        return state, state.obs

    def step(self, inner, action, keys):
        del keys  # Playground's DM Control steps are deterministic.
        state = self._step_envs(inner, action)
        return state, state.obs, state.reward, state.done > 0, jnp.zeros(state.done.shape, bool)

    def finite(self, inner):
        return _physics_finite(inner.data)


@struct.dataclass
class HumanoidState:
    data: mjx.Data  # leaves [n, E, ...]
    move_speed: jax.Array  # f32[n, E]: target horizontal speed; 0 = stand


class HumanoidFamily(Family):
    """humanoid-stand / -walk / -run as one MJX model vmapped over `[n_tasks, E]`.

    Physics and observations are Playground's (`mjx_env.step`, `Humanoid._get_obs`, `Humanoid.reset` for the
    initial data); the reward is `humanoid_reward` with the per-env target speed traced. Differences to dm_control:
    timestep 0.005 s (dm_control 0.0025 s), deterministic reset (no random initial pose), Playground's `done` only on
    NaN (handled here by the `TaskEnv` non-finite guard; this family never reports `terminal`).
    """

    def __init__(self, task_names: Sequence[str]):
        task_names = tuple(task_names)
        unknown = [t for t in task_names if humanoid_speed(t) is None]
        if not task_names or unknown:
            raise ValueError(f"HumanoidFamily takes tasks from {sorted(HUMANOID_SPEEDS)} or {TASK_PATTERNS}, got "
                             f"{list(task_names)}.")
        # One model for all tasks: the Playground humanoid tasks differ only in their move speed.
        self.env, self._reset_envs, self._step_envs = _humanoid_functions()
        self.task_names = task_names
        self.move_speeds = np.array([humanoid_speed(t) for t in task_names], np.float32)  # [n]
        self.obs_shape = (int(self.env.observation_size),)
        self.obs_dtype = np.float32
        self.action_size = int(self.env.action_size)
        self.episode_length = int(self.env._config.episode_length)
        self.pooled_reset = True  # the reset runs an MJX forward pass: keep it out of the step program

    def reset(self, keys):
        state = self._reset_envs(keys)  # deterministic in Playground 0.2.0; the keys flow in regardless
        move_speed = jnp.broadcast_to(jnp.asarray(self.move_speeds)[:, None], keys.shape[:2])
        return HumanoidState(data=state.data, move_speed=move_speed), state.obs

    def step(self, inner, action, keys):
        del keys  # the physics is deterministic
        data, obs, reward = self._step_envs(inner.data, action, inner.move_speed)
        no = jnp.zeros(reward.shape, bool)
        return inner.replace(data=data), obs, reward, no, no

    def finite(self, inner):
        return _physics_finite(inner.data)


def humanoid_reward(env: Any, data: mjx.Data, action: jax.Array, move_speed: jax.Array) -> jax.Array:
    """Playground's `Humanoid._get_reward` for one env with the target speed traced (0 = stand).

    `stand * move * small_control`, where `move` is "do not move" (speed 0) or a linear ramp up to the target
    speed; the tolerance calls whose bounds do not depend on the speed are Playground's own.
    """
    from mujoco_playground._src import reward as pg_reward
    from mujoco_playground._src.dm_control_suite import humanoid as pg_humanoid

    standing = pg_reward.tolerance(
        env._head_height(data), bounds=(pg_humanoid._STAND_HEIGHT, float("inf")), margin=pg_humanoid._STAND_HEIGHT / 4)
    upright = pg_reward.tolerance(
        env._torso_upright(data), bounds=(0.9, float("inf")), sigmoid="linear", margin=1.9, value_at_margin=0)
    stand_reward = standing * upright
    small_control = pg_reward.tolerance(action, margin=1, value_at_margin=0, sigmoid="quadratic").mean()
    small_control = (4 + small_control) / 5

    horizontal_velocity = env._center_of_mass_velocity(data)[:2]
    dont_move = pg_reward.tolerance(horizontal_velocity, margin=2).mean()
    # tolerance(|v|, bounds=(speed, inf), margin=speed, value_at_margin=0, sigmoid="linear") with a traced speed:
    # inside the bounds 1, else the linear sigmoid of the distance below the bound in units of the margin.
    speed = jnp.linalg.norm(horizontal_velocity)
    margin = jnp.where(move_speed > 0, move_speed, 1.0)  # the stand branch never reads it; avoid 0/0
    distance = jnp.where(speed < move_speed, move_speed - speed, speed - jnp.inf) / margin
    move = jnp.where(speed >= move_speed, 1.0, jnp.where(jnp.abs(distance) < 1, 1 - distance, 0.0))
    move = (5 * move + 1) / 6
    return stand_reward * jnp.where(move_speed == 0, dont_move, move) * small_control

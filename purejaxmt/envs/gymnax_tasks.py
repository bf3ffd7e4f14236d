"""Gymnax tasks (MinAtar, classic control, bsuite, misc) as task-axis families (discrete actions).

Task names are Gymnax's own registered names (`Breakout-MinAtar`, `Asterix-MinAtar`, `Freeway-MinAtar`,
`SpaceInvaders-MinAtar`, `Seaquest-MinAtar`, `CartPole-v1`, `Acrobot-v1`, `MountainCar-v0`, ...; see
`task_names()`). Every Gymnax env with a discrete action space is a task, except `MNISTBandit-bsuite`, whose
constructor downloads MNIST. Continuous Gymnax envs (`Pendulum-v1`, `MountainCarContinuous-v0`, `PointRobot-misc`,
`Reacher-misc`, `Swimmer-misc`) are not offered: naming one is an unknown-task error. Gymnax itself is imported only
when a family is built (importing it takes seconds: it pulls in matplotlib and seaborn).

    env = purejaxmt.envs.make("minatar")            # the four MinAtar games of the paper, full action set: T = 4
    state, obs = env.reset(key, envs_per_task=32)   # obs uint8[4, 32, 10, 10, 7] (channels zero-padded)
    env = make_minatar("minatar")                   # the same games with their minimal action sets (see below)

One `GymnaxFamily` per env (each game vmapped on its own over `[1, E]`); the `TaskEnv` concatenates them on the
task axis and zero-pads observations (MinAtar: `[10, 10, C]` with C = 4, 4, 7, 6, 10 for Breakout, Asterix, Freeway,
SpaceInvaders, Seaquest) to the largest game's channel count. Observations of different ranks cannot share a
`TaskEnv` (MinAtar grids with CartPole's vector, say): `TaskEnv` rejects such a mix.

Action sets:
- Default: Gymnax's FULL MinAtar action set (`use_minimal_action_set=False`): 6 actions for every game, ids
  `n, l, u, r, d, f` in that order, all legal. Non-MinAtar envs: `num_actions` = their action space size.
- Minimal (`build(names, minimal_action_set=True)`, or `make_minatar(...)` for a whole `TaskEnv`): game i's legal
  actions are the first `n_i` ids of the shared index space, and `TaskEnv.action_mask` marks them; action j of a
  game is Gymnax's `minimal_action_set[j]` in full-set ids: Breakout [0, 1, 3] (n, l, r), Asterix [0, 1, 2, 3, 4],
  Freeway [0, 2, 4] (n, u, d), SpaceInvaders [0, 1, 3, 5] (n, l, r, f), Seaquest all 6 (`GymnaxFamily.action_set`).
  The agent must apply the mask to its greedy and random choices; an illegal action (outside `[0, n_i)`) is applied
  as action 0 (MinAtar: no-op), never as whatever Gymnax would make of an out-of-range index.

Stepping: Gymnax's `reset_env` and `step_env` (not `step`, which auto-resets and so hides the final observation;
the `TaskEnv` auto-resets itself), with the env's default params, each env with its own key from the `TaskEnv`.

Terminal vs truncated: in Gymnax 1.x `step_env`'s done flag is the MDP termination only (`is_terminated`); the time
limit is separate (`Environment.is_truncated`: `state.time >= params.max_steps_in_episode`, applied in `step`).
So a family's `terminal` is `step_env`'s flag, its `truncated` is always False, and its `episode_length` is Gymnax's
`params.max_steps_in_episode`, which the `TaskEnv` applies as truncation (overridable with `episode_length`):
MinAtar 1000 steps (Freeway 2500), CartPole-v1 500, Acrobot-v1 500, MountainCar-v0 200. Differences to the original
MinAtar (github.com/kenjyoung/MinAtar): no sticky actions (MinAtar's default repeats the previous action with
probability 0.1; Gymnax has none); the 1000-step limit is Gymnax's (MinAtar has none); Freeway never terminates here
(MinAtar ends the game after 2500 steps; Gymnax makes that its time limit, so the `TaskEnv` reports truncation).

Observations: MinAtar grids are binary; Gymnax returns them as float32, these families store them as uint8 (one
byte each in the replay buffer; the agent casts to float32). Every other env keeps Gymnax's observation dtype
(float32 for classic control). Rewards are float32.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from purejaxmt.envs.base import Family, TaskEnv, vmap_envs

# Every env of Gymnax 1.0's registry with a discrete action space, in registry order, except MNISTBandit-bsuite
# (its constructor downloads MNIST). A literal so that `task_names()`, which `envs.make` calls for every provider,
# does not import Gymnax; tests/test_gymnax_envs.py checks it against Gymnax's registry.
DISCRETE_TASKS: tuple[str, ...] = (
    "CartPole-v1",
    "Acrobot-v1",
    "MountainCar-v0",
    "Asterix-MinAtar",
    "Breakout-MinAtar",
    "Freeway-MinAtar",
    "Seaquest-MinAtar",
    "SpaceInvaders-MinAtar",
    "Catch-bsuite",
    "DeepSea-bsuite",
    "MemoryChain-bsuite",
    "UmbrellaChain-bsuite",
    "DiscountingChain-bsuite",
    "SimpleBandit-bsuite",
    "FourRooms-misc",
    "MetaMaze-misc",
    "BernoulliBandit-misc",
    "GaussianBandit-misc",
    "Pong-misc",
    "FrozenLake-misc",
)

# The task set `make("minatar")` resolves to (also registered in `purejaxmt.envs.PROVIDERS`).
MINATAR: tuple[str, ...] = ("Breakout-MinAtar", "Asterix-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar")


def task_names() -> tuple[str, ...]:
    return DISCRETE_TASKS


def is_minatar(task_name: str) -> bool:
    return task_name.endswith("-MinAtar")


def build(tasks: Sequence[str], minimal_action_set: bool = False) -> list[Family]:
    """One `GymnaxFamily` per task, in the given order.

    Args:
      tasks: Gymnax task names (`task_names()`).
      minimal_action_set: MinAtar games get Gymnax's minimal action set (legal actions `0..n_i-1`, see the module
        docstring) instead of the full 6-action set. Other envs are unaffected.
    """
    return [GymnaxFamily(task, minimal_action_set=minimal_action_set) for task in tasks]


def make_minatar(tasks: str | Sequence[str] = "minatar", *, minimal_action_set: bool = True,
                 episode_length: int | None = None) -> TaskEnv:
    """A `TaskEnv` of Gymnax tasks, by default the MinAtar games with their minimal action sets.

    `purejaxmt.envs.make` always builds the full action set; this is the way to the minimal ones.

    Args:
      tasks: a task-set name of this provider (`"minatar"`), Gymnax task names (`task_names()`), or a comma-separated
        string of either; rows follow the order given.
      minimal_action_set: see `build`.
      episode_length: time limit in steps for every task; None keeps Gymnax's `max_steps_in_episode` per task.
    """
    from purejaxmt.envs import TASK_SETS  # here, not at the top: `purejaxmt.envs` imports this module lazily

    sets = {name: names for name, names in TASK_SETS.items() if all(n in DISCRETE_TASKS for n in names)}
    items = tuple(item.strip() for item in tasks.split(",")) if isinstance(tasks, str) else tuple(tasks)
    unknown = [item for item in items if item not in sets and item not in DISCRETE_TASKS]
    if not items or unknown:
        raise ValueError(f"Unknown Gymnax task name(s) {unknown or list(items)} in {tasks!r}. Valid task sets: "
                         f"{sorted(sets)}; tasks: {sorted(DISCRETE_TASKS)}.")
    names = tuple(name for item in items for name in sets.get(item, (item,)))
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"Duplicate task name(s) {duplicates} in {tasks!r} (task sets expanded: {list(names)}).")
    return TaskEnv(build(names, minimal_action_set=minimal_action_set), task_order=names,
                   episode_length=episode_length)


class GymnaxFamily(Family):
    """One Gymnax env, vmapped over `[1, E]` with Gymnax's own `reset_env` and `step_env` and default params.

    The inner state is Gymnax's env state (leaves `[1, E, ...]`). `terminal` is `step_env`'s termination flag (no
    time limit in it); the time limit `params.max_steps_in_episode` is `episode_length`, applied by the `TaskEnv`.

    Attributes (besides `Family`'s): `env`, `params` (Gymnax's), `action_set` (np int[num_actions]: the Gymnax
    full-set id of each action; `arange(num_actions)` for non-MinAtar envs).
    """

    def __init__(self, task_name: str, minimal_action_set: bool = False):
        if task_name not in DISCRETE_TASKS:
            raise ValueError(
                f"Unknown Gymnax task {task_name!r}: this provider offers Gymnax's discrete-action envs only (not "
                f"continuous ones such as Pendulum-v1, nor MNISTBandit-bsuite, which downloads MNIST); known: "
                f"{sorted(DISCRETE_TASKS)}.")
        import gymnax  # here, not at the top: importing Gymnax takes seconds

        kwargs = {"use_minimal_action_set": bool(minimal_action_set)} if is_minatar(task_name) else {}
        self.env, self.params = gymnax.make(task_name, **kwargs)
        self.task_names = (task_name,)
        self.num_actions = int(self.env.action_space(self.params).n)
        self.action_set = (np.asarray(self.env.action_set, np.int32) if is_minatar(task_name)
                           else np.arange(self.num_actions, dtype=np.int32))
        self.episode_length = int(self.params.max_steps_in_episode)
        obs = jax.eval_shape(lambda key: self.env.reset_env(key, self.params)[0], jax.random.PRNGKey(0))
        self.obs_shape = tuple(obs.shape)
        self.obs_dtype = np.dtype(np.uint8) if is_minatar(task_name) else np.dtype(obs.dtype)

    def _obs(self, obs: jax.Array) -> jax.Array:
        return obs.astype(self.obs_dtype)

    def reset(self, keys):
        def one_env(key):
            obs, state = self.env.reset_env(key, self.params)
            return state, self._obs(obs)

        return vmap_envs(one_env)(keys)

    def step(self, inner: Any, action: jax.Array, keys: jax.Array):
        action = action.astype(jnp.int32)
        action = jnp.where((action >= 0) & (action < self.num_actions), action, 0)  # illegal -> action 0

        def one_env(key, state, action):
            obs, state, reward, terminated, _ = self.env.step_env(key, state, action, self.params)
            return state, self._obs(obs), jnp.asarray(reward, jnp.float32), jnp.asarray(terminated, bool)

        inner, obs, reward, terminal = vmap_envs(one_env)(keys, inner, action)
        return inner, obs, reward, terminal, jnp.zeros(terminal.shape, bool)

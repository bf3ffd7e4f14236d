"""Gymnax tasks (MinAtar, classic control, bsuite, misc) as task-axis families (discrete actions).

Task names are Gymnax's own registered names (`Breakout-MinAtar`, `Asterix-MinAtar`, `Freeway-MinAtar`,
`SpaceInvaders-MinAtar`, `Seaquest-MinAtar`, `CartPole-v1`, `Acrobot-v1`, `MountainCar-v0`, ...; see
`task_names()`). Every Gymnax env with a discrete action space is a task, except `MNISTBandit-bsuite`, whose
constructor downloads MNIST. Gymnax's continuous classic-control envs (`Pendulum-v1`, `MountainCarContinuous-v0`)
are continuous tasks of their own provider, `purejaxmt.envs.gymnax_continuous`; its other continuous envs
(`PointRobot-misc`, `Reacher-misc`, `Swimmer-misc`) are not offered: naming one is an unknown-task error. Gymnax
itself is imported only when a family is built (importing it takes seconds: it pulls in matplotlib and seaborn).

    env = purejaxmt.envs.make("minatar")            # the four MinAtar games of the paper, full action set: T = 4
    state, obs = env.reset(key, envs_per_task=32)   # obs uint8[4, 32, 10, 10, 7] (channels zero-padded)
    env = purejaxmt.envs.make("minatar", minimal_action_set=True)  # the same games, minimal action sets (below)

One `GymnaxFamily` per env (each game vmapped on its own over `[1, E]`); the `TaskEnv` concatenates them on the
task axis and zero-pads observations (MinAtar: `[10, 10, C]` with C = 4, 4, 7, 6, 10 for Breakout, Asterix, Freeway,
SpaceInvaders, Seaquest) to the largest game's channel count. Observations of different ranks cannot share a
`TaskEnv` (MinAtar grids with CartPole's vector, say): `TaskEnv` rejects such a mix.

Action sets:
- Default: Gymnax's FULL MinAtar action set (`use_minimal_action_set=False`): 6 actions for every game, ids
  `n, l, u, r, d, f` in that order, all legal. Non-MinAtar envs: `num_actions` = their action space size.
- Minimal (`envs.make(tasks, minimal_action_set=True)`, which forwards it to `build`): game i's legal
  actions are the first `n_i` ids of the shared index space, and `TaskEnv.spec.action.mask` marks them; action j of a
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

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purejaxmt.envs.base import Family, vmap_envs

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
        docstring) instead of the full 6-action set. Other envs are unaffected, but at least one task must be a
        MinAtar game (`ValueError` otherwise: the option would do nothing).
    """
    if minimal_action_set and not any(is_minatar(task) for task in tasks):
        raise ValueError(f"minimal_action_set=True applies to MinAtar games only, and none of {list(tasks)} is one.")
    return [GymnaxFamily(task, minimal_action_set=minimal_action_set) for task in tasks]


class GymnaxEnvFamily(Family):
    """What every Gymnax family shares: one Gymnax env vmapped over `[1, E]` with Gymnax's own `reset_env` and
    `step_env` and default params. The inner state is Gymnax's env state (leaves `[1, E, ...]`). `terminal` is
    `step_env`'s termination flag (no time limit in it); the time limit `params.max_steps_in_episode` is
    `episode_length`, applied by the `TaskEnv`. Subclasses set the action layout and `_env_action`.

    Attributes (besides `Family`'s): `env`, `params` (Gymnax's).
    """

    def _load(self, task_name: str, obs_dtype: Any = None, **make_kwargs: Any) -> None:
        """Makes the Gymnax env; `obs_dtype` None keeps Gymnax's observation dtype."""
        import gymnax  # here, not at the top: importing Gymnax takes seconds

        self.env, self.params = gymnax.make(task_name, **make_kwargs)
        self.task_names = (task_name,)
        self.episode_length = int(self.params.max_steps_in_episode)
        obs = jax.eval_shape(lambda key: self.env.reset_env(key, self.params)[0], jax.random.PRNGKey(0))
        self.obs_shape = tuple(obs.shape)
        self.obs_dtype = np.dtype(obs.dtype if obs_dtype is None else obs_dtype)
        # Built once, so that every E reuses the one-env traces (see `vmap_envs`).
        self._reset_envs = vmap_envs(self._reset_one)
        self._step_envs = vmap_envs(self._step_one)

    def _env_action(self, action: jax.Array) -> jax.Array:
        """One env's action as this family receives it -> the action Gymnax's `step_env` takes."""
        raise NotImplementedError

    def _reset_one(self, key):
        obs, state = self.env.reset_env(key, self.params)
        return state, obs.astype(self.obs_dtype)

    def _step_one(self, key, state, action):
        obs, state, reward, terminated, _ = self.env.step_env(key, state, self._env_action(action), self.params)
        return (state, obs.astype(self.obs_dtype), jnp.asarray(reward, jnp.float32).reshape(()),
                jnp.asarray(terminated, bool).reshape(()))

    def reset(self, keys):
        return self._reset_envs(keys)

    def step(self, inner: Any, action: jax.Array, keys: jax.Array):
        inner, obs, reward, terminal = self._step_envs(keys, inner, action)
        return inner, obs, reward, terminal, jnp.zeros(terminal.shape, bool)


class GymnaxFamily(GymnaxEnvFamily):
    """One discrete Gymnax env (see `GymnaxEnvFamily`).

    Attributes (besides `GymnaxEnvFamily`'s): `action_set` (np int[num_actions]: the Gymnax full-set id of each
    action; `arange(num_actions)` for non-MinAtar envs).
    """

    def __init__(self, task_name: str, minimal_action_set: bool = False):
        if task_name not in DISCRETE_TASKS:
            raise ValueError(
                f"Unknown Gymnax task {task_name!r}: this provider offers Gymnax's discrete-action envs only (not "
                f"continuous ones such as Pendulum-v1, which purejaxmt.envs.gymnax_continuous offers, nor "
                f"MNISTBandit-bsuite, which downloads MNIST); known: {sorted(DISCRETE_TASKS)}.")
        minatar = is_minatar(task_name)
        self._load(task_name, obs_dtype=np.uint8 if minatar else None,
                   **({"use_minimal_action_set": bool(minimal_action_set)} if minatar else {}))
        self.num_actions = int(self.env.action_space(self.params).n)
        self.action_set = (np.asarray(self.env.action_set, np.int32) if minatar
                           else np.arange(self.num_actions, dtype=np.int32))

    def _env_action(self, action: jax.Array) -> jax.Array:
        action = action.astype(jnp.int32)
        return jnp.where((action >= 0) & (action < self.num_actions), action, 0)  # illegal -> action 0

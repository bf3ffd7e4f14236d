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
    env = purejaxmt.envs.make("minatar", sticky_actions=0.1)       # the original MinAtar's sticky actions (below)

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

Sticky actions (`envs.make(tasks, sticky_actions=p)`, forwarded to `build`; MinAtar games only, default 0: none):
the original MinAtar's `Environment.act` (github.com/kenjyoung/MinAtar, minatar/environment.py):

    def act(self, a):
        if self.random.rand() < self.sticky_action_prob:
            a = self.last_action
        self.last_action = a
        return self.env.act(a)

with `self.last_action = 0` set once, in `__init__`, and never in `reset` (which only resets the game). So here,
per env and per step, with probability p the env executes its previous executed action instead of the chosen one
(both after the illegal-action rule above), and the executed action becomes the previous one; it starts at 0
(no-op) when the `TaskEnv` is reset and, as in the original, carries over into the next episode (the family's
`carry_over`). The draw uses the env's own step key (split off before Gymnax's step), so it is on device, inside
the jitted step, and independent per env, task and vmapped seed. The previous action lives in the family state
(`StickyState`: Gymnax's state and `last_action`, the executed action of the last step), so checkpoints keep it.
`Transition.action` stays the action the AGENT chose, not the executed one: the original's DQN (examples/dqn.py)
stores the action its policy picked, and `env.act` swaps it internally. With p=0 (the default) the family is
today's exactly: Gymnax's state, no extra key split. The original MinAtar's default, and its published protocol,
is p=0.1; Gymnax has no sticky actions.

Stepping: Gymnax's `reset_env` and `step_env` (not `step`, which auto-resets and so hides the final observation;
the `TaskEnv` auto-resets itself), with the env's default params, each env with its own key from the `TaskEnv`.

Terminal vs truncated: in Gymnax 1.x `step_env`'s done flag is the MDP termination only (`is_terminated`); the time
limit is separate (`Environment.is_truncated`: `state.time >= params.max_steps_in_episode`, applied in `step`).
So a family's `terminal` is `step_env`'s flag, its `truncated` is always False, and its `episode_length` is Gymnax's
`params.max_steps_in_episode`, which the `TaskEnv` applies as truncation (overridable with `episode_length`):
MinAtar 1000 steps (Freeway 2500), CartPole-v1 500, Acrobot-v1 500, MountainCar-v0 200. Differences to the original
MinAtar (github.com/kenjyoung/MinAtar): no sticky actions unless `sticky_actions=0.1` is given (MinAtar's default;
see above); the 1000-step limit is Gymnax's (MinAtar has none); Freeway never terminates here
(MinAtar ends the game after 2500 steps; Gymnax makes that its time limit, so the `TaskEnv` reports truncation).

Observations: MinAtar grids are binary; Gymnax returns them as float32, these families store them as uint8 (one
byte each in the replay buffer; the agent casts to float32). Every other env keeps Gymnax's observation dtype
(float32 for classic control). Rewards are float32.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

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


def build(tasks: Sequence[str], minimal_action_set: bool = False, sticky_actions: float = 0.0) -> list[Family]:
    """One `GymnaxFamily` per task, in the given order.

    Args:
      tasks: Gymnax task names (`task_names()`).
      minimal_action_set: MinAtar games get Gymnax's minimal action set (legal actions `0..n_i-1`, see the module
        docstring) instead of the full 6-action set. Other envs are unaffected, but at least one task must be a
        MinAtar game (`ValueError` otherwise: the option would do nothing).
      sticky_actions: probability p in [0, 1] that a MinAtar env repeats its previous action (the module docstring;
        0.1 is the original MinAtar's protocol, 0 none). As with `minimal_action_set`, other envs are unaffected
        and p > 0 needs a MinAtar game among the tasks.
    """
    sticky_actions = check_sticky_actions(sticky_actions)
    if minimal_action_set and not any(is_minatar(task) for task in tasks):
        raise ValueError(f"minimal_action_set=True applies to MinAtar games only, and none of {list(tasks)} is one.")
    if sticky_actions and not any(is_minatar(task) for task in tasks):
        raise ValueError(f"sticky_actions={sticky_actions} applies to MinAtar games only, and none of {list(tasks)} "
                         "is one.")
    return [GymnaxFamily(task, minimal_action_set=minimal_action_set,
                         sticky_actions=sticky_actions if is_minatar(task) else 0.0) for task in tasks]


def check_sticky_actions(p: Any) -> float:
    """`p` as a float probability in [0, 1], or a `ValueError` naming the option."""
    if (not isinstance(p, numbers.Real) or isinstance(p, (bool, np.bool_)) or not math.isfinite(p)
            or not 0.0 <= p <= 1.0):
        raise ValueError(f"sticky_actions must be a probability in [0, 1] (0.1 is the original MinAtar's), got {p!r}.")
    return float(p)


@struct.dataclass
class StickyState:
    """A Gymnax env's state under sticky actions (see the module docstring)."""

    env_state: Any  # Gymnax's env state
    last_action: jax.Array  # int32: the action (family index) executed at the last step; 0 when the TaskEnv resets


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

    With `sticky_actions` p > 0 (`build` gives it to MinAtar games only) the inner state is a `StickyState` and each
    step executes the previous executed action with probability p (the module docstring); with p = 0 it is Gymnax's
    state and the step is Gymnax's, exactly.

    Attributes (besides `GymnaxEnvFamily`'s): `action_set` (np int[num_actions]: the Gymnax full-set id of each
    action; `arange(num_actions)` for non-MinAtar envs), `sticky_actions` (float p).
    """

    def __init__(self, task_name: str, minimal_action_set: bool = False, sticky_actions: float = 0.0):
        if task_name not in DISCRETE_TASKS:
            raise ValueError(
                f"Unknown Gymnax task {task_name!r}: this provider offers Gymnax's discrete-action envs only (not "
                f"continuous ones such as Pendulum-v1, which purejaxmt.envs.gymnax_continuous offers, nor "
                f"MNISTBandit-bsuite, which downloads MNIST); known: {sorted(DISCRETE_TASKS)}.")
        minatar = is_minatar(task_name)
        self.sticky_actions = check_sticky_actions(sticky_actions)
        self._load(task_name, obs_dtype=np.uint8 if minatar else None,
                   **({"use_minimal_action_set": bool(minimal_action_set)} if minatar else {}))
        self.num_actions = int(self.env.action_space(self.params).n)
        self.action_set = (np.asarray(self.env.action_set, np.int32) if minatar
                           else np.arange(self.num_actions, dtype=np.int32))

    def _env_action(self, action: jax.Array) -> jax.Array:
        action = action.astype(jnp.int32)
        return jnp.where((action >= 0) & (action < self.num_actions), action, 0)  # illegal -> action 0

    def _reset_one(self, key):
        state, obs = super()._reset_one(key)
        if self.sticky_actions:
            state = StickyState(env_state=state, last_action=jnp.zeros((), jnp.int32))  # MinAtar: last_action = 0
        return state, obs

    def _step_one(self, key, state, action):
        if not self.sticky_actions:
            return super()._step_one(key, state, action)
        # MinAtar's `if random.rand() < sticky_action_prob: a = last_action; last_action = a`, on this env's own key.
        # Only the executed action changes: the TaskEnv's Transition.action stays the agent's choice (as the original
        # DQN stores it).
        key, sticky_key = jax.random.split(key)
        stick = jax.random.uniform(sticky_key) < self.sticky_actions
        executed = jnp.where(stick, state.last_action, self._env_action(action))
        env_state, obs, reward, terminal = super()._step_one(key, state.env_state, executed)
        return StickyState(env_state=env_state, last_action=executed), obs, reward, terminal

    def carry_over(self, ended, fresh):
        # The original MinAtar's `reset` leaves `last_action` as it is: the next episode's first step may repeat the
        # last action of the one that ended.
        if not self.sticky_actions:
            return fresh
        return fresh.replace(last_action=ended.last_action)

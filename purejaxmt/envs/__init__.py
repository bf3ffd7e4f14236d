"""Task-axis environments: `make(tasks) -> TaskEnv`, `resolve(tasks) -> task names`.

`tasks` is a task-set name (see `TASK_SETS`) or a comma-separated list of task names (see `list_tasks()`; task-set
names may appear in the list too). Rows of every `[T, E, ...]` array follow the order of the names. Continuous
tasks come from MuJoCo Playground's DM Control suite (`purejaxmt.envs.playground`; read its docstring for the
differences to dm_control before comparing returns with dm_control numbers) and from Gymnax's continuous classic
control envs (`purejaxmt.envs.gymnax_continuous`: Pendulum-v1, MountainCarContinuous-v0; cheap to build, no MJX).
Discrete tasks come from Gymnax (`purejaxmt.envs.gymnax_tasks`: MinAtar, CartPole-v1 and Gymnax's other
discrete-action envs under Gymnax's own names; read its docstring for the differences to the original MinAtar).
`make` gives the MinAtar games Gymnax's full 6-action set; `make(..., minimal_action_set=True)` gives them their
minimal action sets and legal-action masks; `make(..., sticky_actions=0.1)` the original MinAtar's sticky actions.

    env = make("humanoid")                                  # humanoid-stand, -walk, -run: T = 3
    env = make("humanoid-walk,humanoid-speed-4")            # any target speed, the same model: T = 2
    state, obs = env.reset(key, envs_per_task=64)           # obs [3, 64, 67]
    state, transition = env.step(state, action)             # action [3, 64, 21] in [-1, 1]
    env = make("minatar")                                   # Breakout, Asterix, Freeway, SpaceInvaders: T = 4
    state, obs = env.reset(key, envs_per_task=64)           # obs uint8[4, 64, 10, 10, 7]; action int[4, 64] < 6
    env = make("minatar", minimal_action_set=True)          # env.spec.action.mask [4, 5]: 3, 5, 3 and 4 legal
    env.spec                                                # EnvSpec: all an agent reads (plain data, no env)
    resolve("minatar,CartPole-v1")                          # the task names make would give; builds nothing

Tasks come from *providers*: modules that define `task_names() -> tuple[str, ...]` and `build(task_names,
**options) -> list[Family]`. A provider may also define `accepts(name) -> bool` for parameterised names beyond
`task_names()` (raising a `ValueError` that says what is wrong with a malformed one of its own) and `TASK_PATTERNS`,
their spelling for error messages: `humanoid-speed-X`, a humanoid with any target speed X m/s. A provider module must
be cheap to import and its `task_names()` cheap to call (a literal list, checked against the upstream registry by a
test): `resolve`, `list_tasks` and `make` import every provider to know which names exist, while the simulators
(MuJoCo Playground and MJX, Gymnax: seconds each) are imported only by `build`, for the requested tasks. To plug in
another source of tasks, add one `Provider(...)` line to `PROVIDERS` below with its task sets and the build options
it takes; task names must be unique across providers. `make` forwards each option to the providers of the requested
tasks that take it.
Discrete and continuous tasks cannot be mixed in one `TaskEnv`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from types import MappingProxyType, ModuleType
from typing import Any

from purejaxmt.envs.base import ActionSpec, EnvSpec, EnvState, EpisodeStats, Family, TaskEnv, Transition


@dataclasses.dataclass(frozen=True, eq=False)
class Provider:
    """A source of tasks for `make`.

    `module` must define `task_names() -> tuple[str, ...]` and `build(task_names: tuple[str, ...], **options) ->
    list[Family]` (families covering exactly the given names, which all belong to this provider, in request order);
    `options` names the keyword arguments its `build` takes. Importing `module` and calling `task_names()` must not
    import the simulator (see the package docstring): `resolve` relies on it.
    """

    module: str
    discrete: bool
    task_sets: Mapping[str, tuple[str, ...]]
    options: tuple[str, ...] = ()

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


PROVIDERS: tuple[Provider, ...] = (
    Provider(
        module="purejaxmt.envs.playground",
        discrete=False,
        task_sets={
            "humanoid": ("humanoid-stand", "humanoid-walk", "humanoid-run"),
            "dmc-small": ("cartpole-swingup", "cheetah-run", "walker-walk"),
        },
    ),
    Provider(
        module="purejaxmt.envs.gymnax_tasks",
        discrete=True,
        task_sets={"minatar": ("Breakout-MinAtar", "Asterix-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar")},
        options=("minimal_action_set", "sticky_actions"),
    ),
    Provider(
        module="purejaxmt.envs.gymnax_continuous",
        discrete=False,
        task_sets={"classic-continuous": ("Pendulum-v1", "MountainCarContinuous-v0")},
    ),
)

TASK_SETS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {name: tasks for provider in PROVIDERS for name, tasks in provider.task_sets.items()})


def _task_providers() -> dict[str, Provider]:
    """task name -> provider, over every provider (imports the provider modules, not the simulators); task names must
    be unique across providers."""
    owner: dict[str, Provider] = {}
    for provider in PROVIDERS:
        for name in provider.load().task_names():
            if name in owner or name in TASK_SETS:
                raise ValueError(f"Task name {name!r} of {provider.module} is already a task name of "
                                 f"{owner[name].module if name in owner else 'a task set'}.")
            owner[name] = provider
    for set_name, names in TASK_SETS.items():
        missing = [name for name in names if name not in owner]
        if missing:
            raise ValueError(f"Task set {set_name!r} names unknown tasks {missing}.")
    return owner


def list_tasks() -> tuple[str, ...]:
    """Every task name `make` accepts (imports the provider modules, not the simulators)."""
    return tuple(_task_providers())


def resolve(tasks: str) -> tuple[str, ...]:
    """The task names `make(tasks)` would give, in row order, without building anything.

    Cheap: imports the provider modules but neither MuJoCo Playground / MJX nor Gymnax, so configs and CLIs can
    validate `--tasks` and size things by `T` before paying for a simulator. Raises the `ValueError`s `make` raises
    for the names: unknown, empty or duplicate names, a mix of discrete and continuous tasks.

    Args:
      tasks: a task-set name (`TASK_SETS`) or comma-separated task names (`list_tasks()`) and/or task-set names.
    """
    return _resolve(tasks, _task_providers())


def _resolve(tasks: str, owner: dict[str, Provider]) -> tuple[str, ...]:
    """`resolve` with the task -> provider map, to which parameterised names of `tasks` are added."""
    if not isinstance(tasks, str):
        raise ValueError(f"tasks must be a string (a task-set name or comma-separated task names), got {tasks!r}.")
    patterns = [pattern for provider in PROVIDERS for pattern in getattr(provider.load(), "TASK_PATTERNS", ())]
    valid = f"task sets: {sorted(TASK_SETS)}; tasks: {sorted(owner)}; patterns: {patterns}"
    items = tuple(item.strip() for item in tasks.split(","))
    if any(not item for item in items):
        raise ValueError(f"Empty task name in {tasks!r}. Valid {valid}.")
    for item in items:  # parameterised names (humanoid-speed-4): their provider takes them, or says what is wrong
        if item not in owner and item not in TASK_SETS:
            for provider in PROVIDERS:
                accepts = getattr(provider.load(), "accepts", None)
                if accepts is not None and accepts(item):
                    owner[item] = provider
    unknown = [item for item in items if item not in owner and item not in TASK_SETS]
    if unknown:
        raise ValueError(f"Unknown task name(s) {unknown} in {tasks!r}. Valid {valid}.")
    names = tuple(name for item in items for name in TASK_SETS.get(item, (item,)))
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"Duplicate task name(s) {duplicates} in {tasks!r} (task sets expanded: {list(names)}); "
                         "each task may appear once.")

    kinds = {owner[name].discrete for name in names}
    if len(kinds) > 1:
        discrete = [n for n in names if owner[n].discrete]
        continuous = [n for n in names if not owner[n].discrete]
        raise ValueError(f"Cannot mix discrete tasks {discrete} and continuous tasks {continuous} in one TaskEnv.")
    return names


def make(tasks: str, *, episode_length: int | None = None, **options: Any) -> TaskEnv:
    """A `TaskEnv` for comma-separated task names (`list_tasks()`) and/or task-set names (`TASK_SETS`).

    Rows follow the order of the names (task sets expanded in place; `resolve(tasks)` gives them without building).
    Unknown, empty and duplicate names raise `ValueError`, as does a mix of discrete and continuous tasks. Only the
    requested tasks' simulators are imported (`make("minatar")` never imports MuJoCo Playground).

    Args:
      tasks: e.g. `"humanoid"`, `"dmc-small"`, `"cartpole-swingup,cheetah-run"`, `"humanoid,pendulum-swingup"`,
        `"minatar"`, `"classic-continuous"`.
      episode_length: time limit in steps for every task; None keeps the tasks' default (1000 for DM Control).
      **options: build options of the tasks' providers, each forwarded to the requested tasks' providers that take
        it (`ValueError` if none does), e.g. `minimal_action_set=True` or `sticky_actions=0.1` for MinAtar games
        (`gymnax_tasks.build`).
    """
    owner = _task_providers()
    names = _resolve(tasks, owner)
    providers = tuple(dict.fromkeys(owner[name] for name in names))  # in order of first appearance
    for option in options:
        if not any(option in provider.options for provider in providers):
            takers = {p.module: p.options for p in PROVIDERS if option in p.options}
            raise ValueError(f"Env option {option}={options[option]!r} does not apply to tasks {list(names)}: "
                             f"{'only ' + str(sorted(takers)) + ' take it' if takers else 'no provider takes it'}.")
    families: list[Family] = []
    for provider in providers:
        provider_options = {option: value for option, value in options.items() if option in provider.options}
        families.extend(provider.load().build(tuple(n for n in names if owner[n] is provider), **provider_options))
    return TaskEnv(families, task_order=names, episode_length=episode_length)


__all__ = ["ActionSpec", "EnvSpec", "EnvState", "EpisodeStats", "Family", "Provider", "PROVIDERS", "TASK_SETS",
           "TaskEnv", "Transition", "list_tasks", "make", "resolve"]

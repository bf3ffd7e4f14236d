"""Transfer: a trained multi-task BRC agent learning new tasks (BRC's third claim).

A transfer run trains on the source run's tasks followed by the new ones, with the source agent's networks. Its
task-embedding table grows by one row per new task; everything else is the source's, leaf for leaf:

    source = saved.load("runs/.../source")                   # a trained brc run dir
    tasks = transfer.task_set(source.task_names, ("cartpole-swingup-sparse",))
    config = transfer.agent_config(source.agent_config, source.task_names, tasks)
    learner = transfer.grow(source.learner(0), template, source.task_names, tasks, source.run_dir)

`grow` builds the starting learner: the rows of known tasks and every other parameter and optimiser state restored
unchanged; a new task's row (online and target critic) is the mean of the trained rows after their unit-norm
normalisation (what the critic reads), renormalised, i.e. the direction the trained tasks share; its optimiser
moments start at zero (and the update gives the new rows Adam's bias correction at their own step count, not the
source's: `brc_extras.new_rows_update`). Replay, reward normaliser and envs start fresh (they are not part of the
learner).

The three modes of `experiments/transfer.py`, runs of one vmapped program (they differ only in data):
- `embedding`: the source learner, `freeze_trained`: only the new rows learn (BRC: "learning only a new task
  embedding"); trunks, other rows, temperature and their optimiser states stay as loaded.
- `all`: the source learner, everything fine-tunes.
- `scratch`: the agent's random init on the same tasks: the baseline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from purejaxmt.agents import brc
from purejaxmt.treepaths import leaf_paths

MODES = ("scratch", "embedding", "all")
"""In report order: the baseline first."""


def task_set(source_tasks: Sequence[str], targets: Sequence[str]) -> tuple[str, ...]:
    """The transfer run's tasks: the source's, then the targets it has not been trained on."""
    new = tuple(task for task in targets if task not in source_tasks)
    if not new:
        raise ValueError(f"the targets {list(targets)} are all tasks of the source run {list(source_tasks)}: name at "
                         "least one new task")
    return tuple(source_tasks) + new


def new_rows(source_tasks: Sequence[str], tasks: Sequence[str]) -> tuple[int, ...]:
    return tuple(row for row, task in enumerate(tasks) if task not in source_tasks)


def agent_config(source_config: brc.Config, source_tasks: Sequence[str], tasks: Sequence[str],
                 mode: str = "all") -> brc.Config:
    """The source's agent config on the grown task set, for `mode` (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"transfer mode {mode!r}; choose one of {MODES}")
    if source_config.task_conditioning != "embedding":
        raise ValueError(f"the source agent has task_conditioning={source_config.task_conditioning!r}: transfer "
                         "grows a task-embedding table, so it needs a source trained with 'embedding'")
    return dataclasses.replace(source_config, new_task_rows=new_rows(source_tasks, tasks),
                               freeze_trained=mode == "embedding")


def _unit_rows(table: np.ndarray) -> np.ndarray:
    return table / np.sqrt(np.sum(np.square(table), axis=-1, keepdims=True) + 1e-12)


def grow(saved: dict, template: Any, source_tasks: Sequence[str], tasks: Sequence[str],
         source: Path | str = "the source run") -> Any:
    """The starting learner of a transfer run: `template`'s structure (a learner of the grown task set, concrete or
    abstract), filled from `saved` (one run's learner as `saved.SavedRun.learner` gives it). Raises a `ValueError`
    naming the first leaf that cannot match (other observation or action sizes, other networks, another agent)."""
    source_tasks, tasks = list(source_tasks), list(tasks)
    missing = [task for task in source_tasks if task not in tasks]
    if missing:
        raise ValueError(f"the transfer tasks {tasks} drop source tasks {missing}: list the source's tasks first")
    rows = np.array([source_tasks.index(task) if task in source_tasks else -1 for task in tasks])
    leaves = []
    for path, leaf in leaf_paths(template):
        name = "/".join(path)
        if not leaf.size:
            leaves.append(np.zeros(leaf.shape, leaf.dtype))
            continue
        node = saved
        try:
            for key in path:
                node = node[key]
        except (KeyError, TypeError):
            raise ValueError(f"cannot transfer from {source}: its checkpoint has no {name} (a checkpoint of another "
                             "agent, or a source without a task-embedding table: one task, or task_conditioning "
                             "other than 'embedding')") from None
        value = np.asarray(node)
        if "task_embedding" in path:
            if value.shape != (len(source_tasks), *leaf.shape[1:]):
                raise ValueError(f"cannot transfer from {source}: {name} is {value.shape} there, not a table of its "
                                 f"{len(source_tasks)} tasks by {leaf.shape[1:]}")
            grown = value[np.maximum(rows, 0)].astype(leaf.dtype)
            is_parameter = path[0] in ("critic_params", "critic_target_params")
            new_row = _unit_rows(_unit_rows(value).mean(axis=0)) if is_parameter else np.zeros(leaf.shape[1:])
            grown[rows < 0] = new_row
            leaves.append(grown)
            continue
        if value.shape != tuple(leaf.shape) or value.dtype != leaf.dtype:
            raise ValueError(f"cannot transfer from {source}: {name} is {value.shape} {value.dtype} there and "
                             f"{tuple(leaf.shape)} {leaf.dtype} for tasks {tasks} (the observation or action sizes "
                             "of the tasks, or the network sizes, differ)")
        leaves.append(value)
    return jax.tree.unflatten(jax.tree.structure(template), leaves)

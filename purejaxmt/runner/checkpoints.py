"""Checkpoints of the whole run state, keyed by leaf path (`learner/critic_params/params/...`), never by position.

A checkpoint is an orbax `CheckpointManager` step holding the run state as a nested dict that mirrors the pytree's
paths, plus `state_layout.json` beside it: every leaf as `path shape dtype`. A resume compares the layout of the
state it would build (traced, nothing allocated) with the saved one before restoring anything, so a checkpoint of
another purejaxmt version (a field added, renamed or reshaped) is refused with the differences named, instead of
arrays landing in the wrong places.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from purejaxmt.treepaths import leaf_paths

STATE_LAYOUT = "state_layout.json"


def state_layout(state: Any) -> list[str]:
    """Every leaf of a state as `a/b/c shape dtype`, in order (concrete or abstract states alike)."""
    return [f"{'/'.join(path)} {tuple(leaf.shape)} {leaf.dtype}" for path, leaf in leaf_paths(state)]


def to_saveable(state: Any) -> dict:
    """The state as a nested dict keyed by path, without zero-size leaves (MJX data has some; orbax cannot save
    them)."""
    tree: dict = {}
    for path, leaf in leaf_paths(state):
        if leaf.size:
            node = tree
            for name in path[:-1]:
                node = node.setdefault(name, {})
            node[path[-1]] = leaf
    return tree


def from_saveable(saved: dict, template: Any) -> Any:
    """`template`'s structure filled from a nested dict of `to_saveable`'s shape (zero-size leaves made afresh)."""
    leaves = []
    for path, leaf in leaf_paths(template):
        if not leaf.size:
            leaves.append(jnp.zeros(leaf.shape, leaf.dtype))
            continue
        node = saved
        for name in path:
            node = node[name]
        leaves.append(node)
    return jax.tree.unflatten(jax.tree.structure(template), leaves)


def write_layout(run_dir: Path, state: Any) -> None:
    (run_dir / STATE_LAYOUT).write_text(json.dumps(state_layout(state), indent=0) + "\n")


def check_layout(run_dir: Path, state: Any) -> None:
    """Raises a `ValueError` naming the first differences when `run_dir`'s checkpoints were written for another
    layout than `state`'s."""
    path = run_dir / STATE_LAYOUT
    if not path.is_file():
        raise ValueError(f"cannot resume {run_dir}: it has no {STATE_LAYOUT} (it was written by a purejaxmt older "
                         "than the state-layout check), so its checkpoint cannot be matched to this version's run "
                         "state; start a new run")
    saved, expected = json.loads(path.read_text()), state_layout(state)
    if saved != expected:
        missing = sorted(set(saved) - set(expected))
        new = sorted(set(expected) - set(saved))
        raise ValueError(f"cannot resume {run_dir}: its checkpoint was written for another run-state layout (a "
                         f"different purejaxmt version or config); start a new run. Saved but not expected: "
                         f"{missing[:3]}; expected but not saved: {new[:3]}")


class Checkpointer:
    """Keeps the last `max_to_keep` checkpoints of a run directory, by chunk number."""

    def __init__(self, run_dir: Path, max_to_keep: int = 2) -> None:
        self.run_dir = Path(run_dir)
        self._manager = ocp.CheckpointManager(
            (self.run_dir / "checkpoints").absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=False))

    def latest_chunk(self) -> int | None:
        return self._manager.latest_step()

    def save(self, chunk: int, state: Any) -> None:
        self._manager.save(chunk, args=ocp.args.StandardSave(to_saveable(state)))

    def restore(self, chunk: int, template: Any) -> Any:
        """The state saved at `chunk`, with `template`'s structure, shapes and shardings."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, to_saveable(template))
        return from_saveable(self._manager.restore(chunk, args=ocp.args.StandardRestore(abstract)), template)

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

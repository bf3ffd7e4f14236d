"""Divergence: which runs have non-finite losses or learner parameters, found at the end of every chunk, and the last
finite learner of each run, which is what its checkpoints hold once it has diverged.

One small jitted program after each chunk (outside the chunk, so the vmapped hot path costs nothing more) reduces,
per run, every learner leaf and every `*_loss` metric to one finite flag; a loss counts only in a chunk that updated
(in the random phase the losses are NaN by definition, `chunk_metrics`). A run is healthy while every flag has been
finite; `last_finite` follows the learner of the healthy runs and keeps, on device, the learner a run had at the end
of its last healthy chunk (a `where` per leaf: correct under `vmap` and sharding alike, one learner's memory more).
The other runs of a vmapped study go on; a diverged run goes on computing (under `vmap` it costs the same) but is
reported once, and every metrics row of it from then on carries `diverged: true` and `diverged_chunk`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purejaxmt.runner import devices
from purejaxmt.treepaths import leaf_paths

LEARNER_FLAG = "learner/"  # flags of learner leaves are named `learner/<path>`


def loss_names(metrics: dict) -> list[str]:
    """The per-run scalar loss metrics (`critic_loss`, `actor_loss`, ...) of a chunk's metrics `[R]`."""
    return sorted(name for name, value in metrics.items() if name.endswith("_loss") and np.ndim(value) == 1)


def _per_run_finite(leaf: jax.Array) -> jax.Array:
    """[R]: whether every element of run r of a batched leaf is finite (integer leaves always are)."""
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
        return jnp.ones(leaf.shape[:1], bool)
    return jnp.all(jnp.isfinite(leaf).reshape(leaf.shape[0], -1), axis=1)


def _check(last: Any, healthy: jax.Array, updates_before: jax.Array, learner: Any,
           metrics: dict) -> tuple[Any, jax.Array, jax.Array, dict]:
    updated = metrics["num_updates"] > updates_before                                        # [R]
    flags = {name: jnp.isfinite(metrics[name]) | ~updated for name in loss_names(metrics)}
    flags.update({LEARNER_FLAG + "/".join(path): _per_run_finite(leaf) for path, leaf in leaf_paths(learner)})
    healthy = healthy & jnp.all(jnp.stack(list(flags.values())), axis=0)

    def keep(new: jax.Array, old: jax.Array) -> jax.Array:
        return jnp.where(healthy.reshape(-1, *[1] * (new.ndim - 1)), new, old)

    return jax.tree.map(keep, learner, last), healthy, metrics["num_updates"], flags


class DivergenceWatch:
    """Tracks the runs of one program. `healthy_local` says, for this process's runs (`mine`), which have not
    diverged before (all True for a new run; from the metrics log on a resume)."""

    def __init__(self, state: Any, healthy_local: np.ndarray, sharding: Any, num_runs: int) -> None:
        self.last_finite = jax.tree.map(jnp.copy, state.learner)  # its own buffers: the chunk donates the state's
        self.healthy = devices.global_runs_array(np.asarray(healthy_local, bool), sharding, num_runs)
        # The update counter is lockstep (the same in every run): read from this process's copy.
        updates = int(np.asarray(state.num_updates.addressable_shards[0].data))
        self.updates_before = devices.global_runs_array(np.full(len(healthy_local), updates), sharding, num_runs)
        self._check = jax.jit(_check, donate_argnums=(0,))
        self.flags: dict | None = None

    def after_chunk(self, state: Any, metrics: dict) -> None:
        """Checks the chunk just run (asynchronously: nothing is read back here)."""
        self.last_finite, self.healthy, self.updates_before, self.flags = self._check(
            self.last_finite, self.healthy, self.updates_before, state.learner, metrics)

    def saveable(self, state: Any) -> Any:
        """`state` with each diverged run's learner replaced by its last finite one (the healthy runs' unchanged)."""
        return state.replace(learner=self.last_finite)


def report(chunk: int, healthy: np.ndarray, flags: dict[str, np.ndarray], rows: list[dict],
           diverged_at: dict[int, int]) -> list[str]:
    """Marks the rows of diverged runs (`rows[i]` is run i of `healthy` `[runs]` and of the flags `[runs]`, this
    process's logged runs) and returns one line per run that diverged in this chunk. `diverged_at` (row index ->
    first diverged chunk) is updated."""
    lines = []
    for index, row in enumerate(rows):
        if healthy[index]:
            continue
        if index not in diverged_at:
            diverged_at[index] = chunk
            bad = [name for name, finite in flags.items() if not finite[index]]
            losses = [name for name in bad if not name.startswith(LEARNER_FLAG)]
            # Parameters first: an optimiser moment is NaN because the gradient that fed it was.
            leaves = sorted((name for name in bad if name.startswith(LEARNER_FLAG)), key=lambda n: "opt_state" in n)
            what = ", ".join(losses + ([f"{len(leaves)} learner leaves (first: {leaves[0]})"] if leaves else []))
            who = ", ".join(f"{key}={value}" for key, value in row.items() if key in ("seed", "run", "setting"))
            kept = f"chunk {chunk - 1}" if chunk > 1 else "its initial one"
            lines.append(f"[purejaxmt] DIVERGED in chunk {chunk}: run {who}: non-finite {what or 'values'}; its "
                         f"checkpoints keep its last finite learner ({kept}); the other runs go on")
        row["diverged"] = True
        row["diverged_chunk"] = diverged_at[index]
    return lines


def diverged_before(rows: list[dict], labels: list[dict]) -> dict[int, int]:
    """From a metrics log (rows up to the chunk resumed from): run index (in `labels`, this process's logged runs)
    -> the chunk it diverged in, for the runs that had."""
    found = {}
    for index, names in enumerate(labels):
        chunks = [row["diverged_chunk"] for row in rows if row.get("diverged")
                  and all(row.get(key) == value for key, value in names.items())]
        if chunks:
            found[index] = min(chunks)
    return found

"""Checkpoints of the whole run state, keyed by leaf path (`learner/critic_params/params/...`), never by position.

A checkpoint is an orbax `CheckpointManager` step holding the run state as a nested dict that mirrors the pytree's
paths, plus `state_layout.json` beside it: every leaf as `path shape dtype`. A resume compares the layout of the
state it would build (traced, nothing allocated) with the saved one before restoring anything, so a checkpoint of
another purejaxmt version (a field added, renamed or reshaped) is refused with the differences named, instead of
arrays landing in the wrong places.

Every step also holds `digests.process-<i>.json`: a CRC-32 of each saved leaf's bytes as process i holds them (its
addressable shards, each distinct shard once, in index order), written after orbax has committed the step. A restore
hashes the arrays it read back the same way before anything uses them: a damaged step (a flipped byte, a truncated or
missing file, a save that never finished) is reported naming its first bad leaf, deleted, and the newest intact step
is used instead. A write that fails for want of space raises `CheckpointWriteError` (one line: path, bytes needed,
bytes free), and the previous step stays intact (orbax writes into a temporary directory and renames it when done).
"""

from __future__ import annotations

import concurrent.futures
import errno
import json
import logging
import os
import re
import shutil
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

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
    """`template`'s structure filled from a nested dict of `to_saveable`'s shape (zero-size leaves made afresh, with
    the template's sharding where it has one: the restored state then compiles to the same program as the fresh one)."""
    leaves = []
    for path, leaf in leaf_paths(template):
        if not leaf.size:
            sharding = getattr(leaf, "sharding", None)
            leaves.append(jnp.zeros(leaf.shape, leaf.dtype) if sharding is None else
                          jax.make_array_from_callback(leaf.shape, sharding, lambda index, leaf=leaf:
                                                       np.zeros(leaf.shape, leaf.dtype)[index]))
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


# ------------------------------------------------------------------------------------------------------ digests

DIGEST_ALGORITHM = "crc32"  # zlib's: 4.2 GB/s on one core of the 2-core CPU (docs/results.md), no new dependency


def _shard_key(index: tuple) -> tuple:
    """A sortable key of a shard's index (slices with None bounds: a whole axis)."""
    def bound(value: int | None) -> int:
        return -1 if value is None else value

    return tuple((bound(s.start), bound(s.stop)) if isinstance(s, slice) else (s, s) for s in index)


def leaf_digest(leaf: Any) -> str:
    """CRC-32 of the bytes of a leaf as this process holds them: each distinct addressable shard once (replicated
    copies and device duplicates skipped), in index order, so the digest of a sharded leaf is per process and equal
    on save and on a restore with the same shardings. NumPy leaves are hashed whole."""
    if isinstance(leaf, jax.Array):
        shards = {}
        for shard in leaf.addressable_shards:
            shards.setdefault(_shard_key(shard.index), shard)
        parts = [np.asarray(shards[key].data) for key in sorted(shards)]
    else:
        parts = [np.asarray(leaf)]
    crc = 0
    for part in parts:  # zlib releases the GIL on large buffers: leaves hash in parallel threads
        crc = zlib.crc32(np.ascontiguousarray(part).reshape(-1).view(np.uint8), crc)
    return f"{crc:08x}"


def digests(tree: dict) -> dict[str, str]:
    """`path -> "crc shape dtype"` of every leaf of a saveable tree (see `to_saveable`)."""
    named = [("/".join(path), leaf) for path, leaf in leaf_paths(tree)]
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        crcs = list(pool.map(lambda item: leaf_digest(item[1]), named))
    return {name: f"{crc} {tuple(leaf.shape)} {leaf.dtype}" for (name, leaf), crc in zip(named, crcs)}


def digest_file(step_dir: Path, process: int | None = None) -> Path:
    return Path(step_dir) / f"digests.process-{jax.process_index() if process is None else process}.json"


def mismatches(saved: dict[str, str], restored: dict[str, str]) -> list[str]:
    """The leaves whose digests differ (or that only one side has), in saved order."""
    return [name for name in list(saved) + [name for name in restored if name not in saved]
            if saved.get(name) != restored.get(name)]


def unreadable(error: BaseException) -> str:
    """One line for a restore that raised: the leaf tensorstore could not read (its key path, dotted, in the
    message or its cause) and the first line of the underlying error, not the kilobytes of TensorStore spec."""
    text = f"{error}\n{error.__cause__ or ''}"
    found = re.search(r'Error reading "([^"/]+)/', text) or re.search(r"'path': '([^'/][^']*)/'", text)
    leaf = f"leaf {found.group(1).replace('.', '/')} " if found else ""
    cause = error.__cause__ if error.__cause__ is not None else error
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return f"{leaf}cannot be read ({first[:200]})"


# ------------------------------------------------------------------------------------------------ failures

class CheckpointWriteError(SystemExit):
    """A checkpoint could not be written for want of space. A `SystemExit`, so that uncaught it prints its one line
    and exits with status 1 instead of the hundreds of lines of tensorstore and orbax tracebacks under it."""


class NoIntactCheckpointError(RuntimeError):
    """Every checkpoint of a run directory failed its digests."""


def is_disk_full(error: BaseException) -> bool:
    """True when `error`, or any exception it was raised from, is ENOSPC (orbax and tensorstore wrap the OSError in
    their own types; some keep only its text)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error) or "ENOSPC" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


_NOISY_LOGGERS = ("absl", "asyncio")


def _is_disk_full_noise(text: str) -> bool:
    return "No space left on device" in text or "os_error_code='28'" in text or "Event loop is closed" in text


class _DiskFullRecords(logging.Filter):
    """Drops the log records of a disk-full write (each of orbax's writer threads logs its traceback through absl's
    logger, asyncio logs their tasks' exceptions): `Checkpointer.save` says it in one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _is_disk_full_noise(record.getMessage() + (str(record.exc_info[1]) if record.exc_info else ""))


def _quiet_disk_full_noise() -> Callable[[], None]:
    """Silences the noise of a failing save until the returned function is called: the log records above, and the
    "Event loop is closed" errors that tensorstore's callbacks raise into orbax's loops once the first failure has
    closed them (they reach `sys.unraisablehook`, one traceback each). Anything else passes through."""
    quiet, previous_hook = _DiskFullRecords(), sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not _is_disk_full_noise(str(unraisable.exc_value)):
            previous_hook(unraisable)

    for name in _NOISY_LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    sys.unraisablehook = hook

    def restore() -> None:
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).removeFilter(quiet)
        sys.unraisablehook = previous_hook

    return restore


def checkpoint_bytes(state: Any) -> int:
    """The bytes one checkpoint of `state` (all processes, global shapes) holds, before compression."""
    return sum(int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize for _, leaf in leaf_paths(to_saveable(state)))


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).exists() else 0


def _all_processes_ok(ok: bool) -> bool:
    """True when every process of the job says ok (each checks the shards it holds)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.array([ok]))))


# -------------------------------------------------------------------------------------------------- manager

class Checkpointer:
    """Keeps the last `max_to_keep` checkpoints of a run directory, by chunk number, each with its digests. At least
    two: the newest may be damaged, and a restore then falls back to the one before."""

    def __init__(self, run_dir: Path, max_to_keep: int = 2) -> None:
        if max_to_keep < 2:
            raise ValueError(f"max_to_keep={max_to_keep}: keep at least 2 checkpoints, so that a damaged newest one "
                             "has an intact one before it")
        self.run_dir = Path(run_dir)
        self.directory = (self.run_dir / "checkpoints").absolute()
        self.max_to_keep = max_to_keep
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                                 enable_async_checkpointing=False))

    def latest_chunk(self) -> int | None:
        return self._manager.latest_step()

    def disk_warning(self, state: Any) -> str | None:
        """A warning when the disk of the checkpoint directory cannot hold what the run will need at its peak:
        `max_to_keep` checkpoints plus the one being written (orbax deletes the oldest only after the new one is
        complete), counting the space of the checkpoints already there (a resume) as available."""
        size = checkpoint_bytes(state)
        needed = (self.max_to_keep + 1) * size
        free = shutil.disk_usage(self.directory).free
        available = free + _dir_bytes(self.directory)
        if available >= needed:
            return None
        return (f"[purejaxmt] WARNING: {self.directory} has {free / 2**20:.1f} MiB free, but the run needs up to "
                f"{needed / 2**20:.1f} MiB for its checkpoints ({self.max_to_keep} kept + 1 being written, "
                f"{size / 2**20:.1f} MiB each uncompressed); it will stop with a message when the disk is full")

    def save(self, chunk: int, state: Any) -> None:
        """Saves `state` as step `chunk`, then its digests. Raises `CheckpointWriteError` when the disk is full."""
        tree = to_saveable(state)
        unquiet = _quiet_disk_full_noise()
        try:
            self._manager.save(chunk, args=ocp.args.StandardSave(tree))
            step_dir = self.directory / str(chunk)
            record = {"algorithm": DIGEST_ALGORITHM, "chunk": chunk, "process": jax.process_index(),
                      "leaves": digests(tree)}
            temporary = digest_file(step_dir).with_suffix(".json.tmp")
            temporary.write_text(json.dumps(record, indent=0) + "\n")
            os.replace(temporary, digest_file(step_dir))  # atomic: a digest file is whole or absent
        except Exception as error:
            if not is_disk_full(error):
                unquiet()
                raise
            # Left quiet: orbax's other writer threads, and asyncio when it collects their tasks, report the same
            # failure later, and this process is about to exit with the one line below.
            self._remove_partial(chunk)
            previous = [step for step in self._manager.all_steps() if step != chunk]
            kept = (f"the previous checkpoint (chunk {max(previous)}) is intact: `--resume {self.run_dir}` continues "
                    "from it once there is space" if previous else "no earlier checkpoint exists")
            raise CheckpointWriteError(
                f"[purejaxmt] disk full: could not write the checkpoint of chunk {chunk} to {self.directory}: it "
                f"needs about {checkpoint_bytes(state):,} bytes (uncompressed), "
                f"{shutil.disk_usage(self.directory).free:,} bytes are free; {kept}") from None
        unquiet()

    def _remove_partial(self, chunk: int) -> None:
        """Deletes what a failed save of `chunk` left: orbax's temporary directory (a partial step never becomes a
        step: orbax renames it only when complete), or a committed step whose digests could not be written."""
        try:  # let orbax's writer threads finish failing before their directory goes
            self._manager.wait_until_finished()
        except Exception:  # noqa: BLE001 - the same disk-full failure, already being reported
            pass
        if jax.process_index() != 0:
            return
        for path in self.directory.glob(f"{chunk}.orbax-checkpoint-tmp*"):
            shutil.rmtree(path, ignore_errors=True)
        step_dir = self.directory / str(chunk)
        if step_dir.exists() and not digest_file(step_dir).exists():
            shutil.rmtree(step_dir, ignore_errors=True)

    def restore(self, chunk: int, template: Any, say: Callable[[str], Any] = print) -> Any:
        """The state saved at `chunk`, with `template`'s structure, shapes and shardings, verified against its
        digests: raises `ValueError` naming the first damaged leaf."""
        problem, state = self._read_verified(chunk, template, say)
        if problem is not None:
            raise ValueError(f"checkpoint {self.directory / str(chunk)} is damaged: {problem}")
        return state

    def _read_verified(self, chunk: int, template: Any, say: Callable[[str], Any]) -> tuple[str | None, Any]:
        """(None, state) for an intact step, or (what is wrong, None). Every process checks its own shards."""
        path = digest_file(self.directory / str(chunk))
        problem, state = None, None
        writers = len(list((self.directory / str(chunk)).glob("digests.process-*.json")))
        if writers > 1 and writers != jax.process_count():
            # Each digest covers what one process of the writing job held: another job layout cannot recompute
            # them. Said, not guessed: the step is restored as orbax reads it, unverified.
            say(f"[purejaxmt] WARNING: checkpoint {self.directory / str(chunk)} was written by {writers} processes "
                f"and is read by {jax.process_count()}: its digests cannot be checked here; restoring it unverified")
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, to_saveable(template))
            return None, from_saveable(self._manager.restore(chunk, args=ocp.args.StandardRestore(abstract)),
                                       template)
        if not path.is_file():
            problem = (f"it has no {path.name} (its save did not finish, or a purejaxmt without digests wrote it)")
        else:
            saved = json.loads(path.read_text())
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, to_saveable(template))
            unquiet = _quiet_disk_full_noise()  # a failed read leaves the same closed-loop callbacks behind
            try:
                tree = self._manager.restore(chunk, args=ocp.args.StandardRestore(abstract))
            except Exception as error:  # a truncated or garbled file: tensorstore cannot decode it
                problem = unreadable(error)
            else:
                bad = mismatches(saved["leaves"], digests(tree))
                if not bad:
                    state = from_saveable(tree, template)
                else:
                    more = f" (and {len(bad) - 1} more leaves)" if len(bad) > 1 else ""
                    problem = f"leaf {bad[0]} does not match its digest{more}"
            finally:
                unquiet()
        if not _all_processes_ok(problem is None):
            return problem or "another process found its shards damaged", None
        return None, state

    def restore_latest_intact(self, template: Any, say: Callable[[str], Any] = print) -> tuple[int, Any]:
        """The newest step that passes its digests, and its state. Each damaged newer step is reported in one line
        (naming the leaf) and deleted, so that the run, continuing from the older one, can write that chunk again.
        Raises `NoIntactCheckpointError` when none is intact, `FileNotFoundError` when there is none."""
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"cannot resume {self.run_dir}: no checkpoint in {self.directory}")
        problems = []
        for chunk in steps:
            problem, state = self._read_verified(chunk, template, say)
            if problem is None:
                for damaged, what in problems:  # deleted only once an intact one is found: never all of them
                    say(f"[purejaxmt] WARNING: checkpoint {self.directory / str(damaged)} is damaged: {what}; "
                        f"falling back to chunk {chunk} (the damaged checkpoint is deleted)")
                    self._manager.delete(damaged)
                return chunk, state
            problems.append((chunk, problem))
        raise NoIntactCheckpointError(f"cannot resume {self.run_dir}: no intact checkpoint in {self.directory} "
                                      f"({'; '.join(f'chunk {c}: {p}' for c, p in problems)}); start a new run")

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

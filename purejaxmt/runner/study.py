"""Studies: sets of member runs in one directory, made by a plan, continued by one rule.

A study is a directory with one index and its member runs:

    STUDY_DIR/study.json    the index: `kind` (sweep, baselines, transfer), `command` (experiment, preset, argv, the
                            safe flags a resume may change), `members` (name, directory, chunks) and the plan's own
                            entries (`plan`)
    STUDY_DIR/config.json   the command's resolved configs: `--resume STUDY_DIR` rebuilds the command from them
    STUDY_DIR/<member>/     each member an ordinary run directory (`loop.run`'s format), resumable on its own

A plan (`purejaxmt.studies`: `sweep`, `baselines`, `transfer`) turns a command into `Member`s; `run_study`
trains them in order, deciding each with `member_rule` (the one rule, also applied to a single run by `cli.main`):

    finished (its last checkpoint is its last chunk)  skip it
    has a checkpoint                                  resume it
    started without a checkpoint                      start it again, and say so (nothing in it can be continued)
    new                                               start it

A stop (SIGINT/SIGTERM, `--run.train-minutes`) leaves a member unfinished: the study stops there and says how to
continue. A study refuses to be resumed as a study of another kind.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import jax

from purejaxmt.runner import loop, provenance

INDEX = "study.json"
KINDS = ("sweep", "baselines", "transfer")
Decision = Literal["finished", "resume", "restart", "new"]


@dataclasses.dataclass(frozen=True)
class Member:
    """One run of a study: its directory (relative to the study's), how many chunks make it finished, and how to
    train it: `train(run_dir, resume)` calls `loop.run` with exactly one of them set (a new run's directory, or the
    directory to resume). `train` is called only when the member is trained, so a member may be built from the
    members before it (transfer's runs from the source run)."""

    name: str
    num_chunks: int
    train: Callable[[Path | None, Path | None], Any]


def command_entry(experiment: str, command: Any) -> dict:
    """What made a study, for its index: the experiment, the preset and the command line as given (the configs
    themselves are in config.json)."""
    return {"experiment": experiment, "preset": command.preset, "argv": list(getattr(command, "argv", ()))}


def latest_checkpoint(run_dir: Path) -> int | None:
    """The chunk of the run's last complete checkpoint, None for none. A checkpoint killed mid-write is not one:
    orbax writes a step into a temporary directory and renames it when complete."""
    path = Path(run_dir) / "checkpoints"
    if not path.is_dir():
        return None
    steps = [int(entry.name) for entry in path.iterdir() if entry.is_dir() and entry.name.isdigit()]
    return max(steps, default=None)


def member_rule(run_dir: Path, num_chunks: int) -> Decision:
    """What to do with a member run (see the module docstring). Finished means checkpointed at its last chunk: a
    run killed between its last metrics row and its last checkpoint redoes that chunk (the resume drops the rows
    past its checkpoint), so a finished member never lacks its final state."""
    run_dir = Path(run_dir)
    last = latest_checkpoint(run_dir)
    if last is not None:
        return "finished" if last >= num_chunks else "resume"
    if run_dir.is_dir() and any(run_dir.iterdir()):
        return "restart"
    return "new"


def apply_rule(run_dir: Path, num_chunks: int, train: Callable[[Path | None, Path | None], Any],
               name: str | None = None) -> bool:
    """Decides `run_dir` by `member_rule` and acts on it; returns whether the run is finished afterwards. Every
    process of a job decides from the same directory before process 0 clears a restarted one."""
    name = name or str(run_dir)
    decision = member_rule(run_dir, num_chunks)
    loop.sync(f"purejaxmt: decided {run_dir}")  # no process clears a directory another is still reading
    if decision == "finished":
        loop.say(f"[purejaxmt] {name}: finished, skipped")
        return True
    if decision == "restart":
        loop.say(f"[purejaxmt] {name}: started but stopped before its first checkpoint; starting it again")
        if jax.process_index() == 0:
            shutil.rmtree(run_dir)
        loop.sync(f"purejaxmt: cleared {run_dir}")
    if decision == "resume":
        loop.say(f"[purejaxmt] {name}: resuming from its checkpoint at chunk {latest_checkpoint(run_dir)}")
        train(None, run_dir)
    else:
        train(run_dir, None)
    return member_rule(run_dir, num_chunks) == "finished"


def open_study(root: Path, kind: str, command: dict, plan: dict, members: list[Member], resume: bool) -> dict:
    """Writes a new study's index (process 0), or checks a resumed one is a study of this `kind` with these members;
    returns the index. `command` is what made it (experiment, preset, argv); `plan` the plan's own entries."""
    if kind not in KINDS:
        raise ValueError(f"unknown study kind {kind!r}; kinds are {list(KINDS)}")
    index = json.loads(json.dumps({
        "kind": kind, "command": command, "plan": plan,
        "members": [{"name": member.name, "dir": member.name, "num_chunks": member.num_chunks}
                    for member in members]}))
    index[provenance.KEY] = provenance.record()  # versions, commit, devices: what made the study
    path = Path(root) / INDEX
    if resume:
        if path.is_file():
            saved = json.loads(path.read_text())
            check_kind(root, saved, kind)
            if [m["name"] for m in saved["members"]] != [m["name"] for m in index["members"]]:
                raise ValueError(f"cannot resume {root}: its members {[m['name'] for m in saved['members']]} are not "
                                 f"the plan's {[m['name'] for m in index['members']]}; nothing was changed there")
            return saved
        # A study dir written before study.json (its config.json was checked by the caller): index it now.
    if jax.process_index() == 0:
        Path(root).mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(index, indent=2) + "\n")
    return index


def check_kind(root: Path, index: dict, kind: str) -> None:
    if index.get("kind") != kind:
        raise ValueError(f"cannot resume {root} as a {kind} study: it is a {index.get('kind')!r} study (its "
                         f"{INDEX}); resume it with --resume {root} alone")


def run_study(root: Path, members: list[Member]) -> bool:
    """Trains every member in order by the member rule; returns whether all are finished. Stops at the first member
    left unfinished (a stop request or a spent budget), saying how to continue."""
    for number, member in enumerate(members, start=1):
        if not apply_rule(Path(root) / member.name, member.num_chunks, member.train,
                          name=f"{member.name} ({number} of {len(members)})"):
            loop.say(f"[purejaxmt] study stopped in {member.name}; continue with --resume {root}")
            return False
    return True

"""Run directories and their metrics log: `runs/<experiment>/<timestamp>/{config.json, metrics.jsonl, ...}`.

`config.json` is the resolved config record (what `run` prints first); a resume must ask for the same record.
`metrics.jsonl` has one flat row per chunk and run: `chunk`, `seed` (and in a sweep `run` and `setting`),
`wall_time`, the program's scalar metrics by their own names (`step` is env steps per task), per-task metrics as
`train/<task>/<name>`, evaluations as `eval/<task>/<name>`. The processes of a multi-host job log their own runs,
process i > 0 into `metrics.process-<i>.jsonl`. Runs are never overwritten.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from purejaxmt.agents import AgentSpec


def config_record(experiment: str, agent_spec: AgentSpec, agent_config: Any, loop_config: Any, run_config: Any,
                  preset: str | None) -> dict:
    record = {"experiment": experiment, "agent_module": agent_spec.name, "preset": preset,
              "agent": dataclasses.asdict(agent_config), "loop": dataclasses.asdict(loop_config),
              "run": dataclasses.asdict(run_config)}
    # As JSON has it (tuples become lists), so a record compares equal to the one saved in config.json on resume.
    return json.loads(json.dumps(record))


def differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    diffs = []
    for name in sorted(set(saved) | set(wanted)):
        a, b = saved.get(name, "<missing>"), wanted.get(name, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += differences(a, b, f"{prefix}{name}.")
        elif a != b:
            diffs.append(f"{prefix}{name}: saved {a!r}, requested {b!r}")
    return diffs


def new_run_dir(experiment: str, root: Path = Path("runs")) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path(root) / experiment / stamp


def load_saved_config(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no config.json (is it a purejaxmt run dir?)")
    return json.loads(path.read_text())


# Run fields that say how a run is watched, how long it may take, and how often it is evaluated and checkpointed, not
# what it trains (an evaluation reads the state and draws its own keys): a resume may change them (`cli.RESUME_FLAGS`).
NOT_THE_RUN = ("logger", "video", "train_minutes", "eval_every", "checkpoint_every")
# Record entries that say who asked, not what is trained.
NOT_COMPARED = ("preset", "command", "provenance")


def check_resumable(run_dir: Path, record: dict) -> None:
    """Raises unless `run_dir` was started with the same config (all but `NOT_COMPARED` and `NOT_THE_RUN`; the
    provenance differs as a warning, `provenance.resume_warning`)."""
    saved = load_saved_config(run_dir)
    keys = [key for key in set(record) | set(saved) if key not in NOT_COMPARED]

    def comparable(entry: dict, key: str) -> object:
        value = entry.get(key)
        if key == "run" and isinstance(value, dict):
            return {name: field for name, field in value.items() if name not in NOT_THE_RUN}
        return value

    diffs = differences({k: comparable(saved, k) for k in keys}, {k: comparable(record, k) for k in keys})
    if diffs:
        raise ValueError(f"cannot resume {run_dir}: it was run with a different config; nothing was changed there. "
                         "Differences: " + "; ".join(diffs))


def check_new(run_dir: Path) -> None:
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"run dir {run_dir} already exists and is not empty: pass --resume {run_dir} to "
                              "continue it, or choose a new --run-dir (runs are never overwritten)")


def _to_python(value: np.ndarray) -> float | int | None:
    value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metrics_file(run_dir: Path, process: int = 0) -> Path:
    """Where a process logs its runs' rows: `metrics.jsonl` (process 0, the only one of a single-host job) or
    `metrics.process-<i>.jsonl`, so that the processes of a multi-host job never write one file."""
    return Path(run_dir) / ("metrics.jsonl" if process == 0 else f"metrics.process-{process}.jsonl")


def read_metrics(path: Path) -> list[dict]:
    """The rows of one metrics file. A torn last line (a run killed mid-write, or a run still writing) is skipped;
    a bad line before it is an error naming the file and line."""
    lines = Path(path).read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number} is not a JSON row ({error}); is it a purejaxmt metrics file?") from None
    return rows


def read_all_metrics(run_dir: Path) -> list[dict]:
    """The rows of every process's metrics file of a run directory (`metrics.jsonl`, `metrics.process-<i>.jsonl`):
    the one reader of the format, for the runner, plotting, ablation, compare, render and transfer alike."""
    paths = sorted(Path(run_dir).glob("metrics*.jsonl"))
    return [row for path in paths for row in read_metrics(path)]


def metrics_rows(metrics: dict, task_names: tuple[str, ...] | list[str], runs: list[dict], chunk: int,
                 wall_time: float, evaluation: dict | None) -> list[dict]:
    """One flat row per run, `runs[i]` (e.g. `{"seed": 3}`) naming row i of the NumPy `metrics` `[runs, ...]`:
    per-task `[T]` fields `train/<task>/<name>`, scalars by name, evaluation fields `eval/<task>/<name>`."""
    rows = []
    for index, labels in enumerate(runs):
        row = {"chunk": chunk, **labels, "wall_time": round(wall_time, 3)}
        for name, value in metrics.items():
            value = np.asarray(value[index])
            if value.ndim == 1:
                row.update({f"train/{task}/{name}": _to_python(v) for task, v in zip(task_names, value)})
            else:
                row[name] = _to_python(value)
        for name, value in (evaluation or {}).items():
            row.update({f"eval/{task}/{name}": _to_python(v) for task, v in zip(task_names, np.asarray(value[index]))})
        rows.append(row)
    return rows


def truncate_metrics(path: Path, last_chunk: int) -> float:
    """Drops lines past the checkpoint being resumed (a run killed between its log and its checkpoint) and returns
    the wall time already spent."""
    if not path.exists():
        return 0.0
    kept = [row for row in read_metrics(path) if row["chunk"] <= last_chunk]
    path.write_text("".join(json.dumps(row) + "\n" for row in kept))
    return max((row["wall_time"] for row in kept), default=0.0)


def last_logged_chunk(run_dir: Path) -> int:
    """The last chunk any process of the run logged (0 for none)."""
    return max((row["chunk"] for row in read_all_metrics(run_dir)), default=0)


def mean_return(rows: list[dict], task_names: tuple[str, ...] | list[str], split: str) -> str:
    values = [row.get(f"{split}/{task}/return") for row in rows for task in task_names]
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.1f}" if values else "-"

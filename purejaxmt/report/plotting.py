"""Learning curves from a run's `metrics.jsonl`: one PNG per task, train and eval returns, mean over seeds with the
min-max band.

No import-time side effects: figures are drawn with matplotlib's object-oriented API (`matplotlib.figure.Figure`,
`fig.savefig`), never pyplot, so no backend is selected (a user's interactive session keeps its own) and no global
figure registry fills up; `savefig` renders PNGs with Agg whatever the backend. Matplotlib itself is imported on
the first plot, so `import purejaxmt.report.plotting` (and `read_metrics`) stay cheap.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np


def read_metrics(path: Path) -> list[dict]:
    """The rows of one metrics file (`runner.rundir.read_metrics`, the format's one reader)."""
    from purejaxmt.runner import rundir

    return rundir.read_metrics(path)


def read_all_metrics(run_dir: Path) -> list[dict]:
    """Every process's rows of a run directory (`runner.rundir.read_all_metrics`)."""
    from purejaxmt.runner import rundir

    return rundir.read_all_metrics(run_dir)


def _curve(rows: list[dict], field: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per step: mean, min and max over seeds of `field`, skipping rows without a finite value."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        value = row.get(field)
        if value is not None and math.isfinite(value):
            by_step[row["step"]].append(value)
    steps = np.array(sorted(by_step))
    values = [np.array(by_step[s]) for s in steps]
    return (steps, np.array([v.mean() for v in values]), np.array([v.min() for v in values]),
            np.array([v.max() for v in values]))


X_AXES = {"wall_time": "wall clock (minutes, compiles excluded)", "step": "env steps per task"}


def eval_curves(run_dir: Path, task_names: list[str], x: str = "wall_time") -> dict[str, tuple[np.ndarray, ...]]:
    """One run directory's evaluation curves, per task (x, mean, min, max) over its seeds at each evaluated chunk,
    x the chunk's env steps per task or its mean `wall_time` over the seeds in minutes. Reads the metrics once."""
    if x not in X_AXES:
        raise ValueError(f"x={x!r}: choose one of {list(X_AXES)}")
    rows = read_all_metrics(run_dir)
    wall_times: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        wall_times[row["step"]].append(row["wall_time"])
    curves = {}
    for task in task_names:
        steps, mean, low, high = _curve(rows, f"eval/{task}/return")
        xs = steps if x == "step" else np.array([np.mean(wall_times[step]) / 60.0 for step in steps])
        curves[task] = (xs, mean, low, high)
    return curves


def plot_runs(curves: list[dict[str, tuple[np.ndarray, ...]]], labels: list[str], out_dir: Path,
              x: str = "wall_time") -> list[Path]:
    """`out_dir/<task>.png` per task of the first run's `eval_curves`: several runs' curves side by side (mean over
    each run's seeds, min-max band) against wall clock or env steps; for comparing presets at equal time, such as
    `fast` and `gpu`."""
    from matplotlib.figure import Figure

    if len(labels) != len(curves):
        raise ValueError(f"{len(labels)} labels for {len(curves)} run dirs")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = []
    for task in curves[0]:
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        for label, run in zip(labels, curves):
            xs, mean, low, high = run[task]
            if len(xs):
                ax.plot(xs, mean, "o-", label=label, markersize=3)
                ax.fill_between(xs, low, high, alpha=0.2)
        ax.set_xlabel(X_AXES[x])
        ax.set_ylabel("eval return")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = Path(out_dir) / f"{task}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def plot_learning_curves(run_dir: Path, task_names: list[str]) -> list[Path]:
    """Writes `plots/<task>.png` for each task and returns the paths."""
    from matplotlib.figure import Figure  # here, not at the top: importing matplotlib takes a while

    run_dir = Path(run_dir)
    rows = read_all_metrics(run_dir)
    (run_dir / "plots").mkdir(exist_ok=True)
    paths = []
    for task in task_names:
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        for split, style in (("train", "-"), ("eval", "o-")):
            steps, mean, low, high = _curve(rows, f"{split}/{task}/return")
            if len(steps):
                ax.plot(steps, mean, style, label=f"{split} (mean over seeds)", markersize=3)
                ax.fill_between(steps, low, high, alpha=0.2)
        ax.set_xlabel("env steps per task")
        ax.set_ylabel("episode return")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no finished episodes yet", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        path = run_dir / "plots" / f"{task}.png"
        fig.savefig(path, dpi=100)  # the figure is not registered anywhere: nothing to close
        paths.append(path)
    return paths

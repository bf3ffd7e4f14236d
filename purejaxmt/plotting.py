"""Learning curves from a run's `metrics.jsonl`: one PNG per task, train and eval returns, mean over seeds with the
min-max band.

No import-time side effects: figures are drawn with matplotlib's object-oriented API (`matplotlib.figure.Figure`,
`fig.savefig`), never pyplot, so no backend is selected (a user's interactive session keeps its own) and no global
figure registry fills up; `savefig` renders PNGs with Agg whatever the backend. Matplotlib itself is imported on
the first plot, so `import purejaxmt.plotting` (and `read_metrics`) stay cheap.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np


def read_metrics(path: Path) -> list[dict]:
    """The rows of a `metrics.jsonl` (one dict per line; blank lines skipped)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


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


def plot_learning_curves(run_dir: Path, task_names: list[str]) -> list[Path]:
    """Writes `plots/<task>.png` for each task and returns the paths."""
    from matplotlib.figure import Figure  # here, not at the top: importing matplotlib takes a while

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
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

"""Evaluation curves of several runs side by side, against wall clock (default) or env steps.

    python experiments/compare.py runs/mjx_humanoid_mt/<fast> runs/mjx_humanoid_mt/<gpu> --labels fast gpu
    python experiments/compare.py RUN_A RUN_B --x step --out runs/compare/a_vs_b

Writes OUT/<task>.png for every task the runs share (mean over each run's seeds, min-max band) and prints, per task
and run, the last evaluation and when it came. A run's x is its metrics' `wall_time` (training, evaluations and
checkpoints; compiles excluded) or its env steps per task.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
from pathlib import Path
from typing import Annotated

import tyro

from purejaxmt import envs
from purejaxmt.report import plotting
from purejaxmt.runner import rundir
from purejaxmt.runner.usage import usage_errors


@dataclasses.dataclass(frozen=True)
class Args:
    run_dirs: Annotated[tuple[Path, ...], tyro.conf.Positional]
    """run directories (each with config.json and metrics.jsonl)"""
    labels: tuple[str, ...] = ()
    """one label per run (default: each run's preset, or its directory's name)"""
    x: str = "wall_time"
    """wall_time (minutes) or step (env steps per task)"""
    out: Path | None = None
    """where the PNGs go (default runs/compare/<timestamp>)"""


def main(argv: list[str] | None = None) -> Path:
    args = tyro.cli(Args, args=argv, description=__doc__)
    try:
        if len(args.run_dirs) < 1:
            raise ValueError("give at least one run directory")
        records = [rundir.load_saved_config(run_dir) for run_dir in args.run_dirs]
        labels = list(args.labels) or [record.get("preset") or run_dir.name
                                       for record, run_dir in zip(records, args.run_dirs)]
        task_lists = [envs.resolve(record["run"]["tasks"]) for record in records]
        tasks = [task for task in task_lists[0] if all(task in names for names in task_lists[1:])]
        if not tasks:
            raise ValueError(f"the runs share no task: {[list(names) for names in task_lists]}")
        out = args.out or Path("runs") / "compare" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        curves = [plotting.eval_curves(run_dir, tasks, args.x) for run_dir in args.run_dirs]
        paths = plotting.plot_runs(curves, labels, out, x=args.x)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    unit = "min" if args.x == "wall_time" else "steps"
    for task in tasks:
        for label, run in zip(labels, curves):
            xs, mean, _, _ = run[task]
            last = f"{mean[-1]:.1f} at {xs[-1]:,.1f} {unit}" if len(xs) else "no evaluation yet"
            print(f"{task:30s} {label:20s} {last}")
    print(f"wrote {', '.join(str(path) for path in paths)}", file=sys.stderr)
    return out


if __name__ == "__main__":
    with usage_errors():  # a bad flag or value: one framed line and status 2, not a traceback
        main()

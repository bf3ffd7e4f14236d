"""The report of an ablation sweep: final-score table with 95% bootstrap CIs (IQM over seeds), probabilities of
improvement and learning curves (purejaxmt.report.ablation says how each number is made).

    python experiments/ablate.py runs/sweeps/critic_loss/20261101-120000                 # every setting vs the first
    python experiments/ablate.py SWEEP_DIR --last-k 3                                    # final = mean of last 3 evals
    python experiments/ablate.py SWEEP_DIR --pairs "critic_loss=mse:critic_loss=categorical" --reps 50000
    python experiments/ablate.py SINGLE_TASK_DIR --multi-task MULTI_TASK_RUN_DIR   # the paper's MT vs ST comparison

Writes SWEEP_DIR/ablation.md (paste-able), SWEEP_DIR/ablation.json and SWEEP_DIR/plots/*.png (for the MT vs ST
comparison: into SINGLE_TASK_DIR/vs_multi_task/).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated

import tyro

from purejaxmt.report import ablation, stats
from purejaxmt.runner.usage import usage_errors


@dataclasses.dataclass(frozen=True)
class Args:
    sweep_dir: Annotated[Path, tyro.conf.Positional]
    """a sweep directory (with sweep.json), or with --multi-task a --single-task-baselines directory"""
    multi_task: Path | None = None
    """a multi-task run dir of the same tasks: compare it with the single-task baselines in SWEEP_DIR"""
    last_k: int = 1
    """a run's final score on a task is the mean of its last K evaluations"""
    pairs: tuple[str, ...] = ()
    """"A:B" pairs of setting labels: P(A > B) is reported for each (default: every setting vs the first)"""
    reps: int = stats.DEFAULT_REPS
    """bootstrap replications per confidence interval (rliable's papers use 50000)"""
    seed: int = 0
    """seed of the bootstraps"""


def main(argv: list[str] | None = None) -> Path:
    args = tyro.cli(Args, args=argv, description=__doc__)
    try:
        if args.multi_task is not None:
            path = ablation.multi_vs_single(args.multi_task, args.sweep_dir, last_k=args.last_k, reps=args.reps,
                                            seed=args.seed)
        else:
            path = ablation.report(args.sweep_dir, last_k=args.last_k, pairs=args.pairs, reps=args.reps,
                                   seed=args.seed)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(path.read_text())
    print(f"wrote {path}, {path.with_suffix('.json')} and {path.parent / 'plots'}/", file=sys.stderr)
    return path


if __name__ == "__main__":
    with usage_errors():  # a bad flag or value: one framed line and status 2, not a traceback
        main()

"""Interval estimates for RL scores: thin wrappers over `rliable` (Agarwal et al., 2021, "Deep RL at the edge of the
statistical precipice").

A score matrix is `[runs, tasks]` (one row per run/seed, one column per task), optionally with a trailing step axis
`[runs, tasks, steps]` for curves, as rliable expects. Confidence intervals are percentile intervals of a stratified
bootstrap: runs are resampled with replacement within each task, tasks are kept fixed. Every estimate draws from its
own seeded random state, so a result depends on its scores, `reps` and `seed` only (not on what was estimated
before it). rliable's papers use 50,000 bootstrap replications; `DEFAULT_REPS` is smaller so that a report
over a sweep takes seconds; pass more for numbers you publish.

rliable (and arch, its bootstrap) are imported on the first estimate, so `import purejaxmt.report.stats` stays cheap.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np

DEFAULT_REPS = 2000
CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval `[low, high]`."""
    point: float
    low: float
    high: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_matrix(scores: np.ndarray, name: str = "scores", ndim: tuple[int, ...] = (2,)) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim not in ndim:
        raise ValueError(f"{name} must be a [runs, tasks] matrix (rliable's layout); got shape {scores.shape}")
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"{name} has no runs or no tasks (shape {scores.shape}): nothing to estimate")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{name} has non-finite entries (missing runs?): drop those runs first; got {scores}")
    return scores


def _bootstrap(scores: np.ndarray | list[np.ndarray], aggregate: Callable[..., np.ndarray], reps: int, seed: int,
               confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """rliable's `get_interval_estimates` for one entry: (point [..], interval [2, ..])."""
    from rliable import library  # here, not at the top: rliable imports arch, statsmodels and pandas

    if reps < 1:
        raise ValueError(f"reps must be at least 1, got {reps}")
    # rliable 1.2's bootstraps draw their indices from NumPy's global RandomState (np.random.choice), whatever
    # `random_state` they are given; so the global state is seeded here and put back afterwards (not thread-safe).
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        points, intervals = library.get_interval_estimates({"scores": scores}, aggregate, reps=reps,
                                                           confidence_interval_size=confidence)
    finally:
        np.random.set_state(saved)
    return np.asarray(points["scores"]), np.asarray(intervals["scores"])


def interval_estimate(scores: np.ndarray, aggregate: Callable[[np.ndarray], float], reps: int = DEFAULT_REPS,
                      seed: int = 0, confidence: float = CONFIDENCE) -> Estimate:
    """`aggregate` ([runs, tasks] -> scalar) of `scores` with a stratified-bootstrap confidence interval."""
    scores = _check_matrix(scores)
    point, interval = _bootstrap(scores, lambda s: np.array([aggregate(s)]), reps, seed, confidence)
    return Estimate(float(point[0]), float(interval[0, 0]), float(interval[1, 0]))


def iqm(scores: np.ndarray, reps: int = DEFAULT_REPS, seed: int = 0, confidence: float = CONFIDENCE) -> Estimate:
    """Interquartile mean over all runs and tasks (the mean of the middle 50% of the scores; rliable's
    `aggregate_iqm`, a 25% trimmed mean) with a 95% stratified-bootstrap CI."""
    from rliable import metrics

    return interval_estimate(scores, metrics.aggregate_iqm, reps, seed, confidence)


def mean(scores: np.ndarray, reps: int = DEFAULT_REPS, seed: int = 0, confidence: float = CONFIDENCE) -> Estimate:
    """Mean over all runs and tasks (rliable's `aggregate_mean`: the mean over tasks of the per-task mean over runs)
    with a 95% stratified-bootstrap CI."""
    from rliable import metrics

    return interval_estimate(scores, metrics.aggregate_mean, reps, seed, confidence)


def probability_of_improvement(scores_x: np.ndarray, scores_y: np.ndarray, reps: int = DEFAULT_REPS, seed: int = 0,
                               confidence: float = CONFIDENCE) -> Estimate:
    """P(X > Y): the probability that a run of X scores higher than a run of Y on a task, averaged over tasks (ties
    count a half; rliable's `probability_of_improvement`), with a CI from bootstrapping X's and Y's runs
    independently. The two matrices share their tasks (columns); their numbers of runs may differ."""
    from rliable import metrics

    scores_x, scores_y = _check_matrix(scores_x, "scores_x"), _check_matrix(scores_y, "scores_y")
    if scores_x.shape[1] != scores_y.shape[1]:
        raise ValueError(f"scores_x and scores_y must have the same tasks (columns); got shapes {scores_x.shape} "
                         f"and {scores_y.shape}")
    point, interval = _bootstrap([scores_x, scores_y],
                                 lambda x, y: np.array([metrics.probability_of_improvement(x, y)]),
                                 reps, seed, confidence)
    return Estimate(float(point[0]), float(interval[0, 0]), float(interval[1, 0]))


def curve(scores: np.ndarray, aggregate: str = "mean", reps: int = DEFAULT_REPS, seed: int = 0,
          confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step of `scores` `[runs, tasks, steps]`: the `aggregate` ("mean" or "iqm") over runs and tasks and its
    stratified-bootstrap CI, as (point, low, high), each `[steps]` (rliable's sample-efficiency curves)."""
    scores = _check_matrix(scores, ndim=(3,))
    runs, tasks, steps = scores.shape

    def per_step(s: np.ndarray) -> np.ndarray:  # [runs, tasks, steps] -> [steps]
        flat = s.reshape(-1, steps)
        if aggregate == "mean":
            return flat.mean(axis=0)
        import scipy.stats

        return scipy.stats.trim_mean(flat, proportiontocut=0.25, axis=0)

    if aggregate not in ("mean", "iqm"):
        raise ValueError(f"aggregate must be 'mean' or 'iqm', got {aggregate!r}")
    point, interval = _bootstrap(scores, per_step, reps, seed, confidence)
    return point, interval[0], interval[1]


def min_max_bounds(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per task `[tasks]`: the min and max of `scores` `[runs, tasks]` over runs, ignoring NaN (missing runs)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a [runs, tasks] matrix; got shape {scores.shape}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="All-NaN slice", category=RuntimeWarning)
        return np.nanmin(scores, axis=0), np.nanmax(scores, axis=0)


def normalise(scores: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Per-task normalised scores `(scores - low) / (high - low)`, `low` and `high` `[tasks]` broadcast along the
    task axis (axis 1) of `scores` `[runs, tasks, ...]`: `low` maps to 0 and `high` to 1. A task whose `high` equals
    its `low` (every run scored the same) maps to 0 for its `low`, so it neither helps nor hurts any setting."""
    scores = np.asarray(scores, dtype=np.float64)
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    if scores.ndim < 2 or low.shape != (scores.shape[1],) or high.shape != low.shape:
        raise ValueError(f"low and high must be [tasks] for scores [runs, tasks, ...]; got scores {scores.shape}, "
                         f"low {low.shape}, high {high.shape}")
    width = np.where(high > low, high - low, 1.0)
    shape = (1, -1) + (1,) * (scores.ndim - 2)
    return (scores - low.reshape(shape)) / width.reshape(shape)

"""purejaxmt.report.stats: rliable's IQM, mean and probability of improvement with stratified-bootstrap CIs, per-task
normalisation. Few bootstrap replications: these check the wiring and the definitions, not the coverage."""

import numpy as np
import pytest

from purejaxmt.report import stats

REPS = 200


def test_iqm_is_the_mean_of_the_middle_half():
    scores = np.arange(1.0, 9.0)[:, None]  # 8 runs, 1 task: the middle 50% is 3, 4, 5, 6
    estimate = stats.iqm(scores, reps=REPS)
    assert estimate.point == pytest.approx(4.5)
    assert estimate.low <= estimate.point <= estimate.high
    # over runs and tasks together: the same 8 numbers as a [4 runs, 2 tasks] matrix
    assert stats.iqm(np.arange(1.0, 9.0).reshape(4, 2), reps=REPS).point == pytest.approx(4.5)
    # an outlier moves the mean, not the IQM
    outlier = np.array([1.0, 2, 3, 4, 5, 6, 7, 1000])[:, None]
    assert stats.iqm(outlier, reps=REPS).point == pytest.approx(4.5)
    assert stats.mean(outlier, reps=REPS).point == pytest.approx(1028 / 8)


def test_mean_is_over_runs_and_tasks():
    scores = np.array([[1.0, 10.0], [3.0, 30.0]])
    estimate = stats.mean(scores, reps=REPS)
    assert estimate.point == pytest.approx(11.0)
    assert estimate.low <= estimate.point <= estimate.high


def test_interval_contains_the_estimate_and_shrinks_with_more_seeds():
    rng = np.random.default_rng(0)
    widths = []
    for seeds in (5, 20, 80):
        scores = rng.normal(100.0, 20.0, size=(seeds, 3))
        estimate = stats.iqm(scores, reps=REPS)
        assert estimate.low <= estimate.point <= estimate.high
        widths.append(estimate.high - estimate.low)
    assert widths[0] > widths[1] > widths[2] > 0, widths


def test_bootstrap_is_deterministic_given_its_seed():
    scores = np.random.default_rng(1).normal(size=(6, 2))
    first = stats.iqm(scores, reps=REPS, seed=3)
    np.random.seed(123)  # the global NumPy state neither matters nor changes
    global_draw = np.random.rand()
    np.random.seed(123)
    assert stats.iqm(scores, reps=REPS, seed=3) == first
    assert np.random.rand() == global_draw
    assert stats.iqm(scores, reps=REPS, seed=4) != first
    x, y = scores[:3], scores[3:]
    assert (stats.probability_of_improvement(x, y, reps=20, seed=3)
            == stats.probability_of_improvement(x, y, reps=20, seed=3))


def test_single_run_has_a_degenerate_interval():
    estimate = stats.iqm(np.array([[2.0, 4.0]]), reps=REPS)
    assert estimate.point == estimate.low == estimate.high == pytest.approx(3.0)


POI_REPS = 50  # each replication runs a Mann-Whitney U test per task: slow


def test_probability_of_improvement():
    rng = np.random.default_rng(2)
    worse = rng.normal(0.0, 1.0, size=(5, 3))
    better = worse + 100.0
    assert stats.probability_of_improvement(better, worse, reps=POI_REPS).point == pytest.approx(1.0)
    assert stats.probability_of_improvement(worse, better, reps=POI_REPS).point == pytest.approx(0.0)
    same = stats.probability_of_improvement(worse, worse.copy(), reps=POI_REPS)
    assert same.point == pytest.approx(0.5)
    assert same.low <= 0.5 <= same.high
    # by hand: one task, X = {1, 3}, Y = {2}: X wins one of the two pairs
    assert stats.probability_of_improvement(np.array([[1.0], [3.0]]), np.array([[2.0]]),
                                            reps=POI_REPS).point == pytest.approx(0.5)
    # different numbers of runs are fine; different tasks are not
    assert stats.probability_of_improvement(better[:2], worse, reps=POI_REPS).point == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same tasks"):
        stats.probability_of_improvement(better[:, :2], worse, reps=POI_REPS)


def test_normalise_per_task():
    scores = np.array([[0.0, 100.0, 5.0], [10.0, 300.0, 5.0]])
    low, high = stats.min_max_bounds(np.vstack([scores, [[np.nan, 200.0, np.nan]]]))
    np.testing.assert_array_equal(low, [0.0, 100.0, 5.0])
    np.testing.assert_array_equal(high, [10.0, 300.0, 5.0])
    normalised = stats.normalise(scores, low, high)
    np.testing.assert_allclose(normalised, [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])  # a constant task maps to 0
    curves = stats.normalise(np.stack([scores, scores / 2], axis=-1), low, high)  # [runs, tasks, steps]
    np.testing.assert_allclose(curves[1, :, 1], [0.5, 0.25, -2.5])
    with pytest.raises(ValueError, match="tasks"):
        stats.normalise(scores, low[:2], high[:2])


def test_curve_per_step():
    scores = np.arange(24.0).reshape(4, 2, 3)  # [runs, tasks, steps]
    point, low, high = stats.curve(scores, "mean", reps=REPS)
    np.testing.assert_allclose(point, scores.mean(axis=(0, 1)))
    assert np.all(low <= point) and np.all(point <= high)
    point, _, _ = stats.curve(scores, "iqm", reps=REPS)
    np.testing.assert_allclose(point, [stats.iqm(scores[..., k], reps=2).point for k in range(3)])


def test_bad_scores_say_what_they_got():
    with pytest.raises(ValueError, match=r"\[runs, tasks\].*\(8,\)"):
        stats.iqm(np.arange(8.0))
    with pytest.raises(ValueError, match="non-finite"):
        stats.iqm(np.array([[1.0], [np.nan]]))
    with pytest.raises(ValueError, match="no runs"):
        stats.mean(np.zeros((0, 2)))

"""experiments/compare.py: evaluation curves of several runs against wall clock or env steps (synthetic metrics)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_presets import SCRIPTS

from purejaxmt.report import plotting


def fake_run(path, tasks: str, preset: str, rows: list[dict]):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"preset": preset, "run": {"tasks": tasks}}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def rows(returns: dict[int, list[float]], seconds_per_step: float, task: str = "Pendulum-v1") -> list[dict]:
    """Two seeds per step; seed s's wall time is off by s seconds; a train-only row (no eval) in between."""
    out = []
    for step, values in returns.items():
        for seed, value in enumerate(values):
            out.append({"step": step, "seed": seed, "wall_time": step * seconds_per_step + seed,
                        f"eval/{task}/return": value})
        out.append({"step": step + 1, "seed": 0, "wall_time": 0.0, f"train/{task}/return": 1.0})
    return out


def test_compare_plots_runs_against_wall_clock_and_steps(tmp_path, capsys):
    fast = fake_run(tmp_path / "fast", "Pendulum-v1", "fast", rows({100: [-900, -700], 200: [-300, -100]}, 0.6))
    slow = fake_run(tmp_path / "slow", "classic-continuous", "gpu", rows({100: [-1000, -800]}, 3.0))
    compare = SCRIPTS["compare"]
    out = compare.main([str(fast), str(slow), "--out", str(tmp_path / "cmp")])
    printed = capsys.readouterr().out.splitlines()
    # fast: the mean of its seeds at its last eval (step 200), at the mean wall time (120 s, 121 s) in minutes
    assert printed[0].split() == ["Pendulum-v1", "fast", "-200.0", "at", "2.0", "min"]
    assert printed[1].split() == ["Pendulum-v1", "gpu", "-900.0", "at", "5.0", "min"]
    assert (out / "Pendulum-v1.png").stat().st_size > 0
    assert not (out / "MountainCarContinuous-v0.png").exists()  # only the tasks both runs have
    xs, mean, low, high = plotting.eval_curves(fast, ["Pendulum-v1"], x="step")["Pendulum-v1"]
    np.testing.assert_array_equal(xs, [100, 200])
    np.testing.assert_array_equal(np.stack([mean, low, high]), [[-800, -200], [-900, -300], [-700, -100]])
    compare.main([str(fast), "--x", "step", "--labels", "mine", "--out", str(tmp_path / "steps")])
    assert capsys.readouterr().out.split() == ["Pendulum-v1", "mine", "-200.0", "at", "200.0", "steps"]


def test_compare_errors_name_the_problem(tmp_path):
    compare = SCRIPTS["compare"]
    a = fake_run(tmp_path / "a", "Pendulum-v1", "x", rows({1: [0.0, 0.0]}, 1.0))
    car = "MountainCarContinuous-v0"
    b = fake_run(tmp_path / "b", car, "y", rows({1: [0.0, 0.0]}, 1.0, car))
    with pytest.raises(SystemExit, match="share no task"):
        compare.main([str(a), str(b), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="x='minutes'"):
        compare.main([str(a), "--x", "minutes", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="1 labels for 2 run dirs"):
        compare.main([str(a), str(a), "--labels", "one", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="has no config.json"):
        compare.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])

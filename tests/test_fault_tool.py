"""The fault tool (`experiments/faults.py`) kills single-task baselines with SIGKILL and finds them identical to the
uninterrupted ones after resuming from their directory alone; a single run started with overrides resumes from its
directory alone; directories this version cannot continue are refused, saying why. Tiny Gymnax configs
(tests/sweep_driver.py); the subprocesses share the tests' compilation cache."""

from __future__ import annotations

import json
import sys

import jax
import pytest
from fault_kit import DRIVER, ENV, faults
from sweep_driver import EXPERIMENT, PRESETS

from purejaxmt import cli
from purejaxmt.agents import brc
from purejaxmt.runner import rundir, study


def test_fault_tool_finds_single_task_baselines_identical_after_kills(tmp_path, monkeypatch, capsys):
    """The killed and resumed baselines end as the uninterrupted ones, summary included; resuming the finished set
    runs nothing again, and flags beside `--resume` or another kind of study are refused. (A transfer needs a source
    of two tasks and a new one: MJX tasks, too slow to kill and resume here; the transfer study's member rule is
    tested in-process in tests/test_transfer.py.)"""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    command = [str(DRIVER), "--preset", "tiny", "--tasks", "classic-continuous", "--seeds", "1", "--steps", "80",
               "--single-task-baselines"]
    code = faults.main(["--kills", "2", "--out", str(tmp_path / "faults"), "--", sys.executable, *command])
    out = capsys.readouterr().out
    assert code == 0 and out.strip().endswith("identical"), out[-3000:]
    assert "| kill | aimed at" in out and "|    2 |" in out, out
    assert out.count("| in '") == 2 and "not reached" not in out and "passed over" not in out, out  # both landed

    root = tmp_path / "faults" / "interrupted"
    summary = json.loads((root / "summary.json").read_text())
    assert set(summary) == {"Pendulum-v1", "MountainCarContinuous-v0"}
    assert all(entry["step"] == 80 and entry["seeds"] == 1 for entry in summary.values())
    assert summary == json.loads((tmp_path / "faults" / "uninterrupted" / "summary.json").read_text())
    assert json.loads((root / "config.json").read_text())["provenance"]["packages"]["jax"] == jax.__version__
    task_config = json.loads((root / "Pendulum-v1" / "config.json").read_text())
    tiny = PRESETS["tiny"].loop
    assert task_config["loop"]["batch_size"] == tiny.batch_size // 2 and task_config["run"]["tasks"] == "Pendulum-v1"
    cli.main(EXPERIMENT, brc.AGENT_SPEC, PRESETS, argv=["--resume", str(root)])
    assert capsys.readouterr().out.count("finished, skipped") == 2
    with pytest.raises(SystemExit, match="--preset, --single-task-baselines cannot change a resumed run or study"):
        cli.main(EXPERIMENT, brc.AGENT_SPEC, PRESETS, argv=["--preset", "tiny", "--single-task-baselines",
                                                            "--resume", str(root)])
    with pytest.raises(ValueError, match="as a sweep study: it is a 'baselines' study"):
        study.open_study(root, "sweep", {}, {}, [], resume=True)


def test_a_run_with_overrides_resumes_from_its_directory_alone(tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["--preset", "tiny", "--seeds", "1", "--agent.learning-rate", "0.001", "--run.train-minutes", "1e-6"]
    cli.main(EXPERIMENT, brc.AGENT_SPEC, PRESETS, argv=[*argv, "--run-dir", str(run_dir)])  # stops after chunk 1
    assert rundir.last_logged_chunk(run_dir) == 1
    with pytest.raises(SystemExit, match="--agent.tau cannot change a resumed run"):
        cli.main(EXPERIMENT, brc.AGENT_SPEC, PRESETS, argv=["--resume", str(run_dir), "--agent.tau", "0.01"])
    cli.main(EXPERIMENT, brc.AGENT_SPEC, PRESETS, argv=["--resume", str(run_dir)])  # the saved budget stops it again
    assert rundir.last_logged_chunk(run_dir) == 2
    cli.main(EXPERIMENT, brc.AGENT_SPEC, PRESETS, argv=["--resume", str(run_dir), "--run.train-minutes", "60"])
    assert [row["chunk"] for row in rundir.read_all_metrics(run_dir)] == [1, 2, 3]
    saved = rundir.load_saved_config(run_dir)
    assert saved["agent"]["learning_rate"] == 0.001 and saved["run"]["seeds"] == 1
    assert study.member_rule(run_dir, 3) == "finished"
    (run_dir / "metrics.jsonl").write_text((run_dir / "metrics.jsonl").read_text() + '{"chunk": 4, "wal')
    assert len(rundir.read_all_metrics(run_dir)) == 3  # a torn last line is skipped
    capsys.readouterr()

    # Directories this version cannot continue are refused, saying why.
    old = tmp_path / "old_baselines"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({**saved, "single_task_baselines": ["Pendulum-v1"]}))
    with pytest.raises(SystemExit, match="written before studies"):
        cli.main(EXPERIMENT, brc.AGENT_SPEC, PRESETS, argv=["--resume", str(old)])
    (old / "config.json").write_text(json.dumps({**saved, "setting": "base", "program": "program-0"}))
    with pytest.raises(SystemExit, match="a sweep's record of one run"):
        cli.main(EXPERIMENT, brc.AGENT_SPEC, PRESETS, argv=["--resume", str(old)])
    assert (old / "config.json").is_file()  # refused, not cleared as a run started without a checkpoint
    (old / "config.json").write_text(json.dumps({**saved, "experiment": "minatar_mt"}))
    with pytest.raises(SystemExit, match="made by experiment 'minatar_mt'"):
        cli.main(EXPERIMENT, brc.AGENT_SPEC, PRESETS, argv=["--resume", str(old)])
    (old / "config.json").write_text(json.dumps({**saved, "agent": {**saved["agent"], "new_field": 1}}))
    with pytest.raises(SystemExit, match=r"agent fields \['new_field'\] that this purejaxmt"):
        cli.main(EXPERIMENT, brc.AGENT_SPEC, PRESETS, argv=["--resume", str(old)])

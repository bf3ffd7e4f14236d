"""Studies and runs survive SIGKILL anywhere and continue from their directory alone (`--resume DIR`, nothing else):
a two-program sweep in two processes stopped by a SIGTERM to one process (both stop after the same chunk), killed
during a checkpoint write and before program 2's first checkpoint (both processes), and mid-chunk (process 1 alone),
where process 0 stops with one clear line instead of JAX's C++ abort;
single-task baselines under `experiments/faults.py`; a single run started with overrides. Every interrupted study
ends with the uninterrupted one's metrics rows, none lost or duplicated. Tiny Gymnax configs (tests/sweep_driver.py);
the subprocesses share the tests' compilation cache."""

from __future__ import annotations

import importlib.util
import json
import signal
import socket
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from sweep_driver import EXPERIMENT, PRESETS

from purejaxmt import cli
from purejaxmt.agents import brc
from purejaxmt.runner import peers, rundir, study
from purejaxmt.studies import sweep

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "study_driver.py"
ENV = {"PUREJAXMT_CACHE_DIR": jax.config.jax_compilation_cache_dir, "PUREJAXMT_PEER_TIMEOUT": "5",
       "PYTHONPATH": str(ROOT)}
COMPARED = ("critic_loss", "q_mean", "train/Pendulum-v1/return", "eval/Pendulum-v1/return")


def load_faults():
    module_spec = importlib.util.spec_from_file_location("faults_tool", ROOT / "experiments" / "faults.py")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    module_spec.loader.exec_module(module)
    return module


faults = load_faults()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows_by_run(directory: Path) -> dict[tuple[str, str, int], dict]:
    """(program, run, chunk) -> row over every program dir; a row logged twice fails."""
    rows: dict = {}
    for program in sorted(directory.glob("program-*")):
        for row in rundir.read_all_metrics(program):
            key = (program.name, row["run"], row["chunk"])
            assert key not in rows, f"duplicate row {key}"
            rows[key] = row
    return rows


def test_two_process_sweep_killed_anywhere_resumes_from_its_directory_alone(tmp_path):
    sweep_args = ["--preset", "tiny", "--sweep", "agent.critic_width=32,48"]
    expected = rows_by_run(sweep.run_sweep(EXPERIMENT, brc.AGENT_SPEC, cli.parse_command(
        PRESETS, [*sweep_args, "--run-dir", str(tmp_path / "whole")]), report=False))
    root = tmp_path / "killed"

    def job(argv: list[str]) -> list:
        port = free_port()  # a fresh coordinator port: the killed one's may linger
        return [faults.Traced([sys.executable, str(DRIVER), *argv, "--coordinator-address", f"127.0.0.1:{port}",
                               "--num-processes", "2", "--process-id", str(i)], tmp_path / f"process-{i}.log", ENV)
                for i in range(2)]

    def kill(processes: list, event: str) -> None:
        assert processes[0].wait_for(event, timeout=300), "".join(processes[0].output)[-3000:]
        for process in processes:
            process.process.kill()
            process.finish(timeout=60)

    # Process 1 asks to stop as chunk 1 starts (SIGTERM, as a preemption notice): both processes finish that chunk,
    # checkpoint it and exit cleanly; each process logged its own runs.
    processes = job([*sweep_args, "--run-dir", str(root)])
    assert processes[1].wait_for("program-0 chunk 1", timeout=300), "".join(processes[1].output)[-3000:]
    processes[1].process.send_signal(signal.SIGTERM)
    for process in processes:
        assert process.finish(timeout=300) == 0, "".join(process.output)[-3000:]
    program = root / "program-0"
    assert rundir.last_logged_chunk(program) == 1 and (program / "checkpoints" / "1").is_dir()
    assert (program / "metrics.jsonl").is_file() and (program / "metrics.process-1.jsonl").is_file()
    resume = ["--resume", str(root)]

    kill(job(resume), "program-0 checkpoint 2")  # as the checkpoint is written
    # Program 2 started, before its first checkpoint. (Both processes: when process 0, which hosts JAX's
    # coordination service, is lost, JAX's client aborts the others at once with its own C++ message.)
    kill(job(resume), "program-1 chunk 1")

    # Process 1 lost mid-chunk: process 0 stops with one line.
    processes = job(resume)
    assert processes[1].wait_for("program-1 chunk 2", timeout=300), "".join(processes[1].output)[-3000:]
    processes[1].process.kill()
    processes[1].finish(timeout=60)
    assert processes[0].finish(timeout=120) == peers.LOST_PEER_EXIT, "".join(processes[0].output)[-3000:]
    survivor = "".join(processes[0].output)
    assert "process 0 of 2: process 1 was lost" in survivor and f"--resume {root}" in survivor, survivor[-2000:]
    assert "Check failed" not in survivor and "Aborted" not in survivor, survivor[-2000:]
    assert "program-1 (2 of 2): started but stopped before its first checkpoint; starting it again" in survivor

    processes = job(resume)
    for process in processes:
        assert process.finish(timeout=300) == 0, "".join(process.output)[-3000:]
    rows = rows_by_run(root)
    assert sorted(rows) == sorted(expected), "lost or extra rows"
    for key, row in expected.items():
        for name in COMPARED:
            a, b = rows[key].get(name), row.get(name)
            assert (a is None) == (b is None), (key, name, a, b)
            if a is not None:
                np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5, err_msg=f"{key} {name}")


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

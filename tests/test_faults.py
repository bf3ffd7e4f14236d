"""A study survives SIGKILL anywhere and continues from its directory alone (`--resume DIR`, nothing else): a
two-program sweep in two processes stopped by a SIGTERM to one process (both stop after the same chunk), killed
during a checkpoint write and before program 2's first checkpoint (both processes), and mid-chunk (process 1 alone),
where process 0 stops with one clear line instead of JAX's C++ abort. The interrupted study ends with the uninterrupted
one's metrics rows, none lost or duplicated. Tiny Gymnax configs (tests/sweep_driver.py); the subprocesses share the
tests' compilation cache. (The fault tool and single runs: tests/test_fault_tool.py, a file of its own so that the
two can run on different test workers.)"""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import numpy as np
from fault_kit import DRIVER, ENV, faults
from sweep_driver import EXPERIMENT, PRESETS

from purejaxmt import cli
from purejaxmt.agents import brc
from purejaxmt.runner import peers, rundir
from purejaxmt.studies import sweep

COMPARED = ("critic_loss", "q_mean", "train/Pendulum-v1/return", "eval/Pendulum-v1/return")


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

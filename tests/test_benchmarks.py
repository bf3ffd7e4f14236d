"""The benchmark scripts run end to end on tiny settings and print a table row per measured case (their numbers are
recorded in docs/results.md from full-size runs; nothing here times anything)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_presets import SCRIPTS

ROOT = Path(__file__).resolve().parents[1]


def _table_rows(text: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # without the header


def test_bench_update_prints_one_row_per_width(capsys):
    bench = SCRIPTS["bench_update"]
    bench.main(bench.Args(widths=(16, 32), depth=1, batch_size=10, num_tasks=3, obs_dim=5, action_dim=2, repeats=1))
    rows = _table_rows(capsys.readouterr().out)
    assert [row[0] for row in rows] == ["16", "32"] and all(float(row[2]) > 0 for row in rows)


def test_bench_projection_runs_from_the_command_line():
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_projection.py"), "--rows", "8",
                          "--num-bins", "11", "--vmap-sizes", "2", "--repeats", "20", "--warmup", "1"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    rows = _table_rows(out)
    assert rows and all(row[1] == "[8, 11]" for row in rows), out
    assert all(float(row[-1]) < 1e-5 for row in rows), "the new projection differs from the old hat projection"


def test_bench_chunk_times_the_plain_and_the_vmapped_chunk(capsys):
    bench = SCRIPTS["bench_chunk"]
    bench.main(bench.Args(tasks="Pendulum-v1", envs_per_task=2, batch_size=8, critic_width=16, seeds=(2,),
                          iterations=4, repeats=1))
    rows = _table_rows(capsys.readouterr().out)
    assert [row[0] for row in rows] == ["un-vmapped", "vmapped over 2 seed(s)"]
    assert all(float(row[3]) > 0 for row in rows)


def test_bench_runs_times_the_runs_axis_and_the_sweep(capsys, tmp_path):
    bench = SCRIPTS["bench_runs"]
    path = tmp_path / "runs.json"
    # The shapes of the bench_chunk test above, whose op-by-op inits this reuses in one session.
    results = bench.main(bench.Args(tasks="Pendulum-v1", envs_per_task=2, batch_size=8, critic_width=16,
                                    actor_width=128, iterations=4, replay_capacity=80, runs=(1, 2), repeats=1,
                                    learning_rates=(3e-4, 1e-3), sweep_seeds=1, sweep_chunks=2, json=path))
    rows = _table_rows(capsys.readouterr().out)
    runs_rows, sweep_rows = rows[:3], rows[4:]  # rows[3] is the sweep table's header
    assert [row[:2] for row in runs_rows] == [["un-vmapped", "1"], ["vmapped", "1"], ["vmapped", "2"]]
    assert [row[1] for row in sweep_rows] == ["2", "2"]
    assert [row[0] for row in sweep_rows] == ["vmapped (one program)", "sequential (un-vmapped, one compile)"]
    assert all(float(cell) > 0 for row in runs_rows + sweep_rows for cell in row[2:])
    assert json.loads(path.read_text()) == json.loads(json.dumps(results))

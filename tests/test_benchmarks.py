"""The benchmark scripts run end to end on tiny settings and print a table row per measured case (their numbers are
recorded in docs/results.md from full-size runs; nothing here times anything)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
from test_presets import SCRIPTS

ROOT = Path(__file__).resolve().parents[1]


def _table_rows(text: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # without the header


def test_bench_projection_runs_from_the_command_line():
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_projection.py"), "--rows", "8",
                          "--num-bins", "11", "--vmap-sizes", "2", "--repeats", "20", "--warmup", "1"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    rows = _table_rows(out)
    assert rows and all(row[1] == "[8, 11]" for row in rows), out
    assert all(float(row[-1]) < 1e-5 for row in rows), "the new projection differs from the old hat projection"


def test_bench_runs_times_the_runs_axis_and_the_sweep(capsys, tmp_path):
    bench = SCRIPTS["bench_runs"]
    path = tmp_path / "runs.json"
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


def test_benchmark_smoke_writes_every_section(tmp_path):
    """`benchmark.py --smoke` (Pendulum-v1, Brax's `fast` env, tiny networks) runs every section from the command line,
    Brax's trainer in its child process, and writes the JSON and the markdown rows. Only that the numbers exist and
    are positive is checked: nothing here is timed."""
    out = tmp_path / "bench.json"
    environ = {**os.environ, "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or "",
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}  # conftest's cache: reruns compile less
    subprocess.run([sys.executable, str(ROOT / "experiments" / "benchmark.py"), "--smoke", "--out", str(out)],
                   check=True, timeout=900, env=environ, cwd=ROOT)
    results = json.loads(out.read_text())
    sections = results["sections"]
    assert set(sections) == {"components", "host_vs_fused", "brax", "scaling", "flops"}
    assert set(sections["components"]) == {"env", "update", "replay", "fused"}
    components = sections["components"]
    assert all(row["env_steps_per_s"] > 0 for row in components["env"])
    assert all(row["ms_per_update"] > 0 and row["flops"] > 0 for row in components["update"]["rows"])
    assert all(row["items_per_s"] > 0 for row in components["replay"]["rows"])
    assert components["fused"]["fused_iteration_ms"] > 0 and components["fused"]["ratio_to_all_parts"] > 0
    assert all(row["host_env_steps_per_s"] > 0 and row["fused_env_steps_per_s"] > 0
               for row in sections["host_vs_fused"])
    assert sections["brax"]["brax_env_steps_per_s"] > 0 and sections["brax"]["ours_over_brax"] > 0
    assert [row["runs"] for row in sections["scaling"]["runs"]] == [1, 2]
    assert all(row["env_steps_per_s"] > 0 for row in sections["scaling"]["tasks"] + sections["scaling"]["runs"])
    assert sections["flops"] == {"skipped": "skipped: no accelerator"} or sections["flops"]["rows"]
    assert results["machine"]["backend"] and results["wall_s"] > 0
    rows = out.with_suffix(".md").read_text()
    assert "(1a) env steps/s" in rows and "(3) Brax SAC" in rows and "(4b) vmapped runs" in rows


def test_device_check_smoke_measures_every_part(tmp_path):
    """`benchmark.py --device-check --smoke` (the `fast` presets' agents and loops at tiny sizes on Pendulum-v1 and
    Breakout-MinAtar, trained through the runner; a W=16 update; the normaliser) runs from the command line and writes
    the JSON, the markdown rows with the device in every row, and the runs' directories. Nothing here is timed."""
    out = tmp_path / "check.json"
    cache = jax.config.jax_compilation_cache_dir or ""
    environ = {**os.environ, "PUREJAXMT_CACHE_DIR": cache, "JAX_COMPILATION_CACHE_DIR": cache}
    subprocess.run([sys.executable, str(ROOT / "experiments" / "benchmark.py"), "--device-check", "--smoke",
                    "--out", str(out)], check=True, timeout=600, env=environ, cwd=ROOT)
    results = json.loads(out.read_text())
    sections = results["sections"]
    assert set(sections) == {"humanoid_fast", "minatar_fast", "update_peak", "normalizer"}
    assert not [name for name, result in sections.items() if "error" in result]
    device = results["device"]
    assert device and all(result["device"] == device for result in sections.values())
    for name, tasks in (("humanoid_fast", ["Pendulum-v1"]), ("minatar_fast", ["Breakout-MinAtar"])):
        run = sections[name]
        assert run["tasks"] == tasks and run["env_steps_per_task"] > 0 and run["env_steps_per_s_median"] > 0
        assert run["curve"] and all(point["eval_return"][task] is not None for point in run["curve"] for task in tasks)
        assert [point["wall_minutes"] for point in run["curve"]] == sorted(point["wall_minutes"]
                                                                         for point in run["curve"])
        memory = run["memory"]
        assert memory["estimate_per_run"] == sum(memory["estimate_parts"].values()) > 0
        assert set(memory["estimate_parts"]) >= {"replay", "learner", "update"}
        assert memory["seeds_that_fit_estimate"] >= 1
        assert (Path(run["run_dir"]) / "metrics.jsonl").exists()
    assert all(row["flops"] > 0 and row["fraction_of_matmul_peak"] > 0 for row in sections["update_peak"]["rows"])
    rows = sections["normalizer"]["rows"]
    assert len(rows) == 6 and all(row["ms_per_update"] > 0 and row["share_of_iteration"] > 0 for row in rows)
    text = out.with_suffix(".md").read_text()
    table_rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line
                  and not line.startswith("| device |")]
    assert len(table_rows) >= 2 * 1 + 1 + 6 + 2 and all(line.startswith(f"| {device} |") for line in table_rows)

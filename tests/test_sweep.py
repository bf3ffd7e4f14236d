"""Sweeps (purejaxmt.studies.sweep): settings x seeds in one program equal the single runs they stand for, unsharded
and sharded over 8 fake devices (a sweep split over two processes of one `jax.distributed` job, stopped, killed and
resumed: tests/test_faults.py); settings that change shapes become separate programs; bad sweeps fail clearly before
anything runs. The configs are tests/sweep_driver.py's tiny BRC on Gymnax Pendulum-v1."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import sweep_driver
from sweep_driver import AGENT, LOOP, PRESETS, RUN

from purejaxmt import cli
from purejaxmt.agents import brc
from purejaxmt.runner import devices, loop, peers, rundir
from purejaxmt.studies import sweep

_CACHE = jax.config.jax_compilation_cache_dir  # conftest's: the subprocesses share the compiled programs
DRIVER = Path(__file__).resolve().parent / "sweep_driver.py"
LEARNING_RATES = ("1e-3", "3e-4")
SWEEP = ["--preset", "tiny", "--sweep", f"agent.learning-rate={','.join(LEARNING_RATES)}"]
COMPARED = ("critic_loss", "q_mean", "train/Pendulum-v1/return", "eval/Pendulum-v1/return")


def by_run(run_dir: Path) -> dict[tuple[str, int], dict]:
    return {(row["run"], row["chunk"]): row for row in rundir.read_all_metrics(run_dir)}


def assert_same_rows(rows: dict, expected: dict, runs: set[str] | None = None) -> None:
    keys = [key for key in expected if runs is None or key[0] in runs]
    assert keys and set(keys) <= set(rows), f"missing rows: {sorted(set(keys) - set(rows))[:3]}"
    for key in keys:
        for name in COMPARED:
            a, b = rows[key].get(name), expected[key].get(name)
            assert (a is None) == (b is None), (key, name, a, b)
            if a is not None:
                np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5, err_msg=f"{key} {name}")


def driver(args: list[str], *, devices_count: int | None = None, env: dict | None = None,
           check: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    environ = {**os.environ, "PUREJAXMT_CACHE_DIR": _CACHE, **(env or {})}
    if devices_count:
        environ["XLA_FLAGS"] = (environ.get("XLA_FLAGS", "") +
                                f" --xla_force_host_platform_device_count={devices_count}").strip()
    return subprocess.run([sys.executable, str(DRIVER), *args], env=environ, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory) -> Path:
    """2 learning rates x 2 seeds in one program on one device."""
    root = tmp_path_factory.mktemp("sweep") / "unsharded"
    command = cli.parse_command(PRESETS, [*SWEEP, "--run-dir", str(root)])
    return sweep.run_sweep(sweep_driver.EXPERIMENT, brc.AGENT_SPEC, command, report=False)


def test_sweep_equals_its_single_runs(unsharded, tmp_path):
    index = json.loads((unsharded / "sweep.json").read_text())
    assert [p["dir"] for p in index["programs"]] == ["program-0"], "learning rates are data: one program"
    assert len(index["runs"]) == 4 and {r["seed"] for r in index["runs"]} == {0, 1}
    assert index["provenance"]["packages"]["jax"] == jax.__version__  # what produced the study
    rows = by_run(unsharded / "program-0")
    assert len(rows) == 4 * LOOP.num_chunks
    for entry in index["runs"]:
        saved = json.loads((unsharded / entry["config"]).read_text())
        assert saved["run"]["seed"] == entry["seed"] and saved["run"]["seeds"] == 1
        learning_rate = saved["agent"]["learning_rate"]
        assert f"{learning_rate:g}" in entry["setting"]
        # The same setting and seed as an ordinary run of its own: no vmap over settings, its own program.
        single = loop.run("tiny", brc.AGENT_SPEC, dataclasses.replace(AGENT, learning_rate=learning_rate), LOOP,
                          dataclasses.replace(RUN, seed=entry["seed"], seeds=1),
                          run_dir=tmp_path / entry["name"].replace("/", "_"))
        expected = {(entry["name"], row["chunk"]): row for row in rundir.read_all_metrics(single)}
        assert_same_rows(rows, expected)
    losses = {name: row["critic_loss"] for (name, chunk), row in rows.items() if chunk == LOOP.num_chunks}
    assert len(set(losses.values())) == 4, "settings or seeds collapsed into the same run"


def test_sweep_sharded_over_8_fake_devices_equals_unsharded(unsharded, tmp_path):
    # 2 settings x 5 seeds = 10 runs, padded to 16 (2 per device); the padding never reaches the logs.
    out = driver([*SWEEP, "--seeds", "5", "--run-dir", str(tmp_path / "sharded")], devices_count=8)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "10 run(s) (+6 padding)" in out.stdout and "on 8 x cpu" in out.stdout, out.stdout[-2000:]
    rows = by_run(tmp_path / "sharded" / "program-0")
    assert len(rows) == 10 * LOOP.num_chunks
    assert_same_rows(rows, by_run(unsharded / "program-0"))
    # Fewer runs than devices: as many devices as runs, said so, the same runs.
    out = driver([*SWEEP, "--run-dir", str(tmp_path / "few")], devices_count=8)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "4 run(s) on 4 of the 8 devices (fewer runs than devices" in out.stdout, out.stdout[-2000:]
    assert_same_rows(by_run(tmp_path / "few" / "program-0"), by_run(unsharded / "program-0"))


def test_shape_changing_settings_are_separate_programs():
    points = sweep.settings(["agent.num_bins=11,21", "learning_rate=1e-3,3e-4"], ["", "loop.gamma=0.9"], AGENT, LOOP)
    assert len(points) == 8 and points[0].label == "num_bins=11,learning_rate=0.001"
    assert points[4].label == "gamma=0.9,num_bins=11,learning_rate=0.001"
    plans = sweep.plan_programs(points, brc.AGENT_SPEC)
    assert [plan.shape_values for plan in plans] == [{"agent.num_bins": 11}, {"agent.num_bins": 21}]
    assert [len(plan.settings) for plan in plans] == [4, 4]
    with pytest.raises(ValueError, match=r"--one-program: the sweep changes shapes through \['agent.num_bins'\]"):
        sweep.plan_programs(points, brc.AGENT_SPEC, one_program=True)
    assert len(sweep.plan_programs(sweep.settings(["tau=0.01,0.02"], [], AGENT, LOOP), brc.AGENT_SPEC,
                                   one_program=True)) == 1
    assert sweep.settings([], [], AGENT, LOOP)[0].label == "base"


@pytest.mark.parametrize("items, message", [
    (["agent.no_such_field=1,2"], "unknown sweep field 'agent.no_such_field'"),
    (["widht=1,2"], "sweep field 'widht' is not a field of either config"),
    (["agent.learning_rate=fast,1e-3"], "sweep value agent.learning_rate='fast' is not a valid float"),
    (["agent.critic_width=1.5"], "sweep value agent.critic_width='1.5' is not a valid int"),
    (["loop.normalize_rewards=maybe"], "sweep value loop.normalize_rewards='maybe' is not a valid bool"),
    (["agent.tau=0.5,2.0"], "tau=2.0 must be in"),
    (["agent.tau"], "must read field=value"),
    (["agent.tau=0.1,0.1"], "names the same setting more than once"),
])
def test_bad_sweeps_fail_clearly(items, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        sweep.settings(items, [], AGENT, LOOP)


def test_more_devices_than_runs_and_bad_device_counts_fail_clearly():
    assert devices.padded_num_runs(10, 8) == 16 and devices.padded_num_runs(8, 8) == 8
    with pytest.raises(ValueError, match="3 run"):
        devices.padded_num_runs(3, 4)
    with pytest.raises(ValueError, match="--run.devices 2: this job has 1 device"):
        devices.select_devices(2)


def test_the_readme_sweep_commands_parse_and_plan():
    from test_presets import SCRIPTS

    humanoid = SCRIPTS["mjx_humanoid_mt"]
    command = cli.parse_command(humanoid.PRESETS, [
        "--preset", "cpu", "--tasks", "dmc-small", "--seeds", "4",
        "--sweep", "agent.learning_rate=1e-4,3e-4", "--sweep", "agent.tau=0.005,0.01"])
    plans = sweep.plan_programs(sweep.settings(command.sweep, command.variants, command.agent, command.loop),
                                brc.AGENT_SPEC)
    assert command.is_sweep and len(plans) == 1 and len(plans[0].settings) * command.run.seeds == 16
    for preset, programs in (("cpu-ablation", 2), ("paper-ablation", 8)):
        command = cli.parse_command(humanoid.PRESETS, ["--preset", preset])
        points = sweep.settings(command.sweep, command.variants, command.agent, command.loop)
        assert len(sweep.plan_programs(points, brc.AGENT_SPEC)) == programs, preset
    # The multi-host flags of the README parse (joining a job is tests' two-process case above).
    command = cli.parse_command(humanoid.PRESETS, [
        "--preset", "paper-ablation", "--run-dir", "/shared/runs/ablation", "--coordinator-address", "host0:12345",
        "--num-processes", "4", "--process-id", "0"])
    assert command.run_dir == Path("/shared/runs/ablation")
    assert cli.parse_command(humanoid.PRESETS, ["--preset", "paper-ablation", "--num-processes", "auto"]).is_sweep
    with pytest.raises(SystemExit, match="needs all of --coordinator-address, --num-processes and --process-id"):
        peers.initialize_distributed(["--coordinator-address", "host0:12345"])

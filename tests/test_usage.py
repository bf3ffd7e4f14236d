"""Command-line errors read like a CLI's (`runner.usage_errors`): each usage error of the issue ends in one framed
message naming the bad value and exit status 2, with no traceback; other errors keep theirs; PUREJAXMT_DEBUG shows
every traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_presets

from purejaxmt import cli, runner
from purejaxmt.runner import usage

ROOT = Path(__file__).resolve().parents[1]
MINATAR = test_presets.SCRIPTS["minatar_mt"]

# Each bad command line of the issue, and what its one line must name.
BAD = [
    (["--tasks", "humanoid-wlak"], "humanoid-wlak"),
    (["--seeds", "0"], "seeds=0"),
    (["--steps", "-5"], "total_steps=-5"),
    (["--sweep", "agent.lerning_rate=1e-3"], "agent.lerning_rate"),
    (["--resume", "/nonexistent/dir"], "/nonexistent/dir"),
    (["--loop.batch-size", "1"], "batch_size=1"),
]


@pytest.mark.parametrize("argv, named", BAD, ids=[" ".join(argv) for argv, _ in BAD])
def test_a_usage_error_is_one_framed_line_and_status_2(argv, named, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written; if anything were, not into the checkout
    monkeypatch.delenv(usage.DEBUG_VARIABLE, raising=False)
    with pytest.raises(SystemExit) as stopped, usage.usage_errors(program="experiments/minatar_mt.py"):
        cli.main(MINATAR.EXPERIMENT, MINATAR.AGENT, MINATAR.PRESETS, ["--preset", "smoke", *argv])
    assert stopped.value.code == usage.USAGE_STATUS
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0] == "╭─ Invalid configuration ─" and lines[-1] == "╰─", err
    assert named in lines[1] and "Traceback" not in err, err
    assert "experiments/minatar_mt.py --help" in err
    assert not any(tmp_path.iterdir()), "a refused command wrote nothing"


def test_other_errors_keep_their_traceback(monkeypatch):
    monkeypatch.delenv(usage.DEBUG_VARIABLE, raising=False)
    with pytest.raises(ValueError, match="reshape"), usage.usage_errors():  # NumPy's, not ours: not a usage error
        np.reshape(np.zeros(3), (2,))
    with pytest.raises(KeyError), usage.usage_errors():  # not a checked type, even raised by us
        {}["missing"]
    from purejaxmt.runner import checkpoints

    with pytest.raises(checkpoints.CheckpointWriteError), usage.usage_errors():  # keeps its own status
        raise checkpoints.CheckpointWriteError("disk full")


def test_debug_variable_shows_the_traceback(monkeypatch):
    monkeypatch.setenv(usage.DEBUG_VARIABLE, "1")
    with pytest.raises(ValueError, match="humanoid-wlak"), usage.usage_errors():
        runner.make_env(runner.RunConfig(tasks="humanoid-wlak"))


def test_the_script_exits_2_without_a_traceback(tmp_path):
    env = {**os.environ, "PUREJAXMT_CACHE_DIR": ""}
    env.pop(usage.DEBUG_VARIABLE, None)
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "minatar_mt.py"), "--preset", "smoke",
                             "--seeds", "0"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "seeds=0" in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]

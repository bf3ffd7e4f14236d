"""tests/sweep_driver.py's tiny BRC presets as an ordinary experiment script (`cli.main`: a run, a sweep or
single-task baselines, `--resume DIR` alone), for the fault tests that kill it with SIGKILL:
`python tests/study_driver.py [command-line flags]`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sweep_driver, beside this file

from sweep_driver import EXPERIMENT, PRESETS  # noqa: E402

from purejaxmt import cli  # noqa: E402
from purejaxmt.agents import brc  # noqa: E402

if __name__ == "__main__":
    cli.main(EXPERIMENT, brc.AGENT_SPEC, PRESETS)

"""What the kill tests share: the driver script they kill (tests/study_driver.py), the environment of its
subprocesses (the tests' compilation cache, a 5 s peer timeout, the repository importable) and `experiments/faults.py`
as loaded with the other scripts (tests/test_presets.py's `SCRIPTS`)."""

from __future__ import annotations

from pathlib import Path

import jax
from test_presets import SCRIPTS

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "study_driver.py"
ENV = {"PUREJAXMT_CACHE_DIR": jax.config.jax_compilation_cache_dir, "PUREJAXMT_PEER_TIMEOUT": "5",
       "PYTHONPATH": str(ROOT)}
faults = SCRIPTS["faults"]

"""What the kill tests share: the driver script they kill (tests/study_driver.py), the environment of its
subprocesses (the tests' compilation cache, a 5 s peer timeout, the repository importable) and
`experiments/faults.py` as a module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "study_driver.py"
ENV = {"PUREJAXMT_CACHE_DIR": jax.config.jax_compilation_cache_dir, "PUREJAXMT_PEER_TIMEOUT": "5",
       "PYTHONPATH": str(ROOT)}


def load_faults():
    module_spec = importlib.util.spec_from_file_location("faults_tool", ROOT / "experiments" / "faults.py")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    module_spec.loader.exec_module(module)
    return module


faults = load_faults()

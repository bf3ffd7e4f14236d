"""Test-wide settings: a persistent XLA compilation cache that keeps every program, as the runner's does
(`devices.enable_compilation_cache`), so the several runs of one tiny config in the runner tests and the kill tests'
subprocesses compile once, the op-by-op init's small programs included; and XLA's backend optimisation level 1
(compiles, not steps, dominate this suite on a 2-core CPU; level 1 compiles an MJX program in about half the time of
the default 3, docs/results.md). Every test compares programs compiled at the same level, or with tolerances."""

import os
from pathlib import Path

# Before JAX starts its backend (it reads XLA_FLAGS then); a level given by the caller wins.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=1").strip()

import jax  # noqa: E402

_CACHE = os.environ.get("PUREJAXMT_TEST_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "xla"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

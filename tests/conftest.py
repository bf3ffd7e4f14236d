"""Test-wide settings: a persistent XLA compilation cache, so the several runs of one tiny config in the runner
tests compile once (compiles, not steps, dominate this suite on a 2-core CPU)."""

import os
from pathlib import Path

import jax

_CACHE = os.environ.get("PUREJAXMT_TEST_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "xla"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

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

# Longest first: xdist hands whole files (`--dist loadfile`) to the two workers in this order
# (`--no-loadscope-reorder`), so that the last minutes of a run are the many short files, on both workers. Its own
# order (most tests first) ran the one-test two-process kill file last, on one worker, while the other had been idle
# for 3 min (clean-clone runs at 1e1f4e3 and acf8137: pytest 879 s and 952 s). Each file's share of those runs, in
# seconds: transfer 240-275, faults 192-339, benchmarks 163-197, presets 144, fault_tool 130, sweep 116-129, envs
# 82-86, render 68-80.
LONGEST_FIRST = ("test_transfer.py", "test_faults.py", "test_benchmarks.py", "test_presets.py", "test_fault_tool.py",
                 "test_sweep.py", "test_envs.py", "test_render.py")


def pytest_collection_modifyitems(items: list) -> None:
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: a file's tests keep their order, the other files theirs

"""Test-wide settings: a persistent XLA compilation cache, so the several runs of one tiny config in the runner
tests compile once, and XLA's backend optimisation level 1 (compiles, not steps, dominate this suite on a 2-core CPU;
level 1 compiles an MJX program in about half the time of the default 3, docs/results.md). Every test compares
programs compiled at the same level, or with tolerances. And the order the two workers take the files in: the
heaviest first."""

import os
from pathlib import Path

# Before JAX starts its backend (it reads XLA_FLAGS then); a level given by the caller wins.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=1").strip()

import jax  # noqa: E402

_CACHE = os.environ.get("PUREJAXMT_TEST_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "xla"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

# The heaviest files first (their share of a CI run, 2026-12-07: about 300 s each for faults and transfer, 130-150 s
# for sweep, presets and benchmarks). xdist hands whole files (`--dist loadfile`) to the two workers in collection
# order (`--no-loadscope-reorder`; its default order, by number of tests, ran the 3-test faults file last, and the
# run waited on its tail); the other files follow in their usual order.
HEAVIEST_FIRST = ("test_faults.py", "test_transfer.py", "test_sweep.py", "test_presets.py", "test_benchmarks.py",
                  "test_envs.py", "test_runner.py", "test_render.py")


def pytest_collection_modifyitems(items: list) -> None:
    def rank(item) -> int:
        name = item.path.name
        return HEAVIEST_FIRST.index(name) if name in HEAVIEST_FIRST else len(HEAVIEST_FIRST)

    items.sort(key=rank)  # stable: a file's tests keep their order

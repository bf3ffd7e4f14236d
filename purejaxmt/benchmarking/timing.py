"""Timing helpers shared by the measurement scripts (`experiments/benchmark.py`, `experiments/bench_runs.py`) and
the benchmark's sections.

Host-side and not jitted. Every timing blocks on the outputs it measures (`jax.block_until_ready`), and compiles are
timed apart from the calls they serve (`compile_jit`), so that a table's "ms per call" never holds a compile.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp


def machine() -> dict[str, Any]:
    """The host and the JAX devices this process runs on, and how busy the host is (1-minute load average)."""
    device = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "backend": jax.default_backend(),
            "device_kind": device.device_kind, "device_count": jax.device_count(), "jax": jax.__version__,
            "load_average": load_average(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "compilation_cache_dir": jax.config.jax_compilation_cache_dir}


def load_average() -> float | None:
    """The host's 1-minute load average (other jobs on the same cores show here), or None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def own_buffers(tree: Any) -> Any:
    """Every leaf its own buffer: a donating call must not get one buffer twice (op-by-op init can share one)."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def compile_jit(fn: Callable, *args: Any, options: dict[str, Any] | None = None, donate: tuple[int, ...] = (0,)
                ) -> tuple[Any, float]:
    """`fn` jitted (arguments `donate` donated), lowered for `args` and compiled: the executable and the seconds of
    tracing, lowering and compiling. A fresh wrapper per call, so JAX's in-memory caches cannot serve a second compile
    of the same program (a persistent compilation cache, when configured, still can: `machine()` says whether one
    is)."""
    start = time.perf_counter()
    compiled = (jax.jit(lambda *a: fn(*a), donate_argnums=donate).lower(*args)
                .compile(compiler_options=options or None))
    return compiled, time.perf_counter() - start


def timed_calls(fn: Callable[[Any], tuple[Any, Any]], state: Any, calls: int) -> tuple[Any, list[float]]:
    """Seconds of each of `calls` calls `state, out = fn(state)`, each blocked on, the state carried (and donated,
    when `fn` donates it) from one call to the next."""
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        state, out = fn(state)
        jax.block_until_ready((state, out))
        seconds.append(time.perf_counter() - start)
    return state, seconds


def steady(seconds: Sequence[float]) -> float:
    """The median call after the first (the warm-up), or the only one."""
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def mean_seconds(call: Callable[[], Any], calls: int, warmup: int = 1) -> float:
    """Mean seconds per call of `call()` over `calls` calls issued back to back (dispatch pipelined as a Python loop
    would issue them), after `warmup` calls; blocks on the last output. `call` carries its own state."""
    for _ in range(warmup):
        jax.block_until_ready(call())
    start = time.perf_counter()
    out = None
    for _ in range(calls):
        out = call()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls


def flops(compiled: Any) -> float | None:
    """Floating-point operations of one call of a compiled program by XLA's cost analysis (None where the backend
    gives none). Loops are counted once per body by XLA: use it on loop-free programs such as one update."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning nothing
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    value = (analysis or {}).get("flops")
    return float(value) if value else None


def matmul_peak(dtype: str, sizes: Sequence[int], calls: int = 5) -> dict[str, Any]:
    """The best FLOP/s of a square `[n, n] @ [n, n]` matmul in `dtype` over `sizes`: a measured ceiling for the
    matmul-bound programs of this device (`2 n^3` FLOPs per call)."""
    best: dict[str, Any] = {"dtype": dtype, "flops_per_s": 0.0, "size": None}
    for n in sizes:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
        b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
        matmul = jax.jit(jnp.matmul)
        seconds = mean_seconds(lambda: matmul(a, b), calls, warmup=2)
        rate = 2 * n**3 / seconds
        if rate > best["flops_per_s"]:
            best.update(flops_per_s=rate, size=n)
    return best


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a table, with thousands separators; `-` for None."""
    return "-" if value is None else f"{value:,.{digits}f}"

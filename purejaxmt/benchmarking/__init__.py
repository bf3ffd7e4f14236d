"""Measurements of where the wall-clock goes (`experiments/benchmark.py` is their command line), one module per job:

- `timing`        helpers: the machine, compiles timed apart from calls, steady-state timings, FLOPs, matmul peak
- `context`       what is measured (`Point`, `Plan`) and what the sections share (`Context`: envs, programs, compiles)
- `components`    section (1): env step, one update per width and batch, replay add/sample, fused vs parts
- `host`          section (2): the authors' host loop (NumPy replay) against the fused chunk
- `brax_sac`      section (3): Brax's SAC trainer, unchanged, in a child process, against ours
- `scaling`       sections (4) tasks and vmapped runs and (5) the W=4096 update's FLOP/s on an accelerator
- `sections`      the sections by name and one benchmark run (compile first, then time), its JSON and markdown
- `device_check`  the first command on a lent GPU: the `fast` presets against wall clock, the update's share of peak,
                  the normaliser's cost, memory per run and the seeds that fit

The timing helpers are re-exported here (`from purejaxmt.benchmarking import compile_jit, machine`).
"""

from purejaxmt.benchmarking.timing import (
                                           compile_jit,
                                           flops,
                                           fmt,
                                           load_average,
                                           machine,
                                           matmul_peak,
                                           mean_seconds,
                                           own_buffers,
                                           steady,
                                           table,
                                           timed_calls,
)

__all__ = ["compile_jit", "flops", "fmt", "load_average", "machine", "matmul_peak", "mean_seconds", "own_buffers",
           "steady", "table", "timed_calls"]

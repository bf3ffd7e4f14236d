"""The training side of a run, one job per module; depends on `offpolicy.Program` only.

- `config`      `RunConfig` (what a run trains on, how the host drives it) and `Preset`
- `rundir`      run directories: the config record, the metrics log and its one reader
- `checkpoints` orbax checkpoints keyed by leaf path, their digests, and the state-layout check of a resume
- `devices`     seeds and settings as a vmapped runs axis, sharded over the devices; the compilation cache
- `loop`        the host loop of ONE program: compile once, chunks, evaluation, logging, checkpoints, SIGINT/SIGTERM
- `study`       sets of member runs and the one rule that continues each member (the plans are `purejaxmt.studies`)
- `saved`       a run directory read back: its configs, its checkpoints' learners, a policy (`load_policy`)
- `health`      a diverging learner, noticed after every chunk
- `provenance`  the versions, commit and devices that produced a run
- `peers`       a multi-process job: joining it, and stopping with one line when a process is lost
- `loggers`     optional TensorBoard / W&B mirrors of the metrics rows (`make_logger`, `--run.logger`)
- `usage`       command-line errors as one framed line and status 2 (`usage_errors`)

The command line that drives it is `purejaxmt.cli`; what reads finished runs is `purejaxmt.report`.
"""

from purejaxmt.runner import study
from purejaxmt.runner.config import Preset, RunConfig, make_env
from purejaxmt.runner.devices import (
    accelerator_present,
    enable_compilation_cache,
    init_states,
    runs_axes,
    seed_keys,
    vmap_evaluate,
    vmap_train_chunk,
)
from purejaxmt.runner.loop import abstract_run, run
from purejaxmt.runner.usage import usage_errors

__all__ = ["Preset", "RunConfig", "abstract_run", "accelerator_present", "enable_compilation_cache", "init_states",
           "make_env", "run", "runs_axes", "seed_keys", "study", "usage_errors", "vmap_evaluate", "vmap_train_chunk"]

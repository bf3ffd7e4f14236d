"""The host side of a run, one job per module; depends on `offpolicy.Program` only.

- `config`      `RunConfig` (what a run trains on, how the host drives it) and `Preset`
- `cli`         the command line every experiment shares (`main`, `parse_command`)
- `rundir`      run directories, the config record, the metrics log
- `checkpoints` orbax checkpoints keyed by leaf path, and the state-layout check of a resume
- `devices`     seeds and settings as a vmapped runs axis, sharded over the devices
- `loop`        the host loop of ONE program: compile once, chunks, evaluation, logging, checkpoints, SIGINT/SIGTERM
- `study`       sets of member runs (sweeps, baselines, transfer) and the one rule that continues each member
- `saved`       a run directory read back: its configs, its checkpoints' learners, a policy (`load_policy`)
- `loggers`     optional TensorBoard / W&B mirrors of the metrics rows (`make_logger`, `--run.logger`)
- `usage`       command-line errors as one framed line and status 2 (`usage_errors`)
- `sweep`, `baselines`   plans: settings x seeds, single-task baselines of a multi-task command
"""

from purejaxmt.runner import cli, study
from purejaxmt.runner.baselines import single_task_baselines
from purejaxmt.runner.cli import Command, accelerator_present, enable_compilation_cache, main, parse_command
from purejaxmt.runner.config import Preset, RunConfig, make_env
from purejaxmt.runner.devices import init_states, runs_axes, vmap_evaluate, vmap_train_chunk
from purejaxmt.runner.loop import abstract_run, run, seed_keys
from purejaxmt.runner.usage import usage_errors

__all__ = ["Command", "Preset", "RunConfig", "abstract_run", "accelerator_present", "cli", "enable_compilation_cache",
           "init_states", "main", "make_env", "parse_command", "run", "runs_axes", "seed_keys",
           "single_task_baselines", "study", "usage_errors", "vmap_evaluate", "vmap_train_chunk"]

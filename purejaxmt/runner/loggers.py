"""Optional mirrors of the metrics log: TensorBoard event files or a Weights & Biases run, fed the rows that
`metrics.jsonl` gets (`rundir.metrics_rows`). The JSONL file stays the record; a logger only shows it elsewhere.

A row's run is named `seed-<s>`, or `run-<run>` in a sweep (whose run names are `<setting>/seed-<s>`), and each of
its numeric fields but `chunk`, `seed`, `run`, `setting`, `wall_time` and `step` is a scalar at step `step` (env steps
per task). `loop.run` makes a logger on process 0 only, which sees process 0's runs (a multi-host job's other
processes log theirs into `metrics.process-<i>.jsonl` alone). The libraries are imported only when chosen:
`pip install -e ".[loggers]"`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import uuid
from pathlib import Path
from typing import Any, Protocol

LOGGERS = ("none", "tensorboard", "wandb")
PACKAGES = {"tensorboard": "tensorboardX", "wandb": "wandb"}
NOT_SCALARS = ("chunk", "seed", "run", "setting", "wall_time", "step")
INSTALL = 'pip install -e ".[loggers]"'


class Logger(Protocol):
    def write(self, rows: list[dict]) -> None:
        """Mirrors one chunk's metrics rows."""

    def close(self) -> None:
        """Flushes and ends the logger; called once, at the end of a run or a stop."""


def run_name(row: dict) -> str:
    """The run a metrics row belongs to: `seed-<s>`, or `run-<run>` in a sweep."""
    return f"run-{row['run']}" if "run" in row else f"seed-{row['seed']}"


def scalars(row: dict) -> dict[str, float]:
    """A row's numeric fields but its labels, its chunk, wall time and step; None (a non-finite value) is left out."""
    return {name: value for name, value in row.items()
            if name not in NOT_SCALARS and isinstance(value, int | float)}


def check_installed(kind: str) -> None:
    """Raises, naming the extra to install, when the package of logger `kind` is missing (nothing is imported)."""
    package = PACKAGES.get(kind)
    if package is not None and importlib.util.find_spec(package) is None:
        raise ModuleNotFoundError(f"--run.logger {kind} needs the {package} package, which is not installed: "
                                  f"{INSTALL}", name=package)


def _import(kind: str) -> Any:
    check_installed(kind)
    return importlib.import_module(PACKAGES[kind])


def make_logger(kind: str, run_dir: Path, config_record: dict) -> Logger | None:
    """The logger `kind` ("none": None) of the run in `run_dir`, which must exist. Call it on process 0 only."""
    if kind == "none":
        return None
    if kind == "tensorboard":
        return TensorBoardLogger(run_dir)
    if kind == "wandb":
        return WandbLogger(run_dir, config_record)
    raise ValueError(f"unknown logger {kind!r}: choose one of {list(LOGGERS)}")


class TensorBoardLogger:
    """One event-file writer per run, in `<run dir>/tensorboard/<run name>/`. A resumed run adds an event file whose
    first step purges the points its stopped part logged past the checkpoint (as `metrics.jsonl` drops their rows)."""

    def __init__(self, run_dir: Path) -> None:
        self._tensorboardX = _import("tensorboard")
        self.root = Path(run_dir) / "tensorboard"
        self._writers: dict[str, Any] = {}

    def _writer(self, name: str, first_step: int) -> Any:
        if name not in self._writers:
            logdir = self.root / name
            resumed = any(logdir.glob("events.out.tfevents.*"))
            # The suffix keeps a resume's file apart from one opened in the same second (the names have seconds).
            self._writers[name] = self._tensorboardX.SummaryWriter(
                str(logdir), purge_step=first_step if resumed else None, max_queue=1000, flush_secs=10,
                filename_suffix=f".step-{first_step}")
        return self._writers[name]

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            writer = self._writer(run_name(row), row["step"])
            for tag, value in scalars(row).items():
                writer.add_scalar(tag, value, global_step=row["step"])

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


class WandbLogger:
    """One W&B run per run directory (a sweep: per program), its keys `<run name>/<field>` at W&B step `step`,
    `config` the config record, its files in `<run dir>/wandb/`. `WANDB_MODE` is respected; without it and without
    an API key the run is offline (`wandb sync <run dir>/wandb/offline-run-*` uploads it). The run id is kept in
    `<run dir>/wandb/run_id`, so a resume continues the same W&B run (`resume="allow"`; W&B drops the steps it
    already has)."""

    def __init__(self, run_dir: Path, config_record: dict) -> None:
        self._wandb = wandb = _import("wandb")
        run_dir = Path(run_dir)
        id_path = run_dir / "wandb" / "run_id"
        if id_path.is_file():
            run_id = id_path.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:16]
            id_path.parent.mkdir(parents=True, exist_ok=True)
            id_path.write_text(run_id + "\n")
        mode = None  # wandb reads WANDB_MODE
        if "WANDB_MODE" not in os.environ and not wandb.login(prompt=False, verify=False):
            mode = "offline"
            print(f"[purejaxmt] W&B: no API key configured (WANDB_API_KEY or `wandb login`): logging offline into "
                  f"{run_dir / 'wandb'}; upload with `wandb sync`, or set WANDB_MODE", flush=True)
        experiment = config_record.get("experiment", "purejaxmt")
        self.run = wandb.init(mode=mode, dir=str(run_dir), project=os.environ.get("WANDB_PROJECT", "purejaxmt"),
                              id=run_id, resume="allow", name=f"{experiment}/{run_dir.name}", group=experiment,
                              config=config_record)

    def write(self, rows: list[dict]) -> None:
        for row in rows:  # the rows of a chunk share their step: W&B merges them into one history row
            name = run_name(row)
            self.run.log({f"{name}/{tag}": value for tag, value in scalars(row).items()}, step=row["step"])

    def close(self) -> None:
        self.run.finish()
        # finish() can return before wandb-core has written an offline run's file (wandb 0.31: about one time in
        # four it still holds only its header); teardown waits for it, as it does at exit.
        self._wandb.teardown()

"""Single-task baselines: the multi-task run's tasks trained one agent each, for the multi-task vs single-task
comparison of the paper.

`<run dir>/<task>/` holds one ordinary run per task (resumable on its own), each with the command's configs, the same
env steps per task, and `batch_size // T` transitions per update (the multi-task batch's per-task share, so each task
contributes as many samples per update as in the multi-task run); `<run dir>/config.json` records the whole set and
`<run dir>/summary.json` the tasks' final evaluation returns. `--resume <run dir>` continues the tasks that have
started and starts the rest.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from purejaxmt import envs, plotting
from purejaxmt.runner import loop, provenance, rundir


def single_task_baselines(experiment: str, agent_module: ModuleType, command: Any) -> Path:
    """One run per task of `command.run.tasks`, each into its own subdirectory of one run directory (default
    `runs/<experiment>_single_task/<time>/`); returns that directory."""
    tasks = list(envs.resolve(command.run.tasks))
    loop_config = command.loop
    if len(tasks) > 1:
        if loop_config.batch_size < len(tasks):
            raise ValueError(f"batch_size={loop_config.batch_size} is smaller than the {len(tasks)} tasks {tasks}: a "
                             "single-task agent gets batch_size // number of tasks")
        loop_config = dataclasses.replace(loop_config, batch_size=loop_config.batch_size // len(tasks))
    single_experiment = f"{experiment}_single_task"
    root = Path(command.resume or command.run_dir or rundir.new_run_dir(single_experiment))
    record = {**rundir.config_record(single_experiment, agent_module, command.agent, loop_config, command.run,
                                     command.preset), "single_task_baselines": tasks,
              provenance.KEY: provenance.record()}
    if command.resume is not None:
        saved = rundir.load_saved_config(root)
        if "single_task_baselines" not in saved:
            raise ValueError(f"cannot resume {root} with --single-task-baselines: it is not a single-task baselines "
                             "run dir (its config.json has no single_task_baselines entry)")
        rundir.check_resumable(root, record)
    else:
        rundir.check_new(root)
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"[purejaxmt] single-task baselines: {len(tasks)} tasks {tasks}, batch {loop_config.batch_size} each, "
          f"into {root}")

    for task in tasks:
        run_config = dataclasses.replace(command.run, tasks=task)
        task_dir = root / task
        started = (task_dir / "config.json").is_file()
        if started and rundir.last_logged_chunk(task_dir) >= loop_config.num_chunks:
            print(f"[purejaxmt] {task}: already finished in {task_dir}")
            continue
        loop.run(single_experiment, agent_module, command.agent, loop_config, run_config, preset=command.preset,
                 run_dir=None if started else task_dir, resume=task_dir if started else None)

    summary = {}
    for task in tasks:
        rows = [row for row in plotting.read_metrics(root / task / "metrics.jsonl")
                if row.get(f"eval/{task}/return") is not None]
        if rows:
            last = max(row["step"] for row in rows)
            returns = [row[f"eval/{task}/return"] for row in rows if row["step"] == last]
            summary[task] = {"step": last, "eval_return": sum(returns) / len(returns), "seeds": len(returns)}
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("[purejaxmt] single-task final evaluation returns: " +
          ", ".join(f"{task} {entry['eval_return']:.2f}" for task, entry in summary.items()))
    return root

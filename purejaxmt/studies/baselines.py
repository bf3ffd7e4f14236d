"""Single-task baselines: the multi-task run's tasks trained one agent each, for the multi-task vs single-task
comparison of the paper. A plan of the study mechanism (`runner.study`): one member per task.

`<study dir>/<task>/` holds one ordinary run per task (resumable on its own), each with the command's configs, the
same env steps per task, and `batch_size // T` transitions per update (the multi-task batch's per-task share, so each
task contributes as many samples per update as in the multi-task run); `<study dir>/config.json` records the
command's configs (the undivided batch: `--resume` rebuilds the command from it) and the tasks, `study.json` the
index, and `summary.json` the tasks' final evaluation returns.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax

from purejaxmt import envs
from purejaxmt.agents import AgentSpec
from purejaxmt.runner import loop, provenance, rundir, study


def single_task_baselines(experiment: str, agent_spec: AgentSpec, command: Any) -> Path:
    """One run per task of `command.run.tasks`, each into its own subdirectory of one study directory (default
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
    # The command's own configs (a resume rebuilds the command from them), and the tasks.
    record = {**rundir.config_record(single_experiment, agent_spec, command.agent, command.loop, command.run,
                                     command.preset), "single_task_baselines": tasks, "study": "baselines",
              provenance.KEY: provenance.record()}
    if command.resume is not None:
        saved = rundir.load_saved_config(root)
        if "single_task_baselines" not in saved:
            raise ValueError(f"cannot resume {root} with --single-task-baselines: it is not a single-task baselines "
                             "run dir (its config.json has no single_task_baselines entry)")
        rundir.check_resumable(root, record)
    else:
        rundir.check_new(root)
    loop.sync("purejaxmt: baselines dir checked")
    if command.resume is None and jax.process_index() == 0:
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.json").write_text(json.dumps(record, indent=2) + "\n")

    def member(task: str) -> study.Member:
        run_config = dataclasses.replace(command.run, tasks=task)

        def train(run_dir: Path | None, resume: Path | None) -> None:
            loop.run(single_experiment, agent_spec, command.agent, loop_config, run_config, preset=command.preset,
                     run_dir=run_dir, resume=resume)

        return study.Member(task, loop_config.num_chunks, train)

    members = [member(task) for task in tasks]
    study.open_study(root, "baselines", study.command_entry(experiment, command),
                     {"tasks": tasks, "batch_size": loop_config.batch_size}, members,
                     resume=command.resume is not None)
    loop.say(f"[purejaxmt] single-task baselines: {len(tasks)} tasks {tasks}, batch {loop_config.batch_size} each, "
             f"into {root}")
    if not study.run_study(root, members):
        return root

    summary = {}
    for task in tasks:
        rows = [row for row in rundir.read_all_metrics(root / task) if row.get(f"eval/{task}/return") is not None]
        if rows:
            last = max(row["step"] for row in rows)
            returns = [row[f"eval/{task}/return"] for row in rows if row["step"] == last]
            summary[task] = {"step": last, "eval_return": sum(returns) / len(returns), "seeds": len(returns)}
    if jax.process_index() == 0:
        (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    loop.say("[purejaxmt] single-task final evaluation returns: " +
             ", ".join(f"{task} {entry['eval_return']:.2f}" for task, entry in summary.items()))
    return root

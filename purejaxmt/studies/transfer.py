"""Transfer: a trained multi-task BRC agent learning new tasks (BRC's third claim).

A transfer run trains on the source run's tasks followed by the new ones, with the source agent's networks. Its
task-embedding table grows by one row per new task; everything else is the source's, leaf for leaf:

    source = saved.load("runs/.../source")                   # a trained brc run dir
    tasks = transfer.task_set(source.task_names, ("cartpole-swingup-sparse",))
    config = transfer.agent_config(source.agent_config, source.task_names, tasks)
    learner = transfer.grow(source.learner(0), template, source.task_names, tasks, source.run_dir)

`grow` builds the starting learner: the rows of known tasks and every other parameter and optimiser state restored
unchanged; a new task's row (online and target critic) is the mean of the trained rows after their unit-norm
normalisation (what the critic reads), renormalised, i.e. the direction the trained tasks share; its optimiser
moments start at zero (and the update gives the new rows Adam's bias correction at their own step count, not the
source's: `brc_extras.new_rows_update`). Replay, reward normaliser and envs start fresh (they are not part of the
learner).

The three modes, runs of one vmapped program (they differ only in data):
- `embedding`: the source learner, `freeze_trained`: only the new rows learn (BRC: "learning only a new task
  embedding"); trunks, other rows, temperature and their optimiser states stay as loaded.
- `all`: the source learner, everything fine-tunes.
- `scratch`: the agent's random init on the same tasks: the baseline.

The study (`run_transfer`, driven by `experiments/transfer.py`) is a plan of two members under the study rule
(`purejaxmt.runner.study`): the source run (`OUT/source/`, left out when an existing run is given), then the transfer
run (`OUT/transfer/`), whose runs are the modes x seeds; then the report: `OUT/transfer.md` on the targets, and
`OUT/retention/` on the source tasks during the transfer run.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from purejaxmt import envs, offpolicy
from purejaxmt.agents import brc
from purejaxmt.offpolicy import LoopConfig
from purejaxmt.report import stats
from purejaxmt.runner import loop, saved, study
from purejaxmt.runner.config import Preset, make_env
from purejaxmt.treepaths import leaf_paths

EXPERIMENT, AGENT = "transfer", brc.AGENT_SPEC

MODES = ("scratch", "embedding", "all")
"""In report order: the baseline first."""


def task_set(source_tasks: Sequence[str], targets: Sequence[str]) -> tuple[str, ...]:
    """The transfer run's tasks: the source's, then the targets it has not been trained on."""
    new = tuple(task for task in targets if task not in source_tasks)
    if not new:
        raise ValueError(f"the targets {list(targets)} are all tasks of the source run {list(source_tasks)}: name at "
                         "least one new task")
    return tuple(source_tasks) + new


def new_rows(source_tasks: Sequence[str], tasks: Sequence[str]) -> tuple[int, ...]:
    return tuple(row for row, task in enumerate(tasks) if task not in source_tasks)


def agent_config(source_config: brc.Config, source_tasks: Sequence[str], tasks: Sequence[str],
                 mode: str = "all") -> brc.Config:
    """The source's agent config on the grown task set, for `mode` (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"transfer mode {mode!r}; choose one of {MODES}")
    if source_config.task_conditioning != "embedding":
        raise ValueError(f"the source agent has task_conditioning={source_config.task_conditioning!r}: transfer "
                         "grows a task-embedding table, so it needs a source trained with 'embedding'")
    return dataclasses.replace(source_config, new_task_rows=new_rows(source_tasks, tasks),
                               freeze_trained=mode == "embedding")


def _unit_rows(table: np.ndarray) -> np.ndarray:
    return table / np.sqrt(np.sum(np.square(table), axis=-1, keepdims=True) + 1e-12)


def grow(saved: dict, template: Any, source_tasks: Sequence[str], tasks: Sequence[str],
         source: Path | str = "the source run") -> Any:
    """The starting learner of a transfer run: `template`'s structure (a learner of the grown task set, concrete or
    abstract), filled from `saved` (one run's learner as `saved.SavedRun.learner` gives it). Raises a `ValueError`
    naming the first leaf that cannot match (other observation or action sizes, other networks, another agent)."""
    source_tasks, tasks = list(source_tasks), list(tasks)
    missing = [task for task in source_tasks if task not in tasks]
    if missing:
        raise ValueError(f"the transfer tasks {tasks} drop source tasks {missing}: list the source's tasks first")
    rows = np.array([source_tasks.index(task) if task in source_tasks else -1 for task in tasks])
    leaves = []
    for path, leaf in leaf_paths(template):
        name = "/".join(path)
        if not leaf.size:
            leaves.append(np.zeros(leaf.shape, leaf.dtype))
            continue
        node = saved
        try:
            for key in path:
                node = node[key]
        except (KeyError, TypeError):
            raise ValueError(f"cannot transfer from {source}: its checkpoint has no {name} (a checkpoint of another "
                             "agent, or a source without a task-embedding table: one task, or task_conditioning "
                             "other than 'embedding')") from None
        value = np.asarray(node)
        if "task_embedding" in path:
            if value.shape != (len(source_tasks), *leaf.shape[1:]):
                raise ValueError(f"cannot transfer from {source}: {name} is {value.shape} there, not a table of its "
                                 f"{len(source_tasks)} tasks by {leaf.shape[1:]}")
            grown = value[np.maximum(rows, 0)].astype(leaf.dtype)
            is_parameter = path[0] in ("critic_params", "critic_target_params")
            new_row = _unit_rows(_unit_rows(value).mean(axis=0)) if is_parameter else np.zeros(leaf.shape[1:])
            grown[rows < 0] = new_row
            leaves.append(grown)
            continue
        if value.shape != tuple(leaf.shape) or value.dtype != leaf.dtype:
            raise ValueError(f"cannot transfer from {source}: {name} is {value.shape} {value.dtype} there and "
                             f"{tuple(leaf.shape)} {leaf.dtype} for tasks {tasks} (the observation or action sizes "
                             "of the tasks, or the network sizes, differ)")
        leaves.append(value)
    return jax.tree.unflatten(jax.tree.structure(template), leaves)


@dataclasses.dataclass(frozen=True)
class TransferPreset:
    """A named transfer experiment: the source run's preset, the new tasks, and the transfer run's loop."""

    source: Preset
    """The source run (its `run.tasks` are the source tasks, `run.seeds` its seeds)."""
    targets: str
    """Comma-separated new tasks."""
    loop: LoopConfig
    """The transfer run's loop (the agent is the source's)."""
    description: str = ""


def saved_args(out: Path) -> dict:
    """The arguments a transfer study was started with: its index's plan (or, in a dir from before studies, its
    transfer_args.json)."""
    if (out / study.INDEX).is_file():
        index = json.loads((out / study.INDEX).read_text())
        study.check_kind(out, index, "transfer")
        return index["plan"]["args"]
    if (out / "transfer_args.json").is_file():
        return json.loads((out / "transfer_args.json").read_text())
    raise SystemExit(f"cannot resume {out}: no {study.INDEX} (is it an experiments/transfer.py dir?)")


def run_transfer(out: Path, preset_name: str, preset: TransferPreset, *, source_dir: Path | None, seeds: int | None,
                 source_loop: LoopConfig, loop_config: LoopConfig, recorded: dict, argv: Sequence[str],
                 resume: bool, reps: int = stats.DEFAULT_REPS) -> Path:
    """The study in `out`: the source run (unless `source_dir` names a trained one), then the transfer run, each by
    the study's member rule, then the report. `recorded`: the arguments the plan is saved with (a resume reads them
    back, `saved_args`); `argv`: the command line's flags; `reps`: the report's bootstrap replications."""
    targets = envs.resolve(preset.targets)
    train_source_run = source_dir is None
    source_dir = out / "source" if source_dir is None else Path(source_dir)

    def train_source(run_dir: Path | None, resume: Path | None) -> None:
        loop.run(f"{EXPERIMENT}_source", AGENT, preset.source.agent, source_loop, preset.source.run,
                 preset=preset_name, run_dir=run_dir, resume=resume)

    def train_transfer(run_dir: Path | None, resume: Path | None) -> None:
        # Built here, after the source run finished: the modes x seeds of one program, started from the source.
        source = load_source(source_dir)
        tasks = task_set(source.task_names, targets)
        config = agent_config(source.agent_config, source.task_names, tasks)
        per_mode = seeds or source.num_runs
        run_config = dataclasses.replace(source.run_config, tasks=",".join(tasks), seeds=len(MODES) * per_mode)
        env = make_env(run_config)
        agent = AGENT.make_agent(config, env.spec)
        template = jax.eval_shape(agent.init, jax.random.PRNGKey(0), AGENT.hyper_type.from_config(config))
        runs = []
        for mode in MODES:
            hyper = offpolicy.hyper_of(
                AGENT, agent_config(source.agent_config, source.task_names, tasks, mode), loop_config)
            for seed in range(per_mode):
                # A resume restores every learner from the transfer run's checkpoint: the source is not read again.
                learner = None if mode == "scratch" or resume is not None else grow(
                    source.learner(seed % source.num_runs), template, source.task_names, tasks, source_dir)
                runs.append(loop.RunSpec(seed=run_config.seed + seed, hyper=hyper, learner=learner,
                                         labels={"run": run_name(mode, seed), "setting": mode}))
        loop.run(EXPERIMENT, AGENT, config, loop_config, run_config, env=env, runs=runs, preset=preset_name,
                 run_dir=run_dir, resume=resume,
                 record_extra={"transfer": {"source": str(source_dir), "modes": list(MODES)}})

    members = ([study.Member("source", source_loop.num_chunks, train_source)] if train_source_run else []) + \
        [study.Member("transfer", loop_config.num_chunks, train_transfer)]
    study.open_study(out, "transfer", {"experiment": EXPERIMENT, "preset": preset_name, "argv": list(argv)},
                     {"args": recorded}, members, resume=resume)
    if not study.run_study(out, members):
        return out
    return write_report(out, preset_name, source_dir, load_source(source_dir), targets, seeds, reps)


def run_name(mode: str, seed: int) -> str:
    """A transfer run's name in its rows and the report: `<mode>/seed-<i>`."""
    return f"{mode}/seed-{seed}"


def write_report(out: Path, preset_name: str, source_dir: Path, source: saved.SavedRun, targets: Sequence[str],
                 seeds: int | None, reps: int) -> Path:
    """`out/transfer.md` (+ `.json`, `plots/`) on the targets and `out/retention/` on the source tasks: per task the
    IQM of the final evaluation returns over seeds, with intervals, P(mode > scratch) and curves. `seeds`: per mode
    (None: the source's)."""
    from purejaxmt.report import ablation  # matplotlib and rliable load only here

    rows = ablation.run_rows(out / "transfer", "run")
    spec = {"experiment": EXPERIMENT, "agent_module": AGENT.name, "preset": preset_name,
            "sweep": [f"source: {source_dir} ({', '.join(source.task_names)})", f"targets: {', '.join(targets)}",
                      "modes: scratch (random init), embedding (only the new rows learn), all (fine-tune)"]}
    run_entries = [{"name": run_name(mode, seed), "setting": mode, "seed": source.run_config.seed + seed}
                   for mode in MODES for seed in range(seeds or source.num_runs)]
    report = ablation.write_report(ablation.Sweep(out, spec, list(MODES), list(targets), run_entries, rows),
                                    reps=reps)
    report = report.rename(out / "transfer.md")
    (out / "ablation.json").rename(out / "transfer.json")
    (out / "retention").mkdir(exist_ok=True)
    ablation.write_report(ablation.Sweep(out / "retention", spec, list(MODES), list(source.task_names),
                                         run_entries, rows), reps=reps)
    print(report.read_text())
    print(f"[transfer] done: {report} (retention on the source tasks: {out / 'retention' / 'ablation.md'})")
    return out


def load_source(source_dir: Path) -> saved.SavedRun:
    """The source run, refused unless it is a run of `AGENT`."""
    source = saved.load(source_dir)
    if source.agent_spec.name != AGENT.name:
        raise SystemExit(f"{source_dir} is a run of {source.agent_spec.name}; transfer needs a {AGENT.name} run")
    return source

"""The report of an ablation sweep: a table of final scores with confidence intervals, probabilities of improvement
and learning curves, read from a sweep directory (`purejaxmt.runner` writes it):

    SWEEP_DIR/sweep.json                      settings (in sweep order; the first is the baseline), tasks, seeds, runs
    SWEEP_DIR/<program dir>/metrics*.jsonl    one row per chunk and run (`metrics.jsonl` from process 0 and
                                              `metrics.process-<i>.jsonl` from the others of a multi-host run)

`report(sweep_dir)` writes, next to them:

    ablation.md      the table (rows = settings, columns = tasks and the aggregate), paste-able markdown, and the
                     probability of improvement of each pair of settings (and links to the videos of the program
                     dirs, `<program dir>/videos/*.mp4`, where `--run.video` or `experiments/render.py` made some)
    ablation.json    the same numbers, and each run's final scores
    plots/<task>.png and plots/all-tasks-normalised.png    learning curves

Definitions:
- A run's *final score* on a task is the mean of its last `last_k` evaluations (`eval/<task>/return`; evaluations
  that finished no episode are null and skipped). A run with no evaluation of a task is *missing* there, reported and
  left out of that task's cell; an unfinished run counts with the evaluations it has, and is named in the report.
- A task cell is the IQM over the setting's runs of their final scores (with 1-3 seeds that is their mean) with a
  95% stratified-bootstrap CI (`purejaxmt.report.stats`).
- The aggregate is the IQM over runs x tasks of per-task normalised final scores: each task is scaled by the min
  (-> 0) and max (-> 1) of the final scores of all runs of the sweep on that task, so every task weighs the same
  whatever its return scale; it uses the runs that have a final score on every task (tasks that no run evaluated
  are left out). The numbers are relative to this sweep: they change if a setting is added.
- The probability of improvement P(A > B) of a pair "A:B" is the chance that a run of A beats a run of B on a task,
  averaged over tasks (rliable's), on the final scores of the runs that have all tasks.
- Learning curves: per task, one line per setting = the mean over its seeds of the evaluation return at each step
  (env steps per task) with a 95% bootstrap band over seeds; the aggregate plot shows, per setting, the IQM over
  runs x tasks of the normalised evaluation returns (same per-task scaling as the table: 0 = the worst final score
  of the sweep, 1 = the best). Where a run has not reached a step (unfinished), the step averages the runs that have.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from purejaxmt.report import stats

AGGREGATE_PLOT = "all-tasks-normalised"


@dataclasses.dataclass(frozen=True)
class Sweep:
    """What `sweep.json` says, plus each run's metrics rows (sorted by chunk)."""
    dir: Path
    spec: dict
    labels: list[str]            # settings in sweep order; labels[0] is the baseline
    tasks: list[str]
    runs: list[dict]             # sweep.json's run entries: name, setting, seed, program, config
    rows: dict[str, list[dict]]  # run name -> its rows


# ----------------------------------------------------------------------------------------------------------- reading

def _read_jsonl(path: Path) -> list[dict]:
    from purejaxmt.runner import rundir  # the run directory's one reader

    return rundir.read_metrics(path)


def load_sweep(sweep_dir: Path) -> Sweep:
    """Reads `sweep.json` and every `metrics*.jsonl` of every program dir it names."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep dir {sweep_dir} does not exist (or is not a directory)")
    spec_path = sweep_dir / "sweep.json"
    if not spec_path.is_file():
        raise FileNotFoundError(f"{sweep_dir} has no sweep.json: is it a sweep dir? (the sweep runner writes "
                                "sweep.json there when it starts)")
    spec = json.loads(spec_path.read_text())
    missing_keys = [key for key in ("settings", "tasks", "runs", "programs") if key not in spec]
    if missing_keys:
        raise ValueError(f"{spec_path} lacks {missing_keys}: not a sweep.json this reader knows")
    labels = [setting["label"] for setting in spec["settings"]]
    if not labels:
        raise ValueError(f"{spec_path} lists no settings")
    unknown = sorted({run["setting"] for run in spec["runs"]} - set(labels))
    if unknown:
        raise ValueError(f"{spec_path}: runs name settings {unknown} that are not in its settings {labels}")

    names = {run["name"] for run in spec["runs"]}
    rows: dict[str, dict[int, dict]] = defaultdict(dict)  # run -> chunk -> row (a row logged twice counts once)
    for program in spec["programs"]:
        for path in sorted((sweep_dir / program["dir"]).glob("metrics*.jsonl")):
            for number, row in enumerate(_read_jsonl(path), start=1):
                if "run" not in row or "chunk" not in row:
                    raise ValueError(f"{path}:{number} has no 'run' or 'chunk' field: not a sweep metrics row")
                if row["run"] in names:
                    rows[row["run"]][row["chunk"]] = row
    by_run = {name: [chunks[c] for c in sorted(chunks)] for name, chunks in rows.items()}
    return Sweep(sweep_dir, spec, labels, list(spec["tasks"]), list(spec["runs"]), by_run)


def evaluations(rows: list[dict], task: str) -> tuple[np.ndarray, np.ndarray]:
    """A run's evaluations of `task`: (steps [n], returns [n]), in chunk order, null (no finished episode) skipped."""
    points = [(row["step"], row[f"eval/{task}/return"]) for row in rows
              if isinstance(row.get(f"eval/{task}/return"), int | float) and math.isfinite(row[f"eval/{task}/return"])]
    return np.array([p[0] for p in points], dtype=np.float64), np.array([p[1] for p in points], dtype=np.float64)


def diverged_chunk(rows: list[dict]) -> int | None:
    """The chunk a run diverged in (its rows carry `diverged`, `runner/health.py`), or None."""
    return next((row.get("diverged_chunk") for row in rows if row.get("diverged")), None)


def final_scores(sweep: Sweep, last_k: int) -> np.ndarray:
    """`[runs, tasks]` (sweep.json's run order): the mean of each run's last `last_k` evaluations; NaN if none, and
    for a run that diverged (a diverged run is a result, reported as such, not a score)."""
    if last_k < 1:
        raise ValueError(f"last_k must be at least 1, got {last_k}")
    scores = np.full((len(sweep.runs), len(sweep.tasks)), np.nan)
    for i, run in enumerate(sweep.runs):
        if diverged_chunk(sweep.rows.get(run["name"], [])) is not None:
            continue
        for j, task in enumerate(sweep.tasks):
            _, returns = evaluations(sweep.rows.get(run["name"], []), task)
            if len(returns):
                scores[i, j] = returns[-last_k:].mean()
    return scores


def parse_pairs(pairs: list[str] | tuple[str, ...] | None, labels: list[str]) -> list[tuple[str, str]]:
    """"A:B" -> (A, B), both known setting labels (a label may itself contain ':'). None or empty: every setting
    against the first (the baseline)."""
    if not pairs:
        return [(label, labels[0]) for label in labels[1:]]
    parsed = []
    for pair in pairs:
        splits = [(pair[:i], pair[i + 1:]) for i, char in enumerate(pair) if char == ":"]
        known = [(a, b) for a, b in splits if a in labels and b in labels]
        if not known:
            raise ValueError(f"pair {pair!r} must be 'A:B' with A and B setting labels of this sweep; the settings "
                             f"are: {', '.join(repr(label) for label in labels)}")
        parsed.append(known[0])
    return parsed


# ----------------------------------------------------------------------------------------------------------- numbers

def _complete(scores: np.ndarray) -> np.ndarray:
    """The rows of `scores` [runs, tasks] with every task finite."""
    return scores[np.all(np.isfinite(scores), axis=1)]


def _estimate(scores: np.ndarray, reps: int, seed: int) -> dict | None:
    """IQM (with CI) and mean of a [runs, tasks] matrix of finite scores; None without runs."""
    if len(scores) == 0:
        return None
    return {**stats.iqm(scores, reps=reps, seed=seed).as_dict(), "mean": float(scores.mean()), "n": len(scores)}


def summarise(sweep: Sweep, last_k: int, pairs: list[tuple[str, str]], reps: int, seed: int) -> dict:
    """Everything the report shows, as JSON-able values."""
    finals = final_scores(sweep, last_k)                                   # [runs, tasks]
    evaluated = np.any(np.isfinite(finals), axis=0)                        # [tasks]: evaluated by some run
    low, high = stats.min_max_bounds(finals)
    aggregate_tasks = [j for j in range(len(sweep.tasks)) if evaluated[j]]
    normalised = stats.normalise(finals[:, aggregate_tasks], low[aggregate_tasks], high[aggregate_tasks])
    setting_of = np.array([run["setting"] for run in sweep.runs])

    settings = []
    for label in sweep.labels:
        mine = setting_of == label
        cells = {task: _estimate(finals[mine, j][np.isfinite(finals[mine, j])][:, None], reps, seed)
                 for j, task in enumerate(sweep.tasks)}
        aggregate = _estimate(_complete(normalised[mine]), reps, seed) if aggregate_tasks else None
        evaluated_runs = int(np.any(np.isfinite(finals[mine]), axis=1).sum())
        diverged = sum(diverged_chunk(sweep.rows.get(run["name"], [])) is not None
                       for run, own in zip(sweep.runs, mine) if own)
        settings.append({"label": label, "baseline": label == sweep.labels[0], "runs": int(mine.sum()),
                         "diverged_runs": diverged,
                         "runs_with_evaluations": evaluated_runs, "tasks": cells, "aggregate": aggregate})

    improvements = []
    for a, b in pairs:
        x, y = (_complete(finals[setting_of == label][:, aggregate_tasks]) for label in (a, b))
        estimate = (stats.probability_of_improvement(x, y, reps=reps, seed=seed).as_dict()
                    if len(x) and len(y) and aggregate_tasks else None)
        improvements.append({"a": a, "b": b, "probability": estimate, "runs_a": len(x), "runs_b": len(y)})

    last_chunk = {name: rows[-1]["chunk"] for name, rows in sweep.rows.items() if rows}
    longest = max(last_chunk.values(), default=0)
    runs = []
    for i, run in enumerate(sweep.runs):
        rows = sweep.rows.get(run["name"], [])
        runs.append({"name": run["name"], "setting": run["setting"], "seed": run["seed"], "chunks": len(rows),
                     "last_chunk": last_chunk.get(run["name"]), "last_step": rows[-1].get("step") if rows else None,
                     "evaluations": {task: len(evaluations(rows, task)[1]) for task in sweep.tasks},
                     "final": {task: (None if math.isnan(v) else float(v)) for task, v in zip(sweep.tasks, finals[i])},
                     "unfinished": bool(rows) and last_chunk[run["name"]] < longest,
                     "diverged_chunk": diverged_chunk(rows)})

    return {"sweep_dir": str(sweep.dir), "experiment": sweep.spec.get("experiment"),
            "agent_module": sweep.spec.get("agent_module"), "preset": sweep.spec.get("preset"),
            "sweep": sweep.spec.get("sweep"), "tasks": sweep.tasks, "last_k": last_k, "reps": reps, "seed": seed,
            "confidence": stats.CONFIDENCE, "settings": settings, "pairs": improvements,
            "normalisation": {task: ({"min": float(low[j]), "max": float(high[j])} if evaluated[j] else None)
                              for j, task in enumerate(sweep.tasks)},
            "aggregate_tasks": [sweep.tasks[j] for j in aggregate_tasks], "runs": runs}


# ---------------------------------------------------------------------------------------------------------- markdown

def _number(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def _cell(estimate: dict | None, runs: int, number=_number) -> str:
    if estimate is None:
        return "missing"
    text = f"{number(estimate['point'])} [{number(estimate['low'])}, {number(estimate['high'])}]"
    return text if estimate["n"] == runs else f"{text} (n={estimate['n']})"


def _escape(text: str) -> str:
    return text.replace("|", r"\|")


def markdown(summary: dict) -> str:
    tasks, pct = summary["tasks"], f"{summary['confidence']:.0%}"
    title = summary["experiment"] or Path(summary["sweep_dir"]).name
    lines = [f"# Ablation: {title}", ""]
    facts = [f"agent `{summary['agent_module']}`" if summary["agent_module"] else None,
             f"preset `{summary['preset']}`" if summary["preset"] else None,
             f"sweep `{' '.join(summary['sweep'])}`" if summary["sweep"] else None]
    if any(facts):
        lines += [", ".join(f for f in facts if f) + ".", ""]
    lines += [f"Final score of a run: the mean of its last {summary['last_k']} evaluation(s) of `eval/<task>/return`. "
              f"Cells: IQM over seeds [{pct} stratified-bootstrap CI]; `(n=k)` where only k of the setting's runs "
              "have evaluations. Aggregate: IQM over runs x tasks of final scores normalised per task by the min "
              "and max final score of all runs of this sweep on that task (0 = worst, 1 = best), over the runs with "
              f"all tasks. {summary['reps']} bootstrap replications, seed {summary['seed']}.", ""]

    header = ["setting", *tasks, "aggregate (normalised)", "seeds"]
    lines += ["| " + " | ".join(_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    for setting in summary["settings"]:
        label = _escape(setting["label"]) + (" (baseline)" if setting["baseline"] else "")
        cells = [_cell(setting["tasks"][task], setting["runs"]) for task in tasks]
        cells.append(_cell(setting["aggregate"], setting["runs"], number=lambda value: f"{value:.2f}"))
        if setting.get("diverged_runs"):  # a setting some of whose runs diverged has no score to show
            cells = [f"diverged ({setting['diverged_runs']}/{setting['runs']} runs)"] * len(cells)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {setting['runs_with_evaluations']}/{setting['runs']} |")

    lines += ["", "## Probability of improvement", ""]
    if not summary["pairs"]:
        lines.append("Only one setting: nothing to compare.")
    else:
        lines += [f"P(A > B): the chance that a run of A beats a run of B on a task, averaged over tasks "
                  f"[{pct} CI].", "", "| A | B | P(A > B) | runs |", "|---|---|---|---|"]
        for pair in summary["pairs"]:
            estimate = pair["probability"]
            value = ("missing" if estimate is None else
                     f"{estimate['point']:.2f} [{estimate['low']:.2f}, {estimate['high']:.2f}]")
            lines.append(f"| {_escape(pair['a'])} | {_escape(pair['b'])} | {value} | "
                         f"{pair['runs_a']} vs {pair['runs_b']} |")

    problems = []
    for run in summary["runs"]:
        if not run["chunks"]:
            problems.append(f"- `{run['name']}`: no metrics rows (not started?)")
            continue
        without = [task for task in tasks if run["evaluations"][task] == 0]
        if without:
            problems.append(f"- `{run['name']}`: no evaluations of {', '.join(without)} (missing there)")
        if run.get("diverged_chunk") is not None:
            problems.append(f"- `{run['name']}`: diverged in chunk {run['diverged_chunk']} (not scored)")
        elif run["unfinished"]:
            problems.append(f"- `{run['name']}`: unfinished (last chunk {run['last_chunk']}, step {run['last_step']}); "
                            "scored on the evaluations it has")
    if problems:
        lines += ["", "## Missing, unfinished and diverged runs", "", *problems]
    plots = [f"[{task}](plots/{file_name(task)}.png)" for task in tasks]
    lines += ["", "Learning curves: " + ", ".join(plots) + f", [all tasks](plots/{AGGREGATE_PLOT}.png).", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------- plots

def file_name(task: str) -> str:
    """`task` as a file name (plots, videos): anything but letters, digits and `._=+-` becomes `_`."""
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", task)


def _curve_matrix(series: list[list[tuple[np.ndarray, np.ndarray]]]) -> tuple[np.ndarray, np.ndarray]:
    """series[run][task] = (steps, values) -> (steps [S], values [runs, tasks, S]) on the union of steps, NaN where
    a run has no value."""
    steps = np.unique(np.concatenate([s for run in series for s, _ in run] + [np.zeros(0)]))
    values = np.full((len(series), len(series[0]) if series else 0, len(steps)), np.nan)
    for i, run in enumerate(series):
        for j, (s, v) in enumerate(run):
            values[i, j, np.searchsorted(steps, s)] = v
    return steps, values


def _curve(values: np.ndarray, aggregate: str, reps: int, seed: int) -> tuple[np.ndarray, ...]:
    """Per step of `values` [runs, tasks, steps] (NaN = missing): the aggregate over the runs that have every task
    at that step, with its CI; steps without such runs dropped. Steps sharing the same runs are bootstrapped
    together. Returns (step indices, point, low, high)."""
    present = np.all(np.isfinite(values), axis=1)  # [runs, steps]
    groups: dict[bytes, list[int]] = defaultdict(list)
    for k in range(values.shape[2]):
        if present[:, k].any():
            groups[present[:, k].tobytes()].append(k)
    index, point, low, high = [], [], [], []
    for columns in groups.values():
        runs = present[:, columns[0]]
        p, lo, hi = stats.curve(values[runs][:, :, columns], aggregate=aggregate, reps=reps, seed=seed)
        index += columns
        point += list(p)
        low += list(lo)
        high += list(hi)
    order = np.argsort(index)
    return tuple(np.asarray(a)[order] for a in (index, point, low, high))


def _plot(path: Path, title: str, ylabel: str, lines: list[tuple[str, np.ndarray, np.ndarray, np.ndarray,
                                                                  np.ndarray]]) -> Path:
    from matplotlib.figure import Figure  # here, not at the top: importing matplotlib takes a while

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for number, (label, steps, point, low, high) in enumerate(lines):
        color = f"C{number % 10}"
        if len(steps):
            ax.plot(steps, point, "o-" if len(steps) < 30 else "-", color=color, label=label, markersize=3)
            ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
        else:
            ax.plot([], [], color=color, label=f"{label}: no evaluations")
    ax.set_xlabel("env steps per task")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)  # the figure is not registered anywhere: nothing to close
    return path


def plot_curves(sweep: Sweep, summary: dict, reps: int, seed: int) -> list[Path]:
    """Writes plots/<task>.png (mean over seeds of the eval return, 95% bootstrap band) and the aggregate plot
    (IQM over runs x tasks of normalised eval returns); returns the paths."""
    (sweep.dir / "plots").mkdir(exist_ok=True)
    pct = f"{summary['confidence']:.0%}"
    by_setting = {label: [run for run in sweep.runs if run["setting"] == label] for label in sweep.labels}

    def label_of(label: str) -> str:
        return label + (" (baseline)" if label == sweep.labels[0] else "") + f" (n={len(by_setting[label])})"

    paths = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)  # an all-equal bootstrap sample is fine
        for task in sweep.tasks:
            lines = []
            for label, runs in by_setting.items():
                steps, values = _curve_matrix([[evaluations(sweep.rows.get(r["name"], []), task)] for r in runs])
                index, point, low, high = _curve(values, "mean", reps, seed) if values.size else ([],) * 4
                lines.append((label_of(label), steps[np.asarray(index, dtype=int)], point, low, high))
            paths.append(_plot(sweep.dir / "plots" / f"{file_name(task)}.png", task,
                               f"eval return (mean over seeds, {pct} CI)", lines))

        tasks = summary["aggregate_tasks"]
        low_bound = np.array([summary["normalisation"][t]["min"] for t in tasks])
        high_bound = np.array([summary["normalisation"][t]["max"] for t in tasks])
        lines = []
        for label, runs in by_setting.items():
            steps, values = _curve_matrix([[evaluations(sweep.rows.get(r["name"], []), t) for t in tasks]
                                           for r in runs])
            if values.size and tasks:
                index, point, low, high = _curve(stats.normalise(values, low_bound, high_bound), "iqm", reps, seed)
            else:
                index, point, low, high = [], [], [], []
            lines.append((label_of(label), steps[np.asarray(index, dtype=int)], point, low, high))
        paths.append(_plot(sweep.dir / "plots" / f"{AGGREGATE_PLOT}.png",
                           f"all tasks ({len(tasks)}), normalised per task by the sweep's final scores",
                           f"IQM of normalised eval return ({pct} CI)", lines))
    return paths


# ------------------------------------------------------------------------------------------------------------ report

def report(sweep_dir: Path, last_k: int = 1, pairs: list[str] | tuple[str, ...] | None = None,
           reps: int = stats.DEFAULT_REPS, seed: int = 0) -> Path:
    """Writes `ablation.md`, `ablation.json` and `plots/` into `sweep_dir` and returns the path of `ablation.md`.

    `pairs`: "A:B" strings (P(A > B) is reported for each); default every setting against the baseline (the first).
    `reps`: bootstrap replications per interval; `seed`: the bootstraps' seed (the report is deterministic)."""
    return write_report(load_sweep(sweep_dir), last_k, pairs, reps, seed)


def write_report(sweep: Sweep, last_k: int = 1, pairs: list[str] | tuple[str, ...] | None = None,
                 reps: int = stats.DEFAULT_REPS, seed: int = 0) -> Path:
    """`report` of a `Sweep` assembled by the caller (e.g. `experiments/transfer.py`: the transfer modes as
    settings), written into `sweep.dir`."""
    return _write(sweep, summarise(sweep, last_k, parse_pairs(pairs, sweep.labels), reps, seed), reps, seed)


def _write(sweep: Sweep, summary: dict, reps: int, seed: int) -> Path:
    """`ablation.json`, `ablation.md` and `plots/` of a summary, into `sweep.dir`; returns the path of the table."""
    (sweep.dir / "ablation.json").write_text(json.dumps(summary, indent=1) + "\n")
    path = sweep.dir / "ablation.md"
    path.write_text(markdown(summary) + video_links(sweep.dir))
    plot_curves(sweep, summary, reps, seed)
    return path


def video_links(report_dir: Path) -> str:
    """A markdown line linking the videos in the report's run dirs (`<run dir>/videos/*.mp4`, written by
    `purejaxmt.report.render`: `--run.video` or `experiments/render.py`), or "" where there are none."""
    videos = sorted(Path(report_dir).glob("*/videos/*.mp4"))
    if not videos:
        return ""
    links = [f"[{video.parent.parent.name}: {video.stem}]({video.relative_to(report_dir).as_posix()})"
             for video in videos]
    return "\nVideos of the evaluation policy at the last checkpoint: " + ", ".join(links) + ".\n"


# ---------------------------------------------------------------------------------------- multi-task vs single-task

def run_rows(run_dir: Path, key: str = "seed") -> dict:
    """A run directory's rows by run (every process's metrics file), sorted by chunk; runs are told apart by the
    rows' `key` field (`seed`, or `run` where runs carry names)."""
    by_run: dict = defaultdict(dict)
    for path in sorted(Path(run_dir).glob("metrics*.jsonl")):
        for row in _read_jsonl(path):
            by_run[row[key]][row["chunk"]] = row
    return {run: [chunks[c] for c in sorted(chunks)] for run, chunks in by_run.items()}


def multi_vs_single(multi_task_dir: Path, single_task_dir: Path, out_dir: Path | None = None, last_k: int = 1,
                    reps: int = stats.DEFAULT_REPS, seed: int = 0) -> Path:
    """The paper's multi-task vs single-task comparison as an ablation report: the runs of a multi-task run dir
    against the per-task runs of a `--single-task-baselines` dir (`<dir>/<task>/`, matched by seed), as two settings
    `multi-task` and `single-task`. Writes `ablation.md`, `ablation.json` and `plots/` into `out_dir` (default
    `<single_task_dir>/vs_multi_task/`) and returns the path of `ablation.md`."""
    multi_task_dir, single_task_dir = Path(multi_task_dir), Path(single_task_dir)
    for path in (multi_task_dir, single_task_dir):
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a purejaxmt run dir")
    single_config = json.loads((single_task_dir / "config.json").read_text())
    tasks = single_config.get("single_task_baselines")
    if not tasks:
        raise ValueError(f"{single_task_dir} is not a --single-task-baselines dir (its config.json names no tasks)")
    multi_rows = run_rows(multi_task_dir)
    single_rows = {task: run_rows(single_task_dir / task) for task in tasks if (single_task_dir / task).is_dir()}
    missing = [task for task in tasks if not any(f"eval/{task}/return" in row for rows in multi_rows.values()
                                                 for row in rows)]
    if missing:
        raise ValueError(f"the multi-task run {multi_task_dir} has no evaluations of {missing}: compare runs of the "
                         "same tasks")

    runs, rows = [], {}
    for seed_ in sorted(multi_rows):
        runs.append({"name": f"multi-task/seed-{seed_}", "setting": "multi-task", "seed": seed_})
        rows[runs[-1]["name"]] = multi_rows[seed_]
    for seed_ in sorted({s for by_seed in single_rows.values() for s in by_seed}):
        merged: dict[int, dict] = {}  # each task's run contributes its own task's fields, chunk by chunk
        for task, by_seed in single_rows.items():
            for row in by_seed.get(seed_, []):
                entry = merged.setdefault(row["chunk"], {"chunk": row["chunk"], "step": row["step"]})
                entry.update({key: value for key, value in row.items() if key.startswith(f"eval/{task}/")})
        runs.append({"name": f"single-task/seed-{seed_}", "setting": "single-task", "seed": seed_})
        rows[runs[-1]["name"]] = [merged[c] for c in sorted(merged)]

    out_dir = Path(out_dir) if out_dir is not None else single_task_dir / "vs_multi_task"
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {"experiment": single_config.get("experiment"), "agent_module": single_config.get("agent_module"),
            "preset": single_config.get("preset"),
            "sweep": [f"multi-task: {multi_task_dir}", f"single-task: {single_task_dir}"]}
    sweep = Sweep(out_dir, spec, ["multi-task", "single-task"], list(tasks), runs, rows)
    return _write(sweep, summarise(sweep, last_k, [("multi-task", "single-task")], reps, seed), reps, seed)

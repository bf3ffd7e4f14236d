"""purejaxmt.report.ablation and experiments/ablate.py on a sweep dir written here: 2 settings x 3 seeds x 2 tasks, the
second setting better by construction, program-0's rows split over metrics.jsonl and metrics.process-1.jsonl."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from purejaxmt.report import ablation

TASKS = ["cartpole-swingup", "walker-walk"]
BASELINE, BETTER = "critic_loss=mse", "critic_loss=categorical"
SEEDS = [0, 1, 2]
REPS = 50
ROOT = Path(__file__).resolve().parents[1]

# A run's evaluations on chunks 2 and 4 (of 4; 1000 env steps per task each): final (chunk 4) = the setting's base
# on the task + 10 * seed, the one before (chunk 2) = half the base.
BASE = {BASELINE: {"cartpole-swingup": 100.0, "walker-walk": 10.0},
        BETTER: {"cartpole-swingup": 400.0, "walker-walk": 40.0}}


def _rows(label: str, seed: int, chunks: int = 4, evaluate: bool = True) -> list[dict]:
    rows = []
    for chunk in range(1, chunks + 1):
        row = {"chunk": chunk, "run": f"{label}/seed-{seed}", "setting": label, "seed": seed,
               "wall_time": 1.5 * chunk, "step": 1000 * chunk, "critic_loss": 1.0 / chunk}
        for task in TASKS:
            row[f"train/{task}/return"] = BASE[label][task] * chunk / 4
            if evaluate and chunk % 2 == 0:
                row[f"eval/{task}/return"] = BASE[label][task] * (1.0 if chunk == 4 else 0.5) + 10 * seed
            elif chunk % 2 == 0:
                row[f"eval/{task}/return"] = None  # an evaluation that finished no episode
        rows.append(row)
    return rows


def write_sweep(sweep_dir: Path, rows_of: dict[str, list[dict]] | None = None) -> Path:
    """program-0 runs the baseline (seeds 0-1 logged by process 0, seed 2 by process 1), program-1 the other."""
    runs = [{"name": f"{label}/seed-{seed}", "setting": label, "seed": seed,
             "program": "program-0" if label == BASELINE else "program-1",
             "config": f"runs/{label}/seed-{seed}/config.json"} for label in (BASELINE, BETTER) for seed in SEEDS]
    spec = {"experiment": "synthetic", "agent_module": "purejaxmt.agents.brc", "preset": None,
            "sweep": [f"agent.critic_loss={BASELINE.split('=')[1]},{BETTER.split('=')[1]}"],
            "fields": ["agent.critic_loss"], "tasks": TASKS, "seeds": SEEDS,
            "settings": [{"label": label, "values": {"agent.critic_loss": label.split("=")[1]}}
                         for label in (BASELINE, BETTER)],
            "programs": [{"dir": program, "runs": [r["name"] for r in runs if r["program"] == program]}
                         for program in ("program-0", "program-1")],
            "runs": runs}
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.json").write_text(json.dumps(spec))
    rows_of = rows_of if rows_of is not None else {r["name"]: _rows(r["setting"], r["seed"]) for r in runs}
    files = {"program-0": ["metrics.jsonl", "metrics.process-1.jsonl"], "program-1": ["metrics.jsonl"]}
    for program, names in files.items():
        (sweep_dir / program).mkdir()
        for name in names:
            chosen = [r for r in runs if r["program"] == program
                      and (name == "metrics.jsonl") == (program == "program-1" or r["seed"] < 2)]
            lines = [json.dumps(row) for r in chosen for row in rows_of.get(r["name"], [])]
            (sweep_dir / program / name).write_text("".join(line + "\n" for line in lines))
    return sweep_dir


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    sweep_dir = write_sweep(tmp_path_factory.mktemp("ablation") / "sweep")
    return ablation.report(sweep_dir, reps=REPS)


def _table_row(markdown: str, label: str) -> list[str]:
    line = [line for line in markdown.splitlines() if line.startswith(f"| {label}")][0]  # the settings table's
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_table(reported):
    markdown = reported.read_text()
    assert reported.name == "ablation.md"
    header = [line for line in markdown.splitlines() if line.startswith("| setting")][0]
    assert [c.strip() for c in header.strip("|").split("|")] == ["setting", *TASKS, "aggregate (normalised)",
                                                                 "seeds"]
    rows = [line for line in markdown.splitlines() if line.startswith("| critic_loss=")]
    assert rows[0].startswith(f"| {BASELINE} (baseline) |") and rows[1].startswith(f"| {BETTER} |")  # sweep order
    # 3 seeds (process 1's file read too): IQM of 3 = their mean; finals base + 0, 10, 20
    baseline, better = _table_row(markdown, BASELINE), _table_row(markdown, BETTER)
    assert baseline[1].startswith("110.0 [") and baseline[2].startswith("20.0 [")
    assert better[1].startswith("410.0 [") and better[2].startswith("50.0 [")
    assert baseline[-1] == better[-1] == "3/3"
    assert "(n=" not in baseline[1] + better[1]
    assert "## Missing" not in markdown
    # P(better > baseline) = 1 by construction; the default pairs are every setting vs the baseline
    (pair,) = [line for line in markdown.splitlines() if line.startswith(f"| {BETTER} | {BASELINE} |")]
    assert "| 1.00 [1.00, 1.00] | 3 vs 3 |" in pair


def test_report_json(reported):
    summary = json.loads((reported.parent / "ablation.json").read_text())
    assert [s["label"] for s in summary["settings"]] == [BASELINE, BETTER]
    baseline, better = summary["settings"]
    cell = baseline["tasks"]["cartpole-swingup"]
    assert cell["point"] == pytest.approx(110.0) and cell["n"] == 3 and cell["low"] <= 110.0 <= cell["high"]
    assert better["aggregate"]["point"] > baseline["aggregate"]["point"]
    # normalised per task by the sweep's final scores: the baseline's seed 0 is the minimum, the better's seed 2 the max
    assert summary["normalisation"]["walker-walk"] == {"min": 10.0, "max": 60.0}
    assert 0.0 <= baseline["aggregate"]["low"] and better["aggregate"]["high"] <= 1.0
    assert summary["pairs"][0]["probability"]["point"] == pytest.approx(1.0)
    run = summary["runs"][0]
    assert run["final"] == {"cartpole-swingup": 100.0, "walker-walk": 10.0}
    assert run["evaluations"] == {"cartpole-swingup": 2, "walker-walk": 2} and run["chunks"] == 4


def test_report_plots(reported):
    plots = reported.parent / "plots"
    for name in [*TASKS, ablation.AGGREGATE_PLOT]:
        png = (plots / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000, name


def test_last_k_and_named_pairs(tmp_path):
    sweep_dir = write_sweep(tmp_path / "sweep")
    summary = ablation.summarise(ablation.load_sweep(sweep_dir), last_k=2, reps=REPS, seed=0,
                                 pairs=ablation.parse_pairs([f"{BASELINE}:{BETTER}"], [BASELINE, BETTER]))
    # mean of the last two evaluations: (base / 2 + base) / 2 + 10 * seed
    assert summary["settings"][0]["tasks"]["cartpole-swingup"]["point"] == pytest.approx(85.0)
    assert summary["pairs"][0]["probability"]["point"] == pytest.approx(0.0)


def test_missing_and_unfinished_runs_are_reported(tmp_path):
    rows_of = {f"{label}/seed-{seed}": _rows(label, seed) for label in (BASELINE, BETTER) for seed in SEEDS}
    rows_of[f"{BETTER}/seed-1"] = _rows(BETTER, 1, evaluate=False)  # evaluated nothing
    rows_of[f"{BETTER}/seed-2"] = _rows(BETTER, 2, chunks=3)        # unfinished: its last evaluation is chunk 2's
    del rows_of[f"{BASELINE}/seed-2"]                               # never logged
    sweep_dir = write_sweep(tmp_path / "sweep", rows_of)
    with open(sweep_dir / "program-1" / "metrics.jsonl", "a") as f:
        f.write('{"chunk": 4, "run": "critic_lo')  # torn last line of a run killed mid-write
    markdown = ablation.report(sweep_dir, reps=REPS).read_text()
    better = _table_row(markdown, BETTER)
    assert better[1].startswith("310.0 [") and better[1].endswith("(n=2)")  # seed 0: 400, seed 2: 200 + 20
    assert better[-1] == "2/3" and _table_row(markdown, BASELINE)[-1] == "2/3"
    assert f"`{BETTER}/seed-1`: no evaluations of cartpole-swingup, walker-walk" in markdown
    assert f"`{BETTER}/seed-2`: unfinished (last chunk 3, step 3000)" in markdown
    assert f"`{BASELINE}/seed-2`: no metrics rows" in markdown
    assert (sweep_dir / "plots" / f"{ablation.AGGREGATE_PLOT}.png").stat().st_size > 0


def test_a_diverged_setting_is_reported_as_diverged_not_as_a_number(tmp_path):
    rows_of = {f"{label}/seed-{seed}": _rows(label, seed) for label in (BASELINE, BETTER) for seed in SEEDS}
    for seed in SEEDS:  # every run of BETTER diverges in chunk 3, as runner/health.py marks its rows
        for row in rows_of[f"{BETTER}/seed-{seed}"][2:]:
            row.update({"diverged": True, "diverged_chunk": 3, "critic_loss": None})
    rows_of[f"{BASELINE}/seed-0"][3].update({"diverged": True, "diverged_chunk": 4})  # one seed of the baseline
    markdown = ablation.report(write_sweep(tmp_path / "sweep", rows_of), reps=REPS).read_text()
    better, baseline = _table_row(markdown, BETTER), _table_row(markdown, BASELINE)
    assert better[1:-1] == ["diverged (3/3 runs)"] * 3, better
    assert baseline[1:-1] == ["diverged (1/3 runs)"] * 3, baseline
    assert f"`{BETTER}/seed-1`: diverged in chunk 3 (not scored)" in markdown
    summary = json.loads((tmp_path / "sweep" / "ablation.json").read_text())
    assert [s["diverged_runs"] for s in summary["settings"]] == [1, 3]
    # The runs that went on are scored without the diverged ones: the baseline's seeds 1 and 2 (110 + 10, 110 + 20).
    assert summary["settings"][0]["tasks"]["cartpole-swingup"]["point"] == pytest.approx(115.0)
    assert summary["runs"][3]["final"]["cartpole-swingup"] is None and summary["runs"][3]["diverged_chunk"] == 3


def test_single_setting_without_evaluations(tmp_path):
    rows_of = {f"{BASELINE}/seed-{seed}": _rows(BASELINE, seed, evaluate=False) for seed in SEEDS}
    sweep_dir = write_sweep(tmp_path / "sweep", rows_of)
    spec = json.loads((sweep_dir / "sweep.json").read_text())
    spec["settings"] = spec["settings"][:1]
    spec["runs"] = [r for r in spec["runs"] if r["setting"] == BASELINE]
    (sweep_dir / "sweep.json").write_text(json.dumps(spec))
    markdown = ablation.report(sweep_dir, reps=REPS).read_text()
    assert _table_row(markdown, BASELINE)[1:] == ["missing", "missing", "missing", "0/3"]
    assert "Only one setting" in markdown


def test_bad_inputs_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ablation.report(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no sweep.json"):
        ablation.report(tmp_path / "empty")
    sweep_dir = write_sweep(tmp_path / "sweep")
    with pytest.raises(ValueError, match=f"'{BASELINE}', '{BETTER}'"):
        ablation.report(sweep_dir, pairs=[f"critic_loss=hl_gauss:{BASELINE}"], reps=REPS)
    with pytest.raises(ValueError, match="A:B"):
        ablation.report(sweep_dir, pairs=[BASELINE], reps=REPS)
    with pytest.raises(ValueError, match="last_k"):
        ablation.report(sweep_dir, last_k=0, reps=REPS)


def _cli():
    spec = importlib.util.spec_from_file_location("experiment_ablate", ROOT / "experiments" / "ablate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_cli(tmp_path, capsys):
    ablate = _cli()
    sweep_dir = write_sweep(tmp_path / "sweep")
    path = ablate.main([str(sweep_dir), "--last-k", "2", "--pairs", f"{BASELINE}:{BETTER}", "--reps", "20"])
    assert path == sweep_dir / "ablation.md"
    assert f"| {BASELINE} | {BETTER} | 0.00 [0.00, 0.00] |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="error: .*no sweep.json"):
        ablate.main([str(tmp_path)])


def _write_run(run_dir: Path, rows: list[dict], config: dict) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_multi_task_vs_single_task_baselines(tmp_path):
    # Multi-task: one run dir, rows per seed with both tasks; single-task: <dir>/<task>/ with that task's rows only,
    # better by construction (BETTER's bases).
    strip = ("run", "setting")
    multi = [{k: v for k, v in row.items() if k not in strip} for s in SEEDS for row in _rows(BASELINE, s)]
    _write_run(tmp_path / "mt", multi, {"experiment": "synthetic"})
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "config.json").write_text(json.dumps({"experiment": "synthetic_single_task",
                                                             "single_task_baselines": TASKS}))
    for task in TASKS:
        other = next(t for t in TASKS if t != task)
        rows = [{k: v for k, v in row.items() if k not in strip and other not in k}
                for s in SEEDS for row in _rows(BETTER, s)]
        _write_run(tmp_path / "st" / task, rows, {"experiment": "synthetic_single_task"})
    path = ablation.multi_vs_single(tmp_path / "mt", tmp_path / "st", reps=REPS)
    assert path == tmp_path / "st" / "vs_multi_task" / "ablation.md"
    summary = json.loads(path.with_suffix(".json").read_text())
    by_label = {s["label"]: s for s in summary["settings"]}
    assert by_label["multi-task"]["runs"] == by_label["single-task"]["runs"] == 3
    for task in TASKS:  # final scores: base + 10 * seed over seeds 0..2 -> IQM of 3 = their mean, base + 10
        assert by_label["multi-task"]["tasks"][task]["point"] == pytest.approx(BASE[BASELINE][task] + 10)
        assert by_label["single-task"]["tasks"][task]["point"] == pytest.approx(BASE[BETTER][task] + 10)
    assert summary["pairs"][0]["probability"]["point"] == pytest.approx(0.0)  # P(multi-task > single-task)
    assert (path.parent / "plots" / "cartpole-swingup.png").stat().st_size > 0
    with pytest.raises(ValueError, match="not a --single-task-baselines dir"):
        ablation.multi_vs_single(tmp_path / "st", tmp_path / "mt")

"""The optional metrics mirrors (runner.loggers), offline: TensorBoard event files and a W&B offline run hold each
row's scalars at its env step, a resume continues them, `--run.logger` reaches a run from the command line, and bad
or missing loggers fail clearly."""

import json
import struct

import numpy as np
import pytest

from purejaxmt import cli, offpolicy, runner
from purejaxmt.agents import brc
from purejaxmt.runner import loggers, rundir

TASK = "Pendulum-v1"


def chunk_rows(chunk: int, evaluate: bool = False) -> list[dict]:
    """Two seeds' rows of a chunk of 40 env steps, as `loop.run` logs them; seed 1's critic loss is non-finite."""
    metrics = {"step": np.array([40 * chunk] * 2), "critic_loss": np.array([0.5 * chunk, np.nan]),
               "return": np.array([[-100.0 * chunk], [-200.0 * chunk]])}  # per task: [runs, T]
    evaluation = {"return": np.array([[-10.0 * chunk], [-20.0 * chunk]])} if evaluate else None
    rows = rundir.metrics_rows(metrics, (TASK,), [{"seed": 0}, {"seed": 1}], chunk, 2.5 * chunk, evaluation)
    return [{**row, "env_steps_per_second": 1000.0 + chunk} for row in rows]


def read_events(path) -> list:
    """The `Event` protos of one TensorBoard event file (TFRecord: length, its CRC, data, its CRC)."""
    from tensorboardX.proto import event_pb2

    data, pos, events = path.read_bytes(), 0, []
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
        pos += 12 + length + 4
    return events


def scalar_points(events: list) -> dict[str, list[tuple[int, float]]]:
    points: dict[str, list] = {}
    for event in events:
        for value in event.summary.value:
            points.setdefault(value.tag, []).append((event.step, value.simple_value))
    return points


def test_tensorboard_writes_each_runs_scalars_at_its_step_and_a_resume_purges(tmp_path):
    logger = loggers.make_logger("tensorboard", tmp_path, {})
    for chunk in (1, 2, 3):  # a run killed after logging chunk 3, its last checkpoint at chunk 2
        logger.write(chunk_rows(chunk, evaluate=chunk == 2))
    logger.close()
    for seed in (0, 1):
        [path] = (tmp_path / "tensorboard" / f"seed-{seed}").glob("events.out.tfevents.*")
        points = scalar_points(read_events(path))
        assert points[f"train/{TASK}/return"] == [(40, -100.0 * (seed + 1)), (80, -200.0 * (seed + 1)),
                                                  (120, -300.0 * (seed + 1))]
        assert points[f"eval/{TASK}/return"] == [(80, -20.0 * (seed + 1))]
        assert points["env_steps_per_second"] == [(40, 1001.0), (80, 1002.0), (120, 1003.0)]
        assert not set(points) & {"chunk", "seed", "wall_time", "step"}
        assert ("critic_loss" in points) == (seed == 0)  # seed 1's non-finite loss is None in its rows

    resumed = loggers.make_logger("tensorboard", tmp_path, {})
    resumed.write(chunk_rows(3))
    resumed.close()
    [path] = (tmp_path / "tensorboard" / "seed-0").glob("*.step-120")
    events = read_events(path)
    starts = [event.step for event in events if event.HasField("session_log")]
    assert starts == [120], "the resumed file must purge the stopped run's points from step 120 on"
    assert scalar_points(events)[f"train/{TASK}/return"] == [(120, -300.0)]


def wandb_records(path) -> list:
    """The `Record` protos of a W&B run file (a LevelDB-style log of 32 KiB blocks after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", f"{path} is not a W&B run file: it starts {data[:7]!r}"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        if length == 0 and kind == 0:  # zero padding to the block's end
            pos += block - pos % block
            continue
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def wandb_history(path) -> dict[int, dict]:
    history = {}
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.setdefault(items["_step"], {}).update(items)
    return history


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    """No W&B credentials, settings or caches from this machine."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, folder in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"),
                         ("NETRC", "netrc")):
        monkeypatch.setenv(name, str(tmp_path / "home" / folder))
    return tmp_path / "home"


def test_wandb_offline_run_holds_the_rows_and_a_resume_continues_it(tmp_path, wandb_home, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record = {"experiment": "test", "run": {"tasks": TASK, "seeds": 2}}
    logger = loggers.make_logger("wandb", run_dir, record)
    logger.write(chunk_rows(1))
    logger.write(chunk_rows(2, evaluate=True))
    logger.close()
    assert "no API key" not in capsys.readouterr().out  # WANDB_MODE given: nothing to say
    [first] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    history = wandb_history(first)
    assert sorted(history) == [40, 80]
    assert history[80][f"seed-1/eval/{TASK}/return"] == -40.0 and history[40][f"seed-0/train/{TASK}/return"] == -100.0
    assert history[80]["seed-0/critic_loss"] == 1.0 and "seed-1/critic_loss" not in history[80]
    assert history[40]["seed-0/env_steps_per_second"] == 1001.0 and "seed-0/chunk" not in history[40]
    runs = [r.run for r in wandb_records(first) if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in runs[0].config.update}
    assert config["experiment"] == "test" and config["run"] == record["run"]

    resumed = loggers.make_logger("wandb", run_dir, record)
    resumed.write(chunk_rows(3))
    resumed.close()
    [second] = set((run_dir / "wandb").glob("offline-run-*/run-*.wandb")) - {first}
    assert second.name == first.name, "a resume must continue the same W&B run id"
    assert sorted(wandb_history(second)) == [120]


def test_wandb_without_a_key_or_mode_logs_offline_and_says_so(tmp_path, wandb_home, capsys):
    wandb = pytest.importorskip("wandb")
    assert not wandb.login(prompt=False, verify=False), "the wandb_home fixture must hide every credential"
    logger = loggers.make_logger("wandb", tmp_path, {"experiment": "test"})
    logger.write(chunk_rows(1))
    logger.close()
    assert "W&B: no API key configured" in capsys.readouterr().out
    [path] = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    assert sorted(wandb_history(path)) == [40]


def test_bad_or_missing_loggers_fail_clearly(tmp_path, monkeypatch):
    assert loggers.make_logger("none", tmp_path, {}) is None
    with pytest.raises(ValueError, match=r"logger='tb' must be one of none, tensorboard, wandb"):
        runner.RunConfig(logger="tb")
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None)
    for kind, package in (("tensorboard", "tensorboardX"), ("wandb", "wandb")):
        with pytest.raises(ModuleNotFoundError, match=rf"needs the {package} package.*install -e \"\.\[loggers\]\""):
            loggers.make_logger(kind, tmp_path, {})
    assert not any(tmp_path.iterdir())


# The runner tests' tiny Pendulum config (tests/test_runner.py): its compiled programs are in the test cache.
AGENT = brc.Config(critic_width=32, critic_depth=1, actor_width=16, num_bins=21)
LOOP = offpolicy.LoopConfig(batch_size=16, envs_per_task=2, updates_per_step=1, replay_capacity=256, random_steps=20,
                            total_steps=120, steps_per_chunk=40, eval_episodes=2)
RUN = runner.RunConfig(tasks=TASK, seeds=2, episode_length=25, eval_every=2, checkpoint_every=3,
                       xla_optimization_level=1)


def test_command_line_logger_tensorboard_mirrors_every_metrics_row(tmp_path, monkeypatch):
    monkeypatch.setenv("PUREJAXMT_CACHE_DIR", "")  # keep the test suite's compilation cache
    presets = {"tiny": runner.Preset(agent=AGENT, loop=LOOP, run=RUN)}
    argv = ["--preset", "tiny", "--run.logger", "tensorboard", "--run-dir", str(tmp_path / "run")]
    assert cli.parse_command(presets, argv).run.logger == "tensorboard"
    run_dir = cli.main("test", brc.AGENT_SPEC, presets, argv=argv)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert json.loads((run_dir / "config.json").read_text())["run"]["logger"] == "tensorboard"
    for seed in (0, 1):
        [path] = (run_dir / "tensorboard" / f"seed-{seed}").glob("events.out.tfevents.*")
        points = scalar_points(read_events(path))
        for split in ("train", "eval"):
            tag = f"{split}/{TASK}/return"
            logged = [(row["step"], row[tag]) for row in rows if row["seed"] == seed and row.get(tag) is not None]
            assert logged and (split == "train" or len(logged) == 2)  # eval after chunks 2 and 3 (the last)
            assert [step for step, _ in points[tag]] == [step for step, _ in logged]
            np.testing.assert_allclose([value for _, value in points[tag]], [value for _, value in logged], rtol=1e-6)



def test_a_resume_may_change_how_a_run_is_watched_but_not_what_it_computes(tmp_path):
    """`logger` and `video` are not the run: a resume may turn them on or off (and a run dir written before they
    existed resumes); any other difference still stops the resume."""
    record = rundir.config_record("e", brc.AGENT_SPEC, brc.Config(), offpolicy.LoopConfig(), runner.RunConfig(), "p")
    old = json.loads(json.dumps(record))
    del old["run"]["logger"], old["run"]["video"]  # as a run dir of the previous version has it
    (tmp_path / "config.json").write_text(json.dumps(old))
    rundir.check_resumable(tmp_path, rundir.config_record(
        "e", brc.AGENT_SPEC, brc.Config(), offpolicy.LoopConfig(),
        runner.RunConfig(logger="tensorboard", video=True), "p"))
    with pytest.raises(ValueError, match="run.seeds: saved 1, requested 2"):
        rundir.check_resumable(tmp_path, rundir.config_record(
            "e", brc.AGENT_SPEC, brc.Config(), offpolicy.LoopConfig(), runner.RunConfig(seeds=2), "p"))

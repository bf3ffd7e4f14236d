"""Runs you can trust (issue 22), on test_runner's tiny Pendulum-v1 config (its compiled programs are shared through
the persistent compilation cache): damaged checkpoints are named and skipped, and the run finishes as if nothing had
happened; a diverged learner is reported, alone and inside a vmapped sweep, and never checkpointed; a full disk stops
with one line and the run resumes; config.json records what produced it."""

import dataclasses
import errno
import json
import os
import re
import shutil
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_runner import AGENT, LOOP, RUN, TASKS

from purejaxmt import envs, offpolicy, runner
from purejaxmt.agents import brc
from purejaxmt.runner import checkpoints, devices, loop, provenance, rundir
from purejaxmt.treepaths import leaf_paths

COMPARED = ("critic_loss", "actor_loss", "q_mean", f"train/{TASKS}/return", f"eval/{TASKS}/return")


@pytest.fixture(scope="module")
def env():
    return envs.make(TASKS, episode_length=RUN.episode_length)


@pytest.fixture(scope="module")
def whole(env, tmp_path_factory) -> Path:
    """The uninterrupted run (3 chunks, a checkpoint after each: those of chunks 2 and 3 are kept). Damaging its
    last checkpoint and resuming it re-runs chunk 3 from chunk 2's, which must give the same rows again."""
    run_dir = runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, RUN, env=env,
                         run_dir=tmp_path_factory.mktemp("whole") / "run")
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 3]
    return run_dir


def assert_same_rows(rows: list[dict], expected: list[dict]) -> None:
    assert len(rows) == len(expected) and rows
    for row, want in zip(rows, expected):
        assert (row["chunk"], row["seed"]) == (want["chunk"], want["seed"])
        for name in COMPARED:
            a, b = row.get(name), want.get(name)
            assert (a is None) == (b is None), (row["chunk"], name, a, b)
            if a is not None:
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"chunk {row['chunk']} {name}")


def data_files(run_dir: Path, chunk: int) -> list[Path]:
    """The array data files of a checkpoint step (orbax's OCDBT data), largest first."""
    files = (run_dir / "checkpoints" / str(chunk) / "default").rglob("ocdbt.process_0/d/*")
    return sorted(files, key=lambda f: f.stat().st_size, reverse=True)


def flip_middles(run_dir: Path, chunk: int) -> None:
    """64 random bytes written into the middle of every data file of a step, as the issue did."""
    rng = np.random.default_rng(chunk)
    for path in data_files(run_dir, chunk):
        size = path.stat().st_size
        if size >= 256:
            with open(path, "r+b") as file:
                file.seek(size // 2)
                file.write(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())


def test_flipped_bytes_fall_back_to_the_intact_checkpoint_and_finish_the_same_run(whole, env, tmp_path, capsys):
    damaged = shutil.copytree(whole, tmp_path / "flipped")
    flip_middles(damaged, 3)
    # The run was started under another jax: the resume proceeds and says so.
    config = json.loads((damaged / "config.json").read_text())
    assert config["provenance"]["packages"]["jax"] == jax.__version__
    config["provenance"]["packages"]["jax"] = "0.0.1"
    (damaged / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, RUN, env=env, resume=damaged)
    out = capsys.readouterr().out
    warning = [line for line in out.splitlines() if "is damaged" in line]
    assert len(warning) == 1, out[-3000:]
    # Which leaf the flipped bytes hit depends on how orbax laid out the step's data files (its writes are
    # concurrent): a learner leaf whose digest no longer matches, or a leaf whose data cannot be read at all.
    assert re.search(rf"{re.escape(str(damaged / 'checkpoints' / '3'))} is damaged: leaf \S+ (does not match its "
                     r"digest|cannot be read).*; falling back to chunk 2", warning[0]), warning[0]
    assert "resumed from chunk 2 " in out
    assert f"jax 0.0.1 -> {jax.__version__}" in out
    assert_same_rows(rundir.read_all_metrics(damaged), rundir.read_all_metrics(whole))


def test_a_truncated_file_falls_back_and_all_damaged_fails_clearly(whole, env, tmp_path, capsys):
    damaged = shutil.copytree(whole, tmp_path / "truncated")
    largest = data_files(damaged, 3)[0]
    os.truncate(largest, largest.stat().st_size // 2)
    capsys.readouterr()
    runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, RUN, env=env, resume=damaged)
    out = capsys.readouterr().out
    assert "checkpoints/3 is damaged: leaf " in out and "cannot be read" in out, out[-3000:]
    assert_same_rows(rundir.read_all_metrics(damaged), rundir.read_all_metrics(whole))

    # Both checkpoints damaged: one clear error, and nothing deleted.
    ruined = shutil.copytree(whole, tmp_path / "ruined")
    flip_middles(ruined, 2)
    flip_middles(ruined, 3)
    with pytest.raises(checkpoints.NoIntactCheckpointError,
                       match=r"no intact checkpoint in .*chunk 3: leaf \S+ .*; chunk 2: leaf \S+ "):
        runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, RUN, env=env, resume=ruined)
    assert (ruined / "checkpoints" / "2").is_dir() and (ruined / "checkpoints" / "3").is_dir()
    # A step whose digests are missing (a save cut short after orbax's commit) is not trusted either.
    (ruined / "checkpoints" / "3" / "digests.process-0.json").unlink()
    program = offpolicy.make(brc.AGENT_SPEC, AGENT, LOOP, env)
    template = devices.init_states(program, runner.seed_keys(RUN.seed, RUN.seeds))
    with pytest.raises(ValueError, match=r"checkpoints/3 is damaged: it has no digests.process-0.json"):
        checkpoints.Checkpointer(ruined).restore(3, template)


def diverging_hyper(program: offpolicy.Program) -> offpolicy.Hyper:
    return program.hyper.replace(agent=program.hyper.agent.replace(learning_rate=jnp.float32(1e8)))


def test_a_diverged_run_in_a_sweep_is_reported_and_never_checkpointed_and_the_other_goes_on(whole, env, tmp_path,
                                                                                              capsys):
    program = offpolicy.make(brc.AGENT_SPEC, AGENT, LOOP, env)
    runs = [loop.RunSpec(seed=0, labels={"run": "base/seed-0", "setting": "base"}),
            loop.RunSpec(seed=1, hyper=diverging_hyper(program), labels={"run": "lr=1e8/seed-1", "setting": "lr=1e8"})]
    capsys.readouterr()
    run_dir = runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, RUN, env=env, runs=runs, run_dir=tmp_path / "sweep")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "DIVERGED in" in line]
    assert len(lines) == 1, err[-3000:]  # reported once, in the chunk it happened
    assert "DIVERGED in chunk 1: run seed=1, run=lr=1e8/seed-1, setting=lr=1e8: non-finite" in lines[0], lines[0]
    assert "critic_loss" in lines[0] and "learner leaves (first: learner/" in lines[0]
    assert "1 run(s) diverged" in err
    rows = rundir.read_all_metrics(run_dir)
    bad = [row for row in rows if row["setting"] == "lr=1e8"]
    assert [row["chunk"] for row in bad] == [1, 2, 3]
    assert all(row["diverged"] is True and row["diverged_chunk"] == 1 for row in bad)
    # The other setting went on: its rows are those of seed 0 in the plain 2-seed run (the same program).
    good = [row for row in rows if row["setting"] == "base"]
    assert not any("diverged" in row for row in good)
    assert_same_rows(good, [row for row in rundir.read_all_metrics(whole) if row["seed"] == 0])
    # Its checkpoint holds its last finite learner: here its initial one (it diverged in chunk 1).
    hypers = jax.tree.map(lambda *x: jnp.stack(x), program.hyper, diverging_hyper(program))
    template = devices.init_states(program, jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(1)]), hypers)
    saved = checkpoints.Checkpointer(run_dir).restore(3, template)
    for path, leaf in leaf_paths(saved.learner):
        assert np.all(np.isfinite(np.asarray(leaf))), path
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a)[1], np.asarray(b)[1]), saved.learner,
                 template.learner)
    # ... and the healthy run's is its learner after chunk 3, not its initial one.
    critic = jax.tree.leaves(saved.learner.critic_params)[0]
    assert not np.array_equal(np.asarray(critic)[0], np.asarray(jax.tree.leaves(template.learner.critic_params)[0])[0])


def test_a_run_whose_every_seed_diverges_says_so_and_resumes_diverged(env, tmp_path, capsys):
    config = dataclasses.replace(AGENT, learning_rate=1e8)
    run_dir = runner.run("test", brc.AGENT_SPEC, config, LOOP, RUN, env=env, run_dir=tmp_path / "alone",
                         progress_fn=lambda chunk, rows: chunk < 2)
    err = capsys.readouterr().err
    assert err.count("DIVERGED in chunk 1") == 2 and "2 run(s) diverged" in err, err[-3000:]
    runner.run("test", brc.AGENT_SPEC, config, LOOP, RUN, env=env, resume=run_dir)
    assert "DIVERGED in" not in capsys.readouterr().err  # reported once, not again on the resume
    rows = rundir.read_all_metrics(run_dir)
    assert [row["chunk"] for row in rows] == [1, 1, 2, 2, 3, 3]
    assert all(row["diverged"] and row["diverged_chunk"] == 1 for row in rows)


def test_a_full_disk_stops_with_one_line_and_the_run_resumes(whole, env, tmp_path, monkeypatch, capsys):
    save = checkpoints.ocp.CheckpointManager.save

    def full_at_chunk_2(self, step, *args, **kwargs):
        if step == 2:  # what tensorstore raises, as orbax passes it on
            raise ValueError("RESOURCE_EXHAUSTED: Error writing local file: Failed to write 8421 bytes: No space left "
                             "on device [os_error_code='28']") from OSError(errno.ENOSPC, "No space left on device")
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "save", full_at_chunk_2)
    run_dir = tmp_path / "full"
    with pytest.raises(checkpoints.CheckpointWriteError) as stop:
        runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, RUN, env=env, run_dir=run_dir)
    message = str(stop.value)
    assert isinstance(stop.value, SystemExit) and "\n" not in message
    assert f"disk full: could not write the checkpoint of chunk 2 to {run_dir.absolute() / 'checkpoints'}" in message
    assert "bytes (uncompressed)" in message and "bytes are free" in message
    assert f"the previous checkpoint (chunk 1) is intact: `--resume {run_dir}`" in message
    monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "save", save)  # space is back
    runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, RUN, env=env, resume=run_dir)
    assert "is damaged" not in capsys.readouterr().out
    assert_same_rows(rundir.read_all_metrics(run_dir), rundir.read_all_metrics(whole))


def test_other_failures_of_the_writer_are_not_called_a_full_disk():
    assert checkpoints.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    wrapped = ValueError("write failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "x")
    assert checkpoints.is_disk_full(wrapped)
    assert not checkpoints.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not checkpoints.is_disk_full(ValueError("RESOURCE_EXHAUSTED: out of memory"))


def test_the_pre_flight_warns_when_two_checkpoints_do_not_fit(env, tmp_path, monkeypatch):
    program = offpolicy.make(brc.AGENT_SPEC, AGENT, LOOP, env)
    state = devices.abstract_states(program, runner.seed_keys(RUN.seed, RUN.seeds))
    size = checkpoints.checkpoint_bytes(state)
    assert size == sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state) if leaf.size)
    checkpointer = checkpoints.Checkpointer(tmp_path)
    assert checkpointer.disk_warning(state) is None  # this disk holds it
    monkeypatch.setattr(checkpoints.shutil, "disk_usage",
                        lambda path: types.SimpleNamespace(total=10**12, used=0, free=2 * size))
    warning = checkpointer.disk_warning(state)
    assert warning is not None and f"{tmp_path.absolute() / 'checkpoints'} has " in warning
    assert "2 kept + 1 being written" in warning, warning
    with pytest.raises(ValueError, match="max_to_keep=1"):
        checkpoints.Checkpointer(tmp_path, max_to_keep=1)


def test_config_json_records_what_produced_the_run(whole):
    record = json.loads((whole / "config.json").read_text())["provenance"]
    packages = record["packages"]
    assert set(provenance.PACKAGES) <= set(packages)
    assert packages["jax"] == jax.__version__ and packages["jaxlib"] == jax.__version__
    for name in ("flax", "optax", "orbax-checkpoint", "mujoco", "mujoco-mjx", "playground", "gymnax", "brax"):
        assert packages[name], f"{name} has no version in {packages}"
    assert record["python"].count(".") == 2 and record["devices"]["count"] == jax.device_count()
    assert record["devices"]["kind"] == jax.devices()[0].device_kind
    assert "xla_backend_optimization_level" in record["xla_flags"]  # conftest's
    git = record["git"]
    assert (len(git["commit"]) == 40 and isinstance(git["dirty"], bool)) if git["commit"] else git["why"]


def test_provenance_outside_a_checkout_says_so(tmp_path):
    assert provenance.git_commit(tmp_path)["commit"] is None
    assert "not a git checkout" in provenance.git_commit(tmp_path)["why"]
    now = provenance.record()
    assert provenance.resume_warning({}, now) is None  # a run from before provenance was recorded
    assert provenance.resume_warning({"provenance": now}, now) is None
    older = json.loads(json.dumps(now))
    older["packages"]["mujoco"] = "1.0"
    assert f"mujoco 1.0 -> {now['packages']['mujoco']}" in provenance.resume_warning({"provenance": older}, now)


def test_the_after_run_reader_checks_the_learner_against_the_digests(whole, tmp_path):
    from purejaxmt.runner import saved

    learner = saved.load(whole).learner(1)  # intact: the digests of the whole arrays match the saved ones
    assert np.all(np.isfinite(jax.tree.leaves(learner)[0]))
    copy = shutil.copytree(whole, tmp_path / "copy")
    digest_path = copy / "checkpoints" / "3" / "digests.process-0.json"
    record = json.loads(digest_path.read_text())
    name = "learner/critic_params/params/members/Dense_0/kernel"
    crc, *rest = record["leaves"][name].split()
    record["leaves"][name] = " ".join([f"{int(crc, 16) ^ 1:08x}", *rest])  # as if one bit of the data had flipped
    digest_path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=f"checkpoints/3 is damaged: leaf {name} does not match its digest"):
        saved.load(copy).learner(0)


def test_a_checkpoint_of_another_process_count_is_restored_unverified_and_said(whole, env, tmp_path):
    copy = shutil.copytree(whole, tmp_path / "copy")
    step = copy / "checkpoints" / "3"
    shutil.copy(step / "digests.process-0.json", step / "digests.process-1.json")  # as a 2-process job writes
    program = offpolicy.make(brc.AGENT_SPEC, AGENT, LOOP, env)
    template = devices.init_states(program, runner.seed_keys(RUN.seed, RUN.seeds))
    said = []
    state = checkpoints.Checkpointer(copy).restore(3, template, said.append)
    assert len(said) == 1 and "written by 2 processes and is read by 1" in said[0] and "unverified" in said[0]
    assert int(state.iteration) * LOOP.envs_per_task == LOOP.total_steps

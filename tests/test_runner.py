"""The host runner on a cheap Gymnax task (Pendulum-v1): no host round-trip inside a chunk, seeds, resume from
path-keyed checkpoints, the command line, and clear errors for bad inputs."""

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_keys import LEVEL, LOGGER, compiled_keys

from purejaxmt import cli, envs, offpolicy, runner
from purejaxmt.agents import brc, brc_discrete
from purejaxmt.runner import checkpoints, devices

TASKS = "Pendulum-v1"
AGENT = brc.Config(critic_width=32, critic_depth=1, actor_width=16, num_bins=21)
LOOP = offpolicy.LoopConfig(batch_size=16, envs_per_task=2, updates_per_step=1, replay_capacity=256, random_steps=20,
                            total_steps=120, steps_per_chunk=40, eval_episodes=2)
# Level 1 compiles the runner's programs about twice as fast as XLA's default 3 (this file is compile-bound).
RUN = runner.RunConfig(tasks=TASKS, seeds=2, episode_length=25, eval_every=3, checkpoint_every=1,
                       xla_optimization_level=1)
FAST_COMPILE = {"xla_backend_optimization_level": 1}


@pytest.fixture(scope="module")
def env():
    return envs.make(TASKS, episode_length=RUN.episode_length)


@pytest.fixture(scope="module")
def program(env):
    return offpolicy.make(brc.AGENT_SPEC, AGENT, LOOP, env)


@pytest.fixture(scope="module")
def compiled_chunk(program):
    """The vmapped chunk over 2 seeds, compiled once for the module."""
    states = devices.init_states(program, runner.seed_keys(RUN.seed, RUN.seeds))
    return jax.jit(runner.vmap_train_chunk(program, states)).lower(states).compile(compiler_options=FAST_COMPILE)


def run_chunks(compiled_chunk, program, run_config, n):
    states = devices.init_states(program, runner.seed_keys(run_config.seed, run_config.seeds))
    metrics = []
    for _ in range(n):
        states, m = compiled_chunk(states)
        metrics.append(jax.device_get(m))
    return states, metrics


def test_chunk_has_no_host_round_trip(compiled_chunk, program):
    hlo = compiled_chunk.as_text()
    for pattern in (r"\bsend\(", r"\brecv\(", r"\binfeed\(", r"\boutfeed\(", r"callback", r"host"):
        assert not re.search(pattern, hlo, flags=re.IGNORECASE), f"compiled chunk HLO contains {pattern!r}"
    states = devices.init_states(program, runner.seed_keys(RUN.seed, RUN.seeds))
    with jax.transfer_guard("disallow"):
        states, metrics = compiled_chunk(states)
    assert np.all(np.asarray(metrics["step"]) == LOOP.steps_per_chunk)


def test_seeds_are_reproducible_and_independent(compiled_chunk, program):
    _, first = run_chunks(compiled_chunk, program, RUN, 2)
    _, again = run_chunks(compiled_chunk, program, RUN, 2)
    for a, b in zip(first, again):  # same seeds: bitwise the same metrics
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)
    loss = first[-1]["critic_loss"]
    assert np.all(np.isfinite(loss)) and loss[0] != loss[1], "different seeds gave the same run"
    # Seed i of the vmapped program equals the same seed run on its own (seed = 1 alone, through a shifted RunConfig
    # whose second seed is 2: row 0 of that run is seed 1).
    _, shifted = run_chunks(compiled_chunk, program, dataclasses.replace(RUN, seed=1), 2)
    for a, b in zip(first, shifted):
        np.testing.assert_allclose(a["critic_loss"][1], b["critic_loss"][0], rtol=1e-5)
        np.testing.assert_allclose(a["reward_mean"][1], b["reward_mean"][0], rtol=1e-5)


def test_vmapped_seed_equals_a_single_unvmapped_run(compiled_chunk, program):
    _, vmapped = run_chunks(compiled_chunk, program, RUN, 2)
    # Seed 1 (row 1 of the vmapped run) on its own: no vmap anywhere, the same key `PRNGKey(RUN.seed + 1)`.
    state = program.init(jax.random.PRNGKey(RUN.seed + 1), program.hyper)
    state = jax.tree.map(lambda x: jnp.array(x, copy=True), state)
    single_chunk = jax.jit(program.train_chunk).lower(state).compile(compiler_options=FAST_COMPILE)
    for chunk in vmapped:
        state, single = jax.device_get(single_chunk(state))
        # Batched and unbatched matmuls may sum in another order: equal up to float32 rounding, not bitwise.
        for name in ("critic_loss", "actor_loss", "q_mean", "reward_mean", "temperature"):
            np.testing.assert_allclose(chunk[name][1], single[name], rtol=1e-4, atol=1e-6, err_msg=name)
        assert chunk["step"][1] == single["step"]


def _subjaxprs(eqn):
    for param in eqn.params.values():
        for inner in param if isinstance(param, (tuple, list)) else (param,):
            inner = getattr(inner, "jaxpr", inner)
            if hasattr(inner, "eqns"):
                yield inner


def _primitives(jaxpr) -> list[str]:
    """Names of every primitive in a jaxpr, nested jaxprs (scan bodies, cond branches, pjit) included."""
    return [name for eqn in jaxpr.eqns
            for name in (eqn.primitive.name, *(n for inner in _subjaxprs(eqn) for n in _primitives(inner)))]


def _conds_around_matmuls(jaxpr) -> int:
    """How many `cond`s have a branch with a matmul in it (the one that skips the updates, the one that acts)."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "cond" and any("dot_general" in _primitives(b.jaxpr) for b in eqn.params["branches"]):
            count += 1
        count += sum(_conds_around_matmuls(inner) for inner in _subjaxprs(eqn))
    return count


def test_vmapped_chunk_keeps_the_lockstep_conds_conds(program):
    """The iteration and update counters are lockstep (unbatched) in the runner's state, so the conds on them (skip
    the updates, act at random during the random phase) stay conds under the seed vmap, not selects that run both
    branches."""
    states = devices.init_states(program, runner.seed_keys(RUN.seed, RUN.seeds))
    assert states.iteration.shape == () and states.num_updates.shape == ()
    assert states.learner.log_temperature.shape == (RUN.seeds,)
    vmapped = jax.make_jaxpr(runner.vmap_train_chunk(program, states))(states).jaxpr
    single = jax.make_jaxpr(program.train_chunk)(program.init(jax.random.PRNGKey(0), program.hyper)).jaxpr
    assert _conds_around_matmuls(single) == 2
    assert _conds_around_matmuls(vmapped) == 2, "under vmap a lockstep cond became a select"


def test_checkpoints_are_keyed_by_leaf_path(program):
    state = program.init(jax.random.PRNGKey(0), program.hyper)
    saved = checkpoints.to_saveable(state)
    kernel = saved["learner"]["critic_params"]["params"]
    assert "learner/log_temperature () float32" in checkpoints.state_layout(state)
    assert jax.tree.leaves(kernel) and saved["iteration"] is state.iteration
    back = checkpoints.from_saveable(saved, state)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), back, state)


def _rows(run_dir, chunk):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["chunk"] == chunk]


def _comparable(row):
    return {k: v for k, v in row.items() if k not in ("wall_time", "env_steps_per_second")}


def test_kill_and_resume_gives_the_same_run(tmp_path, env, caplog):
    with caplog.at_level(LEVEL, logger=LOGGER):
        whole = runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, RUN, env=env, run_dir=tmp_path / "whole")
    fresh = compiled_keys(caplog.records)
    caplog.clear()
    stopped = runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, RUN, env=env, run_dir=tmp_path / "resumed",
                         progress_fn=lambda chunk, rows: chunk < 1)
    assert [r["chunk"] for r in map(json.loads, (stopped / "metrics.jsonl").read_text().splitlines())] == [1, 1]
    with caplog.at_level(LEVEL, logger=LOGGER):
        resumed = runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, RUN, env=env, resume=stopped)
    # The restored state has the fresh state's shardings: a resume compiles the fresh run's programs (cache hits).
    restored = compiled_keys(caplog.records)
    for name in ("jit_train_chunk", "jit_evaluate_at"):
        assert len(fresh[name]) == 1 and restored[name] == fresh[name], (name, fresh, restored)
    assert [_comparable(r) for r in _rows(resumed, 3)] == [_comparable(r) for r in _rows(whole, 3)]
    assert all(r.get(f"eval/{TASKS}/return") is not None for r in _rows(resumed, 3))
    assert all(r.get(f"train/{TASKS}/return") is not None and r["step"] == 120 for r in _rows(resumed, 3))
    cli.after_run(resumed, RUN, finished=True)  # plots are an after-run job, outside the loop
    assert (resumed / "plots" / f"{TASKS}.png").stat().st_size > 0
    config = json.loads((resumed / "config.json").read_text())
    assert config["agent"]["critic_width"] == AGENT.critic_width and config["run"]["tasks"] == TASKS
    assert config["loop"]["batch_size"] == LOOP.batch_size

    # A checkpoint written for another run-state layout (here: a state without log_temperature) is refused.
    layout_path = resumed / checkpoints.STATE_LAYOUT
    layout = json.loads(layout_path.read_text())
    assert any("learner/log_temperature" in leaf for leaf in layout)
    layout_path.write_text(json.dumps([leaf for leaf in layout if "learner/log_temperature" not in leaf]))
    with pytest.raises(ValueError, match=r"another run-state layout.*log_temperature"):
        runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, RUN, env=env, resume=resumed)


def test_train_minutes_stops_after_a_chunk_with_an_evaluation_and_resumes(tmp_path, env, capsys):
    """A budget spent by the first chunk: the run stops after it, evaluated there (eval_every=3 would not), and
    checkpointed; a resume may drop the budget, and finishes the run."""
    budget = dataclasses.replace(RUN, train_minutes=1e-6)
    stopped = runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, budget, env=env, run_dir=tmp_path / "budget")
    rows = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert [row["chunk"] for row in rows] == [1, 1]
    assert all(np.isfinite(row[f"eval/{TASKS}/return"]) for row in rows)
    assert "train_minutes=1e-06 spent" in capsys.readouterr().out
    resumed = runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, RUN, env=env, resume=stopped)
    assert [row["chunk"] for row in map(json.loads, (resumed / "metrics.jsonl").read_text().splitlines())] == [
        1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="train_minutes=0"):
        dataclasses.replace(RUN, train_minutes=0)


def test_bad_inputs_fail_clearly_and_write_nothing(tmp_path, env):
    with pytest.raises(ValueError, match="no-such-task"):
        runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, dataclasses.replace(RUN, tasks="Pendulum-v1,no-such-task"),
                   run_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="envs_per_task=0"):
        dataclasses.replace(LOOP, envs_per_task=0)
    with pytest.raises(ValueError, match="xla_optimization_level=4"):
        dataclasses.replace(RUN, xla_optimization_level=4)
    with pytest.raises(ValueError, match="batch_size=1 is smaller than the number of tasks 2"):
        runner.run("test", brc.AGENT_SPEC, AGENT, dataclasses.replace(LOOP, batch_size=1),
                   dataclasses.replace(RUN, tasks="classic-continuous"), run_dir=tmp_path / "b")
    with pytest.raises(ValueError, match=r"minimal_action_set=True does not apply to tasks \['Pendulum-v1'\]"):
        runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, dataclasses.replace(RUN, minimal_action_set=True),
                   run_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="brc is for continuous actions"):
        runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, dataclasses.replace(RUN, tasks="CartPole-v1"),
                   run_dir=tmp_path / "d")
    with pytest.raises(ValueError, match=r"the env given to run has tasks \['Pendulum-v1'\].*MountainCarContinuous"):
        runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, dataclasses.replace(RUN, tasks="MountainCarContinuous-v0"),
                   env=env, run_dir=tmp_path / "e")
    with pytest.raises(ValueError, match=r"episode lengths \[25\].*episode_length=30"):
        runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, dataclasses.replace(RUN, episode_length=30), env=env,
                   run_dir=tmp_path / "f")
    assert not any((tmp_path / name).exists() for name in "abcdef")


def test_command_line_presets_shorthands_and_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # one column of options
    presets = {"tiny": runner.Preset(agent=brc_discrete.Config(critic_width=8), loop=LOOP,
                                     run=runner.RunConfig(tasks="minatar"), description="a tiny preset")}
    command = cli.parse_command(presets, ["--preset", "tiny", "--run.minimal-action-set", "--steps", "80",
                                             "--seeds", "3", "--agent.learning-rate", "0.001"])
    assert command.run.minimal_action_set and command.loop.total_steps == 80 and command.run.seeds == 3
    assert command.agent.learning_rate == 0.001 and not command.single_task_baselines
    # The README's `--run.train-minutes 20` (the fast preset's 20-minute goal).
    assert cli.parse_command(presets, ["--preset", "tiny", "--run.train-minutes", "20"]).run.train_minutes == 20.0
    np.testing.assert_array_equal(runner.make_env(command.run).spec.action.mask.sum(1), [3, 5, 3, 4])
    assert runner.make_env(cli.parse_command(presets, ["--preset", "tiny"]).run).spec.action.mask.all()
    with pytest.raises(SystemExit, match="unknown --preset 'huge'"):
        cli.parse_command(presets, ["--preset", "huge"])
    with pytest.raises(SystemExit):
        cli.parse_command(presets, ["--preset", "tiny", "--help"])
    help_text = " ".join(capsys.readouterr().out.replace("│", " ").split())  # wrapped lines joined
    assert "'tiny': a tiny preset" in help_text, help_text
    # A field's help is its docstring, not a section comment above it.
    assert "--agent.learning-rate FLOAT AdamW step size" in help_text, help_text
    assert not re.search(r"-- [a-z][a-z ]* --(?![\w-])", help_text), "a section comment leaked into the help"


def test_resume_and_run_dir_guards(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, RUN, run_dir=run_dir)
    assert (run_dir / "notes.txt").read_text() == "mine"

    saved = json.loads(json.dumps({  # as JSON has it (tuples become lists)
        "experiment": "test", "agent_module": brc.__name__, "preset": None, "agent": dataclasses.asdict(AGENT),
        "loop": dataclasses.asdict(LOOP), "run": dataclasses.asdict(RUN)}))
    (run_dir / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"agent.critic_width: saved 32, requested 64"):
        runner.run("test", brc.AGENT_SPEC, dataclasses.replace(AGENT, critic_width=64), LOOP, RUN, resume=run_dir)
    assert json.loads((run_dir / "config.json").read_text()) == saved
    with pytest.raises(ValueError, match="has no state_layout.json"):  # a run dir from before the layout check
        runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, RUN, resume=run_dir)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        runner.run("test", brc.AGENT_SPEC, AGENT, LOOP, RUN, resume=tmp_path / "missing")


def test_a_run_directory_finds_its_agent_by_the_recorded_name(tmp_path):
    """config.json records the agent's `AgentSpec.name`; the saved-run reader finds the spec by it, and names an
    agent it cannot load (no such module, or a module without an `AGENT_SPEC`)."""
    from purejaxmt.agents import load_spec
    from purejaxmt.runner import rundir, saved

    assert brc.AGENT_SPEC.name == "purejaxmt.agents.brc" and load_spec(brc.AGENT_SPEC.name) is brc.AGENT_SPEC
    assert load_spec(brc_discrete.AGENT_SPEC.name) is brc_discrete.AGENT_SPEC
    record = json.loads(json.dumps(rundir.config_record("test", brc.AGENT_SPEC, AGENT, LOOP, RUN, "tiny")))
    assert record["agent_module"] == "purejaxmt.agents.brc"
    assert saved.configs_of(record, tmp_path)["agent_spec"] is brc.AGENT_SPEC
    for name, reason in (("purejaxmt.agents.nothing", "No module named"), ("purejaxmt.nets", "AGENT_SPEC")):
        message = rf"names agent module '{re.escape(name)}', which cannot be loaded.*{reason}"
        with pytest.raises(ValueError, match=message):
            saved.configs_of({**record, "agent_module": name}, tmp_path)

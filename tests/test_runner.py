"""The training loop and the host runner on a cheap MJX task: no host round-trip inside a chunk, seeds, resume,
and clear errors for bad inputs."""

import dataclasses
import json
import re

import jax
import numpy as np
import pytest

from purejaxmt import brc, brc_discrete, runner

TASKS = "cartpole-balance"
AGENT = brc.Config(critic_width=32, critic_depth=1, actor_width=16, num_bins=21, batch_size=16, envs_per_task=2,
                   updates_per_step=1, replay_capacity=256, random_steps=20, total_steps=120, steps_per_chunk=40,
                   eval_episodes=2)
# Level 1 compiles the runner's programs about twice as fast as XLA's default 3 (this file is compile-bound).
RUN = runner.RunConfig(tasks=TASKS, seeds=2, episode_length=25, eval_every=3, checkpoint_every=1,
                       xla_optimization_level=1)
FAST_COMPILE = {"xla_backend_optimization_level": 1}


@pytest.fixture(scope="module")
def env():
    from purejaxmt import envs
    return envs.make(TASKS, episode_length=RUN.episode_length)


@pytest.fixture(scope="module")
def compiled_chunk(env):
    """The vmapped chunk over 2 seeds, compiled once for the module."""
    states = runner.init_states(brc, AGENT, env, RUN)
    return jax.jit(runner.vmap_train_chunk(brc, states)).lower(states).compile(compiler_options=FAST_COMPILE)


def run_chunks(compiled_chunk, env, run_config, n):
    states = runner.init_states(brc, AGENT, env, run_config)
    metrics = []
    for _ in range(n):
        states, m = compiled_chunk(states)
        metrics.append(jax.device_get(m))
    return states, metrics


def test_chunk_has_no_host_round_trip(compiled_chunk, env):
    hlo = compiled_chunk.as_text()
    for pattern in (r"\bsend\(", r"\brecv\(", r"\binfeed\(", r"\boutfeed\(", r"callback", r"host"):
        assert not re.search(pattern, hlo, flags=re.IGNORECASE), f"compiled chunk HLO contains {pattern!r}"
    states = runner.init_states(brc, AGENT, env, RUN)
    with jax.transfer_guard("disallow"):
        states, metrics = compiled_chunk(states)
    assert np.all(np.asarray(metrics["env_steps"]) == AGENT.steps_per_chunk)


def test_seeds_are_reproducible_and_independent(compiled_chunk, env):
    _, first = run_chunks(compiled_chunk, env, RUN, 2)
    _, again = run_chunks(compiled_chunk, env, RUN, 2)
    for a, b in zip(first, again):  # same seeds: bitwise the same metrics
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)
    loss = first[-1]["critic_loss"]
    assert np.all(np.isfinite(loss)) and loss[0] != loss[1], "different seeds gave the same run"
    # Seed i of the vmapped program equals the same seed run on its own (seed = 1 alone, through a shifted RunConfig
    # whose second seed is 2: row 0 of that run is seed 1).
    shifted = dataclasses.replace(RUN, seed=1)
    _, shifted_metrics = run_chunks(compiled_chunk, env, shifted, 2)
    for a, b in zip(first, shifted_metrics):
        np.testing.assert_allclose(a["critic_loss"][1], b["critic_loss"][0], rtol=1e-5)
        np.testing.assert_allclose(a["reward_mean"][1], b["reward_mean"][0], rtol=1e-5)


def test_vmapped_seed_equals_a_single_unvmapped_run(compiled_chunk, env):
    _, vmapped = run_chunks(compiled_chunk, env, RUN, 2)
    # Seed 1 (row 1 of the vmapped run) on its own: no vmap anywhere, the same key `PRNGKey(RUN.seed + 1)`.
    state = brc.init(jax.random.PRNGKey(RUN.seed + 1), AGENT, env)
    state = jax.tree.map(lambda x: jax.numpy.array(x, copy=True), state)
    single_chunk = jax.jit(brc.train_chunk).lower(state).compile(compiler_options=FAST_COMPILE)
    for chunk in vmapped:
        state, single = single_chunk(state)
        single = jax.device_get(single)
        # Batched and unbatched matmuls may sum in another order: equal up to float32 rounding, not bitwise.
        for name in ("critic_loss", "actor_loss", "q_mean", "reward_mean", "temperature"):
            np.testing.assert_allclose(chunk[name][1], single[name], rtol=1e-4, atol=1e-6, err_msg=name)
        assert chunk["env_steps"][1] == single["env_steps"]


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
    """How many `cond`s have a branch with a matmul in it (in the chunk: the one that skips the updates)."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "cond" and any("dot_general" in _primitives(b.jaxpr) for b in eqn.params["branches"]):
            count += 1
        count += sum(_conds_around_matmuls(inner) for inner in _subjaxprs(eqn))
    return count


def test_vmapped_chunk_keeps_the_update_cond_a_cond(env):
    """The iteration and update counters are lockstep (unbatched) in the runner's state, so the cond that skips the
    updates during the random phase is still a cond under the seed vmap, not a select that runs them anyway."""
    states = runner.init_states(brc, AGENT, env, RUN)
    assert states.iteration.shape == () and states.num_updates.shape == ()
    assert states.log_temperature.shape == (RUN.seeds,)
    vmapped = jax.make_jaxpr(runner.vmap_train_chunk(brc, states))(states).jaxpr
    single = jax.make_jaxpr(brc.train_chunk)(brc.init(jax.random.PRNGKey(0), AGENT, env)).jaxpr
    assert _conds_around_matmuls(single) == 1
    assert _conds_around_matmuls(vmapped) == 1, "under vmap the update cond became a select"


def _rows(run_dir, chunk):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["chunk"] == chunk]


def _comparable(row):
    return {k: v for k, v in row.items() if k not in ("wall_time", "env_steps_per_second")}


def test_kill_and_resume_gives_the_same_run(tmp_path):
    whole = runner.run("test", brc, AGENT, RUN, run_dir=tmp_path / "whole")
    stopped = runner.run("test", brc, AGENT, RUN, run_dir=tmp_path / "resumed",
                         progress_fn=lambda chunk, rows: chunk < 1)
    assert [r["chunk"] for r in map(json.loads, (stopped / "metrics.jsonl").read_text().splitlines())] == [1, 1]
    resumed = runner.run("test", brc, AGENT, RUN, resume=stopped)
    assert [_comparable(r) for r in _rows(resumed, 3)] == [_comparable(r) for r in _rows(whole, 3)]
    assert all(r.get(f"eval/{TASKS}/return") is not None for r in _rows(resumed, 3))
    assert (resumed / "plots" / f"{TASKS}.png").stat().st_size > 0
    config = json.loads((resumed / "config.json").read_text())
    assert config["agent_config"]["critic_width"] == AGENT.critic_width and config["run"]["tasks"] == TASKS

    # A checkpoint written for another train-state layout (here: a state without log_temperature) is refused.
    layout_path = resumed / runner.STATE_LAYOUT
    layout = json.loads(layout_path.read_text())
    assert any(".log_temperature" in leaf for leaf in layout)
    layout_path.write_text(json.dumps([leaf for leaf in layout if ".log_temperature" not in leaf]))
    with pytest.raises(ValueError, match=r"another train-state layout.*log_temperature"):
        runner.run("test", brc, AGENT, dataclasses.replace(RUN), resume=resumed)


def test_bad_inputs_fail_clearly_and_write_nothing(tmp_path):
    with pytest.raises(ValueError, match="no-such-task"):
        runner.run("test", brc, AGENT, dataclasses.replace(RUN, tasks="humanoid-stand,no-such-task"),
                   run_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="envs_per_task=0"):
        dataclasses.replace(AGENT, envs_per_task=0)
    with pytest.raises(ValueError, match="xla_optimization_level=4"):
        dataclasses.replace(RUN, xla_optimization_level=4)
    with pytest.raises(ValueError, match="batch_size=2 is smaller than the number of tasks 3"):
        runner.run("test", brc, dataclasses.replace(AGENT, batch_size=2),
                   dataclasses.replace(RUN, tasks="cartpole-balance,cartpole-swingup,pendulum-swingup"),
                   run_dir=tmp_path / "b")
    with pytest.raises(ValueError, match=r"minimal_action_set=True does not apply to tasks \['cartpole-balance'\]"):
        runner.run("test", brc, AGENT, dataclasses.replace(RUN, minimal_action_set=True), run_dir=tmp_path / "c")
    assert not any((tmp_path / name).exists() for name in "abc")


def test_minimal_action_sets_from_the_command_line():
    presets = {"tiny": runner.Preset(agent=brc_discrete.Config(width=8), run=runner.RunConfig(tasks="minatar"))}
    command = runner.parse_command(presets, ["--preset", "tiny", "--run.minimal-action-set"])
    assert command.run.minimal_action_set
    np.testing.assert_array_equal(runner.make_env(command.run).action_mask.sum(1), [3, 5, 3, 4])
    default = runner.parse_command(presets, ["--preset", "tiny"])
    assert runner.make_env(default.run).action_mask.all()


def test_resume_and_run_dir_guards(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        runner.run("test", brc, AGENT, RUN, run_dir=run_dir)
    assert (run_dir / "notes.txt").read_text() == "mine"

    saved = {"experiment": "test", "agent": "purejaxmt.brc", "preset": None, "run": dataclasses.asdict(RUN),
             "agent_config": dataclasses.asdict(AGENT)}
    (run_dir / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"agent_config.critic_width: saved 32, requested 64"):
        runner.run("test", brc, dataclasses.replace(AGENT, critic_width=64), RUN, resume=run_dir)
    assert json.loads((run_dir / "config.json").read_text()) == saved
    with pytest.raises(ValueError, match="has no state_layout.json"):  # a run dir from before the layout check
        runner.run("test", brc, AGENT, RUN, resume=run_dir)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        runner.run("test", brc, AGENT, RUN, resume=tmp_path / "missing")

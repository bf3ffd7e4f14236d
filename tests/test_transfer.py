"""Transfer (`purejaxmt.studies.transfer`, `experiments/transfer.py`): growing the task-embedding table of a trained
learner, the `embedding` mode's freeze (one update changes only the new rows), the `all` mode (everything learns), bad
inputs, humanoid speed tasks, and the experiment end to end on a tiny cartpole source (its frozen trunks checked bit
for bit against the source checkpoint after training)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_keys import LEVEL, LOGGER, compiled_keys

from purejaxmt import envs
from purejaxmt.agents import brc, brc_discrete
from purejaxmt.envs import ActionSpec, EnvSpec
from purejaxmt.runner import checkpoints, saved
from purejaxmt.studies import transfer
from purejaxmt.treepaths import leaf_paths

OBS_DIM, ACTION_DIM, PER_TASK = 5, 2, 6
SOURCE, TASKS = ("a", "b", "c"), ("a", "b", "c", "d", "e")
CONFIG = brc.Config(critic_width=32, critic_depth=1, actor_width=16, num_bins=21, embed_dim=8)


def spec(tasks: tuple[str, ...], obs_dim: int = OBS_DIM) -> EnvSpec:
    return EnvSpec(task_names=tasks, obs_shape=(obs_dim,), obs_dtype=np.float32,
                   action=ActionSpec(discrete=False, size=ACTION_DIM, mask=np.ones((len(tasks), ACTION_DIM), bool)),
                   episode_length=(50,) * len(tasks))


def perturbed(learner: brc.Learner, seed: int) -> brc.Learner:
    """Every float leaf moved by noise: a "trained" learner whose target critic, moments and temperature are not
    their init values (a mix-up would show)."""
    leaves, treedef = jax.tree.flatten(learner)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(leaves)))
    return jax.tree.unflatten(treedef, [
        x + 0.1 * jax.random.normal(next(keys), x.shape) if jnp.issubdtype(x.dtype, jnp.floating) else x
        for x in leaves])


def as_saved(learner: brc.Learner) -> dict:
    """What `saved.SavedRun.learner` gives: the checkpoint's nested dict of NumPy arrays."""
    return jax.tree.map(np.asarray, checkpoints.to_saveable(learner))


@pytest.fixture(scope="module")
def source_learner() -> brc.Learner:
    agent = brc.Agent(CONFIG, spec(SOURCE))
    return perturbed(agent.init(jax.random.PRNGKey(0), brc.Hyper.from_config(CONFIG)), seed=1)


def target(mode: str) -> tuple[brc.Agent, brc.Config]:
    config = transfer.agent_config(CONFIG, SOURCE, TASKS, mode)
    return brc.Agent(config, spec(TASKS)), config


def paths(tree) -> dict[str, np.ndarray]:
    return {"/".join(path): np.asarray(leaf) for path, leaf in leaf_paths(tree)}


@pytest.fixture(scope="module")
def grown(source_learner) -> brc.Learner:
    agent, config = target("embedding")
    template = jax.eval_shape(agent.init, jax.random.PRNGKey(0), brc.Hyper.from_config(config))
    return jax.tree.map(jnp.asarray, transfer.grow(as_saved(source_learner), template, SOURCE, TASKS))


def test_growing_keeps_every_trained_leaf_and_row_and_initialises_the_new_rows(source_learner, grown):
    before, after = paths(source_learner), paths(grown)
    assert set(before) == set(after)
    tables = [name for name in after if "task_embedding" in name]
    assert len(tables) == 4  # online, target, and the online table's two Adam moments
    for name, value in after.items():
        if name not in tables:
            np.testing.assert_array_equal(value, before[name], err_msg=name)
            continue
        assert value.shape == (len(TASKS), CONFIG.embed_dim)
        np.testing.assert_array_equal(value[:3], before[name], err_msg=name)  # a, b, c keep their rows
        if name.startswith("critic_opt_state"):
            np.testing.assert_array_equal(value[3:], 0.0)                      # fresh moments for d, e
        else:  # the mean direction of the trained (unit-norm) rows, as a unit vector, for both new tasks
            unit = before[name] / np.linalg.norm(before[name], axis=-1, keepdims=True)
            expected = unit.mean(axis=0) / np.linalg.norm(unit.mean(axis=0))
            np.testing.assert_allclose(value[3], expected, rtol=1e-5)
            np.testing.assert_array_equal(value[3], value[4])


def random_batch(num_tasks: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    size = num_tasks * PER_TASK
    return jax.tree.map(jnp.asarray, {
        "task_id": np.repeat(np.arange(num_tasks), PER_TASK).astype(np.int32),
        "obs": rng.standard_normal((size, OBS_DIM)).astype(np.float32),
        "action": rng.uniform(-1, 1, (size, ACTION_DIM)).astype(np.float32),
        "reward": rng.normal(0.0, 2.0, size).astype(np.float32),
        "next_obs": rng.standard_normal((size, OBS_DIM)).astype(np.float32),
        "terminal": rng.random(size) < 0.2,
        "truncated": np.zeros(size, bool),
        "discount": np.full(size, 0.99, np.float32),
    })


def one_update(mode: str, learner: brc.Learner) -> brc.Learner:
    agent, config = target(mode)
    update = jax.jit(agent.update)
    new, _ = update(learner, brc.Hyper.from_config(config), random_batch(len(TASKS)), jnp.ones(len(TASKS)),
                    jax.random.PRNGKey(3), jnp.int32(0))
    return new


def test_embedding_mode_changes_only_the_new_rows(grown):
    before, after = paths(grown), paths(one_update("embedding", grown))
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    tables = {name for name in before if "task_embedding" in name}
    counts = {name for name in before if name.startswith("critic_opt_state") and before[name].ndim == 0}
    assert changed - tables - counts == {"policy_entropy"}  # a statistic of the batch, read by nothing here
    assert tables <= changed and counts <= changed
    for name in tables:
        np.testing.assert_array_equal(after[name][:3], before[name][:3], err_msg=name)
        assert not np.array_equal(after[name][3:], before[name][3:]), name


def test_all_mode_changes_everything(grown):
    before, after = paths(grown), paths(one_update("all", grown))
    unchanged = {name for name in before if np.array_equal(before[name], after[name])}
    assert unchanged == set(), unchanged


def test_the_freeze_is_data_a_vmap_over_modes_gives_each_mode(grown):
    """`embedding` and `all` share one program: vmapped over their `Hyper`s, each row equals its own update."""
    agent, config = target("all")
    hypers = jax.tree.map(lambda *xs: jnp.stack(xs), brc.Hyper.from_config(dataclasses.replace(config,
                          freeze_trained=True)), brc.Hyper.from_config(config))
    learners = jax.tree.map(lambda x: jnp.stack([x, x]), grown)
    batched, _ = jax.jit(jax.vmap(agent.update, in_axes=(0, 0, None, None, None, None)))(
        learners, hypers, random_batch(len(TASKS)), jnp.ones(len(TASKS)), jax.random.PRNGKey(3), jnp.int32(0))
    for row, mode in enumerate(("embedding", "all")):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
                     jax.tree.map(lambda x, row=row: x[row], batched), one_update(mode, grown))


def test_bad_inputs_name_what_is_wrong(source_learner, tmp_path):
    agent, config = target("all")
    template = jax.eval_shape(agent.init, jax.random.PRNGKey(0), brc.Hyper.from_config(config))
    with pytest.raises(ValueError, match="observation or action sizes"):  # a source of another observation size
        other = brc.Agent(CONFIG, spec(SOURCE, obs_dim=OBS_DIM + 2))
        transfer.grow(as_saved(other.init(jax.random.PRNGKey(0), brc.Hyper.from_config(CONFIG))), template,
                      SOURCE, TASKS)
    with pytest.raises(ValueError, match="another agent"):  # a checkpoint of the discrete agent
        discrete_spec = EnvSpec(task_names=SOURCE, obs_shape=(OBS_DIM,), obs_dtype=np.float32,
                                action=ActionSpec(discrete=True, size=3, mask=np.ones((3, 3), bool)),
                                episode_length=(50,) * 3)
        config_d = brc_discrete.Config(critic_width=32, critic_depth=1, num_bins=21, embed_dim=8)
        learner_d = brc_discrete.Agent(config_d, discrete_spec).init(jax.random.PRNGKey(0),
                                                                      brc_discrete.Hyper.from_config(config_d))
        transfer.grow(as_saved(learner_d), template, SOURCE, TASKS)
    with pytest.raises(ValueError, match="drop source tasks"):
        transfer.grow(as_saved(source_learner), template, SOURCE, ("a", "d", "e", "f", "g"))
    with pytest.raises(ValueError, match="name at least one new task"):
        transfer.task_set(SOURCE, ("b",))
    with pytest.raises(ValueError, match="transfer mode 'frozen'"):
        transfer.agent_config(CONFIG, SOURCE, TASKS, "frozen")
    with pytest.raises(ValueError, match="needs a source trained with 'embedding'"):
        transfer.agent_config(dataclasses.replace(CONFIG, task_conditioning="one_hot"), SOURCE, TASKS)
    with pytest.raises(ValueError, match="freeze_trained=True needs new_task_rows"):
        brc.Config(freeze_trained=True)
    with pytest.raises(ValueError, match=r"new_task_rows=\(7,\)"):
        brc.Agent(dataclasses.replace(CONFIG, new_task_rows=(7,)), spec(TASKS))
    with pytest.raises(FileNotFoundError, match="no run directory"):
        saved.load(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"agent_module": "purejaxmt.agents.brc"}))
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        saved.load(tmp_path)


def test_humanoid_speed_tasks():
    assert envs.resolve("humanoid-walk,humanoid-speed-4,humanoid-speed-0.5") == (
        "humanoid-walk", "humanoid-speed-4", "humanoid-speed-0.5")
    for bad in ("humanoid-speed-fast", "humanoid-speed--1", "humanoid-speed-", "humanoid-speed-1e3"):
        with pytest.raises(ValueError, match="non-negative decimal number"):
            envs.resolve(bad)
    from purejaxmt.envs import playground

    assert [playground.humanoid_speed(t) for t in ("humanoid-stand", "humanoid-run", "humanoid-speed-7",
                                                   "cartpole-swingup")] == [0.0, 10.0, 7.0, None]


def test_speed_tasks_share_the_humanoid_family_with_their_speeds():
    """One `HumanoidFamily` for named and speed tasks, its per-task target speeds parsed from the names (the traced
    speed's reward equals Playground's per task: tests/test_envs.py)."""
    from purejaxmt.envs import playground

    families = playground.build(("humanoid-walk", "cartpole-balance", "humanoid-speed-4", "humanoid-speed-0.5"))
    assert [type(f).__name__ for f in families] == ["HumanoidFamily", "PlaygroundFamily"]
    assert families[0].task_names == ("humanoid-walk", "humanoid-speed-4", "humanoid-speed-0.5")
    np.testing.assert_array_equal(families[0].move_speeds, np.float32([1.0, 4.0, 0.5]))


def load_experiment():
    path = Path(__file__).parent.parent / "experiments" / "transfer.py"
    module_spec = importlib.util.spec_from_file_location("transfer_experiment", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # its dataclasses look their module up
    module_spec.loader.exec_module(module)
    return module


def test_transfer_experiment_end_to_end(tmp_path, caplog):
    """The smoke preset: a 2-task cartpole source, then scratch / embedding / all on 3 tasks over 2 seeds. After the
    transfer run, the `embedding` runs' trunks equal the source's bit for bit and their new rows moved; the `all`
    runs' trunks moved; the report names the three modes; a finished experiment is not run again on --resume."""
    experiment = load_experiment()
    with caplog.at_level(LEVEL, logger=LOGGER):
        out = experiment.main(experiment.Args(preset="smoke", out=tmp_path / "exp", reps=100))  # a quicker report
    fresh = compiled_keys(caplog.records)
    source, after = saved.load(out / "source"), saved.load(out / "transfer")
    assert after.task_names == ("cartpole-balance", "cartpole-swingup", "cartpole-balance-sparse")
    assert after.num_runs == 6 and after.agent_config.new_task_rows == (2,)
    for seed in range(2):
        trained = paths(source.learner(seed))
        for mode, run in (("embedding", 2 + seed), ("all", 4 + seed)):
            final = paths(after.learner(run))
            trunk = [name for name in trained if "task_embedding" not in name and name != "policy_entropy"
                     and not (name.startswith("critic_opt_state") and trained[name].ndim == 0)]
            same = [np.array_equal(final[name], trained[name]) for name in trunk]
            table = "critic_params/params/task_embedding/table/embedding"
            if mode == "embedding":
                assert all(same), [name for name, s in zip(trunk, same) if not s]
                np.testing.assert_array_equal(final[table][:2], trained[table])
                assert not np.allclose(final[table][2], 0.0)
            else:
                assert not any(same[:5])
    text = (out / "transfer.md").read_text()
    assert all(f"| {mode}" in text for mode in transfer.MODES) and "cartpole-balance-sparse" in text
    assert (out / "retention" / "ablation.md").is_file() and (out / "plots" / "cartpole-balance-sparse.png").is_file()
    summary = json.loads((out / "transfer.json").read_text())
    assert [setting["label"] for setting in summary["settings"]] == list(transfer.MODES) and summary["reps"] == 100
    with pytest.raises(SystemExit, match="exists"):
        experiment.main(experiment.Args(preset="smoke", out=out))
    experiment.main(experiment.Args(resume=out))  # both runs finished: only the report again (its saved reps)
    assert json.loads((out / "transfer.json").read_text())["reps"] == 100
    assert len((out / "transfer" / "metrics.jsonl").read_text().splitlines()) == 2 * 6
    with pytest.raises(SystemExit, match="--steps cannot change a resumed transfer study"):
        experiment.main(experiment.Args(resume=out, steps=60), given=("--resume", "--steps"))

    # The study's member rule on the transfer run, as a kill would leave it with its first checkpoint only: it resumes
    # from it (the learners restored, not grown again) and ends with the rows of the uninterrupted run. (With no
    # checkpoint it starts again, from the source as the first time: the rule's restart, tests/test_faults.py.)
    transfer_dir = out / "transfer"

    def comparable_rows() -> list[dict]:
        return [_comparable(row) for row in map(json.loads, (transfer_dir / "metrics.jsonl").read_text().splitlines())]

    rows = comparable_rows()
    shutil.rmtree(transfer_dir / "checkpoints" / "2")
    caplog.clear()
    with caplog.at_level(LEVEL, logger=LOGGER):
        experiment.main(experiment.Args(resume=out))
    assert comparable_rows() == rows
    # The restored MJX state (its zero-size leaves made afresh) compiles to the transfer run's first program.
    restored = compiled_keys(caplog.records)
    assert len(restored["jit_train_chunk"]) == 1 and restored["jit_train_chunk"] <= fresh["jit_train_chunk"]


def _comparable(row: dict) -> dict:
    return {name: value for name, value in row.items() if name not in ("wall_time", "env_steps_per_second")}


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_transfer_presets_trace(name):
    """The README's `transfer.py --preset cpu` and the `gpu` preset: the source run and the transfer program (the
    grown task set, the source's networks with the new rows) trace with `jax.eval_shape`, nothing allocated."""
    from purejaxmt.runner import loop

    preset = load_experiment().PRESETS[name]
    source_tasks = envs.resolve(preset.source.run.tasks)
    tasks = transfer.task_set(source_tasks, envs.resolve(preset.targets))
    assert len(tasks) == len(source_tasks) + len(envs.resolve(preset.targets))
    loop.abstract_run(brc.AGENT_SPEC, preset.source.agent, preset.source.loop, preset.source.run)
    config = transfer.agent_config(preset.source.agent, source_tasks, tasks, "embedding")
    run_config = dataclasses.replace(preset.source.run, tasks=",".join(tasks), seeds=len(transfer.MODES))
    shapes = loop.abstract_run(brc.AGENT_SPEC, config, preset.loop, run_config)
    table = shapes["state"].learner.critic_params["params"]["task_embedding"]["table"]["embedding"]
    assert table.shape == (len(transfer.MODES), len(tasks), config.embed_dim)


def test_new_rows_take_adams_bias_correction_at_their_own_step_count(grown):
    """The source's critic optimiser has counted 1000 steps; the new rows' moments are fresh. One update of the
    transfer run (num_updates 0) moves the new rows by AdamW's first step from a fresh state, `-lr (g / (|g| + eps)
    + wd p)`, not by the ~3x larger step the source's count would give; the trained rows (all mode) take the ordinary
    AdamW update of the loaded state."""
    def with_count(opt_state, count):  # (and non-negative moments: `perturbed` made some second moments negative)
        return jax.tree.map(lambda x: jnp.full_like(x, count) if x.ndim == 0 and jnp.issubdtype(x.dtype, jnp.integer)
                            else jnp.abs(x), opt_state)

    learner = grown.replace(critic_opt_state=with_count(grown.critic_opt_state, 1000))
    key, batch = jax.random.PRNGKey(3), random_batch(len(TASKS))
    for mode in ("embedding", "all"):
        agent, config = target(mode)
        hyper = brc.Hyper.from_config(config)
        new, _ = jax.jit(agent.update)(learner, hyper, batch, jnp.ones(len(TASKS)), key, jnp.int32(0))
        critic_key, _ = jax.random.split(key)
        grads = jax.grad(lambda p, agent=agent: agent.critic_loss(p, learner, batch, jnp.ones(len(TASKS)),
                                                                  critic_key)[0])(learner.critic_params)
        ordinary, _ = brc._adamw(hyper).update(grads, learner.critic_opt_state, learner.critic_params)
        table = [name for name in paths(grads) if "task_embedding" in name]
        assert len(table) == 1, table
        g, p = paths(grads)[table[0]], paths(learner.critic_params)[table[0]]
        moved = paths(new.critic_params)[table[0]] - p
        fresh = -CONFIG.learning_rate * (g / (np.abs(g) + 1e-8) + CONFIG.weight_decay * p)
        assert np.abs(g[3:]).min() > 1e-6  # the premise: every new-row entry has a gradient
        np.testing.assert_allclose(moved[3:], fresh[3:], rtol=1e-3, atol=1e-9, err_msg=mode)
        stale = paths(ordinary)[table[0]]  # what the source's count would have done to the new rows
        assert np.abs(stale[3:]).mean() > 2 * np.abs(fresh[3:]).mean()
        if mode == "all":
            np.testing.assert_allclose(moved[:3], paths(ordinary)[table[0]][:3], rtol=1e-3, atol=1e-9)
        else:
            np.testing.assert_array_equal(moved[:3], 0.0)

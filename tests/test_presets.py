"""Every preset of every experiment script, as shipped, builds its state and traces one train chunk and one
evaluation for its default task set, as the runner compiles them, under `jax.eval_shape` (nothing is run or
allocated, so the `paper` presets' W=4096 critics and 1M-transition replays cost no memory). A preset that cannot
start (a batch the task set cannot split, a config error, a shape mismatch) fails here, not on a user's GPU."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxmt import offpolicy, runner
from purejaxmt.studies import sweep

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _load(script: Path):
    spec = importlib.util.spec_from_file_location(f"experiment_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


SCRIPTS = {script.stem: _load(script) for script in sorted(EXPERIMENTS.glob("*.py"))}
# The runner's presets (`runner.Preset`); scripts with their own kind of preset (transfer.py) trace them themselves.
CASES = [(name, preset) for name, module in SCRIPTS.items() for preset, chosen in getattr(module, "PRESETS", {}).items()
         if isinstance(chosen, runner.Preset)]
_ENVS: dict = {}  # one env per (tasks, episode length, options): JAX reuses the traced env step across presets


def _env(run_config: runner.RunConfig):
    key = (run_config.tasks, run_config.episode_length, run_config.minimal_action_set, run_config.sticky_actions)
    if key not in _ENVS:
        _ENVS[key] = runner.make_env(run_config)
    return _ENVS[key]


def test_the_main_experiments_have_presets():
    assert {"mjx_humanoid_mt", "minatar_mt"} <= {name for name, _ in CASES}
    for name in ("mjx_humanoid_mt", "minatar_mt"):
        assert {"paper", "gpu", "cpu", "smoke", "fast"} <= set(SCRIPTS[name].PRESETS), name


@pytest.mark.parametrize("script, preset", CASES, ids=[f"{s}-{p}" for s, p in CASES])
def test_preset_initialises_and_traces(script, preset):
    module = SCRIPTS[script]
    chosen = module.PRESETS[preset]
    run_config = chosen.run
    env = _env(run_config)
    shapes = runner.abstract_run(module.AGENT, chosen.agent, chosen.loop, run_config, env=env)

    num_tasks, seeds = len(env.task_names), run_config.seeds
    state, metrics, evaluation = shapes["state"], shapes["metrics"], shapes["evaluation"]
    assert state.iteration.shape == ()  # lockstep: outside the runs axis
    assert metrics["return"].shape == (seeds, num_tasks)
    assert metrics["step"].shape == (seeds,)
    assert evaluation["return"].shape == (seeds, num_tasks)
    # The replay holds the preset's capacity for every task, in the env's observation dtype.
    obs = state.replay.data["obs"]
    assert obs.shape[:3] == (seeds, num_tasks, chosen.loop.replay_capacity)
    assert obs.dtype == jax.numpy.dtype(env.obs_dtype)
    if preset == "fast":  # the massively parallel regime (issue 13): traced, not allocated (15-24 GB of replay)
        assert num_tasks * obs.shape[2] >= 2**24, "a replay of at least 2^24 transitions on the device"
        assert state.env_state.obs.shape[:3] == (seeds, num_tasks, chosen.loop.envs_per_task)
        assert chosen.loop.envs_per_task >= 512 and chosen.loop.batch_size // num_tasks >= 4096
        assert chosen.agent.compute_dtype == "bfloat16"


# Presets on task sets other than their own that the docs' commands use (tests/test_docs.py accepts a documented
# command's tasks when some case here or in CASES traces them): the fault-tool sweep on CartPole-v1.
TASK_CASES = [("minatar_mt", "smoke", "CartPole-v1")]


@pytest.mark.parametrize("script, preset, tasks", TASK_CASES, ids=[f"{s}-{p}-{t}" for s, p, t in TASK_CASES])
def test_preset_traces_on_other_tasks(script, preset, tasks):
    module = SCRIPTS[script]
    chosen = module.PRESETS[preset]
    run_config = dataclasses.replace(chosen.run, tasks=tasks)
    env = _env(run_config)
    shapes = runner.abstract_run(module.AGENT, chosen.agent, chosen.loop, run_config, env=env)
    assert tuple(env.task_names) == tuple(tasks.split(","))
    assert shapes["evaluation"]["return"].shape == (run_config.seeds, len(env.task_names))


SWEEP_CASES = [(name, preset) for name, preset in CASES
               if SCRIPTS[name].PRESETS[preset].sweep or SCRIPTS[name].PRESETS[preset].variants]


def test_some_presets_are_sweeps():
    assert {("mjx_humanoid_mt", "paper-ablation"), ("mjx_humanoid_mt", "cpu-ablation")} <= set(SWEEP_CASES)


@pytest.mark.parametrize("script, preset", SWEEP_CASES, ids=[f"{s}-{p}" for s, p in SWEEP_CASES])
def test_every_program_of_a_sweep_preset_traces(script, preset):
    """The test above traces a sweep preset's base configs through the whole loop; here every program the sweep
    would compile (each shape-changing setting) builds and traces one agent update, under `jax.eval_shape`."""
    module = SCRIPTS[script]
    chosen = module.PRESETS[preset]
    plans = sweep.plan_programs(sweep.settings(chosen.sweep, chosen.variants, chosen.agent, chosen.loop), module.AGENT)
    env = _env(chosen.run)
    spec = env.spec
    key = jax.random.PRNGKey(0)
    for plan in plans:
        agent_config, loop_config = sweep.apply(chosen.agent, chosen.loop, plan.settings[0].values)
        program = offpolicy.make(module.AGENT, agent_config, loop_config, env)
        learner = jax.eval_shape(program.agent.init, key, program.hyper.agent)
        rows = loop_config.batch_size
        batch = {name: jax.ShapeDtypeStruct((rows, *example.shape[1:]), example.dtype)
                 for name, example in offpolicy.replay_example(spec).items()}
        batch.update(discount=jax.ShapeDtypeStruct((rows,), jnp.float32),
                     task_id=jax.ShapeDtypeStruct((rows,), jnp.int32))
        updated, metrics = jax.eval_shape(program.agent.update, learner, program.hyper.agent, batch,
                                          jnp.ones(spec.num_tasks), key, jnp.zeros((), jnp.int32))
        assert jax.tree.structure(updated) == jax.tree.structure(learner), plan.name
        assert metrics["critic_loss"].shape == (), plan.name


# ---------------------------------------------------------------------------------------------- the reward scale
def _reward_scale_cases():
    """(name, agent spec, agent config, loop config, run config) of every run a preset starts: the runner's
    presets, and both runs of each transfer preset (the source, and the transfer on the grown task set)."""
    from purejaxmt import envs
    from purejaxmt.studies import transfer

    cases = [(f"{script}-{preset}", SCRIPTS[script].AGENT, SCRIPTS[script].PRESETS[preset].agent,
              SCRIPTS[script].PRESETS[preset].loop, SCRIPTS[script].PRESETS[preset].run) for script, preset in CASES]
    for name, chosen in SCRIPTS["transfer"].PRESETS.items():
        source = chosen.source
        cases.append((f"transfer-{name}-source", SCRIPTS["transfer"].AGENT, source.agent, source.loop, source.run))
        source_tasks = envs.resolve(source.run.tasks)
        tasks = transfer.task_set(source_tasks, envs.resolve(chosen.targets))
        cases.append((f"transfer-{name}", SCRIPTS["transfer"].AGENT,
                      transfer.agent_config(source.agent, source_tasks, tasks, "embedding"), chosen.loop,
                      dataclasses.replace(source.run, tasks=",".join(tasks))))
    return cases


REWARD_SCALE_CASES = _reward_scale_cases()


@pytest.mark.parametrize("name, agent_spec, agent_config, loop_config, run_config", REWARD_SCALE_CASES,
                         ids=[case[0] for case in REWARD_SCALE_CASES])
def test_no_update_uses_an_undefined_reward_scale(name, agent_spec, agent_config, loop_config, run_config):
    """Updates start after `random_steps`, and in several presets some task has not finished an episode by then
    (MinAtar's game-overs, Freeway's 2500-step episodes, the transfer `cpu` runs' 1000-step cartpoles after 500
    random steps per env). The reward scale the loop hands such an update is the authors' 0, for every task that has
    not finished an episode, and `V_max / (G_i + correction_i)`, finite and positive, for one that has: never the raw
    rewards, inf or NaN. Computed as `offpolicy`'s `reward_scale` computes it (`normalize.scale` with the agent's
    `reward_correction`), from the preset's normaliser shape and the agent's initial learner (a narrow copy of the
    preset's agent: the correction does not depend on the widths)."""
    from purejaxmt import normalize

    env = _env(run_config)
    num_tasks, envs_per_task = len(env.task_names), loop_config.envs_per_task
    narrow = dataclasses.replace(agent_config, critic_width=8, **(
        {"actor_width": 8} if hasattr(agent_config, "actor_width") else {"vector_encoder_width": 8}))
    hyper = offpolicy.hyper_of(agent_spec, narrow, loop_config)
    agent = agent_spec.make_agent(narrow, env.spec)
    learner = agent.init(jax.random.PRNGKey(0), hyper.agent)
    correction = agent.reward_correction(learner, hyper.agent, hyper.gamma)
    assert bool(hyper.normalize_rewards), name  # the presets normalise (off, the scale is 1 by definition)

    state = normalize.init(num_tasks, envs_per_task, max(env.spec.episode_length))
    before = np.asarray(normalize.scale(state, agent_config.v_max, correction))
    np.testing.assert_array_equal(before, np.zeros(num_tasks, np.float32), err_msg=name)

    # Task 0 has finished an episode whose returns-to-go span [0.5, 1]: its scale is defined, the others' stay 0.
    state = state.replace(max_return=state.max_return.at[0].set(1.0), min_return=state.min_return.at[0].set(0.5),
                          has_return=state.has_return.at[0].set(True))
    after = np.asarray(normalize.scale(state, agent_config.v_max, correction))
    expected = agent_config.v_max / (1.0 + np.broadcast_to(np.asarray(correction), (num_tasks,))[0])
    np.testing.assert_allclose(after[0], expected, rtol=1e-6, err_msg=name)
    assert np.isfinite(after).all() and after[0] > 0 and (after[1:] == 0).all(), (name, after)

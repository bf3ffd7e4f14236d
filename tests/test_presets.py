"""Every preset of every experiment script, as shipped, builds its state and traces one train chunk and one
evaluation for its default task set, as the runner compiles them, under `jax.eval_shape` (nothing is run or
allocated, so the `paper` presets' W=4096 critics and 1M-transition replays cost no memory). A preset that cannot
start (a batch the task set cannot split, a config error, a shape mismatch) fails here, not on a user's GPU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from purejaxmt import offpolicy, runner
from purejaxmt.runner import sweep

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

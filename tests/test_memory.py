"""The memory pre-flight (`runner.devices.check_memory`): its estimate against XLA's own memory analysis of the
compiled chunk, and a clear refusal, naming sizes and the seeds that fit, before anything is compiled."""

import time

import jax
import pytest

from purejaxmt import envs, offpolicy
from purejaxmt.agents import brc
from purejaxmt.runner import devices

AGENT = brc.Config(critic_width=128, critic_depth=1, actor_width=64, num_bins=21)
# A replay of 2 x 4096 transitions and a batch of 512: the update's working set is a good share of the run.
LOOP = offpolicy.LoopConfig(batch_size=512, envs_per_task=4, updates_per_step=1, replay_capacity=4096,
                            random_steps=20, total_steps=400, steps_per_chunk=40, eval_episodes=4)


@pytest.fixture(scope="module")
def program():
    return offpolicy.make(brc.AGENT_SPEC, AGENT, LOOP, envs.make("Pendulum-v1,MountainCarContinuous-v0",
                                                                 episode_length=25))


def xla_bytes(compiled) -> int:
    """What XLA's memory analysis says a call of a compiled program holds at its peak: arguments, temporaries and
    the outputs that do not reuse a donated argument."""
    analysis = compiled.memory_analysis()
    return (analysis.argument_size_in_bytes + analysis.temp_size_in_bytes
            + max(analysis.output_size_in_bytes - analysis.alias_size_in_bytes, 0))


def test_the_estimate_matches_xla_memory_analysis_of_the_chunk(program):
    estimate = devices.check_memory(program, num_runs=1)
    assert set(estimate.parts) == {"replay", "learner", "env_state", "other", "last_finite_learner", "update"}
    assert estimate.parts["last_finite_learner"] == estimate.parts["learner"]  # runner.health's copy
    assert estimate.parts["replay"] == program.replay_nbytes
    assert estimate.parts["update"] > 0.1 * estimate.per_run  # the premise: the update's share is not negligible
    state = jax.eval_shape(program.init, jax.random.PRNGKey(0), program.hyper)
    chunk = jax.jit(program.train_chunk, donate_argnums=0).lower(state).compile()
    xla = xla_bytes(chunk)
    print(f"estimate {estimate.per_run} bytes ({estimate.parts}), XLA's analysis of the chunk {xla} bytes")
    # The chunk holds no divergence copy (the host loop keeps it beside the chunk's state).
    assert 0.8 * xla <= estimate.per_run - estimate.parts["last_finite_learner"] <= 1.25 * xla
    assert estimate.runs_per_device == 1 and estimate.total == estimate.per_run
    assert "memory per run" in estimate.line() and "x 1 run(s) per device" in estimate.line()


def test_runs_that_cannot_fit_are_refused_with_sizes_and_the_seeds_that_fit(program):
    estimate = devices.check_memory(program, num_runs=1)
    available = int(estimate.per_run * 10.5 / devices.MEMORY_FRACTION)  # 10 runs fit, 11 do not
    assert devices.check_memory(program, num_runs=20, num_devices=2, available=available).runs_per_device == 10
    with pytest.raises(MemoryError, match=r"out of memory before the start: memory per run .* x 11 run\(s\) per "
                                          r"device .*at most --seeds 20 fits"):
        devices.check_memory(program, num_runs=22, num_devices=2, seeds=22, available=available)
    with pytest.raises(MemoryError, match=r"at most --seeds 5 fits \(2 settings each\)"):
        devices.check_memory(program, num_runs=12, seeds=6, available=available)


def test_a_state_that_cannot_fit_is_refused_without_compiling(program, monkeypatch):
    def compile_update(program):
        raise AssertionError("the update was compiled although the state alone cannot fit")

    monkeypatch.setattr(devices, "update_bytes", compile_update)
    start = time.perf_counter()
    with pytest.raises(MemoryError, match="replay"):
        devices.check_memory(program, num_runs=64, available=devices.state_bytes(program)["replay"] * 10)
    assert time.perf_counter() - start < 5

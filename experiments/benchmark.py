"""Where the wall-clock goes: components, host loop vs fused loop, Brax's SAC, scaling, and the update's FLOP/s.

    python experiments/benchmark.py --quick          # a 2-core CPU: under 9 minutes (docs/benchmarks.md)
    python experiments/benchmark.py                  # the full grid, for a GPU
    python experiments/benchmark.py --quick --sections components brax     # or env update replay fused ...
    python experiments/benchmark.py --sections update --update-widths 1024 4096 --update-batches 1024 32768
    python experiments/benchmark.py --smoke          # tiny settings on Pendulum and Brax's `fast` env (the tests)

Prints the machine, backend and device, then a markdown table per measurement; writes every number as JSON (`--out`,
default `runs/benchmark/<time>-<mode>.json`) and the tables as the rows of `docs/benchmarks.md` beside it (`.md`).
The sections (issue 13):

1. components: MJX humanoid env steps/s for the task axis at several envs per task; one BRC update per critic width
   and batch (with its FLOPs from XLA's cost analysis and the fraction of a measured matmul peak); replay add and
   sample on a large ring; and one fused training iteration (`offpolicy` `train_chunk`) against the sum of its parts
   run one by one (env step, act, replay add, normaliser, `updates_per_step` x (sample + update)). The goal is a
   ratio of at most 1.1.
2. host_vs_fused: the same agent and config driven as the authors' code drives theirs (a Python loop: jitted act and
   env step, the transition copied to a NumPy ring on the host, a task-balanced batch sampled there and sent to the
   jitted update) against the fused chunk; env steps/s of both.
3. brax: Brax's own SAC trainer (`brax.training.agents.sac.train`, unchanged) on Playground's `HumanoidWalk`
   (`impl="jax"`) against our fused chunk matched on envs, batch, hidden widths and updates per env step; its
   `training/sps` of the second training epoch (the first holds its compile) against ours.
4. scaling: throughput as tasks grow at the same envs per task and batch, and per-run cost as vmapped runs grow.
5. flops: on an accelerator, the W=4096 update's achieved FLOP/s against a measured bf16 matmul peak (the goal is at
   least 50%); on a CPU it prints "skipped: no accelerator" (the components' update table has the fraction of the
   float32 peak for every width).

Every program is compiled first, two at a time (`Context.precompile`; a compile of an MJX program takes a minute on a
CPU), while Brax's trainer compiles and runs its first epoch in a child process; that process then waits, and runs
its timed epoch when nothing of ours runs. Then the sections time with no compile beside them: a compiled chunk as the
median of `repeats` calls after a warm-up call, each blocked on; the parts, the env step, the updates and the host
loop as the mean over calls issued back to back. XLA's backend optimisation level is set for the whole process
(`XLA_FLAGS`, also for Brax's compiles, so both sides compile alike): 1 in `--quick` and `--smoke` (half the compile
time; the MJX step is ~1.4x slower than at 3, docs/results.md), XLA's default 3 otherwise. On a machine shared with
other jobs every number is low by their share: the JSON and the tables record the load average at the start and end
of each section.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import functools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from purejaxmt import benchmarking, envs, normalize, offpolicy, replay
from purejaxmt.agents import brc
from purejaxmt.runner import devices

SECTIONS = ("env", "update", "replay", "fused", "host_vs_fused", "brax", "scaling", "flops")
COMPONENTS = ("env", "update", "replay", "fused")  # section (1); `--sections components` runs all four


# ----------------------------------------------------------------------------------------------------------------------
# What is measured: a training configuration (Point) and the settings of a whole benchmark (Plan)
# ----------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Point:
    """One configuration of the loop: what a fused chunk, its parts and the host loop run. Every iteration learns
    (no random phase), so the timed chunks are the steady state of training."""

    tasks: str
    envs_per_task: int
    batch_size: int
    critic_width: int
    critic_depth: int
    actor_width: int
    actor_depth: int = 1
    updates_per_step: int = 1
    iterations: int = 10
    """Iterations per timed chunk (each steps all `T x E` envs once and runs `updates_per_step` updates)."""
    replay_capacity: int = 100_000
    """Transitions per task."""

    def label(self, num_tasks: int) -> str:
        return (f"{self.tasks} ({num_tasks} x {self.envs_per_task} envs), batch {self.batch_size}, critic "
                f"W={self.critic_width} depth {self.critic_depth}, actor W={self.actor_width}, "
                f"{self.updates_per_step} update(s) per iteration")


@dataclasses.dataclass(frozen=True)
class BraxMatch:
    """Brax's SAC on a Brax/Playground env against ours at `ours` (same envs, batch, widths, updates per step)."""

    env: str
    """Playground env name (loaded with impl="jax") or Brax's own `fast` test env."""
    ours: Point
    iterations: int
    """Actor steps (each `envs_per_task` env steps and `updates_per_step` updates) per Brax training epoch; two
    epochs run, the second is the steady state."""
    episode_length: int = 1000


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str
    xla_optimization_level: int
    env_tasks: str
    env_sizes: tuple[int, ...]
    env_calls: int
    update_widths: tuple[int, ...]
    update_batches: tuple[int, ...]
    update_depth: int
    update_calls: int
    replay_capacity: int
    replay_adds: tuple[int, ...]
    replay_batches: tuple[int, ...]
    fused: Point
    host: tuple[Point, ...]
    brax: BraxMatch
    scaling_point: Point
    scaling_tasks: tuple[str, ...]
    scaling_runs: tuple[int, ...]
    flops_width: int
    flops_batches: tuple[int, ...]
    matmul_sizes: tuple[int, ...]
    repeats: int = 3
    brax_parts: bool = True
    """Also time our env step and update alone at the Brax point (one more MJX compile)."""


# The issue's reference configuration (humanoid, 16 envs per task, batch 256, one update per iteration, a W=256
# depth-1 critic); the actor as wide as the critic so that Brax's MLPs (one width for both) match it.
_SIX_HUMANOID_TASKS = "humanoid,humanoid-speed-2,humanoid-speed-4,humanoid-speed-6"
_CPU_POINT = Point("humanoid", envs_per_task=16, batch_size=256, critic_width=256, critic_depth=1, actor_width=256)

QUICK = Plan(
    name="quick", xla_optimization_level=1,
    env_tasks="humanoid", env_sizes=(16, 64), env_calls=10,
    update_widths=(256, 512), update_batches=(256, 1024), update_depth=2, update_calls=3,
    replay_capacity=2**20, replay_adds=(16, 64), replay_batches=(256, 1024),
    fused=_CPU_POINT,
    # 16 envs per task; `--host-envs 16 64` adds 64 (one more MJX program, ~1 minute; docs/benchmarks.md has runs).
    host=(_CPU_POINT,),
    brax=BraxMatch("HumanoidWalk", dataclasses.replace(_CPU_POINT, tasks="humanoid-walk"), iterations=50),
    scaling_point=_CPU_POINT,
    # 6 tasks on the one humanoid model (3 more target speeds): an MJX program like the 3-task one; a 6-task
    # program of 4 models (`humanoid,dmc-small`) compiles for ~3 minutes here (`--scaling-tasks`).
    scaling_tasks=("humanoid-walk", "humanoid", _SIX_HUMANOID_TASKS),
    scaling_runs=(1, 4),
    flops_width=4096, flops_batches=(1024, 32768), matmul_sizes=(1024, 2048),
    brax_parts=False,
)

# The accelerator's grid: the `fast` preset's regime (1024 envs per task, batch 32768, W=1024, 2 updates per
# iteration) and the paper's operating point (1 env per task, batch 1024, W=4096, 2 updates per iteration).
_FAST_POINT = Point("humanoid", envs_per_task=1024, batch_size=32768, critic_width=1024, critic_depth=2,
                    actor_width=512, updates_per_step=2, iterations=20, replay_capacity=2**20)
_PAPER_POINT = Point("humanoid", envs_per_task=1, batch_size=1024, critic_width=4096, critic_depth=2,
                     actor_width=256, updates_per_step=2, iterations=50)
_GPU_SCALING = Point("humanoid", envs_per_task=256, batch_size=4096, critic_width=1024, critic_depth=2,
                     actor_width=256, iterations=20)
FULL = Plan(
    name="full", xla_optimization_level=3,
    env_tasks="humanoid", env_sizes=(1, 16, 64, 256, 1024, 4096), env_calls=20,
    update_widths=(512, 1024, 2048, 4096), update_batches=(256, 1024, 4096, 32768), update_depth=2, update_calls=10,
    replay_capacity=2**23, replay_adds=(16, 1024), replay_batches=(1024, 32768),
    fused=_FAST_POINT,
    host=(_PAPER_POINT, _FAST_POINT),
    brax=BraxMatch("HumanoidWalk", Point("humanoid-walk", envs_per_task=1024, batch_size=8192, critic_width=256,
                                         critic_depth=1, actor_width=256, iterations=50), iterations=100),
    scaling_point=_GPU_SCALING,
    scaling_tasks=("humanoid-walk", "humanoid", _SIX_HUMANOID_TASKS,
                   "humanoid,cartpole-swingup,cheetah-run,walker-walk"),
    scaling_runs=(1, 2, 4, 8),
    flops_width=4096, flops_batches=(1024, 32768), matmul_sizes=(4096, 8192, 16384),
)

_SMOKE_POINT = Point("Pendulum-v1", envs_per_task=2, batch_size=8, critic_width=16, critic_depth=1, actor_width=16,
                     iterations=4, replay_capacity=200)
SMOKE = Plan(
    name="smoke", xla_optimization_level=1,
    env_tasks="Pendulum-v1", env_sizes=(2,), env_calls=3,
    update_widths=(16,), update_batches=(8,), update_depth=1, update_calls=2,
    replay_capacity=1024, replay_adds=(2,), replay_batches=(8,),
    fused=_SMOKE_POINT, host=(_SMOKE_POINT,),
    brax=BraxMatch("fast", _SMOKE_POINT, iterations=4, episode_length=10),
    scaling_point=_SMOKE_POINT, scaling_tasks=("Pendulum-v1",), scaling_runs=(1, 2),
    flops_width=16, flops_batches=(8,), matmul_sizes=(64,), repeats=1,
)


@dataclasses.dataclass(frozen=True)
class Args:
    quick: bool = False
    """The CPU-sized plan: under 10 minutes on a 2-core CPU (XLA level 1)."""
    smoke: bool = False
    """Tiny settings on Pendulum-v1 and Brax's `fast` env: seconds per section (the tests run it)."""
    sections: tuple[str, ...] = ("components", "host_vs_fused", "brax", "scaling", "flops")
    """Which sections to run: components (= env update replay fused), host_vs_fused, brax, scaling, flops."""
    out: Path | None = None
    """The JSON file (default runs/benchmark/<time>-<mode>.json); the markdown tables go beside it as .md."""
    xla_optimization_level: int | None = None
    """Override the plan's XLA backend optimisation level (0-3)."""
    update_widths: tuple[int, ...] | None = None
    """Override the plan's critic widths of the update table, e.g. `--sections update --update-widths 1024 4096`."""
    update_batches: tuple[int, ...] | None = None
    """Override the plan's batch sizes of the update table."""
    update_depth: int | None = None
    """Override the plan's critic depth of the update table."""
    scaling_tasks: tuple[str, ...] | None = None
    """Override the plan's task lists of the scaling section (the first is also the runs axis's)."""
    host_envs: tuple[int, ...] | None = None
    """Override the envs per task of the host-vs-fused comparison (its other settings: the plan's first point)."""
    compute_dtype: str | None = None
    """The matmul dtype of every agent (default: bfloat16 on an accelerator, float32 on a CPU)."""
    brax_worker: str | None = None
    """Internal: run only Brax's trainer on this match (JSON), for a parent benchmark process."""


# ----------------------------------------------------------------------------------------------------------------------
# Shared state of one benchmark: envs, programs and compiled executables are built once and reused across sections
# ----------------------------------------------------------------------------------------------------------------------
class Context:
    def __init__(self, plan: Plan, compute_dtype: str | None = None) -> None:
        self.plan = plan
        self.options = {"xla_backend_optimization_level": plan.xla_optimization_level}
        self.accelerator = jax.default_backend() != "cpu"
        self.dtype = compute_dtype or ("bfloat16" if self.accelerator else "float32")
        self.compile_s: dict[Any, float] = {}   # seconds of each compile job (two ran at a time)
        self._envs: dict[str, Any] = {}
        self._steps: dict[str, Any] = {}
        self._programs: dict[Point, offpolicy.Program] = {}
        self._fns: dict[Point, Fns] = {}
        self._executables: dict[Any, Any] = {}
        self._updates: dict[tuple[int, int, int], dict[str, Any]] = {}
        self._fused: dict[Point, dict[str, Any]] = {}
        self._peak: dict[str, Any] | None = None
        self._lock = threading.Lock()

    # -- what every section shares ------------------------------------------------------------------------------------
    def env(self, tasks: str) -> Any:
        """One `TaskEnv` per task list: its jitted reset and step (and their MJX traces) serve every section."""
        with self._lock:
            if tasks not in self._envs:
                self._envs[tasks] = envs.make(tasks)
            return self._envs[tasks]

    def step(self, tasks: str) -> Any:
        """The env's step jitted with the env state donated, as a Python loop over steps would call it (without
        donation every call would also copy what the state passes through, the reset pools included)."""
        env = self.env(tasks)
        with self._lock:
            if tasks not in self._steps:
                self._steps[tasks] = jax.jit(lambda state, action: env.step(state, action), donate_argnums=0)
            return self._steps[tasks]

    def program(self, point: Point) -> offpolicy.Program:
        env = self.env(point.tasks)
        with self._lock:
            if point not in self._programs:
                steps = point.iterations * point.envs_per_task
                config = brc.Config(critic_width=point.critic_width, critic_depth=point.critic_depth,
                                    actor_width=point.actor_width, actor_depth=point.actor_depth,
                                    compute_dtype=self.dtype)
                loop = offpolicy.LoopConfig(batch_size=point.batch_size, envs_per_task=point.envs_per_task,
                                            updates_per_step=point.updates_per_step,
                                            replay_capacity=point.replay_capacity, random_steps=0,
                                            total_steps=1000 * steps, steps_per_chunk=steps, eval_episodes=1)
                self._programs[point] = offpolicy.make(brc, config, loop, env)
            return self._programs[point]

    def fns(self, point: Point) -> Fns:
        program = self.program(point)
        with self._lock:
            if point not in self._fns:
                self._fns[point] = Fns(program, point)
            return self._fns[point]

    def abstract_state(self, point: Point) -> Any:
        """The shapes of `program.init` at `point`: what the compile jobs lower for (nothing is allocated)."""
        program = self.program(point)
        return jax.eval_shape(lambda key: program.init(key, program.hyper), jax.random.PRNGKey(0))

    def peak(self) -> dict[str, Any]:
        """The measured matmul ceiling in the updates' compute dtype (once per benchmark)."""
        if self._peak is None:
            self._peak = benchmarking.matmul_peak(self.dtype, self.plan.matmul_sizes)
        return self._peak

    # -- compile jobs: each fills a cache the measurements read; `precompile` runs them two at a time ----------------
    def _timed(self, key: Any, compile_fn: Any) -> Any:
        start = time.perf_counter()
        result = compile_fn()
        self.compile_s[key] = time.perf_counter() - start
        return result

    def warm_env(self, tasks: str, num_envs: int) -> None:
        """Compiles the env's reset (by calling it) and its donated step at this many envs per task."""
        env, step = self.env(tasks), self.step(tasks)

        def compile_both():
            state, _ = env.reset(jax.random.PRNGKey(0), num_envs)
            action = jax.ShapeDtypeStruct((env.num_tasks, num_envs, *_action_shape(env.spec)), _action_dtype(env.spec))
            step.lower(jax.eval_shape(lambda s: s, state), action).compile()

        self._timed(("env", tasks, num_envs), compile_both)

    def warm_reset(self, tasks: str, num_envs: int) -> None:
        """Compiles the env's reset at this many envs per task (by calling it): what `program.init` runs."""
        env = self.env(tasks)
        self._timed(("reset", tasks, num_envs),
                    lambda: jax.block_until_ready(env.reset(jax.random.PRNGKey(0), num_envs)))

    def chunk(self, point: Point) -> Any:
        """The un-vmapped `train_chunk` at `point` (as the runner runs a single run), compiled."""
        key = ("fused", point)
        if key not in self._executables:
            program = self.program(point)
            self._executables[key] = self._timed(key, lambda: benchmarking.compile_jit(
                program.train_chunk, self.abstract_state(point), options=self.options)[0])
        return self._executables[key]

    def vmapped_chunk(self, point: Point, num_runs: int) -> Any:
        """`train_chunk` vmapped over `num_runs` runs as the runner vmaps it (lockstep counters unbatched)."""
        key = ("vmapped", point, num_runs)
        if key not in self._executables:
            program = self.program(point)
            states = jax.eval_shape(lambda: _stacked_states(program, num_runs))
            self._executables[key] = self._timed(key, lambda: benchmarking.compile_jit(
                devices.vmap_train_chunk(program, states), states, options=self.options)[0])
        return self._executables[key]

    def warm_fns(self, point: Point) -> None:
        """Compiles the separately jitted pieces of an iteration (the parts, and the host loop's calls)."""
        program, fns, env = self.program(point), self.fns(point), self.env(point.tasks)
        state = self.abstract_state(point)
        key, scalar = jax.ShapeDtypeStruct((2,), jnp.uint32), jax.ShapeDtypeStruct((), jnp.int32)
        flags = jax.ShapeDtypeStruct((env.num_tasks, point.envs_per_task), bool)
        reward = jax.ShapeDtypeStruct((env.num_tasks, point.envs_per_task), jnp.float32)
        stored = {name: jax.ShapeDtypeStruct((leaf.shape[0], point.envs_per_task, *leaf.shape[1:]), leaf.dtype)
                  for name, leaf in offpolicy.replay_example(env.spec).items()}
        batch = jax.eval_shape(fns.sample, state.replay, key)

        def compile_all():
            fns.act.lower(state.learner, state.hyper, state.env_state.obs, key).compile()
            fns.learn.lower(state.learner, state.hyper, state.normalizer, batch, key, scalar).compile()
            fns.normalize.lower(state.normalizer, reward, flags, flags, state.hyper.gamma).compile()
            fns.add.lower(state.replay, stored).compile()
            fns.sample.lower(state.replay, key).compile()
            fns.random_action.lower(key, point.envs_per_task).compile()

        del program
        self._timed(("fns", point), compile_all)

    def update(self, width: int, depth: int, batch_size: int) -> dict[str, Any]:
        """One BRC update at this critic width and batch on the env's spec, compiled (with its agent)."""
        key = (width, depth, batch_size)
        if key not in self._updates:
            spec = self.env(self.plan.env_tasks).spec
            config = brc.Config(critic_width=width, critic_depth=depth, compute_dtype=self.dtype)
            agent, hyper = brc.Agent(config, spec), brc.Hyper.from_config(config)
            learner = jax.eval_shape(agent.init, jax.random.PRNGKey(0), hyper)
            batch = jax.eval_shape(lambda key: _random_batch(spec, batch_size, key), jax.random.PRNGKey(0))

            def update(learner, key, batch, scale):
                key, update_key = jax.random.split(key)
                learner, info = agent.update(learner, hyper, batch, scale, update_key, jnp.zeros((), jnp.int32))
                return (learner, key), info

            compiled = self._timed(("update", *key), lambda: benchmarking.compile_jit(
                update, learner, jax.random.PRNGKey(0), batch, jnp.ones((spec.num_tasks,)),
                options=self.options)[0])
            self._updates[key] = {"compiled": compiled, "agent": agent, "hyper": hyper, "config": config,
                                  "spec": spec}
        return self._updates[key]

    def precompile(self, wanted: set[str]) -> dict[str, Any]:
        """Compiles every program the wanted sections time, two at a time (XLA compiles with the GIL released, and
        on a CPU one compile mostly keeps one core busy), before any timing: the measurements then run with no
        compile beside them. Each job's seconds are wall-clock with another compile running beside it."""
        plan, jobs = self.plan, {}
        fused_points = ([plan.fused] if "fused" in wanted else []) + (
            list(plan.host) if "host_vs_fused" in wanted else []) + ([plan.brax.ours] if "brax" in wanted else []) + (
            [dataclasses.replace(plan.scaling_point, tasks=tasks) for tasks in plan.scaling_tasks]
            if "scaling" in wanted else [])
        parts_points = ([plan.fused] if "fused" in wanted else []) + (
            list(plan.host) if "host_vs_fused" in wanted else []) + (
            [plan.brax.ours] if "brax" in wanted and plan.brax_parts else [])
        env_sizes = [(plan.env_tasks, size) for size in plan.env_sizes] if "env" in wanted else []
        env_sizes += [(point.tasks, point.envs_per_task) for point in parts_points]  # the step, called alone
        reset_sizes = [(point.tasks, point.envs_per_task) for point in fused_points]  # only `program.init`'s reset
        for tasks in dict.fromkeys(tasks for tasks, _ in env_sizes + reset_sizes):  # trace each env once, here
            env = self.env(tasks)
            jax.eval_shape(lambda key, env=env: env.step(*_reset_and_act(env, key)), jax.random.PRNGKey(0))
        # Longest first (the MJX programs), so that the two threads finish together.
        for point in dict.fromkeys(fused_points):
            jobs[("fused", point)] = functools.partial(self.chunk, point)
        if "scaling" in wanted:
            point = dataclasses.replace(plan.scaling_point, tasks=plan.scaling_tasks[0])
            for num_runs in plan.scaling_runs:
                if num_runs > 1:
                    jobs[("vmapped", point, num_runs)] = functools.partial(self.vmapped_chunk, point, num_runs)
        for tasks, size in dict.fromkeys(env_sizes):
            jobs[("env", tasks, size)] = functools.partial(self.warm_env, tasks, size)
        for tasks, size in dict.fromkeys(reset_sizes):
            if (tasks, size) not in env_sizes:
                jobs[("reset", tasks, size)] = functools.partial(self.warm_reset, tasks, size)
        for point in dict.fromkeys(parts_points):
            jobs[("fns", point)] = functools.partial(self.warm_fns, point)
        updates = [(width, plan.update_depth, batch) for width in plan.update_widths
                   for batch in plan.update_batches] if "update" in wanted else []
        if "flops" in wanted and self.accelerator:
            updates += [(plan.flops_width, 2, batch) for batch in plan.flops_batches]
        for key in dict.fromkeys(updates):
            jobs[("update", *key)] = functools.partial(self.update, *key)
        start = time.perf_counter()

        def run(key: Any, job: Any) -> None:
            job()
            print(f"  compiled {_job_name(key)}: {self.compile_s[key]:.0f} s", flush=True)

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(run, key, job) for key, job in jobs.items()]:
                future.result()
        return {"seconds": time.perf_counter() - start, "jobs": len(jobs)}

    # -- the fused chunk, measured once per point ---------------------------------------------------------------------
    def fused(self, point: Point) -> dict[str, Any]:
        """The un-vmapped fused chunk at `point`: the steady iteration time (median chunk after a warm-up one)."""
        if point not in self._fused:
            program, chunk = self.program(point), self.chunk(point)
            state = benchmarking.own_buffers(program.init(jax.random.PRNGKey(0), program.hyper))
            _, seconds = benchmarking.timed_calls(chunk, state, 1 + self.plan.repeats)
            iteration_s = benchmarking.steady(seconds) / point.iterations
            num_tasks = len(program.task_names)
            self._fused[point] = {
                "point": dataclasses.asdict(point), "num_tasks": num_tasks,
                "compile_s": self.compile_s.get(("fused", point)), "chunk_s": benchmarking.steady(seconds),
                "iteration_ms": 1e3 * iteration_s, "env_steps_per_s": num_tasks * point.envs_per_task / iteration_s,
                "updates_per_s": point.updates_per_step / iteration_s}
        return self._fused[point]


class Fns:
    """The pieces of one loop iteration as separate jitted calls (the parts, and what the host loop calls)."""

    def __init__(self, program: offpolicy.Program, point: Point) -> None:
        agent = program.agent

        def act(learner, hyper, obs, key):
            key, act_key = jax.random.split(key)
            return agent.act(learner, hyper.agent, obs, act_key, jnp.zeros((), jnp.int32)), key

        def learn(learner, hyper, normalizer, batch, key, num_updates):
            """The reward scale and one update, as the loop runs them (`offpolicy.reward_scale`)."""
            key, update_key = jax.random.split(key)
            scale = offpolicy.reward_scale(agent, learner, hyper, normalizer)
            learner, info = agent.update(learner, hyper.agent, batch, scale, update_key, num_updates)
            return learner, key, info

        def sample(replay_state, key):
            """A batch as the update takes it (`offpolicy.sample_batch`)."""
            return offpolicy.sample_batch(replay_state, key, program.loop_config, program.hyper.gamma)

        self.act = jax.jit(act)
        self.learn = jax.jit(learn, donate_argnums=0)
        self.normalize = jax.jit(normalize.update, donate_argnums=0)
        self.add = jax.jit(replay.add, donate_argnums=0)
        self.sample = jax.jit(sample)
        self.random_action = jax.jit(agent.random_action, static_argnums=1)


def _job_name(key: tuple) -> str:
    """A compile job's key as words: `fused humanoid x16 batch 256 W=256`."""
    words = []
    for part in key:
        if isinstance(part, Point):
            words.append(f"{part.tasks} x{part.envs_per_task} batch {part.batch_size} W={part.critic_width}")
        else:
            words.append(str(part))
    return " ".join(words)


def _action_shape(spec: Any) -> tuple[int, ...]:
    return () if spec.action.discrete else (spec.action.size,)


def _action_dtype(spec: Any) -> Any:
    return jnp.int32 if spec.action.discrete else jnp.float32


def _reset_and_act(env: Any, key: jax.Array) -> tuple[Any, jax.Array]:
    """A reset state of one env per task and an action for it (to trace the env's step)."""
    state, _ = env.reset(key, 1)
    return state, jnp.zeros((env.num_tasks, 1, *_action_shape(env.spec)), _action_dtype(env.spec))


def _transition_fields(transition: Any, names: Any) -> dict[str, jax.Array]:
    return {name: getattr(transition, name) for name in names}


def _sampled_batch(items: dict, task_id: Any, gamma: Any, xp: Any = jnp) -> dict:
    """The host loop's NumPy batch as the update takes it (`offpolicy.sample_batch` on the device)."""
    return {**items, "discount": xp.full(task_id.shape, gamma, xp.float32), "task_id": task_id.astype(xp.int32)}


def _stacked_states(program: offpolicy.Program, num_runs: int) -> Any:
    """R independent run states stacked on a leading runs axis (the lockstep counters unbatched), as
    `devices.init_states` builds them, from R plain inits: equal to its `vmap` of init (one key per run) without
    compiling a vmapped env reset."""
    singles = [program.init(jax.random.PRNGKey(seed), program.hyper) for seed in range(num_runs)]
    state = jax.tree.map(lambda *xs: jnp.stack(xs), *singles)
    return state.replace(**{name: getattr(singles[0], name) for name in offpolicy.RunState.LOCKSTEP_FIELDS})


# ----------------------------------------------------------------------------------------------------------------------
# 1. Components
# ----------------------------------------------------------------------------------------------------------------------
def bench_env(ctx: Context) -> list[dict[str, Any]]:
    """Env steps/s of the task axis at each envs-per-task count: the jitted `TaskEnv.step` (the state donated) called
    in a Python loop with uniform random actions (the step the host loop and the parts use)."""
    tasks = ctx.plan.env_tasks
    env, env_step, rows = ctx.env(tasks), ctx.step(tasks), []
    for num_envs in ctx.plan.env_sizes:
        if ("env", tasks, num_envs) not in ctx.compile_s:
            ctx.warm_env(tasks, num_envs)
        state, _ = env.reset(jax.random.PRNGKey(0), num_envs)
        shape = (env.num_tasks, num_envs, *_action_shape(env.spec))
        mask = jnp.asarray(env.spec.action.mask)[:, None, :]
        actions = [jnp.where(mask, jax.random.uniform(jax.random.PRNGKey(i), shape, minval=-1, maxval=1), 0.0)
                   for i in range(4)]
        carry = {"state": benchmarking.own_buffers(state), "i": 0}  # donated below: no buffer twice

        def step():
            carry["i"] += 1
            carry["state"], transition = env_step(carry["state"], actions[carry["i"] % len(actions)])
            return transition

        seconds = benchmarking.mean_seconds(step, ctx.plan.env_calls, warmup=2)
        steps = env.num_tasks * num_envs
        rows.append({"tasks": tasks, "num_tasks": env.num_tasks, "envs_per_task": num_envs, "envs": steps,
                     "compile_s": ctx.compile_s[("env", tasks, num_envs)], "ms_per_step": 1e3 * seconds,
                     "env_steps_per_s": steps / seconds})
    return rows


def _random_batch(spec: Any, batch_size: int, key: jax.Array) -> dict[str, jax.Array]:
    """A batch of the shapes the loop samples, with random contents (an update's cost does not depend on them)."""
    keys = jax.random.split(key, 5)
    obs_shape, actions = (batch_size, *spec.obs_shape), spec.action.size
    return {"task_id": replay.balanced_task_ids(keys[4], spec.num_tasks, batch_size),
            "obs": jax.random.normal(keys[0], obs_shape),
            "action": jax.random.uniform(keys[1], (batch_size, actions), minval=-1, maxval=1),
            "reward": jax.random.uniform(keys[2], (batch_size,)),
            "next_obs": jax.random.normal(keys[3], obs_shape),
            "terminal": jnp.zeros((batch_size,), bool), "truncated": jnp.zeros((batch_size,), bool),
            "discount": jnp.full((batch_size,), 0.99)}


def time_update(ctx: Context, width: int, depth: int, batch_size: int) -> dict[str, Any]:
    """One BRC update (critic, target, actor, temperature) at this critic width and batch: ms per update, FLOPs
    (XLA's cost analysis) and the achieved fraction of the measured matmul peak."""
    built = ctx.update(width, depth, batch_size)
    compiled, agent, spec = built["compiled"], built["agent"], built["spec"]
    learner = benchmarking.own_buffers(agent.init(jax.random.PRNGKey(0), built["hyper"]))
    batch, scale = _random_batch(spec, batch_size, jax.random.PRNGKey(1)), jnp.ones((spec.num_tasks,))
    carry = {"state": (learner, jax.random.PRNGKey(2))}

    def call():
        carry["state"], info = compiled(*carry["state"], batch, scale)
        return info

    seconds = benchmarking.mean_seconds(call, ctx.plan.update_calls)
    flops, peak = benchmarking.flops(compiled), ctx.peak()["flops_per_s"]
    params = sum(x.size for x in jax.tree.leaves(carry["state"][0].critic_params)) // built["config"].num_critics
    return {"critic_width": width, "critic_depth": depth, "batch_size": batch_size, "num_tasks": spec.num_tasks,
            "compute_dtype": ctx.dtype, "critic_params_per_member": int(params),
            "compile_s": ctx.compile_s.get(("update", width, depth, batch_size)), "ms_per_update": 1e3 * seconds,
            "updates_per_s": 1 / seconds, "flops": flops, "flops_per_s": flops / seconds if flops else None,
            "fraction_of_matmul_peak": flops / seconds / peak if flops else None}


def bench_updates(ctx: Context) -> dict[str, Any]:
    return {"matmul_peak": ctx.peak(),
            "rows": [time_update(ctx, width, ctx.plan.update_depth, batch_size)
                     for width in ctx.plan.update_widths for batch_size in ctx.plan.update_batches]}


def bench_replay(ctx: Context) -> dict[str, Any]:
    """`replay.add` of E items per task and `replay.sample` of B items, task-balanced, on a full ring of the plan's
    capacity per task, in the loop's layout (each observation stored once, `LoopConfig`'s default finals ring; the
    humanoid's items are 360 bytes). One buffer per E (the layout is made for one E); sampling on the last."""
    spec, capacity = ctx.env(ctx.plan.env_tasks).spec, ctx.plan.replay_capacity
    example = offpolicy.replay_example(spec)
    rows, carry, nbytes = [], {}, 0
    add = jax.jit(replay.add, donate_argnums=0)
    for num_envs in ctx.plan.replay_adds:
        final_capacity = min(capacity, max(num_envs, offpolicy.LoopConfig.replay_final_capacity))  # the loop's
        carry.clear()
        state = replay.init(example, capacity, num_envs, final_capacity)
        nbytes = replay.nbytes(example, capacity, num_envs, final_capacity)
        carry["state"] = state.replace(size=jnp.full_like(state.size, capacity))  # sample from every slot
        del state
        items = {name: jnp.ones((spec.num_tasks, num_envs, *leaf.shape[1:]), leaf.dtype)
                 for name, leaf in example.items()}

        def call():
            carry["state"] = add(carry["state"], items)
            return carry["state"].pointer

        seconds = benchmarking.mean_seconds(call, 20, warmup=2)
        rows.append({"op": "add", "items_per_task": num_envs, "items": spec.num_tasks * num_envs,
                     "ms_per_call": 1e3 * seconds, "items_per_s": spec.num_tasks * num_envs / seconds})
    for batch_size in ctx.plan.replay_batches:
        sample = jax.jit(functools.partial(replay.sample, batch_size=batch_size))
        keys = iter(jax.random.split(jax.random.PRNGKey(0), 64))
        seconds = benchmarking.mean_seconds(lambda: sample(carry["state"], next(keys)), 20, warmup=2)
        rows.append({"op": "sample", "items_per_task": None, "items": batch_size, "ms_per_call": 1e3 * seconds,
                     "items_per_s": batch_size / seconds})
    return {"capacity_per_task": capacity, "num_tasks": spec.num_tasks, "items": spec.num_tasks * capacity,
            "bytes": nbytes, "rows": rows}


def time_parts(ctx: Context, point: Point) -> dict[str, float]:
    """Each part of one iteration at `point`, jitted on its own and called back to back: ms per call."""
    program, fns, env, env_step = ctx.program(point), ctx.fns(point), ctx.env(point.tasks), ctx.step(point.tasks)
    state = program.init(jax.random.PRNGKey(0), program.hyper)
    hyper, calls = state.hyper, ctx.plan.env_calls
    carry = {"env": benchmarking.own_buffers(state.env_state), "learner": benchmarking.own_buffers(state.learner),
             "normalizer": benchmarking.own_buffers(state.normalizer), "replay": benchmarking.own_buffers(state.replay),
             "key": jax.random.PRNGKey(1)}
    del state
    action = fns.random_action(jax.random.PRNGKey(2), point.envs_per_task)
    carry["env"], transition = env_step(carry["env"], action)
    stored = _transition_fields(transition, offpolicy.replay_example(env.spec))

    def step():
        carry["env"], transition = env_step(carry["env"], action)
        return transition

    def act():
        action, carry["key"] = fns.act(carry["learner"], hyper, carry["env"].obs, carry["key"])
        return action

    def add():
        carry["replay"] = fns.add(carry["replay"], stored)
        return carry["replay"].pointer

    def normalizer():
        carry["normalizer"] = fns.normalize(carry["normalizer"], transition.reward, transition.terminal,
                                            transition.truncated, hyper.gamma)
        return carry["normalizer"].step_count

    parts = {"env_step": benchmarking.mean_seconds(step, calls), "act": benchmarking.mean_seconds(act, calls),
             "replay_add": benchmarking.mean_seconds(add, calls),
             "normalizer": benchmarking.mean_seconds(normalizer, calls)}
    keys = iter(jax.random.split(jax.random.PRNGKey(3), 2 * calls + 4))
    parts["replay_sample"] = benchmarking.mean_seconds(lambda: fns.sample(carry["replay"], next(keys)), calls)
    batch = fns.sample(carry["replay"], next(keys))

    def learn():
        carry["learner"], carry["key"], info = fns.learn(carry["learner"], hyper, carry["normalizer"], batch,
                                                         carry["key"], jnp.zeros((), jnp.int32))
        return info

    parts["update"] = benchmarking.mean_seconds(learn, max(2, calls // 2))
    return {name: 1e3 * seconds for name, seconds in parts.items()}


def bench_fused_vs_parts(ctx: Context) -> dict[str, Any]:
    point = ctx.plan.fused
    fused, parts = ctx.fused(point), time_parts(ctx, point)
    updates = point.updates_per_step
    issue_sum = parts["env_step"] + parts["replay_add"] + updates * (parts["replay_sample"] + parts["update"])
    full_sum = issue_sum + parts["act"] + parts["normalizer"]
    return {"point": dataclasses.asdict(point), "label": point.label(fused["num_tasks"]), "parts_ms": parts,
            "sum_env_add_sample_update_ms": issue_sum, "sum_all_parts_ms": full_sum,
            "fused_iteration_ms": fused["iteration_ms"], "fused_compile_s": fused["compile_s"],
            "ratio_to_env_add_sample_update": fused["iteration_ms"] / issue_sum,
            "ratio_to_all_parts": fused["iteration_ms"] / full_sum}


# ----------------------------------------------------------------------------------------------------------------------
# 2. Host loop vs fused
# ----------------------------------------------------------------------------------------------------------------------
class HostReplay:
    """The authors' kind of replay: NumPy rings `[T, C, ...]` on the host, task-balanced uniform sampling there."""

    def __init__(self, example: dict[str, jax.ShapeDtypeStruct], capacity: int) -> None:
        self.data = {name: np.zeros((leaf.shape[0], capacity, *leaf.shape[1:]), leaf.dtype)
                     for name, leaf in example.items()}
        self.num_tasks, self.capacity, self.pointer, self.size = next(iter(example.values())).shape[0], capacity, 0, 0

    def add(self, items: dict[str, np.ndarray]) -> None:
        """E items per task (leaves `[T, E, ...]`)."""
        num_envs = next(iter(items.values())).shape[1]
        slots = (self.pointer + np.arange(num_envs)) % self.capacity
        for name, value in items.items():
            self.data[name][:, slots] = value
        self.pointer = (self.pointer + num_envs) % self.capacity
        self.size = min(self.size + num_envs, self.capacity)

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        per_task, remainder = divmod(batch_size, self.num_tasks)
        task_id = np.concatenate([np.repeat(np.arange(self.num_tasks), per_task),
                                  rng.permutation(self.num_tasks)[:remainder]])
        slots = rng.integers(0, self.size, batch_size)
        return {name: stored[task_id, slots] for name, stored in self.data.items()}, task_id


def host_loop(ctx: Context, point: Point) -> dict[str, Any]:
    """The authors' way of driving the same agent: per iteration a jitted act and env step, the transition copied to
    the host (`jax.device_get`) into a NumPy ring, then `updates_per_step` times a batch sampled with NumPy and sent
    to the jitted update. The reward normaliser runs jitted on the device (the authors keep theirs in NumPy)."""
    program, fns, env, env_step = ctx.program(point), ctx.fns(point), ctx.env(point.tasks), ctx.step(point.tasks)
    state = program.init(jax.random.PRNGKey(0), program.hyper)
    hyper, gamma = state.hyper, float(state.hyper.gamma)
    names = offpolicy.replay_example(env.spec)
    buffer, rng = HostReplay(names, point.replay_capacity), np.random.default_rng(0)
    carry = {"env": benchmarking.own_buffers(state.env_state), "learner": benchmarking.own_buffers(state.learner),
             "normalizer": benchmarking.own_buffers(state.normalizer), "key": jax.random.PRNGKey(1), "updates": 0}
    del state
    seconds = {"device_get": 0.0, "numpy_replay": 0.0}

    def iteration() -> Any:
        action, carry["key"] = fns.act(carry["learner"], hyper, carry["env"].obs, carry["key"])
        carry["env"], transition = env_step(carry["env"], action)
        carry["normalizer"] = fns.normalize(carry["normalizer"], transition.reward, transition.terminal,
                                            transition.truncated, hyper.gamma)
        start = time.perf_counter()
        items = jax.device_get(_transition_fields(transition, names))  # waits for the step
        seconds["device_get"] += time.perf_counter() - start
        start = time.perf_counter()
        buffer.add(items)
        batches = [buffer.sample(rng, point.batch_size) for _ in range(point.updates_per_step)]
        seconds["numpy_replay"] += time.perf_counter() - start
        info = None
        for items, task_id in batches:
            batch = _sampled_batch(items, task_id, gamma, xp=np)
            carry["learner"], carry["key"], info = fns.learn(carry["learner"], hyper, carry["normalizer"], batch,
                                                             carry["key"], np.int32(carry["updates"]))
            carry["updates"] += 1
        return info

    iterations = point.iterations * ctx.plan.repeats
    mean = benchmarking.mean_seconds(iteration, iterations, warmup=2)
    timed = iterations + 2
    return {"iteration_ms": 1e3 * mean, "env_steps_per_s": env.num_tasks * point.envs_per_task / mean,
            "device_get_ms": 1e3 * seconds["device_get"] / timed,
            "numpy_replay_ms": 1e3 * seconds["numpy_replay"] / timed}


def host_vs_fused(ctx: Context) -> list[dict[str, Any]]:
    rows = []
    for point in ctx.plan.host:
        host, fused = host_loop(ctx, point), ctx.fused(point)
        rows.append({"point": dataclasses.asdict(point), "label": point.label(fused["num_tasks"]),
                     "host_iteration_ms": host["iteration_ms"], "host_env_steps_per_s": host["env_steps_per_s"],
                     "host_device_get_ms": host["device_get_ms"], "host_numpy_replay_ms": host["numpy_replay_ms"],
                     "fused_iteration_ms": fused["iteration_ms"], "fused_env_steps_per_s": fused["env_steps_per_s"],
                     "fused_speedup": host["iteration_ms"] / fused["iteration_ms"],
                     "fused_compile_s": fused["compile_s"]})
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# 3. Brax's SAC trainer vs ours: Brax runs in a child process (its compiles overlap ours; its timed epoch does not)
# ----------------------------------------------------------------------------------------------------------------------
_WORKER_TAG = "[benchmark brax worker]"


def start_brax_worker(plan: Plan) -> subprocess.Popen:
    """Starts Brax's trainer on the plan's match in a child process; it compiles and runs its first (compiling)
    epoch and evaluation, then waits for `finish_brax_worker` before its timed second epoch."""
    command = [sys.executable, str(Path(__file__).resolve()), "--brax-worker",
               json.dumps(dataclasses.asdict(plan.brax)), "--xla-optimization-level", str(plan.xla_optimization_level)]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _worker_line(worker: subprocess.Popen, expected: str) -> str:
    """The worker's next protocol line starting with `expected` (other output is passed through)."""
    for line in worker.stdout:
        if line.startswith(f"{_WORKER_TAG} {expected}"):
            return line[len(_WORKER_TAG) + len(expected) + 2:]
        print(line, end="")
    raise RuntimeError(f"Brax's trainer stopped before saying {expected!r} (exit code {worker.wait()}); its errors "
                       "are above")


def finish_brax_worker(worker: subprocess.Popen) -> dict[str, Any]:
    """Lets the worker run its timed epoch (nothing else of ours runs meanwhile) and returns its result."""
    _worker_line(worker, "READY")
    worker.stdin.write("GO\n")
    worker.stdin.flush()
    result = json.loads(_worker_line(worker, "RESULT"))
    worker.wait()
    return result


def brax_worker(match_json: str, level: int) -> None:
    """The child's side: Brax's `sac.train`, unchanged, on the matched settings (envs, batch, one hidden width for
    policy and Q networks with as many hidden layers as our BroNets have matmuls of that width, 1 + 2 x depth,
    updates per actor step); 2 epochs of `iterations` actor steps, the second timed by Brax itself
    (`training/sps`). Between them (in `progress_fn`) it says READY and waits for GO on stdin."""
    _set_xla_level(level)
    fields = json.loads(match_json)
    match = BraxMatch(**{**fields, "ours": Point(**fields["ours"])})
    if not hasattr(jax, "device_put_replicated"):  # removed in jax 0.10; brax 0.14.2 still calls it (this process)
        from jax._src import api as jax_api

        jax.device_put_replicated = jax_api.device_put_replicated
    from brax.training.agents.sac import networks as sac_networks
    from brax.training.agents.sac import train as sac_train

    if match.env == "fast":
        import brax.envs

        environment, wrap_env_fn = brax.envs.get_environment("fast"), None
    else:
        from mujoco_playground import registry, wrapper

        environment = registry.load(match.env, config_overrides={"impl": "jax"})
        wrap_env_fn = wrapper.wrap_for_brax_training
    ours = match.ours
    num_envs, batch_size = ours.envs_per_task, ours.batch_size
    hidden = (ours.critic_width,) * (1 + 2 * ours.critic_depth)
    records: list[dict[str, float]] = []
    waited = {"s": 0.0}

    def progress(step: int, metrics: Any) -> None:
        records.append({name: float(np.mean(value)) for name, value in metrics.items()})
        if sum("training/sps" in record for record in records) == 1:  # after epoch 1: wait for the parent
            start = time.perf_counter()
            print(f"{_WORKER_TAG} READY", flush=True)
            sys.stdin.readline()
            waited["s"] += time.perf_counter() - start

    start = time.perf_counter()
    sac_train.train(
        environment=environment, wrap_env_fn=wrap_env_fn, episode_length=match.episode_length,
        # No prefill (ours too learns from the first iteration): Brax's prefill scan is then empty, one compile less.
        num_timesteps=2 * match.iterations * num_envs, num_evals=3, num_envs=num_envs, num_eval_envs=1,
        batch_size=batch_size, grad_updates_per_step=ours.updates_per_step, min_replay_size=0,
        max_replay_size=ours.replay_capacity, learning_rate=3e-4, discounting=0.99, seed=0, deterministic_eval=True,
        network_factory=functools.partial(sac_networks.make_sac_networks, hidden_layer_sizes=hidden),
        progress_fn=progress)
    sps = [record["training/sps"] for record in records if "training/sps" in record]
    result = {"env": match.env, "brax_hidden_layer_sizes": list(hidden), "num_envs": num_envs,
              "batch_size": batch_size, "grad_updates_per_step": ours.updates_per_step,
              "iterations_per_epoch": match.iterations, "brax_sps_per_epoch": sps, "brax_env_steps_per_s": sps[-1],
              "brax_wall_s": time.perf_counter() - start - waited["s"], "brax_load_end": benchmarking.load_average()}
    print(f"{_WORKER_TAG} RESULT {json.dumps(result)}", flush=True)


def brax_section(ctx: Context, worker_result: dict[str, Any]) -> dict[str, Any]:
    ours_point = ctx.plan.brax.ours
    ours = ctx.fused(ours_point)
    parts = time_parts(ctx, ours_point) if ctx.plan.brax_parts else None
    return {**worker_result, "ours_point": dataclasses.asdict(ours_point),
            "ours_env_steps_per_s": ours["env_steps_per_s"], "ours_iteration_ms": ours["iteration_ms"],
            "ours_parts_ms": parts, "ours_compile_s": ours["compile_s"],
            "ours_over_brax": ours["env_steps_per_s"] / worker_result["brax_env_steps_per_s"],
            "differs": "Brax: MSE twin-Q critic and plain MLPs (no LayerNorm, no residuals, one output each), no "
                       "reward normaliser, a flat replay queue, Brax's episode and auto-reset wrappers. Ours: 101-bin "
                       "categorical critic ensemble (C51 projection of the target), BroNets with LayerNorm, the "
                       "return-range reward normaliser, reset pools."}


# ----------------------------------------------------------------------------------------------------------------------
# 4. Scaling
# ----------------------------------------------------------------------------------------------------------------------
def scaling(ctx: Context) -> dict[str, Any]:
    base = ctx.plan.scaling_point
    task_rows = []
    for tasks in ctx.plan.scaling_tasks:
        fused = ctx.fused(dataclasses.replace(base, tasks=tasks))
        task_rows.append({"tasks": tasks, "num_tasks": fused["num_tasks"], "compile_s": fused["compile_s"],
                          "iteration_ms": fused["iteration_ms"], "env_steps_per_s": fused["env_steps_per_s"],
                          "env_steps_per_s_per_task": fused["env_steps_per_s"] / fused["num_tasks"]})
    point = dataclasses.replace(base, tasks=ctx.plan.scaling_tasks[0])
    single = ctx.fused(point)
    run_rows = []
    for num_runs in ctx.plan.scaling_runs:
        if num_runs == 1:
            chunk_s, compile_s = single["chunk_s"], single["compile_s"]
        else:
            program, chunk = ctx.program(point), ctx.vmapped_chunk(point, num_runs)
            states = benchmarking.own_buffers(_stacked_states(program, num_runs))
            _, seconds = benchmarking.timed_calls(chunk, states, 1 + ctx.plan.repeats)
            chunk_s, compile_s = benchmarking.steady(seconds), ctx.compile_s.get(("vmapped", point, num_runs))
            del states
        steps = single["num_tasks"] * point.envs_per_task * point.iterations
        run_rows.append({"runs": num_runs, "compile_s": compile_s, "chunk_s": chunk_s,
                         "env_steps_per_s": num_runs * steps / chunk_s, "env_steps_per_s_per_run": steps / chunk_s,
                         "per_run_cost": chunk_s / num_runs / single["chunk_s"]})
    return {"tasks": task_rows, "runs": run_rows, "point": dataclasses.asdict(base)}


# ----------------------------------------------------------------------------------------------------------------------
# 5. FLOP/s of the big update on an accelerator
# ----------------------------------------------------------------------------------------------------------------------
def flops_section(ctx: Context) -> dict[str, Any]:
    if not ctx.accelerator:
        return {"skipped": "skipped: no accelerator"}
    rows = [time_update(ctx, ctx.plan.flops_width, 2, batch_size) for batch_size in ctx.plan.flops_batches]
    return {"rows": rows, "matmul_peak": ctx.peak()}


# ----------------------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------------------
def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown_env(rows: list[dict]) -> str:
    return ("(1a) env steps/s: the jitted task-axis step (state donated) with random actions, called in a loop\n\n"
            + benchmarking.table(
                ["tasks", "envs per task", "envs", "ms per step", "env steps/s", "compile s (reset + step)"],
                [[r["tasks"], str(r["envs_per_task"]), str(r["envs"]), _f(r["ms_per_step"], 2),
                  _f(r["env_steps_per_s"], 0), _f(r["compile_s"])] for r in rows]))


def markdown_update(rows: list[dict], peak: dict) -> str:
    return (f"one BRC update (critic + target + actor + temperature); matmul peak {peak['flops_per_s'] / 1e9:,.1f} "
            f"GFLOP/s ({peak['dtype']}, n={peak['size']})\n\n" + benchmarking.table(
                ["critic W", "depth", "batch", "tasks", "dtype", "params per member", "compile s", "ms per update",
                 "GFLOP per update", "GFLOP/s", "of matmul peak"],
                [[str(r["critic_width"]), str(r["critic_depth"]), str(r["batch_size"]), str(r["num_tasks"]),
                  r["compute_dtype"], f"{r['critic_params_per_member'] / 1e6:.2f}M", _f(r["compile_s"]),
                  _f(r["ms_per_update"], 2), _f(r["flops"] and r["flops"] / 1e9, 2),
                  _f(r["flops_per_s"] and r["flops_per_s"] / 1e9),
                  "-" if r["fraction_of_matmul_peak"] is None else f"{100 * r['fraction_of_matmul_peak']:.0f}%"]
                 for r in rows]))


def markdown_replay(result: dict) -> str:
    return (f"(1c) replay ring of {result['capacity_per_task']:,} items per task x {result['num_tasks']} tasks "
            f"({result['items']:,} items, {result['bytes'] / 2**30:.2f} GiB), full\n\n" + benchmarking.table(
                ["op", "items per call", "ms per call", "items/s"],
                [[r["op"], str(r["items"]), _f(r["ms_per_call"], 3), _f(r["items_per_s"], 0)]
                 for r in result["rows"]]))


def markdown_fused(result: dict) -> str:
    parts = result["parts_ms"]
    rows = [[name.replace("_", " "), _f(ms, 2)] for name, ms in parts.items()]
    rows += [["sum: env step + replay add + updates x (sample + update)",
              _f(result["sum_env_add_sample_update_ms"], 2)],
             ["sum of all parts (+ act + normaliser)", _f(result["sum_all_parts_ms"], 2)],
             ["fused iteration (`train_chunk`)", _f(result["fused_iteration_ms"], 2)],
             ["ratio fused / (env + add + sample + update) (goal <= 1.1)",
              _f(result["ratio_to_env_add_sample_update"], 2)],
             ["ratio fused / all parts", _f(result["ratio_to_all_parts"], 2)]]
    return f"(1d) one iteration vs the sum of its parts: {result['label']}\n\n" + benchmarking.table(
        ["part", "ms"], rows)


def markdown_host(rows: list[dict]) -> str:
    return "(2) host loop (NumPy replay on the host) vs fused chunk, env steps/s of all tasks\n\n" + benchmarking.table(
        ["config", "host ms per iteration (of which device_get / NumPy replay)", "host env steps/s",
         "fused ms per iteration", "fused env steps/s", "fused speed-up"],
        [[r["label"], f"{_f(r['host_iteration_ms'], 2)} ({_f(r['host_device_get_ms'], 2)} / "
          f"{_f(r['host_numpy_replay_ms'], 2)})", _f(r["host_env_steps_per_s"], 0), _f(r["fused_iteration_ms"], 2),
          _f(r["fused_env_steps_per_s"], 0), _f(r["fused_speedup"], 2) + "x"] for r in rows])


def markdown_brax(result: dict) -> str:
    ours, parts = result["ours_point"], result["ours_parts_ms"]
    return (f"(3) Brax SAC (`sac.train`, unchanged) on {result['env']} vs ours, matched: {result['num_envs']} envs, "
            f"batch {result['batch_size']}, {result['grad_updates_per_step']} update(s) per actor step, hidden "
            f"{tuple(result['brax_hidden_layer_sizes'])}\n\n" + benchmarking.table(
                ["trainer", "env steps/s", "notes"],
                [["Brax SAC", _f(result["brax_env_steps_per_s"], 0),
                  "`training/sps` of epoch 2 (epoch 1, with its compile: "
                  + _f(result["brax_sps_per_epoch"][0], 0) + ")"],
                 ["ours (fused chunk)", _f(result["ours_env_steps_per_s"], 0),
                  f"{_f(result['ours_iteration_ms'], 2)} ms per iteration"
                  + (f"; alone: env step {_f(parts['env_step'], 2)} ms, update {_f(parts['update'], 2)} ms"
                     if parts else "") + f" (critic W={ours['critic_width']} depth {ours['critic_depth']}, actor "
                  f"W={ours['actor_width']})"],
                 ["ours / Brax", _f(result["ours_over_brax"], 2), ""]]) + "\n\n" + result["differs"])


def markdown_scaling_tasks(rows: list[dict], point: Point) -> str:
    return (f"(4a) tasks: {point.envs_per_task} envs per task, batch {point.batch_size} in all, critic "
            f"W={point.critic_width} depth {point.critic_depth}, {point.updates_per_step} update(s) per iteration\n\n"
            + benchmarking.table(
                ["tasks", "T", "compile s", "ms per iteration", "env steps/s", "env steps/s per task"],
                [[r["tasks"], str(r["num_tasks"]), _f(r["compile_s"]), _f(r["iteration_ms"], 2),
                  _f(r["env_steps_per_s"], 0), _f(r["env_steps_per_s_per_task"], 0)] for r in rows]))


def markdown_scaling_runs(rows: list[dict], point: Point) -> str:
    return (f"(4b) vmapped runs of {point.tasks}, {point.envs_per_task} envs, batch {point.batch_size} (per-run "
            "cost: chunk seconds / runs / the un-vmapped chunk's; goal <= 1)\n\n" + benchmarking.table(
                ["runs", "compile s", "s per chunk", "env steps/s", "env steps/s per run", "per-run cost"],
                [[str(r["runs"]), _f(r["compile_s"]), _f(r["chunk_s"], 3), _f(r["env_steps_per_s"], 0),
                  _f(r["env_steps_per_s_per_run"], 0), _f(r["per_run_cost"], 2)] for r in rows]))


def markdown_section(name: str, result: dict[str, Any]) -> str:
    """The table(s) of one section's result."""
    if name == "env":
        return markdown_env(result)
    if name == "update":
        return "(1b) " + markdown_update(result["rows"], result["matmul_peak"])
    if name == "replay":
        return markdown_replay(result)
    if name == "fused":
        return markdown_fused(result)
    if name == "host_vs_fused":
        return markdown_host(result)
    if name == "brax":
        return markdown_brax(result)
    if name == "scaling":
        point = Point(**result["point"])
        return (markdown_scaling_tasks(result["tasks"], point) + "\n\n" + markdown_scaling_runs(
            result["runs"], dataclasses.replace(point, tasks=result["tasks"][0]["tasks"])))
    if "skipped" in result:
        return f"(5) W=4096 update FLOP/s vs a bf16 matmul peak: {result['skipped']}"
    return "(5) " + markdown_update(result["rows"], result["matmul_peak"])


def markdown(results: dict[str, Any]) -> str:
    """The rows for docs/benchmarks.md: the command, machine and load, then every section's tables."""
    host = results["machine"]
    loads = ", ".join(f"{name} {info['load_start']} -> {info['load_end']}" for name, info in results["timing"].items())
    lines = [f"### {results['date']}: `{results['command']}`", "",
             f"Machine: {host['cpu']} ({host['cpu_count']} CPUs), JAX {host['jax']} on {host['backend']} "
             f"({host['device_count']} x {host['device_kind']}); XLA backend optimisation level "
             f"{results['xla_optimization_level']}; compute dtype {results['compute_dtype']}; "
             f"{results['wall_s'] / 60:.1f} min in all. Load average (1 min) at the start and end of each section: "
             f"{loads}."]
    compiling = results["timing"].get("compiling")
    if compiling:
        lines[-1] += (f" Compile phase first: {compiling['jobs']} programs in {compiling['seconds']:.0f} s, two at a "
                      f"time ({compiling['seconds_with_brax']:.0f} s until Brax's trainer, compiling beside them in "
                      "its own process, had finished its first epoch); a table's compile seconds are wall-clock "
                      "with another compile beside them.")
    lines.append("")
    for group, sections in results["sections"].items():
        for name, result in (sections.items() if group == "components" else [(group, sections)]):
            lines += [markdown_section(name, result), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------------
RUNNERS = {"env": bench_env, "update": bench_updates, "replay": bench_replay, "fused": bench_fused_vs_parts,
           "host_vs_fused": host_vs_fused, "scaling": scaling, "flops": flops_section}


def _set_xla_level(level: int) -> bool:
    """XLA's backend optimisation level for every compile of this process (Brax's too), via `XLA_FLAGS`; False when
    JAX's backend had already started (the flag is then not read: only our own compiles get the level)."""
    flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split() if "xla_backend_optimization_level" not in flag]
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_backend_optimization_level={level}"])
    from jax._src import xla_bridge

    return not xla_bridge.backends_are_initialized()


def resolve_plan(args: Args) -> Plan:
    if args.quick and args.smoke:
        raise ValueError("choose one of --quick and --smoke")
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    overrides = {name: getattr(args, name) for name in ("update_widths", "update_batches", "update_depth",
                                                        "scaling_tasks", "xla_optimization_level")
                 if getattr(args, name) is not None}
    if args.host_envs is not None:
        overrides["host"] = tuple(dataclasses.replace(plan.host[0], envs_per_task=envs) for envs in args.host_envs)
    return dataclasses.replace(plan, **overrides)


def main(args: Args) -> dict[str, Any] | None:
    plan = resolve_plan(args)
    if args.brax_worker is not None:
        brax_worker(args.brax_worker, plan.xla_optimization_level)
        return None
    wanted = {name for item in args.sections for name in (COMPONENTS if item == "components" else (item,))}
    unknown = sorted(wanted - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown sections {unknown}; choose from {['components', *SECTIONS]}")
    level_for_all = _set_xla_level(plan.xla_optimization_level)
    started = time.perf_counter()
    host = benchmarking.machine()
    command = "python experiments/benchmark.py" + "".join(f" {a}" for a in sys.argv[1:])
    ctx = Context(plan, args.compute_dtype)
    print(f"machine: {host['cpu']}, {host['cpu_count']} CPUs, load average {host['load_average']}; jax {host['jax']} "
          f"backend {host['backend']}, {host['device_count']} x {host['device_kind']}; plan {plan.name}, XLA level "
          f"{plan.xla_optimization_level}{'' if level_for_all else ' (our compiles only: the backend had started)'}, "
          f"compute dtype {ctx.dtype}", flush=True)
    if host["compilation_cache_dir"]:
        print(f"persistent compilation cache on ({host['compilation_cache_dir']}): compile times may be cache loads")

    # Compile first (two programs at a time, Brax's trainer compiling beside them in its own process), then time
    # with nothing else of ours running.
    worker = start_brax_worker(plan) if "brax" in wanted else None
    load_start = benchmarking.load_average()
    print("\n== compiling ==", flush=True)
    compiling = ctx.precompile(wanted)
    brax_result = finish_brax_worker(worker) if worker is not None else None
    compiling.update(seconds_with_brax=time.perf_counter() - started, load_start=load_start,
                     load_end=benchmarking.load_average())
    print(f"[{compiling['jobs']} compile jobs: {compiling['seconds']:.0f} s; with Brax's first epoch "
          f"{compiling['seconds_with_brax']:.0f} s]", flush=True)

    sections: dict[str, Any] = {}
    timing = {"compiling": compiling}
    for name in SECTIONS:
        if name not in wanted:
            continue
        print(f"\n== {name} ==\n", flush=True)
        load_start, start = benchmarking.load_average(), time.perf_counter()
        result = brax_section(ctx, brax_result) if name == "brax" else RUNNERS[name](ctx)
        timing[name] = {"seconds": time.perf_counter() - start, "load_start": load_start,
                        "load_end": benchmarking.load_average()}
        if name in COMPONENTS:
            sections.setdefault("components", {})[name] = result
        else:
            sections[name] = result
        print(markdown_section(name, result), f"\n[{name}: {timing[name]['seconds']:.0f} s]", flush=True)
    results = {"command": command, "date": datetime.date.today().isoformat(), "plan": plan.name,
               "plan_settings": dataclasses.asdict(plan), "machine": host, "compute_dtype": ctx.dtype,
               "xla_optimization_level": plan.xla_optimization_level, "xla_level_for_all_compiles": level_for_all,
               "wall_s": time.perf_counter() - started, "timing": timing,
               "compile_s": {_job_name(key): seconds for key, seconds in ctx.compile_s.items()},
               "sections": sections}
    out = args.out or Path("runs/benchmark") / f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{plan.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(results) + "\n")
    print(f"\n{results['wall_s']:.0f} s in all; wrote {out} and {out.with_suffix('.md')}", flush=True)
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))

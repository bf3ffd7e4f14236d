"""What a benchmark measures (`Point`, `Plan`) and the state its sections share (`Context`): envs, programs and
compiled executables are built once and reused across sections, and `Context.precompile` compiles every program the
wanted sections time, two at a time, before any timing.

Programs are the loop's own (`offpolicy.make`); the parts of an iteration (`Fns`) are the loop's pieces jitted one by
one (`offpolicy.reward_scale`, `offpolicy.sample_batch`, `replay.add`, `normalize.update`, the agent's `act`), and the
vmapped chunk is the runner's (`devices.vmap_train_chunk`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp

from purejaxmt import envs, normalize, offpolicy, replay
from purejaxmt.agents import brc
from purejaxmt.benchmarking import timing
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
                self._programs[point] = offpolicy.make(brc.AGENT_SPEC, config, loop, env)
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
            self._peak = timing.matmul_peak(self.dtype, self.plan.matmul_sizes)
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
            action = jax.ShapeDtypeStruct((env.num_tasks, num_envs, *action_shape(env.spec)), action_dtype(env.spec))
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
            self._executables[key] = self._timed(key, lambda: timing.compile_jit(
                program.train_chunk, self.abstract_state(point), options=self.options)[0])
        return self._executables[key]

    def vmapped_chunk(self, point: Point, num_runs: int) -> Any:
        """`train_chunk` vmapped over `num_runs` runs as the runner vmaps it (lockstep counters unbatched)."""
        key = ("vmapped", point, num_runs)
        if key not in self._executables:
            program = self.program(point)
            states = jax.eval_shape(lambda: stacked_states(program, num_runs))
            self._executables[key] = self._timed(key, lambda: timing.compile_jit(
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
            batch = jax.eval_shape(lambda key: random_batch(spec, batch_size, key), jax.random.PRNGKey(0))

            def update(learner, key, batch, scale):
                key, update_key = jax.random.split(key)
                learner, info = agent.update(learner, hyper, batch, scale, update_key, jnp.zeros((), jnp.int32))
                return (learner, key), info

            compiled = self._timed(("update", *key), lambda: timing.compile_jit(
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
            print(f"  compiled {job_name(key)}: {self.compile_s[key]:.0f} s", flush=True)

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(run, key, job) for key, job in jobs.items()]:
                future.result()
        return {"seconds": time.perf_counter() - start, "jobs": len(jobs)}

    # -- the fused chunk, measured once per point ---------------------------------------------------------------------
    def fused(self, point: Point) -> dict[str, Any]:
        """The un-vmapped fused chunk at `point`: the steady iteration time (median chunk after a warm-up one)."""
        if point not in self._fused:
            program, chunk = self.program(point), self.chunk(point)
            state = timing.own_buffers(program.init(jax.random.PRNGKey(0), program.hyper))
            _, seconds = timing.timed_calls(chunk, state, 1 + self.plan.repeats)
            iteration_s = timing.steady(seconds) / point.iterations
            num_tasks = len(program.task_names)
            self._fused[point] = {
                "point": dataclasses.asdict(point), "num_tasks": num_tasks,
                "compile_s": self.compile_s.get(("fused", point)), "chunk_s": timing.steady(seconds),
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


def random_batch(spec: Any, batch_size: int, key: jax.Array) -> dict[str, jax.Array]:
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


def job_name(key: tuple) -> str:
    """A compile job's key as words: `fused humanoid x16 batch 256 W=256`."""
    words = []
    for part in key:
        if isinstance(part, Point):
            words.append(f"{part.tasks} x{part.envs_per_task} batch {part.batch_size} W={part.critic_width}")
        else:
            words.append(str(part))
    return " ".join(words)


def action_shape(spec: Any) -> tuple[int, ...]:
    return () if spec.action.discrete else (spec.action.size,)


def action_dtype(spec: Any) -> Any:
    return jnp.int32 if spec.action.discrete else jnp.float32


def _reset_and_act(env: Any, key: jax.Array) -> tuple[Any, jax.Array]:
    """A reset state of one env per task and an action for it (to trace the env's step)."""
    state, _ = env.reset(key, 1)
    return state, jnp.zeros((env.num_tasks, 1, *action_shape(env.spec)), action_dtype(env.spec))


def transition_fields(transition: Any, names: Any) -> dict[str, jax.Array]:
    return {name: getattr(transition, name) for name in names}


def stacked_states(program: offpolicy.Program, num_runs: int) -> Any:
    """R independent run states stacked on a leading runs axis (the lockstep counters unbatched), as
    `devices.init_states` builds them, from R plain inits: equal to its `vmap` of init (one key per run) without
    compiling a vmapped env reset."""
    singles = [program.init(jax.random.PRNGKey(seed), program.hyper) for seed in range(num_runs)]
    state = jax.tree.map(lambda *xs: jnp.stack(xs), *singles)
    return state.replace(**{name: getattr(singles[0], name) for name in offpolicy.RunState.LOCKSTEP_FIELDS})


def set_xla_level(level: int) -> bool:
    """XLA's backend optimisation level for every compile of this process (Brax's too), via `XLA_FLAGS`; False when
    JAX's backend had already started (the flag is then not read: only our own compiles get the level)."""
    flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split() if "xla_backend_optimization_level" not in flag]
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_backend_optimization_level={level}"])
    from jax._src import xla_bridge

    return not xla_bridge.backends_are_initialized()

"""Where the wall-clock goes: components, host loop vs fused loop, Brax's SAC, scaling, and the update's FLOP/s.

    python experiments/benchmark.py --quick          # a 2-core CPU: under 9 minutes (docs/benchmarks.md)
    python experiments/benchmark.py                  # the full grid, for a GPU
    python experiments/benchmark.py --quick --sections components brax     # or env update replay fused ...
    python experiments/benchmark.py --sections update --update-widths 1024 4096 --update-batches 1024 32768
    python experiments/benchmark.py --smoke          # tiny settings on Pendulum and Brax's `fast` env (the tests)
    python experiments/benchmark.py --device-check   # first thing on a lent GPU: under 9 minutes on one H100
    python experiments/benchmark.py --device-check --smoke   # its tiny stand-in on a CPU (the tests, ~1 minute)

A thin script: the plans (what each mode measures) and the command line; the sections are
`purejaxmt.benchmarking`'s (one function per section, on the loop's own pieces). Prints the machine, backend and
device, then a markdown table per measurement; writes every number as JSON (`--out`, default
`runs/benchmark/<time>-<mode>.json`) and the tables as the rows of `docs/benchmarks.md` beside it (`.md`).

`--device-check` (issue 24; `purejaxmt/benchmarking/device_check.py`) runs its own parts instead: the `fast` humanoid
and MinAtar presets trained through the runner for a few minutes of wall clock (evaluation curves, env steps/s,
memory per run by the runner's pre-flight estimate and by the device, the seeds that fit), the W=4096 update's share
of a bf16 matmul peak, and the reward normaliser's cost per env step. The benchmark's sections (issue 13):

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

import dataclasses
import datetime
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import tyro

from purejaxmt import runner
from purejaxmt.benchmarking import device_check, sections
from purejaxmt.benchmarking.context import BraxMatch, Plan, Point

# The reference configuration (humanoid, 16 envs per task, batch 256, one update per iteration, a W=256
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

_EXPERIMENTS = Path(__file__).resolve().parent


def _presets(script: str) -> Any:
    """An experiment script's module (its `PRESETS`, `EXPERIMENT`, `AGENT`), loaded from its file."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{script}", _EXPERIMENTS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _preset_run(script: str, minutes: float, eval_every: int, tiny: dict[str, dict[str, Any]] | None = None
                ) -> device_check.PresetRun:
    """The script's `fast` preset (with `tiny`'s agent, loop and run fields replaced, for the smoke check)."""
    module = _presets(script)
    preset = module.PRESETS["fast"]
    if tiny:
        preset = dataclasses.replace(preset, agent=dataclasses.replace(preset.agent, **tiny["agent"]),
                                     loop=dataclasses.replace(preset.loop, **tiny["loop"]),
                                     run=dataclasses.replace(preset.run, **tiny["run"]))
    return device_check.PresetRun(module.EXPERIMENT, module.AGENT, "fast", preset, minutes, eval_every)


def device_check_plan(smoke: bool) -> device_check.DeviceCheck:
    """Under 9 minutes on one H100 (estimated, not yet run: ~2 min of compiles, 2.5 + 1 min of training, ~1 min for
    the W=4096 updates and the normaliser), or its CPU stand-in: the `fast` presets' agents and loops at tiny sizes
    on Pendulum-v1 and Breakout-MinAtar, a W=16 update."""
    if not smoke:
        return device_check.DeviceCheck(
            name="device-check", plan=dataclasses.replace(FULL, name="device-check", matmul_sizes=(4096, 8192, 16384)),
            humanoid=_preset_run("mjx_humanoid_mt", minutes=2.5, eval_every=3),
            minatar=_preset_run("minatar_mt", minutes=1.0, eval_every=2),
            update_width=4096, update_depth=2, update_batches=(1024, 32768), normalizer_iterations=100)
    loop = dict(envs_per_task=2, updates_per_step=1, replay_capacity=256, random_steps=20, steps_per_chunk=20,
                total_steps=120, eval_episodes=2)
    # float32 matmuls and XLA level 0 on the CPU: the compiles are most of the smoke check's time.
    humanoid = {"agent": dict(critic_width=16, critic_depth=1, actor_width=16, compute_dtype="float32"),
                "loop": dict(loop, batch_size=8), "run": dict(tasks="Pendulum-v1", xla_optimization_level=0)}
    minatar = {"agent": dict(critic_width=16, critic_depth=1, embed_dim=8, conv_channels=(4,), conv_kernel_sizes=(3,),
                             conv_strides=(1,), num_bins=11, epsilon_decay_steps=100, compute_dtype="float32"),
               "loop": dict(loop, batch_size=8), "run": dict(tasks="Breakout-MinAtar", episode_length=40,
                                                              xla_optimization_level=0)}
    return device_check.DeviceCheck(
        name="device-check-smoke", plan=dataclasses.replace(SMOKE, xla_optimization_level=0),
        humanoid=_preset_run("mjx_humanoid_mt", minutes=0.5, eval_every=2, tiny=humanoid),
        minatar=_preset_run("minatar_mt", minutes=0.5, eval_every=2, tiny=minatar),
        update_width=16, update_depth=1, update_batches=(8,), normalizer_iterations=10)


@dataclasses.dataclass(frozen=True)
class Args:
    quick: bool = False
    """The CPU-sized plan: under 10 minutes on a 2-core CPU (XLA level 1)."""
    smoke: bool = False
    """Tiny settings on Pendulum-v1 and Brax's `fast` env: seconds per section (the tests run it); with
    --device-check, the device check's tiny stand-in."""
    device_check: bool = False
    """The device check instead of the benchmark's sections: the `fast` presets against wall clock, the W=4096
    update's share of bf16 peak, the normaliser's cost, memory per run and the seeds that fit (docs/benchmarks.md)."""
    sections: tuple[str, ...] | None = None
    """Which sections to run (default all): components (= env update replay fused), host_vs_fused, brax, scaling,
    flops; with --device-check: humanoid_fast, minatar_fast, update_peak, normalizer."""
    out: Path | None = None
    """The JSON file (default runs/benchmark/<time>-<mode>.json); the markdown tables go beside it as .md (and the
    device check's run directories in the folder of its name without .json)."""
    check_minutes: tuple[float, float] | None = None
    """Override the device check's wall-clock minutes of the humanoid and the MinAtar `fast` runs."""
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


def resolve_check(args: Args) -> device_check.DeviceCheck:
    if args.quick:
        raise ValueError("--device-check has a full size and a --smoke size, no --quick")
    check = device_check_plan(args.smoke)
    if args.check_minutes is not None:
        humanoid, minatar = args.check_minutes
        check = dataclasses.replace(check, humanoid=dataclasses.replace(check.humanoid, minutes=humanoid),
                                    minatar=dataclasses.replace(check.minatar, minutes=minatar))
    if args.xla_optimization_level is not None:
        check = dataclasses.replace(check, plan=dataclasses.replace(
            check.plan, xla_optimization_level=args.xla_optimization_level))
    return check


def main(args: Args) -> dict[str, Any]:
    command = "python experiments/benchmark.py" + "".join(f" {a}" for a in sys.argv[1:])
    mode = ("device-check" + ("-smoke" if args.smoke else "") if args.device_check
            else "smoke" if args.smoke else "quick" if args.quick else "full")
    out = args.out or Path("runs/benchmark") / f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{mode}.json"
    if args.device_check:
        runner.enable_compilation_cache()  # the runner's memory pre-flight compiles the update its run compiles
        results = device_check.run(resolve_check(args), None if args.sections is None else set(args.sections),
                                   args.compute_dtype, command, out_dir=out.with_suffix(""))
        text = device_check.markdown(results)
    else:
        chosen = sections.wanted(args.sections or ("components", "host_vs_fused", "brax", "scaling", "flops"))
        results = sections.run(resolve_plan(args), chosen, args.compute_dtype, command)
        text = sections.markdown(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(text + "\n")
    print(f"\n{results['wall_s']:.0f} s in all; wrote {out} and {out.with_suffix('.md')}", flush=True)
    if args.device_check and device_check.failed(results):
        raise SystemExit(f"device check: {', '.join(device_check.failed(results))} failed (errors above and in {out})")
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))

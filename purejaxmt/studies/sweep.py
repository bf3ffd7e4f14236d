"""Sweeps: settings x seeds in as few compiled programs as the settings allow.

    --sweep agent.learning_rate=1e-4,3e-4 --sweep loop.normalize_rewards=true,false --seeds 3

forms the cross product of the swept values (and of `--variant`s, each a named set of `field=value`s on top of the
preset), then the seeds. Points that differ only in settings that are data (`offpolicy.Hyper`: gamma, reward
normalisation, the agent's learning rates, tau, ...) share one program: one vmapped runs axis of (setting, seed),
sharded over the devices. Points that change shapes (widths, bins, the critic loss, batch, envs per task) are
separate programs, trained one after another, each an ordinary resumable run directory:

    SWEEP_DIR/config.json                 the command's configs and sweep (a resume must ask for the same)
    SWEEP_DIR/sweep.json                  the index: settings, programs, runs
    SWEEP_DIR/runs/<setting>/seed-<s>/config.json   each run's own resolved configs
    SWEEP_DIR/program-<k>/                one program's run dir (metrics rows name their `run` and `setting`)
    SWEEP_DIR/ablation.md, plots/         the report (`purejaxmt.report.ablation`), written when the sweep ends
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
import types
import typing
from pathlib import Path
from typing import Any

import jax

from purejaxmt import envs, offpolicy
from purejaxmt.agents import AgentSpec
from purejaxmt.runner import devices, loop, provenance, rundir, study

SECTIONS = ("agent", "loop")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One point of the sweep: its label (`critic_loss=mse,learning_rate=0.0001`, or `base`) and its values by
    field (`agent.critic_loss`)."""

    label: str
    values: dict


@dataclasses.dataclass(frozen=True)
class ProgramPlan:
    """The settings that share one compiled program, and the shape-changing values that set it apart."""

    name: str
    shape_values: dict
    settings: list[Setting]


def _field_types(config: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(config))
    return {field.name: hints[field.name] for field in dataclasses.fields(config)}


def resolve_field(name: str, agent_config: Any, loop_config: offpolicy.LoopConfig) -> str:
    """`agent.learning_rate`, `loop.batch-size` or a bare field name found in exactly one of the configs, as
    `section.field`; a clear error for an unknown or ambiguous name."""
    fields = {"agent": _field_types(agent_config), "loop": _field_types(loop_config)}
    name = name.strip().replace("-", "_")
    section, _, field = name.rpartition(".")
    if section:
        if section not in fields or field not in fields[section]:
            known = [f"{s}.{f}" for s in SECTIONS for f in fields[s]]
            raise ValueError(f"unknown sweep field {name!r}; fields are {known}")
        return name
    matches = [s for s in SECTIONS if field in fields[s]]
    if len(matches) != 1:
        known = [f"{s}.{f}" for s in SECTIONS for f in fields[s]]
        problem = "is in both configs" if matches else "is not a field of either config"
        raise ValueError(f"sweep field {name!r} {problem}; name one of {known}")
    return f"{matches[0]}.{field}"


def _parse_value(text: str, kind: Any, field: str) -> Any:
    text = text.strip()
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union \
        else (kind,)
    if type(None) in options and text.lower() == "none":
        return None
    for option in options:
        if option is bool:
            if text.lower() in ("true", "yes", "1"):
                return True
            if text.lower() in ("false", "no", "0"):
                return False
        elif option is int:
            try:
                return int(text)
            except ValueError:
                pass
        elif option is float:
            try:
                return float(text)
            except ValueError:
                pass
        elif option is str:
            return text
    names = " or ".join(getattr(option, "__name__", str(option)) for option in options)
    raise ValueError(f"sweep value {field}={text!r} is not a valid {names}")


def parse_assignments(texts: list[str], agent_config: Any, loop_config: offpolicy.LoopConfig,
                      multiple: bool) -> list[tuple[str, list[Any]]]:
    """`field=v1,v2` (`multiple`) or `field=v` items as `(section.field, values)`, each value of the field's type."""
    types_ = {"agent": _field_types(agent_config), "loop": _field_types(loop_config)}
    parsed = []
    for text in texts:
        if "=" not in text:
            raise ValueError(f"sweep item {text!r} must read field=value{',value...' if multiple else ''}")
        name, _, values = text.partition("=")
        field = resolve_field(name, agent_config, loop_config)
        section, _, short = field.partition(".")
        items = values.split(",") if multiple else [values]
        if not all(item.strip() for item in items):
            raise ValueError(f"sweep item {text!r} has an empty value")
        parsed.append((field, [_parse_value(item, types_[section][short], field) for item in items]))
    return parsed


def apply(agent_config: Any, loop_config: offpolicy.LoopConfig, values: dict) -> tuple[Any, offpolicy.LoopConfig]:
    """The configs with a setting's values; the configs' own checks name any invalid value."""
    by_section: dict[str, dict] = {section: {} for section in SECTIONS}
    for field, value in values.items():
        section, _, short = field.partition(".")
        by_section[section][short] = value
    try:
        return (dataclasses.replace(agent_config, **by_section["agent"]),
                dataclasses.replace(loop_config, **by_section["loop"]))
    except ValueError as error:
        raise ValueError(f"sweep setting {values}: {error}") from error


def data_fields(agent_spec: AgentSpec) -> set[str]:
    """The fields that are data (`Hyper`) and so can vary inside one program."""
    loop_fields = {field.name for field in dataclasses.fields(offpolicy.Hyper) if field.name != "agent"}
    return ({f"loop.{name}" for name in loop_fields}
            | {f"agent.{field.name}" for field in dataclasses.fields(agent_spec.hyper_type)})


def _label(values: dict) -> str:
    if not values:
        return "base"
    shorts = [field.partition(".")[2] for field in values]
    names = [short if shorts.count(short) == 1 else field for field, short in zip(values, shorts)]
    return ",".join(f"{name}={value}" for name, value in zip(names, values.values()))


def settings(sweeps: list[str], variants: list[str], agent_config: Any,
             loop_config: offpolicy.LoopConfig) -> list[Setting]:
    """The sweep's points in order: each variant (or the preset alone) crossed with the swept values."""
    axes = parse_assignments(list(sweeps), agent_config, loop_config, multiple=True)
    bases = [dict(parse_assignments(variant.split(), agent_config, loop_config, multiple=False))
             for variant in variants] or [{}]
    bases = [{field: values[0] for field, values in base.items()} for base in bases]
    points = []
    for base in bases:
        for combination in itertools.product(*[values for _, values in axes]):
            points.append({**base, **{field: value for (field, _), value in zip(axes, combination)}})
    labels = [_label(point) for point in points]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"the sweep names the same setting more than once: {repeated}")
    for point in points:
        apply(agent_config, loop_config, point)  # every setting's configs are valid before anything runs
    return [Setting(label, point) for label, point in zip(labels, points)]


def plan_programs(points: list[Setting], agent_spec: AgentSpec, one_program: bool = False) -> list[ProgramPlan]:
    """Groups settings by their shape-changing values: one program per group, in order of first appearance.
    `one_program` refuses a sweep that needs several (naming the shape-changing fields)."""
    free = data_fields(agent_spec)
    groups: dict[str, list[Setting]] = {}
    shapes: dict[str, dict] = {}
    for point in points:
        shape_values = {field: value for field, value in point.values.items() if field not in free}
        key = json.dumps(shape_values, sort_keys=True)
        groups.setdefault(key, []).append(point)
        shapes[key] = shape_values
    if one_program and len(groups) > 1:
        fields = sorted({field for values in shapes.values() for field in values})
        raise ValueError(f"--one-program: the sweep changes shapes through {fields} ({len(groups)} programs); only "
                         f"settings that are data can share a program: {sorted(free)}")
    return [ProgramPlan(f"program-{index}", shapes[key], group) for index, (key, group) in enumerate(groups.items())]


def run_name(label: str, seed: int) -> str:
    """A run's name in `sweep.json`, in its metrics rows, and its directory under `runs/`."""
    return f"{label}/seed-{seed}"


def run_sweep(experiment: str, agent_spec: AgentSpec, command: Any, *, report: bool = True,
              progress_fn: loop.ProgressFn | None = None) -> Path:
    """Trains every setting x seed of `command` (see the module docstring) and returns the sweep directory.
    `progress_fn` is passed to each program's `loop.run` (returning False stops the sweep, as SIGINT does)."""
    run_config = command.run
    points = settings(command.sweep, command.variants, command.agent, command.loop)
    plans = plan_programs(points, agent_spec, command.one_program)
    configs = {point.label: apply(command.agent, command.loop, point.values) for point in points}
    seeds = [run_config.seed + i for i in range(run_config.seeds)]
    sweep_experiment = f"{experiment}_sweep"
    root = Path(command.resume or command.run_dir or rundir.new_run_dir(sweep_experiment))
    record = {**rundir.config_record(sweep_experiment, agent_spec, command.agent, command.loop, run_config,
                                     command.preset),
              "sweep": list(command.sweep), "variants": list(command.variants)}
    if command.resume is not None:
        saved = rundir.load_saved_config(root)
        if "sweep" not in saved:
            raise ValueError(f"cannot resume {root} as a sweep: its config.json has no sweep entry")
        rundir.check_resumable(root, record)
    else:
        rundir.check_new(root)
    for plan in plans:  # a job that cannot place the runs fails here, before anything is written
        num_runs = len(plan.settings) * len(seeds)
        devices.padded_num_runs(num_runs, len(devices.devices_for_runs(num_runs, run_config.devices)[0]))
    loop.sync("purejaxmt: sweep dir checked")  # no process writes before every process has checked

    index = {"experiment": experiment, "agent_module": agent_spec.name, "preset": command.preset,
             "sweep": list(command.sweep), "variants": list(command.variants),
             "fields": sorted({field for point in points for field in point.values}),
             "tasks": list(envs.resolve(run_config.tasks)), "seeds": seeds,
             "settings": [{"label": point.label, "values": point.values} for point in points],
             "programs": [], "runs": [], "provenance": provenance.record()}
    for plan in plans:
        names = [run_name(point.label, seed) for point in plan.settings for seed in seeds]
        index["programs"].append({"dir": plan.name, "shape_values": plan.shape_values, "runs": names})
        for point in plan.settings:
            for seed in seeds:
                name = run_name(point.label, seed)
                index["runs"].append({"name": name, "setting": point.label, "seed": seed, "program": plan.name,
                                      "config": f"runs/{name}/config.json"})
    index = json.loads(json.dumps(index))
    loop.say(f"[purejaxmt] sweep: {len(points)} setting(s) x {len(seeds)} seed(s) in {len(plans)} program(s) into "
             f"{root}")
    if jax.process_index() == 0 and command.resume is None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.json").write_text(json.dumps(record, indent=2) + "\n")
        (root / "sweep.json").write_text(json.dumps(index, indent=2) + "\n")
        for plan in plans:
            for point in plan.settings:
                agent_config, loop_config = configs[point.label]
                for seed in seeds:
                    run_record = rundir.config_record(
                        sweep_experiment, agent_spec, agent_config, loop_config,
                        dataclasses.replace(run_config, seed=seed, seeds=1), command.preset)
                    path = root / "runs" / run_name(point.label, seed) / "config.json"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps({**run_record, "setting": point.label, "values": point.values,
                                                "program": plan.name}, indent=2) + "\n")

    def program_member(number: int, plan: ProgramPlan) -> study.Member:
        # The program's configs are its first setting's: the others differ only in data (their `Hyper`s).
        agent_config, loop_config = configs[plan.settings[0].label]
        runs = []
        for point in plan.settings:
            hyper = offpolicy.hyper_of(agent_spec, *configs[point.label])
            runs += [loop.RunSpec(seed=seed, hyper=hyper, labels={"run": run_name(point.label, seed),
                                                                  "setting": point.label}) for seed in seeds]
        extra = {"sweep_program": plan.name, "settings": [point.values for point in plan.settings],
                 "runs": [spec.labels["run"] for spec in runs]}

        def train(run_dir: Path | None, resume: Path | None) -> None:
            loop.say(f"[purejaxmt] {plan.name} ({number} of {len(plans)}, {time.perf_counter() - sweep_start:.0f} s "
                     f"into the sweep): {[point.label for point in plan.settings]} x {len(seeds)} seed(s)")
            loop.run(sweep_experiment, agent_spec, agent_config, loop_config, run_config, preset=command.preset,
                     run_dir=run_dir, resume=resume, runs=runs, record_extra=extra, progress_fn=progress_fn)

        return study.Member(plan.name, loop_config.num_chunks, train)

    sweep_start = time.perf_counter()
    members = [program_member(number, plan) for number, plan in enumerate(plans, start=1)]
    study.open_study(root, "sweep", study.command_entry(experiment, command), {"sweep_index": "sweep.json"}, members,
                     resume=command.resume is not None)
    if not study.run_study(root, members):
        return root

    if report and jax.process_index() == 0:
        from purejaxmt.report import ablation  # matplotlib and rliable load only here

        print(f"[purejaxmt] sweep done: {ablation.report(root)}")
    return root

"""A finished (or stopped) run directory read back: its configs and its latest checkpoint, without a template.

`load(run_dir)` gives what `render`, `transfer` and analysis scripts need from a run: the configs it was trained with,
rebuilt from `config.json` (the agent's module imported by name), and `learner(i)`, the i-th run's learner as the
nested dict of NumPy arrays the checkpoint holds (keyed by field and parameter names; see `checkpoints`). Nothing is
compiled and no env is built: the learner is restored as saved (orbax reads the shapes from its own metadata; the
replay buffer is not read), so a run of any task set can be read by a script that knows only its directory.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from purejaxmt import offpolicy
from purejaxmt.agents import AgentSpec, load_spec
from purejaxmt.offpolicy import LoopConfig
from purejaxmt.runner import checkpoints, rundir
from purejaxmt.runner.config import RunConfig, make_env
from purejaxmt.treepaths import leaf_paths


def _build(cls: type, values: dict, what: str, run_dir: Path) -> Any:
    """`cls(**values)`, JSON lists back to tuples, and a clear error for fields this version does not know."""
    fields = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"{run_dir}/config.json has {what} fields {unknown} that this purejaxmt's {cls.__qualname__} "
                         "does not know (a run of another version)")
    return cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in values.items()})


def configs_of(record: dict, run_dir: Path) -> dict:
    """The configs a `config.json` record holds, rebuilt: `{"agent_spec", "agent", "loop", "run"}`; a clear error
    for an agent that cannot be loaded or a field this version does not know."""
    try:
        agent_spec = load_spec(record["agent_module"])
    except (KeyError, ValueError) as error:
        raise ValueError(f"{run_dir}/config.json names agent module {record.get('agent_module')!r}, which cannot "
                         f"be loaded: {error}") from error
    return {"agent_spec": agent_spec, "agent": _build(agent_spec.config_type, record["agent"], "agent", run_dir),
            "loop": _build(LoopConfig, record["loop"], "loop", run_dir),
            "run": _build(RunConfig, record["run"], "run", run_dir)}


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """A run directory's configs and checkpoints. `learner(run)` restores the latest checkpoint (once)."""

    run_dir: Path
    record: dict
    agent_spec: AgentSpec
    agent_config: Any
    loop_config: LoopConfig
    run_config: RunConfig

    @property
    def task_names(self) -> tuple[str, ...]:
        from purejaxmt import envs

        return envs.resolve(self.run_config.tasks)

    @property
    def num_runs(self) -> int:
        """Runs in the checkpoint (a sweep program's settings x seeds, or the run's seeds)."""
        return _num_runs(self.learners())

    def _manager(self, **options: Any) -> ocp.CheckpointManager:
        return ocp.CheckpointManager((self.run_dir / "checkpoints").absolute(), **options)

    def latest_chunk(self) -> int:
        manager = self._manager()
        chunk = manager.latest_step()
        manager.close()
        if chunk is None:
            raise FileNotFoundError(f"{self.run_dir} has no checkpoint in {self.run_dir / 'checkpoints'} (it stopped "
                                    "before its first checkpoint)")
        return chunk

    def learners(self) -> dict:
        """Every run's learner from the latest checkpoint, a nested dict of NumPy arrays `[R, ...]` keyed as
        `checkpoints` saves it. Only the learner is read (not the replay buffer), once per checkpoint."""
        chunk = self.latest_chunk()
        cached = _LEARNERS.get(self.run_dir.resolve())
        if cached is None or cached[0] != chunk:
            manager = self._manager(item_handlers=ocp.PyTreeCheckpointHandler())
            layout = manager.item_metadata(chunk)
            abstract = {"learner": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                                dict(getattr(layout, "tree", layout))["learner"])}
            restored = manager.restore(chunk, args=ocp.args.PyTreeRestore(
                item=abstract, restore_args=jax.tree.map(lambda _: ocp.ArrayRestoreArgs(), abstract),
                partial_restore=True))
            manager.close()
            learners = jax.tree.map(np.asarray, restored["learner"])
            _verify(self.run_dir / "checkpoints" / str(chunk), learners)
            cached = (chunk, learners)
            _LEARNERS[self.run_dir.resolve()] = cached
        return cached[1]

    def learner(self, run: int = 0) -> dict:
        """Run `run`'s learner from the latest checkpoint: a nested dict of NumPy arrays without the runs axis."""
        learners = self.learners()    # one checkpoint read for the count and the arrays
        if not 0 <= run < _num_runs(learners):
            raise ValueError(f"{self.run_dir} holds {_num_runs(learners)} run(s); run {run} does not exist")
        return jax.tree.map(lambda x: x[run], learners)


def _verify(step_dir: Path, learners: dict) -> None:
    """Checks the learner read back against the checkpoint's digests. A checkpoint written by one process has one
    digest file, whose digest of a leaf is the CRC-32 of the whole array (its shards along the runs axis, in order):
    checked here. One written by several processes has a digest per process of its own shards, which only a resume
    on the same processes can check: read unverified, as before digests."""
    files = sorted(step_dir.glob("digests.process-*.json"))
    if len(files) != 1:
        return
    saved = json.loads(files[0].read_text())["leaves"]
    for path, leaf in leaf_paths(learners):
        name = "learner/" + "/".join(path)
        if name in saved and saved[name].split()[0] != checkpoints.leaf_digest(leaf):
            raise ValueError(f"checkpoint {step_dir} is damaged: leaf {name} does not match its digest; resuming "
                             "the run falls back to the newest intact checkpoint")


def _num_runs(learners: dict) -> int:
    return int(jax.tree.leaves(learners)[0].shape[0])


_LEARNERS: dict[Path, tuple[int, dict]] = {}


def load(run_dir: Path | str) -> SavedRun:
    """The run in `run_dir` (a directory with `config.json` and `checkpoints/`, as `runner.run` writes it)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {run_dir}")
    record = rundir.load_saved_config(run_dir)
    if not (run_dir / "checkpoints").is_dir():
        hint = " (a sweep or baselines dir: pass one of its program-<k>/ or task sub-directories)" \
            if (run_dir / "sweep.json").is_file() or (run_dir / "summary.json").is_file() else ""
        raise FileNotFoundError(f"{run_dir} has no checkpoints/ directory{hint}")
    configs = configs_of(record, run_dir)
    return SavedRun(run_dir=run_dir, record=record, agent_spec=configs["agent_spec"],
                    agent_config=configs["agent"], loop_config=configs["loop"], run_config=configs["run"])


def _fill(saved_tree: dict, template: Any, what: str, run_dir: Path) -> Any:
    """`template`'s structure filled from a checkpoint's nested dict, with a clear error where they do not match."""
    try:
        tree = checkpoints.from_saveable(saved_tree, template)
    except (KeyError, TypeError) as error:
        raise ValueError(f"{run_dir}'s checkpoint has no {what} leaf {error} that this purejaxmt's agent has (a "
                         "checkpoint of another agent or version)") from None
    got, expected = checkpoints.state_layout(tree), checkpoints.state_layout(template)
    if got != expected:
        wrong = [(g, e) for g, e in zip(got, expected) if g != e][:3]
        raise ValueError(f"{run_dir}'s checkpoint does not match the {what} its config builds: saved vs expected "
                         f"{wrong}")
    return tree


def load_policy(run: SavedRun, index: int = 0, env: Any | None = None) -> tuple[Any, Any, Any, Any]:
    """(env, agent, learner, agent hyper) of run `index` of a saved run: the env from its run config (or `env`, which
    must have the run's tasks), the agent and its settings from its config, the learner from its latest checkpoint."""
    env = make_env(run.run_config) if env is None else env
    if tuple(env.task_names) != tuple(run.task_names):
        raise ValueError(f"the env given has tasks {list(env.task_names)}, the run {list(run.task_names)}")
    agent = run.agent_spec.make_agent(run.agent_config, env.spec)
    hyper = offpolicy.hyper_of(run.agent_spec, run.agent_config, run.loop_config)
    template = jax.eval_shape(agent.init, jax.random.PRNGKey(0), hyper.agent)
    # The settings are the config's: the evaluation policy reads none of them (a sweep's data settings, learning
    # rates and the like, only shape updates), and they need not match a checkpoint of an older version.
    return env, agent, _fill(run.learner(index), template, "learner", run.run_dir), hyper.agent

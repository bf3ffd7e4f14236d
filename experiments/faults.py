"""Fault injection: does a run or study survive SIGKILL anywhere, resumed from its directory alone?

    python experiments/faults.py --kills 5 -- python experiments/minatar_mt.py --preset smoke --tasks CartPole-v1 \\
        --seeds 2 --sweep agent.critic_width=32,48
    python experiments/faults.py -- python experiments/transfer.py --preset smoke

1. Runs the command uninterrupted into OUT/uninterrupted (`--run-dir`, or `--out` for transfer.py), with
   `PUREJAXMT_TRACE=1`: the runner prints a line before every compile, chunk and checkpoint write (`loop.trace`),
   which gives the run's timeline.
2. Runs it again into OUT/interrupted and kills it with SIGKILL at N moments spread over that timeline's compiles,
   chunks and checkpoint writes: at a compile or a chunk halfway through it (its duration in the uninterrupted run;
   at the latest as the next moment starts, since a compile the cache now serves is shorter), at a checkpoint as it
   starts writing. After each kill it continues with `<script> --resume OUT/interrupted` and nothing else, as a user
   after a preemption would; a moment the resumed run starts beyond passes to the next one ahead.
3. Prints a table (each kill, where it landed) and "identical" when every metrics row of every member run equals the
   uninterrupted run's (wall-clock fields aside) with no row lost or duplicated, else the first row that differs.
Exits 0 when identical, 1 otherwise. Single-process commands only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

TRACE = "[purejaxmt:trace] "
WALL_CLOCK = ("wall_time", "env_steps_per_second")


def _out_flag(command: list[str]) -> str:
    return "--out" if any(arg.endswith("transfer.py") for arg in command) else "--run-dir"


def _resume_command(command: list[str], directory: Path) -> list[str]:
    """The interpreter and script of `command`, then `--resume DIR` alone."""
    script = next((i for i, arg in enumerate(command) if arg.endswith(".py")), None)
    if script is None:
        raise SystemExit(f"cannot find the experiment script (a .py argument) in {command}")
    return [*command[:script + 1], "--resume", str(directory)]


class Traced:
    """A command run with tracing on: its trace events as (seconds since start, event), its output kept."""

    def __init__(self, command: list[str], log: Path, env: dict | None = None) -> None:
        self.events: list[tuple[float, str]] = []
        self.start = time.perf_counter()
        self.log = open(log, "a")
        self.log.write(f"$ {' '.join(command)}\n")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, **(env or {}), "PUREJAXMT_TRACE": "1"}, bufsize=1)
        self.output: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.log.write(line)
            self.output.append(line)
            if TRACE in line:  # anywhere in the line: a progress bar's unfinished line may precede it
                event = line[line.index(TRACE) + len(TRACE):].strip()
                for name in ("uninterrupted ", "interrupted "):  # a single run's directory is the run: one name
                    event = "run " + event[len(name):] if event.startswith(name) else event
                with self.changed:
                    self.events.append((time.perf_counter() - self.start, event))
                    self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, event: str, timeout: float = 1800.0) -> bool:
        """Blocks until `event` is traced (True) or the process ends without it (False)."""
        return self.first_of([event], timeout) is not None

    def first_of(self, events: list[str], timeout: float = 1800.0) -> str | None:
        """Blocks until one of `events` is traced and returns it (the first traced), or None when the process ends
        without any of them."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                seen = next((event for _, event in self.events if event in events), None)
                if seen is not None:
                    return seen
                if not self.reader.is_alive() or time.monotonic() > deadline:
                    return None
                self.changed.wait(0.5)

    def sleep_in_moment(self, event: str, delay: float) -> None:
        """Sleeps `delay` s into the moment `event` began, or less: until the event after it is traced, so that a
        kill aimed into a moment that is shorter now (a compile the cache serves) lands at the latest as the next one
        starts."""
        deadline = time.monotonic() + delay
        with self.changed:
            count = next(i for i, (_, seen) in enumerate(self.events) if seen == event) + 1
            while len(self.events) == count and self.reader.is_alive() and time.monotonic() < deadline:
                self.changed.wait(max(0.0, min(0.05, deadline - time.monotonic())))

    def finish(self, timeout: float | None = None) -> int:
        code = self.process.wait(timeout)
        self.reader.join()
        self.log.close()
        return code


def choose_kills(timeline: list[tuple[float, str]], kills: int) -> list[tuple[str, float]]:
    """N (event, delay) pairs in timeline order, shared out over the kinds of moment (compile, chunk, checkpoint) and
    spread evenly within each, each hit halfway through (half the time to the next event of the uninterrupted run:
    the next event after a checkpoint starts is the next chunk, so that is half its write)."""
    moments: dict[str, list[tuple[str, float]]] = {"compile": [], "chunk": [], "checkpoint": []}
    for i, (at, event) in enumerate(timeline):
        kind = event.split()[-2] if event.split()[-1].isdigit() else event.split()[-1]
        gap = (timeline[i + 1][0] - at) if i + 1 < len(timeline) else 0.0
        moments.setdefault(kind, []).append((event, gap / 2))
    counts = dict.fromkeys(moments, 0)
    for _ in range(min(kills, len(timeline))):  # round-robin over the kinds that have moments left
        kind = min((k for k in moments if counts[k] < len(moments[k])), key=lambda k: counts[k])
        counts[kind] += 1
    chosen = [moments[kind][int((j + 0.5) * len(moments[kind]) / count)]
              for kind, count in counts.items() for j in range(count)]
    order = {event: i for i, (_, event) in enumerate(timeline)}
    return sorted(chosen, key=lambda moment: order[moment[0]])


def partial_checkpoints(directory: Path) -> set[Path]:
    """Checkpoint steps left half-written (orbax writes a step into a temporary directory, renamed when complete)."""
    return {path for path in directory.rglob("checkpoints/*") if path.is_dir() and not path.name.isdigit()}


def landed(last_event: str | None, cut: set[Path], directory: Path) -> str:
    """Where a kill landed: the last traced moment, the last complete checkpoint of that member then, and whether
    the kill cut a checkpoint write (a partial step left)."""
    if last_event is None:
        return "before the first compile"
    member = last_event.split()[0]
    member_dir = directory if member == "run" else directory / member
    steps = [int(p.name) for p in (member_dir / "checkpoints").glob("*") if p.is_dir() and p.name.isdigit()]
    where = f"in '{last_event}' ({member}: last checkpoint {max(steps) if steps else 'none'})"
    if cut:
        where += f", a checkpoint write cut ({sorted(cut)[0].relative_to(directory)} left)"
    return where


def metrics(directory: Path) -> dict[tuple, dict]:
    """Every member run's metrics rows by (member, process file, run name or seed, chunk), wall-clock fields out.
    A key seen twice is a duplicated row."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from purejaxmt.runner import rundir  # the run directory's one reader (a torn last line skipped)

    rows: dict[tuple, dict] = {}
    for path in sorted(directory.rglob("metrics*.jsonl")):
        member = str(path.parent.relative_to(directory))
        for row in rundir.read_metrics(path):
            key = (member, path.name, row.get("run", row.get("seed")), row["chunk"])
            if key in rows:
                rows[key] = {"duplicate row": True}
                continue
            rows[key] = {name: value for name, value in row.items() if name not in WALL_CLOCK}
    return rows


def compare(expected: dict[tuple, dict], got: dict[tuple, dict]) -> str:
    for key in sorted(set(expected) | set(got), key=str):
        if key not in got:
            return f"lost row {key}"
        if key not in expected:
            return f"extra row {key}: {got[key]}"
        if got[key] != expected[key]:
            fields = sorted(name for name in set(got[key]) | set(expected[key])
                            if got[key].get(name) != expected[key].get(name))
            return (f"row {key} differs in {fields[:5]}: " +
                    "; ".join(f"{name} {expected[key].get(name)!r} vs {got[key].get(name)!r}" for name in fields[:3]))
    return "identical"


def make_parser() -> argparse.ArgumentParser:
    """The tool's own flags (those before `--`; the experiment command follows it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs spread over compiles, chunks, checkpoints")
    parser.add_argument("--out", type=Path, default=None, help="where both runs go (default runs/faults/<time>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("usage: python experiments/faults.py [--kills N] [--out DIR] -- <experiment command>")
    split = argv.index("--")
    args = make_parser().parse_args(argv[:split])
    command = argv[split + 1:]
    if not command or any(flag in command for flag in ("--run-dir", "--out", "--resume")):
        raise SystemExit("give an experiment command without --run-dir, --out or --resume: faults.py chooses them")
    out = args.out or Path("runs") / "faults" / time.strftime("%Y%m%d-%H%M%S")
    if out.exists():
        raise SystemExit(f"{out} exists: choose another --out")
    out.mkdir(parents=True)
    log = out / "output.log"
    flag = _out_flag(command)

    whole_dir, broken_dir = out / "uninterrupted", out / "interrupted"
    print(f"[faults] uninterrupted: {' '.join(command)}", flush=True)
    whole = Traced([*command, flag, str(whole_dir)], log)
    if whole.finish() != 0:
        raise SystemExit(f"the uninterrupted command failed; see {log}")
    timeline = whole.events
    if not timeline:
        raise SystemExit(f"the command traced nothing (is it a purejaxmt experiment?); see {log}")
    kills = choose_kills(timeline, args.kills)
    print(f"[faults] timeline: {len(timeline)} moments over {timeline[-1][0]:.0f} s; killing at {len(kills)}",
          flush=True)

    table: list[tuple[int, str, str]] = []
    current = Traced([*command, flag, str(broken_dir)], log)
    number = 0
    while number < len(kills):
        # The next kill's moment, or a later one: a resume can start past a moment (an earlier kill landed beyond
        # it, or the member it belongs to had finished), and then that kill passes to the next moment ahead.
        ahead = [event for event, _ in kills[number:]]
        seen = current.first_of(ahead)
        if seen is None:  # the process ended before any of them
            for event, _ in kills[number:]:
                number += 1
                table.append((number, event, "not reached (the process ended first)"))
            break
        while kills[number][0] != seen:
            number += 1
            table.append((number, kills[number - 1][0], "passed over (the resumed run started beyond it)"))
        event, delay = kills[number]
        number += 1
        before = partial_checkpoints(broken_dir)
        current.sleep_in_moment(event, delay)
        current.process.kill()  # SIGKILL: no handler, no cleanup
        current.finish()
        last = current.events[-1][1] if current.events else None
        table.append((number, f"{event} +{delay:.2f} s",
                      landed(last, partial_checkpoints(broken_dir) - before, broken_dir)))
        print(f"[faults] kill {number}: at {event} +{delay:.2f} s, landed {table[-1][2]}", flush=True)
        current = Traced(_resume_command(command, broken_dir), log)
    if current.finish() != 0:
        raise SystemExit(f"the final resume failed; see {log}")

    verdict = compare(metrics(whole_dir), metrics(broken_dir))
    width = max(len(row[1]) for row in table) if table else 10
    print(f"\n| kill | {'aimed at'.ljust(width)} | landed |")
    print(f"| ---- | {'-' * width} | ------ |")
    for number, aimed, where in table:
        print(f"| {number:4d} | {aimed.ljust(width)} | {where} |")
    print(f"\n{verdict}")
    print(f"[faults] runs and output in {out}", file=sys.stderr)
    return 0 if verdict == "identical" else 1


if __name__ == "__main__":
    raise SystemExit(main())

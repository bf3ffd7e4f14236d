"""The docs a reader follows (README.md and docs/*.md): every relative link and image resolves to a file (and an
`#anchor` to a heading of it), and every `python experiments/...` command in them, in a code block or in inline code,
parses with its script's own parser, nothing run:

- a script with its own tyro `Args` (ablate, compare, render, benchmark, bench_runs, transfer): `tyro.cli(Args)`, and
  a preset it names must be one its tests trace (transfer's: tests/test_transfer.py);
- a script with an argparse `make_parser()` (bench_projection): that parser;
- a runner experiment (`PRESETS` of `runner.Preset`): `cli.parse_command`, then the sweep's settings and programs
  (`studies.sweep`); the command's preset and every one of its tasks must be among those tests/test_presets.py traces
  for that script, so a doc cannot name a preset or task no test has traced.

Placeholders: a `--resume` value of a runner experiment must be a run directory (the parser reads its config.json),
so it is replaced by a run directory the runner's own record writer makes here (`_resume_dir`). Every other path
(RUN_DIR, SWEEP_DIR, runs/<...>/<time>) is only a path to the parsers, which do not open it, so it stays as written.
A misspelled flag, a removed preset, an unknown task or a bad sweep field still fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest
import test_presets  # the scripts as loaded there (`SCRIPTS`) and the traced (script, preset) pairs (`CASES`)
import test_transfer
import tyro

from purejaxmt import cli, envs, runner
from purejaxmt.benchmarking import context as benchmarking_context
from purejaxmt.benchmarking import device_check
from purejaxmt.runner import rundir
from purejaxmt.studies import sweep

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _split(path: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(prose lines, code-block lines) of a markdown file, each with its 1-based line number; a code line ending in a
    backslash is joined with the next (numbered by its first line)."""
    prose, code, in_code, pending = [], [], False, None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if FENCE.match(line):
            in_code, pending = not in_code, None
        elif not in_code:
            prose.append((number, line))
        else:
            start, text = (pending[0], f"{pending[1]} {line.strip()}") if pending else (number, line)
            if text.rstrip().endswith("\\"):
                pending = (start, text.rstrip()[:-1])
            else:
                code.append((start, text))
                pending = None
    return prose, code


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (backticks, dots, colons...), spaces as '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    prose, _ = _split(path)
    seen: dict[str, int] = {}
    anchors = set()
    for _, line in prose:
        match = HEADING.match(line)
        if match:
            slug = _slug(match.group(2))
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _links() -> list[tuple[str, str]]:
    """(where, target) of every relative link and image outside code, in every doc (link text may span lines)."""
    found = []
    for doc in DOCS:
        prose = dict(_split(doc)[0])
        text = "\n".join(INLINE_CODE.sub("", prose.get(number, "")) for number in range(1, max(prose, default=0) + 1))
        for match in LINK.finditer(text):
            target = match.group(1)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                found.append((f"{doc.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}", target))
    return found


LINKS = _links()


def test_the_docs_have_links():
    assert len(LINKS) > 10, LINKS


@pytest.mark.parametrize("where, target", LINKS, ids=[f"{w} {t}" for w, t in LINKS])
def test_relative_link_resolves(where, target):
    doc = ROOT / where.rsplit(":", 1)[0]
    path, _, anchor = target.partition("#")
    file = (doc.parent / path).resolve() if path else doc
    assert file.exists(), f"{where}: the link {target!r} names {file}, which does not exist"
    if anchor and file.suffix == ".md":
        assert anchor in _anchors(file), (f"{where}: the link {target!r}: {file.name} has no heading with the anchor "
                                          f"#{anchor}; its anchors: {sorted(_anchors(file))}")


def _commands_in(text: str) -> list[list[str]]:
    """The argv of each `python experiments/<script>.py ...` in a line of shell (a command inside a quoted string,
    as in `ssh host "cd x && python experiments/..."`, included); stops at `&&`, `;`, `|`, a comment."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars="();|&")
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as error:  # an unbalanced quote: not shell
        raise AssertionError(f"cannot split {text!r} as a shell line: {error}") from None
    commands = []
    for i, token in enumerate(tokens):
        if " " in token and "experiments/" in token:
            commands += _commands_in(token)
        elif token in ("python", "python3") and re.match(r"experiments/\w+\.py$", "".join(tokens[i + 1:i + 2])):
            argv = []
            for word in tokens[i + 1:]:
                if word and set(word) <= set("();|&"):
                    break
                argv.append(word)
            commands.append(argv)
    return commands


def _commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        prose, code = _split(doc)
        spans = [(number, span) for number, line in prose for _, span in INLINE_CODE.findall(line)]
        for number, text in [*code, *spans]:
            if "experiments/" in text:
                found += [(f"{doc.relative_to(ROOT)}:{number}", argv) for argv in _commands_in(text)]
    return found


COMMANDS = _commands()


def test_the_docs_have_commands():
    scripts = {Path(argv[0]).stem for _, argv in COMMANDS}
    assert {"mjx_humanoid_mt", "minatar_mt", "transfer", "ablate", "render", "benchmark"} <= scripts, scripts


def _traced_tasks() -> dict[str, set[str]]:
    traced: dict[str, set[str]] = {}
    for script, preset in test_presets.CASES:
        tasks = test_presets.SCRIPTS[script].PRESETS[preset].run.tasks
        traced.setdefault(script, set()).update(envs.resolve(tasks))
    for script, _, tasks in test_presets.TASK_CASES:
        traced.setdefault(script, set()).update(envs.resolve(tasks))
    return traced


TRACED_TASKS = _traced_tasks()


def _traced_own_presets() -> dict[str, set[str]]:
    """The presets of scripts with their own kind of preset, as their tests trace them (the `parametrize` of
    tests/test_transfer.py's preset trace)."""
    marks = getattr(test_transfer.test_transfer_presets_trace, "pytestmark", [])
    return {"transfer": {name for mark in marks if mark.name == "parametrize" for name in mark.args[1]}}


def _resume_dir(tmp_path_factory, script: str) -> Path:
    """A run directory of `script` as the runner records one (config.json from `rundir.config_record`), of its first
    traced preset: what `--resume DIR` reads before anything runs."""
    run_dir = tmp_path_factory.getbasetemp() / f"resume-{script}"
    if not (run_dir / "config.json").is_file():
        module = test_presets.SCRIPTS[script]
        name = next(preset for name_, preset in test_presets.CASES if name_ == script)
        chosen = module.PRESETS[name]
        record = rundir.config_record(module.EXPERIMENT, module.AGENT, chosen.agent, chosen.loop, chosen.run, name)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(record))
    return run_dir


def _parse(where: str, script: str, argv: list[str], run) -> object:
    """`run(argv)` with the parser's own output captured; a `SystemExit` (tyro's and argparse's way to refuse) fails
    the test with what the parser said."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            return run(argv)
    except SystemExit as error:
        if error.code in (0, None) and "--help" in argv:
            return None
        said = out.getvalue()
        command = f"python {script} {shlex.join(argv)}"
        raise AssertionError(f"{where}: `{command}` does not parse ({error}):\n{said}") from None


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[f"{w} {' '.join(a)[:70]}" for w, a in COMMANDS])
def test_documented_command_parses(where, argv, tmp_path_factory):
    script_path = ROOT / argv[0]
    assert script_path.is_file(), f"{where}: {argv[0]} does not exist"
    script, args = script_path.stem, argv[1:]
    module = test_presets.SCRIPTS[script]
    if hasattr(module, "Args"):  # its own tyro CLI: ablate, compare, render, benchmark, bench_runs, transfer
        parsed = _parse(where, argv[0], args, lambda a: tyro.cli(module.Args, args=a))
        if parsed is not None and hasattr(parsed, "preset"):
            traced = _traced_own_presets().get(script, set())
            assert parsed.preset in module.PRESETS and parsed.preset in traced, (
                f"{where}: preset {parsed.preset!r} of {script} is not among its presets traced by the tests "
                f"(traced: {sorted(traced)}; tests/test_docs.py `_traced_own_presets` says where they are traced)")
        if parsed is not None and script == "benchmark":
            known = ({*device_check.SECTIONS} if parsed.device_check
                     else {"components", *benchmarking_context.SECTIONS})
            assert set(parsed.sections or ()) <= known, f"{where}: unknown sections {set(parsed.sections) - known}"
        return
    if hasattr(module, "make_parser"):  # its own argparse CLI: bench_projection
        # Flags up to a `--` (faults.py: the experiment command after it is checked as a command of its own).
        _parse(where, argv[0], args, lambda a: module.make_parser().parse_args(a[:a.index("--")] if "--" in a else a))
        return
    assert all(isinstance(chosen, runner.Preset) for chosen in getattr(module, "PRESETS", {None: None}).values()), (
        f"{where}: {argv[0]} is neither a runner experiment nor a script with an `Args` (tyro) or a `make_parser()` "
        "(argparse) this test can parse without running it")
    if any(arg == "--resume" or arg.startswith("--resume=") for arg in args):
        # The parser reads the run's config.json, so the documented path becomes a real (recorded) run directory.
        resume = str(_resume_dir(tmp_path_factory, script))
        args = [f"--resume={resume}" if arg.startswith("--resume=") else arg for arg in args]
        args = [resume if i and args[i - 1] == "--resume" else arg for i, arg in enumerate(args)]
    command = _parse(where, argv[0], args, lambda a: cli.parse_command(module.PRESETS, a))
    if command is None:
        return
    assert (script, command.preset) in test_presets.CASES, (
        f"{where}: preset {command.preset!r} of {script} is not traced by tests/test_presets.py")
    tasks = set(envs.resolve(command.run.tasks))
    assert tasks <= TRACED_TASKS[script], (
        f"{where}: tasks {sorted(tasks - TRACED_TASKS[script])} of {script} are traced by no preset in "
        f"tests/test_presets.py (traced: {sorted(TRACED_TASKS[script])})")
    if command.is_sweep:
        try:
            points = sweep.settings(list(command.sweep), list(command.variants), command.agent, command.loop)
            sweep.plan_programs(points, module.AGENT, command.one_program)
        except ValueError as error:
            raise AssertionError(f"{where}: the sweep of `python {shlex.join(argv)}` is refused: {error}") from None

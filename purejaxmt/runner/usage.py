"""Command-line errors read like a CLI's: a bad configuration or usage prints one framed message, the way tyro prints
its own parse errors, and exits with status 2; anything unexpected keeps its traceback.

    if __name__ == "__main__":
        with runner.usage_errors():
            cli.main(EXPERIMENT, AGENT, PRESETS, description=__doc__)

A usage error is a plain `SystemExit` with a message (the runner's refusals), or a `ValueError`, `FileNotFoundError`,
`FileExistsError`, `NotADirectoryError` or `MemoryError` raised by purejaxmt's or an experiment script's own code (its
innermost frame is ours: a check that names the bad value). The same exception types raised inside JAX, NumPy or any
other library are not ours to explain, so they keep their traceback. `PUREJAXMT_DEBUG=1` shows every traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

DEBUG_VARIABLE = "PUREJAXMT_DEBUG"
USAGE_STATUS = 2  # as tyro and argparse exit on a bad command line
OURS = (Path(__file__).resolve().parents[1], Path(__file__).resolve().parents[2] / "experiments")
CHECKED = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, MemoryError)


def raised_by_us(error: BaseException) -> bool:
    """Whether the innermost frame of `error`'s traceback is in purejaxmt or its experiment scripts."""
    traceback = error.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    path = Path(traceback.tb_frame.f_code.co_filename).resolve()
    return any(path.is_relative_to(root) for root in OURS)


def is_usage_error(error: BaseException) -> bool:
    if type(error) is SystemExit:  # subclasses (a full disk's CheckpointWriteError) have statuses of their own
        return isinstance(error.code, str)
    return isinstance(error, CHECKED) and raised_by_us(error)


def framed(message: str, title: str = "Invalid configuration", program: str | None = None) -> str:
    """`message` in tyro's error frame; its lines stay whole (no wrapping), so they can be searched for."""
    program = program or sys.argv[0]
    lines = [*str(message).splitlines(), f"For the flags and presets, run {program} --help (and {DEBUG_VARIABLE}=1 "
             "for the traceback)"]
    return "\n".join([f"╭─ {title} ─", *(f"│ {line}" for line in lines), "╰─"])


@contextlib.contextmanager
def usage_errors(program: str | None = None) -> Iterator[None]:
    """Turns a usage error raised inside into its framed message on stderr and exit status 2 (see the module
    docstring); with `PUREJAXMT_DEBUG` set, or for any other exception, the exception propagates as it is."""
    try:
        yield
    except BaseException as error:  # noqa: BLE001 -- re-raised below unless it is a usage error
        if os.environ.get(DEBUG_VARIABLE) or not is_usage_error(error):
            raise
        message = error.code if isinstance(error, SystemExit) else str(error)
        print(framed(message, program=program), file=sys.stderr, flush=True)
        raise SystemExit(USAGE_STATUS) from None

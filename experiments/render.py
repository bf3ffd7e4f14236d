"""Videos of what a trained policy does: the evaluation policy of each task of a run, from its latest checkpoint.

    python experiments/render.py runs/mjx_humanoid_mt/<time>                       # every task, one episode each
    python experiments/render.py RUN_DIR --tasks humanoid-walk --frames 300 --gif  # one task, 300 steps, and a GIF
    python experiments/render.py SWEEP_DIR/program-0 --run 3                       # run 3 of a sweep program

Writes RUN_DIR/videos/<task>_return-<R>.mp4 (`_run-<i>` in the name where the run dir holds several runs), R the
undiscounted return of the steps shown; a video stops at its episode's end. MJX tasks are drawn with MuJoCo's own
renderer (headless: EGL, else OSMesa; purejaxmt.report.render sets MUJOCO_GL when it is unset, which it must be
before MuJoCo is imported, so this script imports purejaxmt.report.render first), MinAtar games as their coloured grid.
"""

from __future__ import annotations

from purejaxmt.report import render  # first: it sets MUJOCO_GL before anything imports MuJoCo  # isort: skip

import dataclasses
from pathlib import Path
from typing import Annotated

import tyro

from purejaxmt.runner.usage import usage_errors


@dataclasses.dataclass(frozen=True)
class Args:
    run_dir: Annotated[Path, tyro.conf.Positional]
    """a run directory (config.json and checkpoints/), e.g. a sweep's program-<k>/"""
    tasks: tuple[str, ...] = ()
    """tasks to render (default: every task of the run that can be drawn: MJX tasks and MinAtar games)"""
    run: int = 0
    """which run of a multi-seed run or sweep program (its index in the checkpoint)"""
    out: Path | None = None
    """output directory (default RUN_DIR/videos)"""
    frames: int | None = None
    """steps to play (default: one episode, the longest episode length of the run's tasks)"""
    width: int = 480
    """frame width of MJX videos (pixels)"""
    height: int = 360
    """frame height (pixels; MinAtar frames are this tall and square, plus a caption bar)"""
    gif: bool = False
    """also write a small GIF (every k-th frame, 240 pixels wide) beside each MP4"""
    fps: int | None = None
    """frames per second (default: the task's control rate, at most 60; MinAtar 10)"""
    seed: int = 0
    """seed of the episode's reset"""


def main(argv: list[str] | None = None) -> list[render.Video]:
    args = tyro.cli(Args, args=argv, description=__doc__)
    try:
        return render.render_run(args.run_dir, tasks=args.tasks or None, run=args.run, out=args.out,
                                 frames=args.frames, width=args.width, height=args.height, gif=args.gif, fps=args.fps,
                                 seed=args.seed)
    except (FileNotFoundError, ValueError, RuntimeError) as error:  # a bad path or task, no headless OpenGL
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    with usage_errors():  # a bad flag or value: one framed line and status 2, not a traceback
        main()

"""Videos of what a trained policy does: the evaluation policy of each task of a run, from its latest checkpoint.

    videos = render.render_run("runs/mjx_humanoid_mt/<time>")    # RUN_DIR/videos/<task>_return-<R>.mp4, one per task
    python experiments/render.py RUN_DIR --tasks humanoid-walk --gif      # the same from the command line

How: the run's configs and latest checkpoint are read back (`runner.saved`), its env and agent rebuilt from the
configs, and run `run`'s learner filled into a template of the agent's `Learner` by leaf path
(`checkpoints.from_saveable`). One env per task (`reset_pool_size=1`, as `offpolicy`'s `evaluate`) then plays the
evaluation policy, `agent.act(learner, hyper, obs, key, None)` (the tanh-Gaussian's mode, or the greedy action), on the
raw observations (the loop normalises rewards, never observations), in one jitted `lax.scan` of `frames` steps
(default: the longest episode length of the run's tasks). The scan records what a frame is drawn from: for an MJX task
the physics positions (`qpos`, and the mocap bodies' poses where the model has some: reacher's target), for a MinAtar
game the observation grid. A task's video stops at its episode's end (a MinAtar game over): frame k is the state the
policy acted on at step k, and the return is the undiscounted sum of the rewards of the steps shown (with `frames`
shorter than the episode: a partial return).

Drawing: MJX tasks with MuJoCo's own renderer (`mujoco.Renderer` on the task's `mj_model`, `mj_forward` per frame)
from the model's "side" camera where it has one (cheetah, walker, humanoid: it tracks the torso), else its first camera
(cartpole's "fixed", hopper's tracking "cam0"), else a free camera tracking body 1; MinAtar games as the grid with each
channel in its own colour (where several are set the highest channel shows, as in MinAtar's own display), scaled up
(nearest), no OpenGL. Other tasks (Gymnax classic control) have no renderer. Every frame carries a caption: the task,
the step and the return so far (Pillow). MP4 through imageio's ffmpeg plugin (imageio-ffmpeg's bundled binary); with
`gif=True` also a small GIF (every k-th frame, at most `GIF_FRAMES` frames, `GIF_WIDTH` pixels wide) for a README.

Headless OpenGL: MuJoCo picks its OpenGL backend from `MUJOCO_GL` once, when `mujoco` is imported (unset: GLFW, which
needs a display). Importing this module sets `MUJOCO_GL=egl` where libEGL is installed (Mesa's software EGL on a CPU
machine, NVIDIA's on a GPU), else `osmesa` where libOSMesa is, unless the user has set `MUJOCO_GL` or MuJoCo is already
imported; it imports no MuJoCo itself. When MuJoCo was imported first with no `MUJOCO_GL` and there is no display (the
runner's `--run.video`: building the env imported it), `render_run` switches the context class MuJoCo's `Renderer`
uses to the headless one (EGL, else OSMesa). Debian packages: `libegl1 libegl-mesa0 libgl1-mesa-dri` (EGL) or
`libosmesa6` (OSMesa, with `MUJOCO_GL=osmesa`).
"""

from __future__ import annotations

import ctypes.util
import dataclasses
import importlib
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from purejaxmt import offpolicy
from purejaxmt.report import ablation
from purejaxmt.runner import saved
from purejaxmt.runner.saved import load_policy  # beside the saved-run reader; re-exported here

GL_PACKAGES = ("MuJoCo could not render headless. Install Mesa's EGL (Debian/Ubuntu: apt-get install libegl1 "
               "libegl-mesa0 libgl1-mesa-dri) and set MUJOCO_GL=egl, or OSMesa (apt-get install libosmesa6) and set "
               "MUJOCO_GL=osmesa, before MuJoCo is imported")
GIF_FRAMES = 120
"""At most this many frames in a GIF (every k-th frame of the video)."""
GIF_WIDTH = 240
"""GIF frames are downscaled to this width (pixels)."""
MINATAR_FPS = 10
MAX_FPS = 60
# MinAtar channel colours (RGB): channel c is drawn in PALETTE[c + 1], empty cells in PALETTE[0].
PALETTE = np.array([(18, 18, 24), (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
                    (213, 94, 0), (204, 121, 167), (240, 240, 240), (150, 150, 150), (255, 80, 80)], np.uint8)


def _headless_backend() -> str | None:
    """`egl` where libEGL is installed, else `osmesa` where libOSMesa is, else None (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    if ctypes.util.find_library("EGL"):
        return "egl"
    if ctypes.util.find_library("OSMesa"):
        return "osmesa"
    return None


if "MUJOCO_GL" not in os.environ and "mujoco" not in sys.modules:
    _backend = _headless_backend()
    if _backend is not None:
        os.environ["MUJOCO_GL"] = _backend  # read by MuJoCo when it is imported (the module docstring)


@dataclasses.dataclass(frozen=True)
class Video:
    """One rendered task: the MP4 (and GIF) written, the return of the steps shown, and their count."""

    task: str
    path: Path
    gif: Path | None
    episode_return: float
    frames: int


# ------------------------------------------------------------------------------------------------------------- policy

def _physics(family_state: Any) -> dict[str, jax.Array] | None:
    """What an MJX frame is drawn from, `[n, ...]` of a family's `[n, 1, ...]` state (None for non-MJX families)."""
    data = getattr(family_state, "data", None)
    if data is None or not hasattr(data, "qpos"):
        return None
    physics = {"qpos": data.qpos[:, 0]}
    if data.mocap_pos.size:
        physics.update(mocap_pos=data.mocap_pos[:, 0], mocap_quat=data.mocap_quat[:, 0])
    return physics


def rollout(env: Any, agent: Any, learner: Any, agent_hyper: Any, key: jax.Array, num_steps: int,
            xla_optimization_level: int | None = None) -> dict[str, Any]:
    """One env per task plays the evaluation policy for `num_steps` steps (`offpolicy.evaluation_rollout`, the
    evaluation's own rollout). Returns NumPy arrays: `obs [N, T, *O]` (the observation acted on at each step), `physics`
    (per family: `qpos [N, n, nq]`, mocap poses; None for non-MJX families), `reward [N, T]` (0 after the episode's
    end), `alive bool[N, T]` (the step belongs to the first episode), `return [T]`, `length [T]`."""

    def play(learner: Any, agent_hyper: Any, key: jax.Array) -> dict[str, Any]:
        def record(env_state: Any, alive: jax.Array) -> dict[str, Any]:
            return {"obs": env_state.obs[:, 0], "alive": alive[:, 0],
                    "physics": tuple(_physics(state) for state in env_state.family_states)}

        # One episode per task, never restarted (cut at its end): the evaluation's own rollout.
        _, seen = offpolicy.evaluation_rollout(env, agent, learner, agent_hyper, key, 1, num_steps, record)
        return {**seen, "reward": seen["reward"][:, :, 0]}

    lowered = jax.jit(play).lower(learner, agent_hyper, key)
    options = {} if xla_optimization_level is None else {"xla_backend_optimization_level": xla_optimization_level}
    seen = jax.device_get(lowered.compile(compiler_options=options)(learner, agent_hyper, key))
    seen["return"] = seen["reward"].sum(axis=0)
    seen["length"] = seen["alive"].sum(axis=0)
    return seen


# ------------------------------------------------------------------------------------------------------------ drawing

def _use_headless_context() -> None:
    """Where MuJoCo was imported before `MUJOCO_GL` was set and there is no display, point the context class its
    `Renderer` creates at the headless backend (EGL, else OSMesa): GLFW would fail without a display."""
    import mujoco

    if (os.environ.get("MUJOCO_GL") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
            or not sys.platform.startswith("linux")):
        return
    gl_context = getattr(sys.modules.get(mujoco.Renderer.__module__), "gl_context", None)
    backend = _headless_backend()
    if gl_context is None or backend is None:
        raise RuntimeError(f"{GL_PACKAGES} (MuJoCo was imported without MUJOCO_GL and there is no display)")
    gl_context.GLContext = importlib.import_module(f"mujoco.{backend}").GLContext


def camera_of(model: Any) -> Any:
    """The model's "side" camera if it has one, else its first camera, else a free camera tracking body 1."""
    import mujoco

    if model.ncam:
        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
        return names.index("side") if "side" in names else 0
    camera = mujoco.MjvCamera()
    mujoco.mjv_defaultFreeCamera(model, camera)
    if model.nbody > 1:
        camera.type, camera.trackbodyid = mujoco.mjtCamera.mjCAMERA_TRACKING, 1
    return camera


def mjx_frames(mj_model: Any, physics: dict[str, np.ndarray], width: int, height: int) -> np.ndarray:
    """uint8 `[N, height, width, 3]`: MuJoCo's renderer at each `qpos [N, nq]` (and mocap poses) of one env."""
    import copy

    import mujoco

    _use_headless_context()
    model = copy.deepcopy(mj_model)  # a larger offscreen buffer, without touching the env's model
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
    model.vis.global_.offheight = max(model.vis.global_.offheight, height)
    data = mujoco.MjData(model)
    try:
        renderer = mujoco.Renderer(model, height, width)
    except Exception as error:  # a missing or unusable GL library surfaces as any of several types
        raise RuntimeError(f"{GL_PACKAGES} (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}): "
                           f"{type(error).__name__}: {error}") from error
    camera = camera_of(model)
    frames = np.empty((len(physics["qpos"]), height, width, 3), np.uint8)
    try:
        for k in range(len(frames)):
            data.qpos[:] = physics["qpos"][k]
            if "mocap_pos" in physics:
                data.mocap_pos[:], data.mocap_quat[:] = physics["mocap_pos"][k], physics["mocap_quat"][k]
            mujoco.mj_forward(model, data)
            renderer.update_scene(data, camera=camera)
            frames[k] = renderer.render()
    finally:
        renderer.close()
    return frames


def minatar_frames(obs: np.ndarray, scale: int) -> np.ndarray:
    """uint8 `[N, 10 s, 10 s, 3]` from MinAtar grids `[N, 10, 10, C]`: channel c in `PALETTE[c + 1]` (the highest set
    channel of a cell shows), empty cells in `PALETTE[0]`, each cell `scale` x `scale` pixels."""
    channels = obs.shape[-1]
    if channels + 1 > len(PALETTE):
        raise ValueError(f"MinAtar observations with {channels} channels; the palette has {len(PALETTE) - 1} colours")
    top = np.max((obs > 0) * np.arange(1, channels + 1), axis=-1)                                       # [N, 10, 10]
    return np.repeat(np.repeat(PALETTE[top], scale, axis=1), scale, axis=2)


def caption(frames: np.ndarray, task: str, rewards: np.ndarray, above: bool = False) -> np.ndarray:
    """Frames with "task  step k  return R_k" (R_k: the return of the steps before k) on a black box in the top-left
    corner, or with `above` on a black bar added above the frame (MinAtar: the grid's top row stays visible)."""
    from PIL import Image, ImageDraw, ImageFont

    size = max(10, frames.shape[1] // 24)
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    bar = size + 8 if above else 0
    returns = np.concatenate([[0.0], np.cumsum(rewards)[:-1]])
    out = np.zeros((len(frames), frames.shape[1] + bar, frames.shape[2], 3), np.uint8)
    for k, frame in enumerate(frames):
        image = Image.new("RGB", (frame.shape[1], frame.shape[0] + bar))
        image.paste(Image.fromarray(frame), (0, bar))
        draw = ImageDraw.Draw(image)
        text = f"{task}  step {k}  return {returns[k]:.1f}"
        if not above:
            box = draw.textbbox((4, 2), text, font=font)
            draw.rectangle((0, 0, box[2] + 4, box[3] + 3), fill=(0, 0, 0))
        draw.text((4, 2), text, fill=(255, 255, 255), font=font)
        out[k] = np.asarray(image)
    return out


def _even(frames: np.ndarray) -> np.ndarray:
    """Pads height and width to even sizes (H.264 in yuv420p needs them)."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge") if pad_h or pad_w else frames


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    import imageio.v2 as imageio

    with warnings.catch_warnings():  # JAX warns on any fork; imageio's ffmpeg subprocess execs at once
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        with imageio.get_writer(path, fps=fps, codec="libx264", quality=7, macro_block_size=1,
                                ffmpeg_log_level="error") as writer:
            for frame in _even(frames):
                writer.append_data(frame)


def write_gif(path: Path, frames: np.ndarray, fps: int) -> None:
    """Every k-th frame (at most `GIF_FRAMES`), downscaled to `GIF_WIDTH` pixels wide, looping."""
    import imageio.v2 as imageio
    from PIL import Image

    every = max(1, -(-len(frames) // GIF_FRAMES))
    height = max(1, round(frames.shape[1] * min(1.0, GIF_WIDTH / frames.shape[2])))
    width = min(GIF_WIDTH, frames.shape[2])
    small = [np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))
             for frame in frames[::every]]
    imageio.mimsave(path, small, format="GIF", duration=1000 * every / fps, loop=0)


# ------------------------------------------------------------------------------------------------------------ the run

def _kinds(env: Any) -> dict[str, tuple[str, Any, int]]:
    """task -> (kind, family, row in the family) for the tasks that can be drawn: "mjx" (a family with an MuJoCo
    model) or "minatar" (a MinAtar game's grid)."""
    kinds = {}
    for family in env.families:
        mj_model = getattr(getattr(family, "env", None), "mj_model", None)
        for row, task in enumerate(family.task_names):
            if mj_model is not None:
                kinds[task] = ("mjx", family, row)
            elif task.endswith("-MinAtar") and len(family.obs_shape) == 3:
                kinds[task] = ("minatar", family, row)
    return kinds


def render_run(run_dir: Path | str, *, tasks: Sequence[str] | None = None, run: int = 0, out: Path | str | None = None,
               frames: int | None = None, width: int = 480, height: int = 360, gif: bool = False,
               fps: int | None = None, seed: int = 0, env: Any | None = None,
               log: Callable[[str], Any] = print) -> list[Video]:
    """Renders the evaluation policy of run `run` of `run_dir` on each of `tasks` (default: every task that can be
    drawn) to `<out>/<task>[_run-<i>]_return-<R>.mp4` (and `.gif`), `out` defaulting to `<run_dir>/videos/`; the run
    index is in the name when the run dir holds several runs. A task's earlier videos of that run are replaced.
    `frames`: steps to play (default: the longest episode of the run's tasks; each video stops at its episode's end).
    `fps`: default the task's control rate (MJX, at most 60) or 10 (MinAtar). MinAtar frames are `height` pixels
    square. `env`: the run's env if already built (the runner passes its own). Returns one `Video` per task."""
    run_dir = Path(run_dir)
    saved_run = saved.load(run_dir)
    names = saved_run.task_names
    unknown = [task for task in tasks or () if task not in names]
    if unknown:
        raise ValueError(f"{run_dir} has no task(s) {unknown}; its tasks: {list(names)}")
    for name, value in (("frames", frames), ("width", width), ("height", height), ("fps", fps)):
        if value is not None and value < 1:
            raise ValueError(f"{name}={value} must be >= 1")
    num_runs = saved_run.num_runs
    if not 0 <= run < num_runs:
        raise ValueError(f"{run_dir} holds {num_runs} run(s) (0..{num_runs - 1}); run {run} does not exist")

    start = time.perf_counter()
    env, agent, learner, agent_hyper = load_policy(saved_run, run, env)
    kinds = _kinds(env)
    chosen = list(tasks) if tasks else [task for task in names if task in kinds]
    undrawable = [task for task in (tasks or names) if task not in kinds]
    if tasks and undrawable:
        raise ValueError(f"no renderer for task(s) {undrawable}: MJX (Playground) tasks and MinAtar games only")
    if undrawable:
        log(f"[render] skipping {undrawable}: no renderer (MJX tasks and MinAtar games only)")
    if not chosen:
        return []
    num_steps = frames or max(env.episode_length)
    log(f"[render] {run_dir}: run {run} of {num_runs}, checkpoint chunk {saved_run.latest_chunk()}, {num_steps} "
        f"steps of {list(chosen)} (compiling the rollout)")
    seen = rollout(env, agent, learner, agent_hyper, jax.random.PRNGKey(seed), num_steps,
                   saved_run.run_config.xla_optimization_level)
    log(f"[render] rollout done in {time.perf_counter() - start:.1f} s")

    out_dir = run_dir / "videos" if out is None else Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    videos = []
    for task in chosen:
        kind, family, row = kinds[task]
        t = names.index(task)
        length = int(seen["length"][t])
        if kind == "mjx":
            physics = {key: value[:length, row] for key, value in seen["physics"][env.families.index(family)].items()}
            images = mjx_frames(family.env.mj_model, physics, width, height)
            rate = fps or int(np.clip(round(1 / float(family.env.dt)), 1, MAX_FPS))
        else:
            images = minatar_frames(seen["obs"][:length, t], max(1, height // 10))
            rate = fps or MINATAR_FPS
        episode_return = float(seen["return"][t])
        images = caption(images, task, seen["reward"][:length, t], above=kind == "minatar")
        stem = ablation.file_name(task) + (f"_run-{run}" if num_runs > 1 else "")
        for old in [*out_dir.glob(f"{stem}_return-*.mp4"), *out_dir.glob(f"{stem}_return-*.gif")]:
            old.unlink()
        path = out_dir / f"{stem}_return-{episode_return:.1f}.mp4"
        write_mp4(path, images, rate)
        gif_path = None
        if gif:
            gif_path = path.with_suffix(".gif")
            write_gif(gif_path, images, rate)
        videos.append(Video(task=task, path=path, gif=gif_path, episode_return=episode_return, frames=length))
        log(f"[render] {task}: return {episode_return:.1f} over {length} steps -> {path}"
            + (f" and {gif_path.name}" if gif_path else ""))
    log(f"[render] done in {time.perf_counter() - start:.1f} s")
    return videos


def after_run(run_dir: Path, env: Any | None = None) -> list[Video]:
    """The runner's `--run.video`: `render_run` of run 0 with the defaults; a failure is reported, not raised (the
    run itself is complete, and `experiments/render.py` can render it later)."""
    try:
        return render_run(run_dir, env=env)
    except Exception as error:  # noqa: BLE001 - training finished; a video failure must not look like a failed run
        print(f"[purejaxmt] rendering videos failed ({type(error).__name__}: {error}); retry with "
              f"python experiments/render.py {run_dir}", file=sys.stderr)
        return []

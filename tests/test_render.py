"""purejaxmt.report.render and experiments/render.py (CPU, tiny): 20-frame videos of smoke checkpoints of one MJX task
(cartpole-balance, trained with `--run.video`, so the runner renders at its end) and one MinAtar game (Breakout),
read back: the frame count, frames that are not one colour and change over time, the return in the file name; the
headless OpenGL switch when MuJoCo was imported first; clear errors for bad inputs; the ablation report's links."""

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from purejaxmt.report import render  # first: it sets MUJOCO_GL before an env imports MuJoCo  # isort: skip
from purejaxmt import cli, offpolicy, runner
from purejaxmt.agents import brc, brc_discrete
from purejaxmt.report import ablation

pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # imageio's ffmpeg reads (fork + exec)
ROOT = Path(__file__).resolve().parents[1]
FRAMES = 20  # = the smoke runs' episode length, so the default render is one 20-step episode
MJX_TASK, GAME = "cartpole-balance", "Breakout-MinAtar"
LOOP = offpolicy.LoopConfig(envs_per_task=1, batch_size=8, updates_per_step=1, replay_capacity=64, random_steps=20,
                            total_steps=40, steps_per_chunk=20, eval_episodes=1)
# XLA level 0: these programs run 40 steps, so compiling is all that costs (the render's rollout uses it too).
RUN = runner.RunConfig(seeds=1, episode_length=FRAMES, eval_every=2, checkpoint_every=2, xla_optimization_level=0)
CONTINUOUS = brc.Config(critic_width=16, critic_depth=1, actor_width=16, num_bins=11, embed_dim=8)
DISCRETE = brc_discrete.Config(critic_width=16, critic_depth=1, num_bins=11, embed_dim=8, conv_channels=(4,),
                               conv_kernel_sizes=(3,), conv_strides=(1,))


@pytest.fixture(scope="module")
def mjx_run(tmp_path_factory):
    run_config = dataclasses.replace(RUN, tasks=MJX_TASK, video=True)
    run_dir = runner.run("test", brc.AGENT_SPEC, CONTINUOUS, LOOP, run_config,
                         run_dir=tmp_path_factory.mktemp("render") / "mjx")
    cli.after_run(run_dir, run_config, finished=True)  # the runner's --run.video, after training
    return run_dir


@pytest.fixture(scope="module")
def minatar_run(tmp_path_factory):
    return runner.run("test", brc_discrete.AGENT_SPEC, DISCRETE, LOOP, dataclasses.replace(RUN, tasks=GAME),
                      run_dir=tmp_path_factory.mktemp("render") / "minatar")


def _check_video(path: Path, frames: int, episode_return: float) -> np.ndarray:
    video = iio.imread(path)                                                                    # [N, H, W, 3]
    assert video.shape[0] == frames, (path, video.shape)
    assert re.fullmatch(rf".+_return-{re.escape(f'{episode_return:.1f}')}\.mp4", path.name), path.name
    below_caption = video[:, video.shape[1] // 5:].astype(np.float32)  # the caption's step counter changes anyway
    assert all(frame.std() > 5 for frame in below_caption), "a frame is (nearly) one colour"
    assert np.abs(below_caption[-1] - below_caption[0]).mean() > 0.2, "the picture does not change over time"
    return video


def test_runner_renders_mjx_videos_and_render_run_repeats_them(mjx_run, tmp_path):
    (from_runner,) = sorted((mjx_run / "videos").glob("*.mp4"))
    assert from_runner.name.startswith(f"{MJX_TASK}_return-")
    (video,) = render.render_run(mjx_run, out=tmp_path, gif=True)
    assert video.task == MJX_TASK and video.frames == FRAMES and video.path.parent == tmp_path
    assert video.path.name == from_runner.name  # the same checkpoint, reset key and policy: the same episode
    frames = _check_video(video.path, FRAMES, video.episode_return)
    assert frames.shape[1:] == (360, 480, 3)
    assert video.gif is not None and video.gif.stat().st_size > 0
    assert iio.imread(video.gif).shape[2] == render.GIF_WIDTH


def test_minatar_video_from_the_script(minatar_run, tmp_path):
    spec = importlib.util.spec_from_file_location("render_script", ROOT / "experiments" / "render.py")
    script = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(script)
    (video,) = script.main([str(minatar_run), "--tasks", GAME, "--frames", str(FRAMES), "--height", "160",
                            "--out", str(tmp_path)])
    assert 2 <= video.frames <= FRAMES  # a game over ends the video early
    frames = _check_video(video.path, video.frames, video.episode_return)
    assert frames.shape[2] == 160 and frames.shape[1] > 160  # the grid, square, under its caption bar
    (old,) = tmp_path.glob("*.mp4")
    render.render_run(minatar_run, frames=3, out=tmp_path)  # a new render replaces the task's earlier video
    (new,) = tmp_path.glob("*.mp4")  # one video left: the earlier one was replaced, not kept beside the new
    assert iio.imread(new).shape[0] == 3  # and it is the new render


def test_minatar_frames_colour_channels():
    obs = np.zeros((1, 10, 10, 3), np.uint8)
    obs[0, 0, 0, 0] = obs[0, 1, 1, 2] = 1
    obs[0, 2, 2, :2] = 1  # two channels set: the higher one shows
    frames = render.minatar_frames(obs, scale=2)
    assert frames.shape == (1, 20, 20, 3)
    np.testing.assert_array_equal(frames[0, 0, 0], render.PALETTE[1])
    np.testing.assert_array_equal(frames[0, 3, 3], render.PALETTE[3])
    np.testing.assert_array_equal(frames[0, 5, 5], render.PALETTE[2])
    np.testing.assert_array_equal(frames[0, 19, 19], render.PALETTE[0])


def test_headless_context_when_mujoco_was_imported_first(tmp_path):
    """MuJoCo imported with no MUJOCO_GL and no display (as the runner's env does) would use GLFW and fail; render
    switches its Renderer to EGL/OSMesa."""
    code = """if True:
        import mujoco
        from purejaxmt.report import render
        model = mujoco.MjModel.from_xml_string(
            "<mujoco><worldbody><light pos='0 0 3'/><body><freejoint/><geom type='box' size='.2 .2 .2'/></body>"
            "</worldbody></mujoco>")
        qpos = model.qpos0[None].repeat(2, axis=0)
        qpos[1, 0] = 0.3
        frames = render.mjx_frames(model, {"qpos": qpos}, 64, 48)
        assert frames.shape == (2, 48, 64, 3) and frames.std() > 1 and (frames[0] != frames[1]).any()
        print("ok", mujoco.Renderer.__module__)
    """
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY",
                                                           "WAYLAND_DISPLAY")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_bad_inputs_fail_clearly(minatar_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="no run directory"):
        render.render_run(tmp_path / "missing")
    with pytest.raises(ValueError, match=rf"no task\(s\) \['Pong-misc'\]; its tasks: \['{GAME}'\]"):
        render.render_run(minatar_run, tasks=["Pong-misc"])
    with pytest.raises(ValueError, match=r"holds 1 run\(s\).*run 3 does not exist"):
        render.render_run(minatar_run, run=3)
    with pytest.raises(ValueError, match="frames=0 must be >= 1"):
        render.render_run(minatar_run, frames=0)
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "config.json").write_text((minatar_run / "config.json").read_text())
    (sweep_dir / "sweep.json").write_text(json.dumps({"programs": []}))
    with pytest.raises(FileNotFoundError, match="no checkpoints/ directory.*sweep"):
        render.render_run(sweep_dir)


def test_ablation_report_links_videos(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from test_ablation import write_sweep

    sweep_dir = write_sweep(tmp_path / "sweep")
    assert "Videos" not in ablation.report(sweep_dir, reps=20).read_text()
    (sweep_dir / "program-1" / "videos").mkdir()
    (sweep_dir / "program-1" / "videos" / "walker-walk_return-12.5.mp4").write_bytes(b"")
    markdown = ablation.report(sweep_dir, reps=20).read_text()
    assert "[program-1: walker-walk_return-12.5](program-1/videos/walker-walk_return-12.5.mp4)" in markdown

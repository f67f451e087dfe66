"""The command line on the micro config: train all stages, then sample from the workdir."""

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "sora_jax.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def micro_workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("micro"))
    proc = _run("--config=configs/tiny.py:micro", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_main_job_writes_samples_and_summary(micro_workdir):
    with open(os.path.join(micro_workdir, "summary.json")) as f:
        summary = json.load(f)
    assert set(summary) >= {"vae", "dit", "sample"}
    assert summary["dit"]["final_loss"] > 0
    grader = summary["sample"]["grader"]
    assert grader["n"] == 2 and 0.0 <= grader["color_acc"] <= 1.0
    samples = os.listdir(os.path.join(micro_workdir, "samples"))
    assert {"000.mp4", "000.gif", "000.json", "001.mp4"} <= set(samples)


def test_sample_mode_generates_from_a_trained_workdir(micro_workdir):
    proc = _run(
        "--config=configs/tiny.py:micro",
        f"--workdir={micro_workdir}",
        "--mode=sample",
        "--prompt=a red circle moving left",
        "--num_frames=1",
        "--seed=3",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = json.loads(proc.stdout.strip().splitlines()[-1])
    assert os.path.exists(paths["png"]) and os.path.exists(paths["mp4"])
    with open(paths["mp4"][:-4] + ".json") as f:
        meta = json.load(f)
    assert meta["prompt"] == "a red circle moving left" and meta["seed"] == 3


def test_bad_flags_fail_with_a_sentence(tmp_path):
    proc = _run("--config=configs/tiny.py:micro", f"--workdir={tmp_path}", "--stages=vae,foo")
    assert proc.returncode != 0
    assert "unknown stage" in proc.stderr
    proc = _run("--config=configs/tiny.py:micro", f"--workdir={tmp_path}", "--mode=sample")
    assert proc.returncode != 0 and "--prompt" in proc.stderr


# ---------------------------------------------------------------- generation modes (issue 5)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--prompt=a", "--bogus=1"], "Unknown command line flag 'bogus'"),
        (["--prompt=a", "--image=x.png", "--video=v.mp4", "--extend=forward"], "--image and"),
        (["--prompt=a", "--video=v.mp4", "--extend=forward"], "needs --seconds"),
        (["--prompt=a", "--prompts_file=none.txt"], "not both"),
        (["--prompt=a", "--autoguidance=2"], "needs autoguide_step"),
        (["--prompt=a", "--num_frames=1", "--factorized"], "this request is t2i"),
    ],
)
def test_bad_sample_flags_fail_with_one_sentence_and_no_traceback(tmp_path, args, words):
    proc = _run("--config=configs/tiny.py:micro", f"--workdir={tmp_path}", "--mode=sample", *args)
    assert proc.returncode != 0
    assert words in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def world_inputs(tmp_path_factory):
    """A world clip (mp4) and its first frame (png) at the micro size, 16x16."""
    from sora_jax.data import video_io, world

    folder = tmp_path_factory.mktemp("inputs")
    spec = world.make_spec("red", "circle", "right")
    clip = world.render(spec, 16, 16, 9)
    video_io.write_png(str(folder / "first.png"), clip[0])
    video_io.write_mp4(str(folder / "clip.mp4"), clip, 8)
    (folder / "prompts.txt").write_text("a red circle moving right\n\na blue ring\n")
    return folder


def test_image_to_video_sidecar_command_reproduces_the_sample(micro_workdir, world_inputs):
    from sora_jax.data import video_io

    proc = _run("--config=configs/tiny.py:micro", f"--workdir={micro_workdir}", "--mode=sample",
                f"--prompts_file={world_inputs / 'prompts.txt'}", "--num_frames=5", "--seed=11",
                f"--image={world_inputs / 'first.png'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = [json.loads(line) for line in proc.stdout.strip().splitlines()[-2:]]
    with open(paths[1]["mp4"][:-4] + ".json") as f:
        meta = json.load(f)
    assert (meta["mode"], meta["prompt"], meta["seed"], meta["num_frames"]) == (
        "i2v", "a blue ring", 12, 5)  # fmt: skip
    assert meta["given_latent_frames"] == [0] and len(meta["inputs"]["image"][0]["sha256"]) == 64
    first, _ = video_io.read_video(paths[1]["mp4"])
    os.rename(paths[1]["mp4"], str(world_inputs / "first_run.mp4"))
    argv = shlex.split(meta["command"])
    assert argv[:3] == ["python", "-m", "sora_jax.main"]
    again = _run(*argv[3:])  # the second prompt alone, from its own seed
    assert again.returncode == 0, again.stderr[-3000:]
    second, _ = video_io.read_video(paths[1]["mp4"])
    np.testing.assert_array_equal(first, second)


def test_extend_forward_keeps_the_video_and_adds_frames(micro_workdir, world_inputs):
    proc = _run("--config=configs/tiny.py:micro", f"--workdir={micro_workdir}", "--mode=sample",
                "--prompt=a red circle moving right", f"--video={world_inputs / 'clip.mp4'}",
                "--extend=forward", "--seconds=0.5")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(paths["mp4"][:-4] + ".json") as f:
        meta = json.load(f)
    # 9 frames (3 latents) + 0.5 s at 8 fps = 4 frames (1 latent chunk).
    assert (meta["num_frames"], meta["latent_frames"], meta["given_latent_frames"]) == (
        13, 4, [0, 1, 2])  # fmt: skip
    assert meta["fps"] == 8.0 and meta["plan"]["new_frames"] == 4


def test_sidecar_command_carries_autoguidance_only_when_on():
    from sora_jax import modes, sample_run

    base = {"steps": 4, "guidance": 3.0, "sampler": "euler", "negative_prompt": "", "shift": 1.0,
            "guidance_interval": (0.0, 1.0)}  # fmt: skip
    req = modes.Request(prompts=("a",))
    command = lambda s: shlex.split(  # noqa: E731
        sample_run._command(req, "a", 1, s, 5, ["--config=configs/tiny.py"], "/w")
    )
    assert not any("autoguid" in a for a in command(base))
    on = command({**base, "autoguidance": 2.0, "autoguide_step": 500})
    assert "--autoguidance=2.0" in on and "--autoguide_step=500" in on
    assert "--factorized" not in on and "--factorized" in command({**base, "factorized": True})

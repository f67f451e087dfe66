"""The command line on the micro config: train all stages, then sample from the workdir."""

import json
import os
import subprocess
import sys

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

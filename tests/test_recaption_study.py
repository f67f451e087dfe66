"""tools/experiments/recaption_study.py end to end at micro size: both arms, one table.

The micro config is shrunk further (a 2-level VAE, one DiT bucket, 2 steps each) because the
run is dominated by compiling the VAE and DiT train steps, not by the steps themselves.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "experiments", "recaption_study.py")
MICRO = (
    "--config=configs/tiny.py:micro",
    "--config.vae.channel_mults=(1, 2)",
    "--config.vae.temporal_downsample=(True,)",
    "--config.vae_train.steps=2",
    "--config.dit_train.buckets=(('5x16x16', 2, 1.0),)",
    "--steps=2",
    "--num_prompts=2",
    "--save_samples=1",
)


def _run(*args, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.mark.slow  # ~3 min of XLA compiles on 2 cores
def test_recaption_study_grades_both_arms_that_differ_only_in_captions(tmp_path):
    workdir, out = str(tmp_path / "study"), str(tmp_path / "study.json")
    proc = _run(*MICRO, f"--workdir={workdir}", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "descriptive+expand" in proc.stdout
    with open(out) as f:
        study = json.load(f)

    arms = study["arms"]
    assert arms["short"]["caption_probs"] == {"prompt": 1.0}
    assert arms["descriptive"]["caption_probs"] == {"caption": 0.95, "prompt": 0.05}
    assert (arms["short"]["expand_prompt"], arms["descriptive"]["expand_prompt"]) == (None, "world")
    for grader in (arms["short"]["grader"], arms["descriptive"]["grader"],
                   study["descriptive_unexpanded_grader"]):  # fmt: skip
        assert grader["n"] == 2 and grader["n_motion"] == 2
        for key in ("color_acc", "shape_acc", "motion_acc"):
            assert 0.0 <= grader[key] <= 1.0, (key, grader)
    # One text length for both arms, long enough that no descriptive caption is truncated
    # (micro's own max_length of 8 would cut every one).
    assert study["text_max_length"] >= max(study["caption_tokens"]["tokens_max"].values()) > 8
    assert study["config"]["text"]["max_length"] == study["text_max_length"]
    # Same prompts and seeds: the descriptive arm sees the expanded form of each short prompt.
    short, expanded = (study["per_prompt"][c] for c in ("short", "descriptive+expand"))
    for s, e in zip(short, expanded):
        assert len(e["text"]) > len(s["text"]) and e["text"][0].isupper()
    assert study["steps"] == 2 and study["vae"]["trained_here"]
    assert os.path.exists(os.path.join(workdir, "descriptive", "samples", "000.json"))

    # --report re-merges the arm files; an arm run with another config is refused.
    out2 = str(tmp_path / "again.json")
    assert _run(f"--workdir={workdir}", "--report", f"--out={out2}").returncode == 0
    with open(out2) as f:
        assert json.load(f)["table"] == study["table"]
    arm_file = os.path.join(workdir, "short", "arm.json")
    with open(arm_file) as f:
        arm = json.load(f)
    arm["config"]["dit_train"]["lr"] *= 2
    with open(arm_file, "w") as f:
        json.dump(arm, f)
    proc = _run(f"--workdir={workdir}", "--report", f"--out={out2}")
    assert proc.returncode != 0 and "dit_train.lr" in proc.stderr

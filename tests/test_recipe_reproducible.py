"""Issue 9's reproducibility on the CPU: the world recipe (VAE, DiT, eval suite) run twice from
scratch in two workdirs gives the same numbers, bit for bit: every logged loss, the summary and
every graded metric of the evaluation. Micro sizes, with what could make two runs differ turned
on: Grain worker processes rendering the clips and latent-cache refreshes between steps."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = [
    "--config=configs/world.py:micro",
    "--config.dit_train.steps=8",
    "--config.dit_train.checkpoint_every_steps=8",
    "--config.dit_train.latent_cache_clips=8",
    "--config.dit_train.latent_cache_refresh_steps=3",
    "--config.dit_train.latent_cache_refresh_clips=4",
    "--config.data.num_workers=2",
]


def _recipe(workdir: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "sora_jax.main", *FLAGS, f"--workdir={workdir}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {}
    for name in ("summary.json", "eval/summary.json"):
        with open(os.path.join(workdir, name)) as f:
            out[name] = _numbers(json.load(f))
    with open(os.path.join(workdir, "dit", "metrics.jsonl")) as f:
        out["dit losses"] = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    return out


def _numbers(tree, path=""):
    """Every leaf of a summary except wall-clock times, by path."""
    if isinstance(tree, dict):
        out = {}
        for key, sub in tree.items():
            out.update(_numbers(sub, f"{path}/{key}"))
        return out
    timed = path.endswith("_s") or "wall" in path or "time" in path
    return {} if timed else {path: tree}


def test_the_world_recipe_twice_from_scratch_gives_identical_numbers(tmp_path):
    first, second = _recipe(str(tmp_path / "a")), _recipe(str(tmp_path / "b"))
    assert len(first["dit losses"]) == 8 and len(first["eval/summary.json"]) > 50
    for name, numbers in first.items():
        assert numbers == second[name], name

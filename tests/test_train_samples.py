"""Sample videos during DiT training: every N steps, from the EMA weights, graded into the metrics,
written by process 0 only (issue 8).

Run as a script this file is the worker of the two-process test: one micro DiT run over both
processes (fsdp=2, one CPU device each) that samples at step 2.
"""

import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from sora_jax import parallel
from sora_jax.models import vae as vae_lib
from sora_jax.train import dit_task, loop, runtime, vae_task
from sora_jax.train import metrics as metrics_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _micro_config():
    spec = importlib.util.spec_from_file_location("cfg_tiny_samples", ROOT / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("micro")
    config.dit_train.update(sample_every_steps=2, sample_num_prompts=2, sample_steps=2)
    config.dit_train.buckets = (("5x16x16", 2, 1.0),)  # one bucket: one train-step compile
    return config


def _task(config, workdir: str) -> dit_task.DiTTask:
    """The DiT task on a random-weight micro VAE (the VAE stage adds nothing here)."""
    vae_cfg = vae_lib.VAEConfig(**config.vae.to_dict())
    vae = nnx.jit(lambda: vae_lib.CausalVAE(vae_cfg, rngs=nnx.Rngs(0)))()
    os.makedirs(os.path.join(workdir, "vae"), exist_ok=True)
    z = config.vae.z_channels
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "vae", vae_task.LATENT_STATS), "w") as f:
            json.dump({"mean": [0.0] * z, "std": [1.0] * z}, f)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("latent stats written")
    return dit_task.DiTTask(config, workdir, vae)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step micro DiT run that samples at steps 2 and 4."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config = _micro_config()
    # Two occlusion scenes beside the prompts: 9 frames hold frames before and after the bar.
    config.dit_train.sample_num_occlusion = 2
    config.sample.num_frames = 9
    task = _task(config, workdir)
    stage_dir = os.path.join(workdir, "dit")
    result = loop.train(task, config, config.dit_train, stage_dir)
    return config, task, result, stage_dir


def test_sample_due_every_n_steps_and_never_when_zero():
    assert [s for s in range(1, 13) if dit_task.sample_due(s, 4)] == [4, 8, 12]
    assert not any(dit_task.sample_due(s, 0) for s in range(1, 13))


def test_training_samples_without_occlusion_scenes(tmp_path):
    """sample_num_occlusion = 0 (every config but the world's): the prompts alone. It crashed
    the tiny config's DiT stage at its first sample round (step 1,000) while it was untested."""
    config = _micro_config()
    assert config.dit_train.get("sample_num_occlusion", 0) == 0
    samples = dit_task.TrainingSamples(_task(config, str(tmp_path)))
    assert samples.occlusion_specs == [] and samples.occlusion_prompts == []
    assert len(samples.prompts) == 2


def test_samples_written_at_every_nth_step_with_the_grader_in_the_metrics(trained):
    _, task, _, stage_dir = trained
    samples = os.path.join(stage_dir, "samples")
    assert sorted(os.listdir(samples)) == ["step_2", "step_4"]
    shape_ok = {2: [], 4: []}
    for step in (2, 4):
        for i, prompt in enumerate(task.samples.prompts):
            with open(os.path.join(samples, f"step_{step}", f"{i:03d}.json")) as f:
                meta = json.load(f)
            assert (meta["prompt"], meta["step"], meta["weights"]) == (prompt, step, "ema")
            assert meta["files"]["gif"].endswith(f"step_{step}/{i:03d}.gif")
            assert all(os.path.getsize(p) > 0 for p in meta["files"].values())
            assert meta["spec"] == task.samples.specs[i]
            shape_ok[step].append(meta["grade"]["shape"])  # each sample's own grade
    rows = metrics_lib.read_jsonl(os.path.join(stage_dir, "metrics.jsonl"))
    graded = [r for r in rows if "sample_color_acc" in r]
    assert [r["step"] for r in graded] == [2, 4]
    assert all(0.0 <= r["sample_color_acc"] <= 1.0 for r in graded)
    for r in graded:  # the sidecars' grades add up to the logged accuracy
        assert r["sample_shape_acc"] == np.mean(shape_ok[r["step"]])
        # How much the frames change against the real clips of the prompts (untrained: noise).
        assert r["sample_flicker_ratio"] > 0.0
        assert 0.0 <= r["sample_bar_rate"] <= 1.0  # bars the prompts did not ask for
        # The occlusion scenes: sampled with the prompts, graded by object permanence only.
        kept = []
        for i, spec in enumerate(task.samples.occlusion_specs):
            with open(os.path.join(samples, f"step_{r['step']}", f"occlusion_{i:03d}.json")) as f:
                meta = json.load(f)
            assert meta["spec"] == spec and spec["occluder"] is not None
            assert meta["prompt"] == task.samples.occlusion_prompts[i]
            assert " bar sweeps " in meta["prompt"]  # the long caption, which names the bar
            kept.append(meta["grade"]["permanent"])
        assert r["sample_permanence"] == np.mean(kept)
    # One generator for the whole run, whose sampler compiled once for both steps.
    (run,) = task.samples.generator._runs.values()
    assert run._cache_size() == 1


def test_written_samples_come_from_the_ema_weights_of_that_step(trained, tmp_path):
    config, task, result, stage_dir = trained
    mesh = parallel.make_mesh(config.mesh.to_dict())
    ctx = loop.PeriodicContext(4, result.state, result.graphdef, result.rest, str(tmp_path), mesh)
    grades = task.periodic(4, ctx)
    assert grades["n"] == 2  # the accuracies grade the prompts; the occlusion scenes apart
    assert 0.0 <= grades["permanence"] <= 1.0
    for i in range(2):
        again = (tmp_path / "samples" / "step_4" / f"{i:03d}.gif").read_bytes()
        with open(os.path.join(stage_dir, "samples", "step_4", f"{i:03d}.gif"), "rb") as f:
            assert again == f.read()
    (row,) = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert row["step"] == 4 and row["sample_color_acc"] == grades["color_acc"]
    assert task.periodic(3, ctx) is None  # not a multiple of sample_every_steps


def test_a_non_zero_process_samples_but_writes_nothing(trained, tmp_path, monkeypatch):
    config, task, result, _ = trained
    mesh = parallel.make_mesh(config.mesh.to_dict())
    ctx = loop.PeriodicContext(2, result.state, result.graphdef, result.rest, str(tmp_path), mesh)
    monkeypatch.setattr(jax, "process_index", lambda *_, **__: 1)
    grades = task.periodic(2, ctx)  # every process runs the (possibly sharded) sampler
    assert grades["n"] == 2 and np.isfinite(grades["color_acc"])
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- two processes


def worker(port: str, process_id: str, workdir: str) -> None:
    runtime.initialize_distributed(f"localhost:{port}", 2, int(process_id))
    config = _micro_config()
    config.dit_train.update(steps=2, sample_num_prompts=3)  # 3 prompts: padded to 4 for fsdp=2
    task = _task(config, workdir)
    graded, periodic = [], task.periodic
    task.periodic = lambda step, ctx: graded.append(periodic(step, ctx))
    loop.train(task, config, config.dit_train, os.path.join(workdir, "dit"))
    print("GRADED", json.dumps([g for g in graded if g is not None]), flush=True)


@pytest.mark.slow  # two processes, each compiling a train step and the sampler: ~4 min here
def test_two_processes_sample_together_and_only_process_zero_writes(tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(port), str(i), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    for out in outs:  # both processes hold all three videos (gathered) and graded them
        (line,) = [ln for ln in out.splitlines() if ln.startswith("GRADED ")]
        (grades,) = json.loads(line[len("GRADED ") :])
        assert grades["n"] == 3
    folder = tmp_path / "dit" / "samples" / "step_2"
    gifs = sorted(f for f in os.listdir(folder) if f.endswith(".gif"))
    assert gifs == ["000.gif", "001.gif", "002.gif"]
    rows = metrics_lib.read_jsonl(str(tmp_path / "dit" / "metrics.jsonl"))
    assert [r["step"] for r in rows if "sample_color_acc" in r] == [2]  # one writer


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    worker(*sys.argv[1:])

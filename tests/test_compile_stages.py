"""Stages `dit_compile` and `eval_compile` fill the persistent compile cache beside the stage
before them: the DiT's train steps with no trained VAE (beside the VAE stage), the evaluation
suite's programs with an untrained DiT (beside the DiT stage). The DiT stage then loads every
step program from the cache, and the eval stage every program it runs."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

PROGRAM = """
import importlib.util, json, logging, sys
from sora_jax import recipe
from sora_jax.train import runtime
runtime.COMPILE_CACHE_MIN_SECONDS = 0.0  # cache even the micro config's fast compiles
workdir, stages = sys.argv[1], sys.argv[2]
spec = importlib.util.spec_from_file_location("cfg", "configs/world.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = module.get_config("micro")
config.compile_cache = True
config.eval.update(json.loads(sys.argv[3]))
config.dit_train.update(json.loads(sys.argv[4]))
events = []  # [program name, "hit" | "miss"] of the persistent cache, in order

class Recorder(logging.Handler):
    def emit(self, record):
        msg = record.getMessage()
        if "PERSISTENT COMPILATION CACHE MISS" in msg or "Persistent compilation cache hit" in msg:
            events.append([msg.split("'")[1], "miss" if "MISS" in msg else "hit"])

log = logging.getLogger("jax._src.compiler")
log.addHandler(Recorder(level=logging.DEBUG))
log.setLevel(logging.DEBUG)
runtime.use_compile_cache(config, workdir)
summary = recipe.run(config, workdir, stages)
print("RESULT " + json.dumps({"events": events, "summary": summary}))
"""


def _stage(workdir: str, stages: str, dit_train: dict | None = None, **eval_overrides) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    overrides = (json.dumps(eval_overrides), json.dumps(dit_train or {}))
    argv = [sys.executable, "-c", PROGRAM, workdir, stages, *overrides]
    out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def _steps(events: list) -> list[str]:
    return [kind for name, kind in events if name == "jit_step_fn"]


def _world_config(arg: str | None = "micro"):
    """configs/world.py's config (by path: the configs folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg_world_cs", ROOT / "configs/world.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _dit_half(workdir: str, fake_run) -> None:
    """dit_compile on an empty workdir, then the DiT stage on an untrained VAE's checkpoint (as
    the VAE stage leaves one): the DiT stage loads every program dit_compile compiled."""
    # A training-sample round after step 2: dit_compile samples it once on untrained weights
    # and an untrained VAE's latent statistics; the DiT stage's round loads that program.
    samples = {"sample_every_steps": 2, "sample_num_prompts": 2, "sample_steps": 2}
    warm = _stage(workdir, "dit_compile", samples)  # an empty workdir: no VAE trained yet
    assert _steps(warm["events"]) == ["miss"]  # the micro world config's one bucket
    assert warm["summary"]["dit_compile"]["programs"] == 1
    assert warm["summary"]["dit_compile"]["periodic_s"] > 0
    assert [k for n, k in warm["events"] if n == "jit_run"] == ["miss"]
    assert not os.path.exists(os.path.join(workdir, "dit_compile"))  # its scratch is gone
    # dit_compile.ready (world_gpu.sh starts the DiT stage at it): written after the steps and
    # encodes compiled, before the training-sample round.
    with open(os.path.join(workdir, "dit_compile.ready")) as f:
        ready = json.load(f)
    assert (ready["programs"], ready["encode_programs"]) == (1, 1)
    # The caption encoder's chunk shapes: batches 1, 2, ..., 64 at the one length bucket of
    # the micro config's 16 tokens.
    assert ready["caption_programs"] == 7
    assert "periodic_s" not in ready
    assert not os.path.exists(os.path.join(workdir, "dit"))
    fake_run(_world_config(), [])  # the VAE's checkpoint and latent statistics, no DiT step
    dit = _stage(workdir, "dit", samples)
    assert _steps(dit["events"]) == ["hit"]  # the step loaded, not compiled
    assert [k for n, k in dit["events"] if n == "jit_run"] == ["hit"]  # the sampler's program
    assert os.path.exists(os.path.join(workdir, "dit", "samples", "step_2"))
    # The latent cache's VAE encode too (one clip shape in the micro config).
    assert warm["summary"]["dit_compile"]["encode_programs"] == 1
    assert [k for n, k in dit["events"] if n == "jit_encode_latents"] == ["hit"]
    # The caption encoder's four calls (the training captions' two chunk shapes and the
    # round's prompts' two): cache hits, two of them misses without dit_compile's compiles.
    assert [k for n, k in dit["events"] if n == "jit_forward"] == ["hit"] * 4
    assert dit["summary"]["dit"]["steps"] == 2


def _eval_half(workdir: str, **suite) -> None:
    """eval_compile on the trained workdir, then the eval stage: every program from the cache."""
    compiled = _stage(workdir, "eval_compile", **suite)
    assert sum(kind == "miss" for _, kind in compiled["events"]) > 5
    assert not os.path.exists(os.path.join(workdir, "eval_compile"))
    assert not os.path.exists(os.path.join(workdir, "eval"))
    ev = _stage(workdir, "eval", **suite)
    assert [e for e in ev["events"] if e[1] == "miss"] == []  # every program came from the cache
    assert len(ev["events"]) > 5
    assert ev["summary"]["eval"]["sets"]["t2v"]["n"] >= 1
    assert set(ev["summary"]) >= {"dit_compile", "dit", "eval_compile", "eval"}


def test_dit_and_eval_stages_load_what_the_compile_stages_left_in_the_cache(tmp_path, fake_run):
    """Two of the suite's sets (text -> video and image -> video); the slow test runs them all.
    5 t2v prompts in batches of 2 are two full batches and one of 1: eval_compile samples 3
    (compile_only_eval)."""
    _dit_half(str(tmp_path), fake_run)
    _eval_half(str(tmp_path), num_prompts=5, sets=["t2v", "i2v"], variant_sets=["t2v"])


@pytest.mark.slow  # the whole suite's programs compiled, then loaded: ~3 min of CPU
def test_dit_and_eval_stages_load_what_the_compile_stages_left_for_the_whole_suite(
    tmp_path, fake_run
):
    _dit_half(str(tmp_path), fake_run)
    _eval_half(str(tmp_path), num_prompts=5)


def _batch_shapes(n: int, batch: int) -> set[int]:
    return {min(batch, n - i) for i in range(0, n, batch)}


def test_compile_only_eval_keeps_every_batch_shape():
    from sora_jax import recipe

    config = _world_config(None)
    assert (config.eval.num_prompts, config.eval.num_per_set, config.eval.batch_size) == (
        96,
        32,
        16,
    )
    small = recipe.compile_only_eval(config)
    assert (small.eval.num_prompts, small.eval.num_per_set) == (16, 16)
    assert (config.eval.occlusion_prompts, small.eval.occlusion_prompts) == (96, 16)
    assert (config.eval.modes_per_set, small.eval.modes_per_set) == (96, 16)  # 16 per call
    assert config.eval.num_prompts == 96  # the caller's config is left alone
    for n, batch, want in ((40, 16, 24), (8, 16, 8), (5, 2, 3), (4, 2, 2)):
        config.eval.update(num_prompts=n, batch_size=batch)
        got = recipe.compile_only_eval(config).eval.num_prompts
        assert got == want
        assert _batch_shapes(got, batch) == _batch_shapes(n, batch)


def test_dit_compile_needs_the_compile_cache(tmp_path):
    from sora_jax import recipe

    config = _world_config()
    assert not config.compile_cache
    for stage in ("dit_compile", "eval_compile"):
        with pytest.raises(ValueError, match=f"stage '{stage}' fills the compile cache: set"):
            recipe.run(config, str(tmp_path), stage)


def test_sample_stage_batches_pass_the_configs_autoguidance():
    """`recipe.generate_batched` (the sample stage, guide_sweep) hands config.sample's
    autoguidance to every batch, with each batch's seed; configs without it sample plainly."""
    import ml_collections
    import numpy as np

    from sora_jax import recipe

    calls = []

    class Spy:
        def generate(self, prompts, **kw):
            calls.append(kw)
            return np.zeros((len(prompts), 1, 2, 2, 3), np.uint8)

    scfg = ml_collections.ConfigDict(dict(batch_size=2, num_frames=1, height=2, width=2, steps=3,
                                          guidance=4.0, sampler="euler", seed=5))  # fmt: skip
    assert recipe.generate_batched(Spy(), scfg, ["a", "b", "c"]).shape[0] == 3
    assert [(c["seed"], c["autoguidance"], c["autoguide_step"]) for c in calls] == [
        (5, 1.0, 0), (7, 1.0, 0)]  # fmt: skip
    scfg.update(autoguidance=2.0, autoguide_step=100)
    calls.clear()
    recipe.generate_batched(Spy(), scfg, ["a"])
    assert (calls[0]["autoguidance"], calls[0]["autoguide_step"]) == (2.0, 100)

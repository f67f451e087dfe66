"""The stages of the recipe and how a workdir holds them.

<workdir>/vae/      checkpoints/, metrics.jsonl, latent_stats.json
<workdir>/dit/      checkpoints/, metrics.jsonl
<workdir>/xla_cache/ compiled programs (config.compile_cache); the `dit_compile` stage fills it
                    with the DiT's train steps beside the VAE stage, `eval_compile` with the
                    evaluation's programs beside the DiT stage
<workdir>/samples/  <name>.mp4 / .gif / .json per prompt
<workdir>/eval/     the evaluation suite (sora_jax/eval_suite.py): <set>.json / .png / .gif,
                    summary.json
<workdir>/summary.json  losses, VAE PSNR, grader accuracies, sample paths, eval metrics,
                    wall times
"""

from __future__ import annotations

import concurrent.futures
import copy
import fcntl
import json
import logging
import os
import shutil
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sora_jax import config_check, evaluate
from sora_jax.data import sources
from sora_jax.data import world as world_lib
from sora_jax.train import dit_latent_cache, dit_task, loop, vae_task
from sora_jax.train import state as state_lib

STAGES = ("vae", "dit", "dit_compile", "sample", "eval", "eval_compile")


def _summary_path(workdir: str) -> str:
    return os.path.join(workdir, "summary.json")


def update_summary(workdir: str, **entries) -> dict:
    """Merges `entries` into <workdir>/summary.json. Stages may run in two processes at once
    (dit_compile beside vae): the read-modify-write holds a lock and the file is replaced
    whole, so neither loses the other's entry nor reads a half-written file."""
    path = _summary_path(workdir)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        summary = {}
        if os.path.exists(path):
            with open(path) as f:
                summary = json.load(f)
        summary.update(entries)
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(path + ".tmp", path)
    return summary


def run_vae(config: ml_collections.ConfigDict, workdir: str) -> dict:
    stage_dir = os.path.join(workdir, "vae")
    if note := vae_task.clip_length_warning(config):
        logging.warning(note)
    task = vae_task.VAETask(config)
    result = loop.train(task, config, config.vae_train, stage_dir)
    # The trained EMA weights are in memory: no need to read back the checkpoint just saved.
    vae = nnx.merge(result.graphdef, result.state.ema, result.rest)
    with jax.set_mesh(result.mesh):  # the mesh of training's evaluations: their compile is reused
        evaluation = vae_task.evaluate_and_stats(vae, config, stage_dir)
    return {
        "final_loss": _last(result.history, "loss"),
        "steps": int(result.state.step),
        "stopped_early": result.stopped_early,
        **evaluation,
    }


def run_dit(config: ml_collections.ConfigDict, workdir: str) -> dict:
    vae_dir = dit_task.vae_workdir(config, workdir)
    vae = state_lib.load_model(vae_task.VAETask(config), config.vae_train, vae_dir)
    task = dit_task.DiTTask(config, workdir, vae)
    result = loop.train(task, config, config.dit_train, os.path.join(workdir, "dit"))
    losses = [h["loss"] for h in result.history]
    return {
        "first_loss": losses[0] if losses else None,
        "final_loss": _last(result.history, "loss"),
        "steps": int(result.state.step),
        "stopped_early": result.stopped_early,
    }


# Written by stage dit_compile once the DiT's train steps and latent-cache encodes are in the
# compile cache, before its training-sample round: the DiT stage may start then
# (tools/experiments/world_gpu.sh); the round's program is cached long before its first round.
DIT_COMPILE_READY = "dit_compile.ready"


def run_dit_compile(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Compiles the DiT stage's train steps into the persistent compile cache and trains
    nothing. Needs no trained VAE (a fresh one has the same shapes), so it can run beside the
    VAE stage, and the DiT stage then loads its steps instead of compiling them (on an H200 a
    world bucket's step took ~90-120 s to compile and 3 s to load), and the latent cache's
    encodes beside them; then `<workdir>/dit_compile.ready` (the compiles so far, JSON), then
    the training-sample round's programs."""
    _needs_compile_cache(config, "dit_compile")
    ready = os.path.join(workdir, DIT_COMPILE_READY)  # its reader removes an earlier call's
    vae = state_lib.init_model(vae_task.VAETask(config), config.vae_train, seed=0)
    z = int(config.vae.z_channels)
    stats = (np.zeros(z, np.float32), np.ones(z, np.float32))
    task = dit_task.DiTTask(config, workdir, vae, latent_stats=stats)
    # The encodes compile in a thread of their own beside the steps (the fourteenth run: steps
    # 249 s three at a time, then encodes 98 s one at a time, ready ~20 s after its VAE), and
    # the caption encoder's chunk shapes in another: the DiT stage's first steps encode ~2,000
    # new captions in chunks of up to 28 shapes (in the fourteenth run its first step came 24 s
    # after its latent caches, all of them cached, with nothing else left to wait for).
    pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="encode-compile")
    encoding = None
    if int(config.dit_train.get("latent_cache_clips", 0)) > 0:
        encoding = pool.submit(_timed, lambda: _compile_encodes(task))
    encoder = task.embedder.encoder  # loaded here: the steps' thread may ask for it too
    captions = pool.submit(_timed, encoder.compile_shapes)
    pool.shutdown(wait=False)

    def steps_compiled(result: dict) -> None:
        if encoding is not None:
            result["encode_programs"], result["encode_compile_s"] = encoding.result()
        result["caption_programs"], result["caption_compile_s"] = captions.result()
        with open(ready + ".tmp", "w") as f:
            json.dump(result, f)
        os.replace(ready + ".tmp", ready)

    scratch = os.path.join(workdir, "dit_compile")
    try:
        return loop.compile_steps(task, config, config.dit_train, scratch, then=steps_compiled)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _timed(fn) -> tuple[int, float]:
    """(fn(), its seconds to 0.1 s)."""
    t = time.perf_counter()
    return fn(), round(time.perf_counter() - t, 1)


def _compile_encodes(task: dit_task.DiTTask) -> int:
    """The latent cache's VAE encode (dit_latent_cache.Builder), one per bucket's clip shape,
    into the compile cache: on the H200 the five world buckets' caches took 95 s (15-26 s each)
    before the DiT's first step, their encode compiles included (their share not yet measured).
    Lowered as the Builder's thread does (no mesh context). Returns how many."""
    frozen = task.frozen()
    encode = dit_latent_cache.encoder(task)
    shapes = {}
    for bucket in task.buckets:
        per_host = bucket.batch_size // jax.process_count()
        shapes[(per_host, bucket.num_frames, bucket.height, bucket.width, 3)] = None
    for shape in shapes:
        encode.lower(frozen, jax.ShapeDtypeStruct(shape, jnp.uint8)).compile()
    return len(shapes)


def run_eval_compile(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Compiles the evaluation suite's programs into the persistent compile cache while the DiT
    trains: the suite runs once on the trained VAE and a freshly initialised DiT (the trained
    one's programs; its numbers mean nothing and are not kept), so the `eval` stage after
    training loads its programs instead of compiling them."""
    from sora_jax import eval_suite
    from sora_jax import sample as sample_lib

    _needs_compile_cache(config, "eval_compile")
    gen = sample_lib.Generator(config, workdir, fresh_dit=True)
    start = time.time()
    eval_suite.run(compile_only_eval(config), workdir, generator=gen, write_files=False)
    return {"compile_s": round(time.time() - start, 1)}


def compile_only_eval(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config with fewer eval prompts that still sample every batch shape the suite does:
    n prompts in batches of B are full batches and one of n % B, so B + n % B (at most n) cover
    them. eval_compile then spends less of the GPU the DiT is training on."""
    config = copy.deepcopy(config)
    batch = int(config.eval.batch_size)
    for key in ("num_prompts", "num_per_set", "occlusion_prompts", "modes_per_set"):
        if config.eval.get(key, None) is None:  # occlusion_prompts, modes_per_set: optional
            continue
        n = int(config.eval[key])
        config.eval[key] = min(n, batch + n % batch)
    return config


def _needs_compile_cache(config: ml_collections.ConfigDict, stage: str) -> None:
    if not config.get("compile_cache", False):
        raise ValueError(f"stage '{stage}' fills the compile cache: set compile_cache=True.")


def _last(history: list[dict], key: str):
    return history[-1][key] if history else None


def generate_batched(gen, scfg: ml_collections.ConfigDict, prompts: list[str]) -> np.ndarray:
    """Videos uint8 [N, F, H, W, 3] of `prompts` at `config.sample`'s settings (autoguidance
    and factorized too, if set), in batches of `scfg.batch_size`; batch i (prompts from index
    k) samples with seed `scfg.seed + k`."""
    batch, videos = int(scfg.batch_size), []
    for i in range(0, len(prompts), batch):
        videos.append(
            gen.generate(
                prompts[i : i + batch],
                num_frames=scfg.num_frames,
                height=scfg.height,
                width=scfg.width,
                steps=scfg.steps,
                guidance=scfg.guidance,
                sampler=scfg.sampler,
                seed=int(scfg.seed) + i,
                autoguidance=float(scfg.get("autoguidance", 1.0)),
                autoguide_step=int(scfg.get("autoguide_step", 0)),
                factorized=bool(scfg.get("factorized", False)),
            )
        )
    return np.concatenate(videos)


def sample_prompts(config: ml_collections.ConfigDict, num: int | None = None):
    """(specs, prompts) the sample stage grades: `world.prompt_suite` of `sample.num_prompts`
    (or `num`) from `sample.seed`, each with its short caption."""
    scfg = config.sample
    world = sources.make_world(config)
    n = int(scfg.num_prompts if num is None else num)
    specs = world_lib.prompt_suite(world.cfg, n, seed=int(scfg.seed))
    return specs, [world.captions(s)["short"] for s in specs]


def run_sample(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Samples the world prompt suite (+ any configured prompts) and grades them."""
    from sora_jax import sample as sample_lib
    from sora_jax import sample_run

    scfg = config.sample
    gen = sample_lib.Generator(config, workdir)
    world_cfg = sources.make_world(config).cfg
    specs, prompts = sample_prompts(config)
    prompts += list(scfg.get("prompts", ()))
    videos = generate_batched(gen, scfg, prompts)
    files = []
    for i, (prompt, video) in enumerate(zip(prompts, videos)):
        meta = {
            "prompt": prompt,
            "seed": int(scfg.seed),
            **{
                k: scfg[k]
                for k in ("num_frames", "height", "width", "steps", "sampler", "guidance")
            },
        }
        if float(scfg.get("autoguidance", 1.0)) != 1.0:
            meta.update(autoguidance=scfg.autoguidance, autoguide_step=scfg.autoguide_step)
        if scfg.get("factorized", False):
            meta["factorized"] = True
        if i < len(specs):
            meta["spec"] = specs[i]
        paths = sample_run.save_video(
            os.path.join(workdir, "samples", f"{i:03d}"), video, world_cfg.fps, meta
        )
        files.append(paths.get("mp4", paths["gif"]))  # no mp4 encoder: the gif
    grades = {}
    if specs:  # the suite's videos (extra free-text prompts have no spec to grade against)
        graded = list(videos[: len(specs)])
        grades = evaluate.grade_many(graded, specs)
        grades["flicker_ratio"] = evaluate.flicker_ratio(graded, specs)
    logging.info("grader on %d samples: %s", len(specs), grades)
    return {"grader": grades, "samples": files, "prompts": prompts}


def run_eval(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The evaluation suite: every generation mode graded, files in <workdir>/eval/."""
    from sora_jax import eval_suite

    summary = eval_suite.run(config, workdir)
    return {k: v for k, v in summary.items() if k in ("sets", "val_loss", "vae", "targets")}


RUNNERS = {"vae": run_vae, "dit": run_dit, "dit_compile": run_dit_compile, "sample": run_sample,
           "eval": run_eval, "eval_compile": run_eval_compile}  # fmt: skip


def run(config: ml_collections.ConfigDict, workdir: str, stages: str | None = None) -> dict:
    """Runs the configured stages in order; each one resumes or skips work already done."""
    config_check.check(config)  # a bad setting fails before any stage starts
    names = [s.strip() for s in (stages or config.stages).split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; expected some of {STAGES}.")
    if {"eval", "eval_compile"} & set(names) and "eval" in config:
        from sora_jax import eval_suite

        eval_suite.plan(config)  # the suite's settings too, before the stages that train
    os.makedirs(workdir, exist_ok=True)
    summary = {}
    for name in names:
        start = time.time()
        logging.info("stage %s", name)
        result = RUNNERS[name](config, workdir)
        result["wall_s"] = round(time.time() - start, 1)
        summary = update_summary(workdir, **{name: result})
    return summary

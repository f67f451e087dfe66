"""The evaluation suite of a world model: every generation mode, graded (`--mode=eval`).

Legend: F H W pixel frames/height/width, T latent frames, tf the VAE's temporal factor.

Sets and their cases: sora_jax/eval_cases.py (every prompt built from the world's vocabulary,
conditioned modes given frames of real clips, so every output is graded against a known truth).
Every sample goes through `modes` plans and `sample.Generator.sample`: the code path of
`--mode=sample`.

Metrics per set, the model's validation loss and issue 9's targets: sora_jax/eval_metrics.py.

`eval.t2v_variants` re-samples the t2v set (and the other sets named in `eval.variant_sets`,
e.g. t2v_occlusion, or in a variant's own "sets") under other sampler settings (steps, sampler,
guidance, shift, autoguidance...) and reports each as `<set>@<settings>` beside the sets (summary
key `t2v_variants`): how much the grades owe to sampling.

Files: `<workdir>/eval/<set>.json` (metrics, settings, per-sample prompts, specs and grades),
`<set>.png` (contact sheet: a row per sample, evenly spaced frames, given frames framed in
green), `<set>_<i>.gif`, and `summary.json` (every set's metrics, the validation loss, the VAE,
and issue 9's targets checked).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from sora_jax import eval_cases, eval_files, eval_metrics
from sora_jax import sample as sample_lib
from sora_jax.train import checkpoint as ckpt_lib
from sora_jax.train import dit_task, vae_eval, vae_task

# ---------------------------------------------------------------------------- generation


# The sampler settings of `config.eval`; guidance_interval (lo, hi): guidance applies while
# lo <= t <= hi (Kynkäänniemi et al. 2024); autoguidance (scale; 1 = off) and
# autoguide_step: the run's own earlier DiT checkpoint as the weaker model that guides
# (Karras et al. 2024; sora_jax/diffusion/samplers.py); factorized: text -> video sets as
# text -> image -> video (Generator.sample; the other modes' sets already have given frames).
VARIANT_KEYS = ("steps", "sampler", "guidance", "shift", "guidance_interval", "autoguidance",
                "autoguide_step", "factorized")  # fmt: skip
# Keys newer than the first runs' configs.
_DEFAULTS = {"autoguidance": 1.0, "autoguide_step": 0, "factorized": False}


def _settings(config: ml_collections.ConfigDict, **overrides) -> dict:
    """The suite's sampler settings (`config.eval`), with `overrides` of VARIANT_KEYS; the
    autoguidance and factorized keys only where they apply (settings of runs without them read
    as before)."""
    ec = {**{k: config.eval.get(k, _DEFAULTS.get(k)) for k in VARIANT_KEYS}, **overrides}
    out = {
        "steps": int(ec["steps"]),
        "guidance": float(ec["guidance"]),
        "sampler": str(ec["sampler"]),
        "shift": float(ec["shift"]) if float(ec["shift"]) > 0 else None,
        "guidance_interval": tuple(float(v) for v in ec["guidance_interval"]),
    }
    if float(ec["autoguidance"]) != 1.0:
        out.update(autoguidance=float(ec["autoguidance"]), autoguide_step=int(ec["autoguide_step"]))
    if ec["factorized"]:
        out["factorized"] = ec["factorized"]  # check_settings: True or False
    return out


def _label(value) -> str:
    """A variant's value in its set's name (and file names): a tuple as lo-hi, no spaces."""
    return "-".join(str(v) for v in value) if isinstance(value, (tuple, list)) else str(value)


def t2v_variants(config: ml_collections.ConfigDict, set_names: Sequence[str]) -> dict[str, dict]:
    """`eval.t2v_variants`: the t2v set (and every other set of `eval.variant_sets`, among
    `set_names`) again under other sampler settings (each a dict of VARIANT_KEYS overriding the
    suite's, and optionally "sets": the sets of that variant instead of `variant_sets`, e.g. the
    conditioned modes), reported beside the sets, not as targets. Returns {"<set>@key=value,...":
    settings}; a bad variant or set name fails here, before any weights load."""
    out = {}
    if not config.eval.get("t2v_variants", ()):
        return out
    variant_sets = tuple(config.eval.get("variant_sets", ("t2v",)))
    if not variant_sets or set(variant_sets) - set(set_names):
        raise ValueError(f"eval.variant_sets={variant_sets} must name some of the suite's sets "
                         f"{tuple(set_names)}.")  # fmt: skip
    for overrides in config.eval.get("t2v_variants", ()):
        overrides = dict(overrides)
        sets = tuple(overrides.pop("sets", variant_sets))
        if not overrides or set(overrides) - set(VARIANT_KEYS):
            raise ValueError(f"eval.t2v_variants: {overrides} must override some of "
                             f"{VARIANT_KEYS} and nothing else, besides 'sets'.")  # fmt: skip
        if not sets or isinstance(sets, str) or set(sets) - set(set_names):
            raise ValueError(f"eval.t2v_variants: {overrides}'s sets={sets} must name some of "
                             f"the suite's sets {tuple(set_names)}.")  # fmt: skip
        settings = _settings(config, **overrides)
        sample_lib.check_settings(**settings)
        _check_guide_kept(config, settings.get("autoguide_step", 0))
        suffix = "@" + ",".join(f"{k}={_label(v)}" for k, v in sorted(overrides.items()))
        out.update({name + suffix: settings for name in sets})
    return out


def _check_guide_kept(config: ml_collections.ConfigDict, step: int) -> None:
    """An autoguidance step must be an earlier DiT checkpoint its stage keeps for good
    (`checkpoint.kept_for_good`): else the variant would fail only when sampled, after the sets
    before it."""
    if not step:
        return
    dt = config.dit_train
    every, keep = dt.get("checkpoint_every_steps", 0), dt.get("keep_every_steps", 0)
    if not (ckpt_lib.kept_for_good(dt, step) and step < int(dt.steps)):
        raise ValueError(
            f"autoguide_step={step} is not a DiT checkpoint the stage keeps: it must be below "
            f"dit_train.steps={dt.steps} and a multiple of checkpoint_every_steps={every} and "
            f"keep_every_steps={keep}."
        )


def generate(
    gen: sample_lib.Generator, cases: Sequence[eval_cases.Case], settings: dict, batch_size: int
) -> list[np.ndarray]:
    """uint8 videos of the cases; runs of consecutive cases laid out alike (`same_layout`: one
    mode, shape and set of given slots; conditioned ones each with their own given pixels) and
    of consecutive seeds share calls of up to `batch_size` (sample i of a call with seed s
    draws key s + i). `settings["factorized"]` applies to the text -> video cases (images and
    conditioned modes are sampled as they are)."""
    videos: list[np.ndarray] = []
    i = 0
    while i < len(cases):
        c, j = cases[i], i + 1
        while (j < len(cases) and j - i < batch_size and cases[j].seed == c.seed + j - i
               and sample_lib.same_layout(cases[j].plan, c.plan)):  # fmt: skip
            j += 1
        prompts, plans = [x.prompt for x in cases[i:j]], [x.plan for x in cases[i:j]]
        kw = dict(settings, factorized=bool(settings.get("factorized")) and c.plan.mode == "t2v")
        videos.extend(gen.sample(prompts, plans, seed=c.seed, **kw).videos)
        i = j
    return videos


# ---------------------------------------------------------------------------- entry point


def _has_checkpoint(stage_dir: str) -> bool:
    path = os.path.join(stage_dir, "checkpoints")
    return os.path.isdir(path) and any(d.isdigit() for d in os.listdir(path))


def plan(config: ml_collections.ConfigDict) -> tuple[dict, dict, dict, int]:
    """The suite's cases by set, its sampler settings, its variants' settings and the sets
    sampled at once (`eval.threads`), with every eval setting checked (ValueError, one
    sentence): `recipe.run` calls it before its first stage, so a bad eval setting does not
    wait for the training before it."""
    if "eval" not in config:
        raise ValueError(
            "--mode=eval needs an 'eval' section in the config (prompt counts, shapes, sampler);"
            " configs/world.py has one (configs/world_eval.py)."
        )
    cases_by_set = eval_cases.build_suite(config)
    suite = _settings(config)
    sample_lib.check_settings(**suite)
    _check_guide_kept(config, suite.get("autoguide_step", 0))
    variants = t2v_variants(config, list(cases_by_set))
    threads = config.eval.get("threads", 1)
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"eval.threads must be a positive int (sets sampled at once), "
                         f"not {threads!r}.")  # fmt: skip
    return cases_by_set, suite, variants, threads


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    generator: sample_lib.Generator | None = None,
    write_files: bool = True,
) -> dict:
    """Runs the suite on the trained stages of `workdir`; writes `<workdir>/eval/` and returns
    the summary. A workdir with a VAE but no DiT gets the VAE evaluation alone. `write_files`:
    False runs the suite for its compiles alone (stage eval_compile) and writes nothing."""
    start = time.time()
    out_dir = os.path.join(workdir, "eval")
    writes = write_files and jax.process_index() == 0
    if writes:
        os.makedirs(out_dir, exist_ok=True)
    vae_dir = dit_task.vae_workdir(config, workdir)
    if generator is None and not _has_checkpoint(os.path.join(workdir, "dit")):
        summary = {"vae": vae_task.evaluate_vae(config, vae_dir)}
        return _write_summary(out_dir, summary, start, writes)
    cases_by_set, suite, variants, threads = plan(config)  # fails before any weights load
    gen = generator or sample_lib.Generator(config, workdir)
    tf = gen.temporal_factor
    # `seed`: the prompts, scenes and noise (runs of other seeds share no sample).
    summary: dict = {"sets": {}, "settings": suite, "seed": int(config.eval.seed)}
    summary["checkpoint_steps"] = getattr(gen, "checkpoint_steps", {})
    # Every set and variant is one job; `eval.threads` of them run at once (their compiles,
    # most of the suite's time on a GPU, overlap), and the summary lists them in this order.
    jobs = [(name, name, cases, _settings(config)) for name, cases in cases_by_set.items()]
    jobs += [(label, label.split("@")[0], cases_by_set[label.split("@")[0]], s)
             for label, s in variants.items()]  # fmt: skip
    batch_size = int(config.eval.batch_size)
    if getattr(gen, "mesh", None) is not None or jax.process_count() > 1:
        # Sharded programs launched from several threads could reach their collectives in a
        # different order on each device (or host) and wait on each other forever.
        threads = 1

    def job(item):
        label, set_name, cases, settings = item
        t0 = time.time()
        videos = generate(gen, cases, settings, batch_size)
        metrics, records = eval_metrics.score(set_name, cases, videos, tf)
        if label == "t2v_occlusion":
            metrics.update(eval_metrics.vae_ceiling(gen, cases, videos, records))
        metrics["wall_s"] = round(time.time() - t0, 1)  # overlaps the other jobs' times
        return videos, metrics, records

    def write(item, result) -> None:
        label, _, cases, settings = item
        videos, metrics, records = result
        if not writes:
            return
        if label in variants:
            eval_files.write_json(out_dir, label, metrics, settings, records)
        else:
            eval_files.write_set(out_dir, label, metrics, settings, records, cases, videos,
                                 config, tf)  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(min(threads, len(jobs))) as pool:
        # The validation loss and the VAE's evaluation compile their own programs: first in line.
        val_loss = pool.submit(eval_metrics.validation_loss, gen, config)
        vae_graded = None
        if config.eval.get("vae", True):
            vae_graded = pool.submit(vae_eval.evaluate_model, gen.vae, config)
        futures = {pool.submit(job, item): k for k, item in enumerate(jobs)}
        results = [None] * len(jobs)
        # Each set's files are written as soon as it is graded, so a run whose device time ends
        # mid-suite (three GPU runs did) keeps every set that finished; the summary keeps the
        # suite's order.
        for future in concurrent.futures.as_completed(futures):
            k = futures[future]
            results[k] = future.result()
            write(jobs[k], results[k])
            logging.info("eval %s: %s", jobs[k][0], results[k][1])
        for (label, _, _, settings), (_, metrics, _) in zip(jobs, results, strict=True):
            if label in variants:
                summary.setdefault("t2v_variants", {})[label] = {**metrics, "settings": settings}
            else:
                summary["sets"][label] = metrics
        summary["val_loss"] = val_loss.result()
        if vae_graded is not None:
            summary["vae"] = vae_graded.result()
    summary["targets"] = eval_metrics.check_targets(summary["sets"])
    return _write_summary(out_dir, summary, start, writes)


def _write_summary(out_dir: str, summary: dict, start: float, writes: bool) -> dict:
    summary["wall_s"] = round(time.time() - start, 1)
    summary = eval_files.json_safe(summary)
    if writes:
        with open(os.path.join(out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        logging.info("eval summary in %s", os.path.join(out_dir, "summary.json"))
    return summary

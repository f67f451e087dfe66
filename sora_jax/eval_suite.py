"""The evaluation suite of a world model: every generation mode, graded (`--mode=eval`).

Legend: F H W pixel frames/height/width, T latent frames, tf the VAE's temporal factor.

Sets and their cases: sora_jax/eval_cases.py (every prompt built from the world's vocabulary,
conditioned modes given frames of real clips, so every output is graded against a known truth).
Every sample goes through `modes` plans and `sample.Generator.sample`: the code path of
`--mode=sample`.

Metrics per set (`evaluate.py` holds their definitions):
  color_acc, shape_acc, motion_acc   the grader against the spec (edit: the recoloured spec)
  permanence (t2v_occlusion)         `evaluate.object_permanence`: the object seen before the
                                     occluder is seen after it, same colour, size and shape;
                                     permanence_vae_round_trip: that of the VAE's round trips
                                     of the scenes' real clips (the ceiling);
                                     permanence_where_vae_keeps: the generated videos'
                                     permanence over the scenes whose round trip keeps it;
                                     occluder_direction_acc, occluder_speed_ratio: the bar
                                     moves the captioned way, at what speed over the world's
                                     (`evaluate.occluder_motion`; `occluder_metrics`)
  given_psnr (conditioned)           PSNR (dB) of the output's given frames against the given
                                     pixels, after the VAE round trip
  last_color_acc (conditioned)       the last frame's subject colour is the spec's
  continuity_ratio (conditioned)     boundary_mad / real_mad: the mean |frame f - frame f-1|
                                     (0-255 levels) at the boundaries between given and
                                     generated frames, over the same statistic between all
                                     consecutive frames of the real clips (1 = as smooth as
                                     real motion; issue 9 asks <= 2); generated_mad is that
                                     statistic between generated frames, for reference
  flicker_ratio (text-only sets)     `evaluate.flicker_ratio`: the mean |frame f - frame f-1| of
                                     the outputs over that of the specs' real clips (~1 = as
                                     smooth as the world; objects that jump or change shape
                                     between frames raise it, and so do bars a short prompt
                                     did not ask for); bar_rate, the share of outputs where
                                     a bar passes (`evaluate.sweeps`), and
                                     flicker_ratio_without_bar, the ratio over the others
and for the whole model: the DiT's rectified-flow validation loss at fixed t on held-out world
clips (another world seed), and the VAE's held-out PSNR/SSIM.

`eval.t2v_variants` re-samples the t2v set (and the other sets named in `eval.variant_sets`,
e.g. t2v_occlusion) under other sampler settings (steps, sampler, guidance, shift) and reports
each as `<set>@<settings>` beside the sets (summary key `t2v_variants`): how much the grades owe
to sampling.

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
from flax import nnx

from sora_jax import eval_cases, eval_files, evaluate, quality
from sora_jax import sample as sample_lib
from sora_jax.data import sources
from sora_jax.data import world as world_lib
from sora_jax.train import checkpoint as ckpt_lib
from sora_jax.train import dit_task, vae_eval, vae_task

# Issue 9's numbers: (set, metric, "min" | "max", threshold).
TARGETS = (
    ("t2v", "color_acc", "min", 0.9),
    ("t2v", "shape_acc", "min", 0.8),
    ("t2v", "motion_acc", "min", 0.8),
    ("t2v_holdout", "color_acc", "min", 0.6),
    ("t2v_holdout", "shape_acc", "min", 0.6),
    ("t2v_occlusion", "permanence", "min", 0.75),
    ("i2v", "given_psnr", "min", 30.0),
    ("i2v", "last_color_acc", "min", 0.9),
    ("extend_forward", "continuity_ratio", "max", 2.0),
    ("extend_backward", "continuity_ratio", "max", 2.0),
)


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
    suite's), reported beside the sets, not as targets. Returns {"<set>@key=value,...":
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
        if not overrides or set(overrides) - set(VARIANT_KEYS):
            raise ValueError(f"eval.t2v_variants: {overrides} must override some of "
                             f"{VARIANT_KEYS} and nothing else.")  # fmt: skip
        settings = _settings(config, **overrides)
        sample_lib.check_settings(**settings)
        _check_guide_kept(config, settings.get("autoguide_step", 0))
        suffix = "@" + ",".join(f"{k}={_label(v)}" for k, v in sorted(overrides.items()))
        out.update({name + suffix: settings for name in variant_sets})
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
    """uint8 videos of the cases; text-only cases of one shape and consecutive seeds share calls
    (sample i of a call with seed s draws key s + i), conditioned ones run one per call.
    `settings["factorized"]` applies to the text -> video cases (images and conditioned modes
    are sampled as they are)."""
    videos: list[np.ndarray] = []
    i = 0
    while i < len(cases):
        c, j = cases[i], i + 1
        if c.plan.canvas is None and c.plan.init is None:
            size = (c.plan.num_frames, c.plan.height, c.plan.width)
            while (j < len(cases) and j - i < batch_size and cases[j].plan.canvas is None
                   and cases[j].plan.init is None and cases[j].seed == c.seed + j - i
                   and (cases[j].plan.num_frames, cases[j].plan.height,
                        cases[j].plan.width) == size):  # fmt: skip
                j += 1
        prompts = [x.prompt for x in cases[i:j]]
        kw = dict(settings, factorized=bool(settings.get("factorized")) and c.plan.mode == "t2v")
        videos.extend(gen.sample(prompts, c.plan, seed=c.seed, **kw).videos)
        i = j
    return videos


# ---------------------------------------------------------------------------- metrics


PERMANENCE_KEYS = ("permanent", "hidden", "seen_after", "same_size", "same_shape")
# A miss counts under the first check it fails, in this order: (grade key, label).
_MISS_ORDER = (("seen_before", "unseen_before"), ("seen_after", "unseen_after"),
               ("same_size", "other_size"), ("same_shape", "other_shape"))  # fmt: skip


def permanence_metrics(specs: Sequence[dict], grades: Sequence[dict],
                       keys: Sequence[str] = PERMANENCE_KEYS) -> dict:  # fmt: skip
    """Means of `evaluate.object_permanence` grades: `permanence` (of "permanent"), its binomial
    standard error `permanence_se`, `permanence_<key>` for the other keys,
    `permanence_by_motion` / `permanence_by_size` (per the subject's motion and size: grow/shrink
    and small subjects were the GPU's misses), and `prompted_shape_by_size`: per size, how often
    the shape read before the bar and after it is the prompted one (a DiT that loses the object
    behind the bar falls from "before" to "after"); `permanence_misses` counts the misses by the
    first check they fail: not seen before the bar, not seen after it, back at another size, back
    as another shape."""
    out = {}
    for key in keys:
        label = "permanence" if key == "permanent" else f"permanence_{key}"
        out[label] = _mean(g[key] for g in grades)
    p, n = out["permanence"], len(grades)
    out["permanence_se"] = float(np.sqrt(p * (1 - p) / n)) if n else float("nan")
    groups: dict[str, dict[str, list[bool]]] = {"motion": {}, "size": {}}
    reads: dict[str, list[tuple[bool, bool]]] = {}
    misses = dict.fromkeys((label for _, label in _MISS_ORDER), 0)
    for spec, g in zip(specs, grades, strict=True):
        subject = spec["objects"][0]
        for attr, by in groups.items():
            by.setdefault(subject[attr], []).append(g["permanent"])
        reads.setdefault(subject["size"], []).append(
            (g.get("shape_before") == subject["shape"], g.get("shape_after") == subject["shape"])
        )
        failed = next((label for key, label in _MISS_ORDER if not g[key]), None)
        if not g["permanent"] and failed:
            misses[failed] += 1
    out["permanence_misses"] = misses
    for attr, by in groups.items():
        out[f"permanence_by_{attr}"] = {k: _mean(v) for k, v in sorted(by.items())}
    out["prompted_shape_by_size"] = {
        k: {"before": _mean(b for b, _ in v), "after": _mean(a for _, a in v)}
        for k, v in sorted(reads.items())
    }
    return out


# A bar moving the prompted way within these bounds of the world's speed counts as at its speed.
WORLD_SPEED = (0.8, 1.25)


def kept_by_bar(occluders: Sequence[dict], kept: Sequence[bool], speed_kind) -> dict:
    """{kind: [kept, ...]} of the occlusion scenes by how their bar moved
    (`evaluate.occluder_motion`): "not found", "reversed", or for a bar going the captioned way
    `speed_kind(speed_ratio)`."""
    groups: dict[str, list[bool]] = {}
    for o, k in zip(occluders, kept, strict=True):
        kind = ("not found" if not o["found"] else "reversed" if not o["direction_ok"]
                else speed_kind(o["speed_ratio"]))  # fmt: skip
        groups.setdefault(kind, []).append(bool(k))
    return groups


def occluder_metrics(occluders: Sequence[dict], kept: Sequence[bool]) -> dict:
    """How the occlusion scenes' bars moved (`evaluate.occluder_motion` per video) and the
    permanence of each kind: `occluder_found` (the share of videos where the bar shows),
    `occluder_direction_acc` (of those, the share moving the captioned way),
    `occluder_speed_ratio` (the median speed over the world's of those), and
    `permanence_by_occluder` {kind: [permanence, videos]} for kinds "as captioned" (the
    captioned way at `WORLD_SPEED`), "other speed" (the captioned way, slower or faster),
    "reversed" and "not found": a bar late or going the other way may still hide the subject
    at the clip's end."""
    found = [o for o in occluders if o["found"]]
    right = [o for o in found if o["direction_ok"]]
    groups = kept_by_bar(occluders, kept, lambda r: "as captioned"
                         if WORLD_SPEED[0] <= r <= WORLD_SPEED[1] else "other speed")  # fmt: skip
    return {
        "occluder_found": _mean(o["found"] for o in occluders),
        "occluder_direction_acc": _mean(o["direction_ok"] for o in found),
        "occluder_speed_ratio": (
            float(np.median([o["speed_ratio"] for o in right])) if right else float("nan")
        ),  # fmt: skip
        "permanence_by_occluder": {k: [_mean(v), len(v)] for k, v in sorted(groups.items())},
    }


def round_trip_grades(gen, cases: Sequence[eval_cases.Case], sizes) -> list[tuple]:
    """(reconstruction, `evaluate.object_permanence` of it) per case: the VAE's round trip of the
    case's real clip rendered at its size (F, H, W); one clip per call, as the conditioned modes
    encode."""
    out = []
    for case, (f, h, w) in zip(cases, sizes, strict=True):
        recon = gen.decode(gen.encode(world_lib.render(case.spec, h, w, f)[None]))[0]
        out.append((recon, evaluate.object_permanence(recon, case.spec)))
    return out


def vae_ceiling(gen, cases: Sequence[eval_cases.Case], videos, records: list[dict]) -> dict:
    """The occlusion scenes' ceiling: `permanence_vae_round_trip`, the object permanence of the
    VAE's round trips of their real clips (at the generated videos' sizes), what a DiT drawing
    in these latents can reach on the same grader; and `permanence_where_vae_keeps`, the
    generated videos' permanence over the scenes whose round trip keeps the object (NaN when
    none does). Each record gets its round trip's grade (`permanence_vae_round_trip`)."""
    grades = [g for _, g in round_trip_grades(gen, cases, [v.shape[:3] for v in videos])]
    for rec, g in zip(records, grades, strict=True):
        rec["permanence_vae_round_trip"] = g
    kept = [r["permanence"]["permanent"] for r, g in zip(records, grades) if g["permanent"]]
    return {
        "permanence_vae_round_trip": _mean([g["permanent"] for g in grades]),
        "permanence_where_vae_keeps": _mean(kept),
    }


def _mean(values) -> float:
    values = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def _last_color(video: np.ndarray) -> str | None:
    k = evaluate.predict_color(evaluate.palette_labels(video[-1:]))
    return None if k is None else world_lib.ALL_COLORS[k]


def score(name: str, cases: Sequence[eval_cases.Case], videos: Sequence[np.ndarray], tf: int):
    """(set metrics, per-sample records) of generated videos against their cases."""
    records = []
    for c, v in zip(cases, videos, strict=True):
        rec = {"prompt": c.prompt, "seed": c.seed, "mode": c.plan.mode,
               "size": "x".join(map(str, v.shape[:3])), **evaluate.grade(v, c.spec)}  # fmt: skip
        if name == "t2v_occlusion":
            rec["permanence"] = evaluate.object_permanence(v, c.spec)
            rec["occluder"] = evaluate.occluder_motion(v, c.spec)
        if c.truth is not None:
            given = eval_cases.given_frames(c.plan, tf)
            rec["given_frames"] = np.flatnonzero(given).tolist()
            rec["last_color"] = _last_color(v)
            if given.any():
                psnr = quality.psnr(v[given].astype(np.float32), c.plan.canvas[given],
                                     data_range=255.0)  # fmt: skip
                rec["given_psnr"] = float(psnr)
            rec["boundaries"] = evaluate.boundaries(given)
            rec["boundary_mad"] = evaluate.continuity(v, rec["boundaries"])
            rec["real_mad"] = float(evaluate.frame_differences(c.truth).mean())
            generated = ~given[1:] & ~given[:-1]  # frame pairs both generated
            diffs = evaluate.frame_differences(v)[generated]
            rec["generated_mad"] = float(diffs.mean()) if len(diffs) else float("nan")
        rec["spec"] = c.spec
        records.append(rec)
    grades = evaluate.accuracies(records)  # the records hold each video's grade
    metrics = {k: grades[k] for k in ("color_acc", "shape_acc", "motion_acc", "n", "n_motion")}
    # Which shapes fail (the world's thin ones, cross/star/ring, were the misses on the GPU).
    metrics["shape_acc_by_shape"] = evaluate.accuracy_by_shape(
        [r["spec"] for r in records], [r["shape"] for r in records]
    )
    if name == "t2v_occlusion":
        metrics.update(permanence_metrics([r["spec"] for r in records],
                                          [r["permanence"] for r in records]))  # fmt: skip
        kept = [r["permanence"]["permanent"] for r in records]
        metrics.update(occluder_metrics([r["occluder"] for r in records], kept))
    if name == "t2v_sweep":
        for size in dict.fromkeys(r["size"] for r in records):  # per FRAMESxHEIGHTxWIDTH
            g = evaluate.accuracies([r for r in records if r["size"] == size])
            metrics[size] = {k: g[k] for k in ("color_acc", "shape_acc", "motion_acc", "n")}
    if cases and cases[0].truth is None:  # text-only sets: the specs' renders are the truth
        metrics["flicker_ratio"] = evaluate.flicker_ratio(videos, [c.spec for c in cases])
        metrics.update(evaluate.bar_metrics(videos, [c.spec for c in cases]))
    if cases and cases[0].truth is not None:
        metrics["last_color_acc"] = _mean(
            r["last_color"] == c.spec["objects"][0]["color"] for r, c in zip(records, cases)
        )
        if name != "edit":
            metrics["given_psnr"] = _mean(r.get("given_psnr") for r in records)
            metrics["boundary_mad"] = _mean(r["boundary_mad"] for r in records)
            metrics["real_mad"] = _mean(r["real_mad"] for r in records)
            metrics["generated_mad"] = _mean(r["generated_mad"] for r in records)
            metrics["continuity_ratio"] = metrics["boundary_mad"] / max(metrics["real_mad"], 1e-6)
    return metrics, records


def validation_loss(
    gen: sample_lib.Generator, config: ml_collections.ConfigDict
) -> dict[str, float]:
    """The DiT's rectified-flow loss at each `eval.val_timesteps` on held-out world clips (the
    VAE's held-out seed) at `eval.shape`, their short prompts, noise from `eval.seed`;
    `eval.val_clips` rounded up to whole batches of `eval.batch_size` (one compile)."""
    ec = config.eval
    f, h, w = eval_cases.parse_shape(ec.shape)
    world = sources.make_world(config, seed=int(config.world.seed) + 10_007)
    b = max(1, int(ec.batch_size))
    n = -(-max(1, int(ec.val_clips)) // b) * b
    clips = [world.clip(i, h, w, f) for i in range(n)]
    timesteps = tuple(float(t) for t in ec.val_timesteps)
    graphdef, state = nnx.split(gen.dit)

    @jax.jit
    def run(state, x0, noise, text, mask):
        dit = nnx.merge(graphdef, state)
        return quality.flow_validation_loss(lambda x, t: dit(x, t, text, mask), x0, noise,
                                             timesteps)  # fmt: skip

    total = np.zeros(len(timesteps))
    rng = np.random.default_rng([int(ec.seed), 0x7A1])
    for i in range(0, n, b):
        chunk = clips[i : i + b]
        x0 = gen.encode(np.stack([c["video"] for c in chunk]))
        text, mask = gen.embedder([c["prompt"] for c in chunk])
        noise = rng.standard_normal(x0.shape, np.float32)
        total += np.asarray(run(state, x0, noise, text, mask))
    return {f"t={t:g}": float(v) for t, v in zip(timesteps, total / (n // b))}


def check_targets(sets: dict[str, dict]) -> list[dict]:
    """Issue 9's numbers against the measured metrics (sets that did not run are left out)."""
    out = []
    for name, metric, kind, bound in TARGETS:
        value = sets.get(name, {}).get(metric)
        if value is None:
            continue
        ok = bool(np.isfinite(value) and (value >= bound if kind == "min" else value <= bound))
        out.append({"set": name, "metric": metric, kind: bound, "value": value, "ok": ok})
    return out


# ---------------------------------------------------------------------------- entry point


def _has_checkpoint(stage_dir: str) -> bool:
    path = os.path.join(stage_dir, "checkpoints")
    return os.path.isdir(path) and any(d.isdigit() for d in os.listdir(path))


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
    if "eval" not in config:
        raise ValueError(
            "--mode=eval needs an 'eval' section in the config (prompt counts, shapes, sampler);"
            " configs/world.py has one (configs/world_eval.py)."
        )
    cases_by_set = eval_cases.build_suite(config)  # bad eval settings fail before any weights load
    suite = _settings(config)
    sample_lib.check_settings(**suite)
    _check_guide_kept(config, suite.get("autoguide_step", 0))
    variants = t2v_variants(config, list(cases_by_set))
    threads = config.eval.get("threads", 1)
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"eval.threads must be a positive int (sets sampled at once), "
                         f"not {threads!r}.")  # fmt: skip
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
        metrics, records = score(set_name, cases, videos, tf)
        if label == "t2v_occlusion":
            metrics.update(vae_ceiling(gen, cases, videos, records))
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
        val_loss = pool.submit(validation_loss, gen, config)
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
    summary["targets"] = check_targets(summary["sets"])
    return _write_summary(out_dir, summary, start, writes)


def _write_summary(out_dir: str, summary: dict, start: float, writes: bool) -> dict:
    summary["wall_s"] = round(time.time() - start, 1)
    summary = eval_files.json_safe(summary)
    if writes:
        with open(os.path.join(out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        logging.info("eval summary in %s", os.path.join(out_dir, "summary.json"))
    return summary

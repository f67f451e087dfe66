"""Recaptioning study: does training on descriptive captions help prompt following? (issue 7)

The Sora report (after DALL·E 3) credits prompt following to training on highly descriptive
recaptions and expanding short user prompts into the same style at sampling. Here two arms train
the DiT stage on the synthetic world with the same config, seed, steps, clips, noise draws and
caption-dropout draws, on one shared VAE, and differ only in captions:

  short        dit_train.caption_probs = {"prompt": 1.0}: the world's short prompts
               ("a red circle moving left"); evaluation prompts are encoded as typed.
  descriptive  caption_probs = {"caption": mix, "prompt": 1 - mix}, mix = 0.95 by default:
               DALL·E 3's blend (95% synthetic descriptive / 5% short captions was its best
               ratio; the short 5% keeps short prompts in distribution). Evaluation prompts are
               first expanded by the world describer (prompt_expansion backend "world", i.e.
               `--expand_prompt=world`). The same model is also graded on the unexpanded
               prompts, as a secondary row, to separate the two halves of the recipe.

Both arms use one `text.max_length`, measured to fit the longest caption of either kind (and
every expanded evaluation prompt) in the configured world, rounded up to 8 tokens, so no caption
is truncated in either arm. Both sample the same prompt suite (`world.prompt_suite`) with the
same seeds, graded by `sora_jax.evaluate.grade_many` (colour, shape, motion).

  # both arms in one process, then the table (CPU: tiny config; micro for a smoke test)
  python tools/experiments/recaption_study.py --config=configs/tiny.py --workdir=/tmp/recap
  # the arms as two concurrent processes on one GPU (the first to start trains the shared VAE
  # under a file lock, the other waits for it), then merge them into the table and JSON
  export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
  python tools/experiments/recaption_study.py --config=configs/tiny.py --workdir=W --arm=short &
  python tools/experiments/recaption_study.py --config=configs/tiny.py --workdir=W \
      --arm=descriptive & wait
  python tools/experiments/recaption_study.py --workdir=W --report
  # more statistical power and training on a GPU; --vae_workdir reuses a trained VAE stage
  ... --config=configs/tiny.py --steps=10000 --num_prompts=256 [--vae_workdir=/tmp/tiny/vae]

Layout: <workdir>/vae (shared VAE stage, unless --vae_workdir), <workdir>/<arm>/{dit,samples},
<workdir>/<arm>/arm.json (one arm's result); the merged JSON goes to
tools/bench/results/recaption_study_<device>.json unless --out is given. Config fields are
overridden as in sora_jax.main: `--config.dit_train.lr=3e-4`.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import time

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARMS = ("short", "descriptive")
ATTRS = ("color", "shape", "motion")
ARM_FILE = "arm.json"
VAE_FILE = "recaption_study_vae.json"

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/tiny.py[:micro].")
flags.DEFINE_string("workdir", None, "Study folder: shared VAE, one sub-folder per arm.")
flags.DEFINE_enum("arm", "both", ["both", *ARMS], "Arm(s) to train and grade in this process.")
flags.DEFINE_bool("report", False, "Only merge <workdir>/<arm>/arm.json into the table + JSON.")
flags.DEFINE_integer("steps", None, "DiT training steps of each arm (default: the config's).")
flags.DEFINE_integer("num_prompts", None, "Evaluation prompts (default: config.sample's).")
flags.DEFINE_string("vae_workdir", "", "A trained VAE stage folder to share (default: train one).")
flags.DEFINE_integer("max_length", 0, "Text tokens for both arms; 0 = measured to fit.")
flags.DEFINE_float("descriptive_mix", 0.95, "Descriptive arm: fraction of long captions.")
flags.DEFINE_bool("unexpanded_eval", True, "Also grade the descriptive arm on short prompts.")
flags.DEFINE_integer("save_samples", 16, "Sample videos written per arm (mp4/gif + JSON).")
flags.DEFINE_string("compilation_cache_dir", "", "JAX cache; '' = <workdir>/jax_cache, 'none'.")
flags.DEFINE_string("out", "", "Merged JSON (default tools/bench/results/recaption_study_<d>).")
FLAGS = flags.FLAGS


# ----------------------------------------------------------------------------- provenance


def device_info() -> dict:
    import jax

    d = jax.devices()[0]
    kind = d.device_kind
    slug = "cpu" if d.platform == "cpu" else re.sub(r"[^a-z0-9]+", "_", kind.lower())
    slug = slug.replace("nvidia_", "").strip("_") or d.platform
    return {"platform": d.platform, "device_kind": kind, "device_count": jax.device_count(),
            "slug": slug, "host_cpus": os.cpu_count(), "machine": platform.machine()}  # fmt: skip


def versions() -> dict:
    import flax
    import jax
    import jaxlib
    import numpy as np

    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT,
                                    timeout=10).stdout.strip()  # fmt: skip
    try:
        commit, dirty = git("rev-parse", "HEAD") or None, bool(git("status", "--porcelain", "-uno"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "flax": flax.__version__, "numpy": np.__version__,
            "commit": commit, "uncommitted_changes": dirty}  # fmt: skip


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _dump(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)  # a concurrent --report never reads half a file


# ----------------------------------------------------------------------------- the two arms


@dataclasses.dataclass(frozen=True)
class Options:
    """What the study sets on top of the config (the command-line flags of the same names)."""

    workdir: str
    steps: int | None = None  # DiT steps of each arm; None = config.dit_train.steps
    num_prompts: int | None = None  # None = config.sample.num_prompts
    vae_workdir: str = ""  # a trained VAE stage to share; "" = train <workdir>/vae once
    max_length: int = 0  # text tokens of both arms; 0 = measured to fit every caption
    descriptive_mix: float = 0.95  # descriptive arm: fraction of long captions
    unexpanded_eval: bool = True  # also grade the descriptive arm on the short prompts
    save_samples: int = 16  # videos written per arm
    compilation_cache_dir: str = ""  # "" = <workdir>/jax_cache; "none" = off


def caption_probs(arm: str, mix: float) -> dict[str, float]:
    if arm == "short":
        return {"prompt": 1.0}
    if not 0.0 < mix <= 1.0:
        raise ValueError(f"descriptive_mix={mix} must be in (0, 1].")
    return {"caption": mix, "prompt": round(1.0 - mix, 6)} if mix < 1.0 else {"caption": 1.0}


def eval_prompts(config, n: int) -> tuple[list[dict], list[str], list[str]]:
    """(specs, short prompts, world-expanded prompts) of the evaluation suite."""
    from sora_jax import prompt_expansion
    from sora_jax.data import sources
    from sora_jax.data import world as world_lib

    world_cfg = sources.make_world(config).cfg
    specs = world_lib.prompt_suite(world_cfg, n, seed=int(config.sample.seed))
    short = [world_lib.describe(s, "short") for s in specs]
    expanded = prompt_expansion.PromptExpander("world", world_cfg=world_cfg)(short)
    return specs, short, expanded


def measure_max_length(config, extra_texts: list[str], num_clips: int = 4096) -> dict:
    """Token counts (special tokens included) of the world's captions of both kinds over
    `num_clips` random training clips, and of `extra_texts`; `max_length` fits them all."""
    import numpy as np

    from sora_jax.data import sources
    from sora_jax.data import world as world_lib
    from sora_jax.models import text as text_lib

    world = sources.make_world(config)
    files = text_lib.resolve_files(text_lib.TextConfig(**config.text.to_dict()))
    tok = text_lib.load_tokenizer(files.tokenizer, 1024)
    idx = np.random.default_rng(0).integers(0, len(world), num_clips)
    specs = [world.spec(int(i)) for i in idx]
    count = lambda texts: [int(sum(e.attention_mask)) for e in tok.encode_batch(texts)]
    lengths = {
        "prompt": max(count([world_lib.describe(s, "short") for s in specs])),
        "caption": max(count([world_lib.describe(s, "long") for s in specs])),
        "eval_prompts": max(count(extra_texts), default=0),
    }
    return {"tokens_max": lengths, "max_length": 8 * math.ceil(max(lengths.values()) / 8)}


def study_config(config, opts: Options, max_length: int):
    """The config both arms share: the study's steps, prompt count and text length."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        if opts.steps is not None:
            config.dit_train.steps = int(opts.steps)
        if opts.num_prompts is not None:
            config.sample.num_prompts = int(opts.num_prompts)
        config.text.max_length = int(max_length)
    return config


def arm_config(config, arm: str, opts: Options, vae_dir: str):
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.dit_train.caption_probs = caption_probs(arm, opts.descriptive_mix)
        config.dit_train.vae_workdir = vae_dir
    return config


def ensure_vae(config, opts: Options) -> dict:
    """The shared VAE stage: opts.vae_workdir, or <workdir>/vae trained once (under a file lock,
    so concurrent arm processes train it once and the later one waits)."""
    from sora_jax import recipe

    if opts.vae_workdir:
        if not os.path.exists(os.path.join(opts.vae_workdir, "latent_stats.json")):
            raise FileNotFoundError(
                f"--vae_workdir={opts.vae_workdir} holds no latent_stats.json; expected a "
                "trained VAE stage folder (e.g. <workdir>/vae of a tiny run)."
            )
        return {"workdir": os.path.abspath(opts.vae_workdir), "trained_here": False}
    vae_dir = os.path.join(opts.workdir, "vae")
    with open(os.path.join(opts.workdir, "vae.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info_path = os.path.join(vae_dir, VAE_FILE)
        if os.path.exists(info_path):
            with open(info_path) as f:
                return json.load(f)
        start = time.time()
        result = recipe.run_vae(config, opts.workdir)
        info = {"workdir": os.path.abspath(vae_dir), "trained_here": True,
                "steps": int(config.vae_train.steps), "wall_s": round(time.time() - start, 1),
                **result}  # fmt: skip
        _dump(info_path, info)
        return info


def grade(videos, specs: list[dict], texts: list[str]) -> dict:
    """grade_many's accuracies plus each prompt's verdicts (for paired comparisons)."""
    from sora_jax import evaluate

    per_prompt = [{"text": t, **evaluate.grade(v, s)} for v, s, t in zip(videos, specs, texts)]
    return {"grader": evaluate.accuracies(per_prompt), "per_prompt": per_prompt}


def evaluate_arm(config, arm: str, arm_dir: str, opts: Options) -> dict:
    """Samples and grades the suite: short prompts ('as_typed'), or for the descriptive arm the
    expanded ones ('expanded', its result) and optionally the short ones too."""
    from sora_jax import recipe, sample_run
    from sora_jax import sample as sample_lib

    scfg = config.sample
    specs, short, expanded = eval_prompts(config, int(scfg.num_prompts))
    variants = {"as_typed": short} if arm == "short" else {"expanded": expanded}
    if arm == "descriptive" and opts.unexpanded_eval:
        variants["as_typed"] = short
    gen = sample_lib.Generator(config, arm_dir)
    evals = {}
    for name, texts in variants.items():
        start = time.time()
        videos = recipe.generate_batched(gen, scfg, texts)
        evals[name] = {**grade(videos, specs, texts), "wall_s": round(time.time() - start, 1)}
        if name == next(iter(variants)):  # the arm's own condition
            for i in range(min(opts.save_samples, len(texts))):
                meta = {"prompt": short[i], "text": texts[i], "arm": arm, "spec": specs[i]}
                stem = os.path.join(arm_dir, "samples", f"{i:03d}")
                sample_run.save_video(stem, videos[i], config.world.fps, meta)
    return evals


def run_arm(config, arm: str, opts: Options, vae: dict, lengths: dict) -> dict:
    """Trains and grades one arm; writes and returns <workdir>/<arm>/arm.json."""
    from sora_jax import recipe

    cfg = arm_config(config, arm, opts, vae["workdir"])
    arm_dir = os.path.join(opts.workdir, arm)
    start = time.time()
    dit = recipe.run_dit(cfg, arm_dir)
    dit["wall_s"] = round(time.time() - start, 1)
    evals = evaluate_arm(cfg, arm, arm_dir, opts)
    primary = "as_typed" if arm == "short" else "expanded"
    result = {
        "arm": arm, "date": _now(), "device": device_info(), "versions": versions(),
        "caption_probs": dict(cfg.dit_train.caption_probs),
        "expand_prompt": None if arm == "short" else "world",
        "steps": int(cfg.dit_train.steps), "num_prompts": int(cfg.sample.num_prompts),
        "text_max_length": int(cfg.text.max_length), "caption_tokens": lengths,
        "config_overrides": [a for a in sys.argv[1:] if a.startswith("--config.")],
        "options": dataclasses.asdict(opts), "argv": sys.argv[1:], "vae": vae, "dit": dit,
        "primary": primary, "evals": evals, "grader": evals[primary]["grader"],
        "wall_s": round(time.time() - start, 1), "config": cfg.to_dict(),
    }  # fmt: skip
    _dump(os.path.join(arm_dir, ARM_FILE), result)
    logging.info("arm %s: %s", arm, result["grader"])
    return result


def run_arms(config, arms: tuple[str, ...], opts: Options) -> dict[str, dict]:
    """The shared setup (text length, VAE, compilation cache), then each arm in turn."""
    import jax

    os.makedirs(opts.workdir, exist_ok=True)
    if opts.compilation_cache_dir != "none":
        # The arms compile identical programs (captions are data): the second one, or a second
        # process, reuses the first one's executables.
        cache = opts.compilation_cache_dir or os.path.join(opts.workdir, "jax_cache")
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    n = int(opts.num_prompts or config.sample.num_prompts)
    _, short, expanded = eval_prompts(config, n)
    lengths = measure_max_length(config, short + expanded)
    if 0 < opts.max_length < lengths["max_length"]:
        logging.warning("--max_length=%d truncates captions of up to %s tokens",
                        opts.max_length, lengths["tokens_max"])  # fmt: skip
    config = study_config(config, opts, opts.max_length or lengths["max_length"])
    logging.info("caption tokens %s; text.max_length=%d", lengths, config.text.max_length)
    vae = ensure_vae(config, opts)
    return {arm: run_arm(config, arm, opts, vae, lengths) for arm in arms}


# ----------------------------------------------------------------------------- the report


def _acc(per_prompt: list[dict], attr: str) -> list[float]:
    return [float(r[attr]) for r in per_prompt if r[attr] is not None]


def _mean_se(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    m = sum(xs) / len(xs)
    var = sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1)
    return m, math.sqrt(var / len(xs))


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def _check_same_setup(arms: dict[str, dict]) -> None:
    """The arms must differ only in captions: the same config otherwise (prompts, seeds, steps,
    text length, VAE)."""
    short, desc = (_flatten(arms[a]["config"]) for a in ARMS)
    diff = sorted(k for k in set(short) | set(desc) if short.get(k) != desc.get(k)
                  and not k.startswith("dit_train.caption_probs."))  # fmt: skip
    if diff:
        raise ValueError(f"the two arms were run with different configs in {diff}; re-run one "
                         "arm so that only the captions differ.")  # fmt: skip


def report(workdir: str, out: str = "") -> dict:
    """Merges the arms' JSONs into the table and writes it to `out` (default: per device)."""
    arms = {}
    for arm in ARMS:
        path = os.path.join(workdir, arm, ARM_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing; run --arm={arm} first.")
        with open(path) as f:
            arms[arm] = json.load(f)
    _check_same_setup(arms)
    columns = {"short": arms["short"]["evals"]["as_typed"],
               "descriptive+expand": arms["descriptive"]["evals"]["expanded"]}  # fmt: skip
    if "as_typed" in arms["descriptive"]["evals"]:
        columns["descriptive, short prompts"] = arms["descriptive"]["evals"]["as_typed"]
    table, diff = {}, {}
    for attr in ATTRS:
        table[attr] = {c: _mean_se(_acc(e["per_prompt"], attr)) for c, e in columns.items()}
        a, b = (_acc(columns[c]["per_prompt"], attr) for c in ("short", "descriptive+expand"))
        diff[attr] = _mean_se([y - x for x, y in zip(a, b)])  # paired: same prompts and seeds
    short = arms["short"]
    merged = {
        "study": "recaption", "date": _now(), "device": short["device"],
        "versions": short["versions"], "workdir": os.path.abspath(workdir),
        "config_overrides": short["config_overrides"], "steps": short["steps"],
        "num_prompts": short["num_prompts"], "text_max_length": short["text_max_length"],
        "caption_tokens": short["caption_tokens"], "vae": short["vae"],
        "wall_s": {a: arms[a]["wall_s"] for a in ARMS},
        "arms": {a: {k: arms[a][k] for k in ("caption_probs", "expand_prompt", "grader", "dit",
                                             "date", "device", "argv")}  # fmt: skip
                 for a in ARMS},
        "descriptive_unexpanded_grader": arms["descriptive"]["evals"].get("as_typed", {})
        .get("grader"),
        "table": {attr: {c: {"acc": m, "se": s} for c, (m, s) in row.items()}
                  for attr, row in table.items()},
        "difference_descriptive_minus_short": {a: {"acc": m, "se": s}
                                               for a, (m, s) in diff.items()},
        "per_prompt": {c: e["per_prompt"] for c, e in columns.items()},
        "config": short["config"],
    }  # fmt: skip
    print_table(merged, list(columns))
    slug = short["device"]["slug"]
    out = out or os.path.join(ROOT, "tools", "bench", "results", f"recaption_study_{slug}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    _dump(out, merged)
    print(f"wrote {out}")
    return merged


def print_table(merged: dict, columns: list[str]) -> None:
    print(f"recaptioning study on {merged['device']['device_kind']}: {merged['steps']} DiT "
          f"steps, {merged['num_prompts']} prompts, text max_length "
          f"{merged['text_max_length']}")  # fmt: skip
    print(f"{'accuracy ± s.e.':<16}" + "".join(f"{c:>28}" for c in columns)
          + f"{'desc+expand − short':>24}")  # fmt: skip
    for attr, row in merged["table"].items():
        cells = "".join(f"{row[c]['acc']:.3f} ± {row[c]['se']:.3f}".rjust(28) for c in columns)
        d = merged["difference_descriptive_minus_short"][attr]
        print(f"{attr:<16}{cells}" + f"{d['acc']:+.3f} ± {d['se']:.3f}".rjust(24))
    arms = merged["arms"]
    print("DiT final loss: " + ", ".join(f"{a} {arms[a]['dit']['final_loss']:.4f}" for a in arms))
    print("wall s: " + ", ".join(f"{a} {w}" for a, w in merged["wall_s"].items()))


# ----------------------------------------------------------------------------- entry


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir is required.")
    if FLAGS.config is None and not FLAGS.report:
        raise app.UsageError("--config is required to run an arm.")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-checkpoint chatter
    names = ("steps", "num_prompts", "vae_workdir", "max_length", "descriptive_mix",
             "unexpanded_eval", "save_samples", "compilation_cache_dir")  # fmt: skip
    opts = Options(workdir=FLAGS.workdir, **{k: getattr(FLAGS, k) for k in names})
    try:
        if not FLAGS.report:
            run_arms(FLAGS.config, ARMS if FLAGS.arm == "both" else (FLAGS.arm,), opts)
        if FLAGS.report or FLAGS.arm == "both":
            report(FLAGS.workdir, FLAGS.out)
    except (ValueError, FileNotFoundError) as e:  # one sentence, no trace
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)

"""sora_jax entry point. Intentionally short: the logic lives in libraries (sora_jax.recipe,
sora_jax.sample) that can be imported and tested, e.g. from a notebook.

  python -m sora_jax.main --config=configs/tiny.py --workdir=/tmp/sora_tiny
  python -m sora_jax.main --config=configs/tiny.py --workdir=/tmp/sora_tiny --mode=sample \
      --prompt="a red circle moving left"
"""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/tiny.py[:args].")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples.")
flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "sample"],
    "train: run the config's stages (vae,dit,sample); sample: generate from a workdir.",
)
flags.DEFINE_string("stages", None, "Comma-separated subset of stages to run (default: config).")
flags.DEFINE_multi_string("prompt", [], "Prompt(s) for --mode=sample.")
flags.DEFINE_integer("num_frames", None, "Frames to generate (1+4k; 1 = image).")
flags.DEFINE_integer("height", None, "Output height in pixels.")
flags.DEFINE_integer("width", None, "Output width in pixels.")
flags.DEFINE_integer("steps", None, "Sampler steps.")
flags.DEFINE_float("guidance", None, "Classifier-free guidance scale.")
flags.DEFINE_integer("seed", None, "Sampling seed.")
flags.DEFINE_string("sampler", None, "Sampler name (euler, heun, dpmpp_2m).")
flags.DEFINE_string("negative_prompt", "", "Negative prompt for guidance.")
FLAGS = flags.FLAGS


def _sample(config, workdir: str) -> None:
    from sora_jax import sample as sample_lib

    if not FLAGS.prompt:
        raise app.UsageError("--mode=sample needs at least one --prompt.")
    s = config.sample
    settings = {
        "num_frames": FLAGS.num_frames or s.num_frames,
        "height": FLAGS.height or s.height,
        "width": FLAGS.width or s.width,
        "steps": FLAGS.steps or s.steps,
        "guidance": s.guidance if FLAGS.guidance is None else FLAGS.guidance,
        "sampler": FLAGS.sampler or s.sampler,
        "seed": s.seed if FLAGS.seed is None else FLAGS.seed,
        "negative_prompt": FLAGS.negative_prompt,
    }
    gen = sample_lib.Generator(config, workdir)
    videos = gen.generate(FLAGS.prompt, **settings)
    fps = config.world.fps
    for i, (prompt, video) in enumerate(zip(FLAGS.prompt, videos)):
        stem = os.path.join(workdir, "samples", f"prompt_{settings['seed']}_{i:02d}")
        paths = sample_lib.save_video(stem, video, fps, {"prompt": prompt, **settings})
        print(json.dumps(paths))


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.config is None or FLAGS.workdir is None:
        raise app.UsageError("--config and --workdir are required.")
    sys.path.insert(0, os.getcwd())
    logging.getLogger().setLevel(logging.INFO)
    try:
        _run(FLAGS.config, FLAGS.workdir)
    except (ValueError, FileNotFoundError) as e:  # bad input: one sentence, no stack trace
        sys.exit(f"error: {e}")


def _run(config, workdir: str) -> None:
    if FLAGS.mode == "sample":
        _sample(config, workdir)
        return
    from sora_jax import recipe

    summary = recipe.run(config, workdir, FLAGS.stages)
    print(json.dumps({k: v for k, v in summary.items() if k != "sample"}, indent=1))
    if "sample" in summary:
        print(json.dumps({"grader": summary["sample"]["grader"]}, indent=1))


if __name__ == "__main__":
    app.run(main)

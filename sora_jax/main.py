r"""sora_jax entry point. Intentionally short: the logic lives in libraries (sora_jax.recipe,
sora_jax.sample) that can be imported and tested, e.g. from a notebook.

  python -m sora_jax.main --config=configs/tiny.py --workdir=/tmp/sora_tiny
  python -m sora_jax.main --config=configs/tiny.py --workdir=/tmp/sora_tiny --mode=sample \
      --prompt="a red circle moving left"
  python -m sora_jax.main --config=configs/world.py --workdir=/tmp/world --mode=eval
"""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file(
    "config", None, "Config file and arguments, e.g. configs/tiny.py or configs/world.py:micro."
)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, samples, eval files.")
flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "sample", "eval"],
    "train: run the config's stages; sample: generate from a trained workdir; "
    "eval: grade every generation mode (sora_jax/eval_suite.py).",
)
flags.DEFINE_string("stages", None, "Stages to run, e.g. vae,dit or eval (default: the config's).")
# Multi-process runs (one process per host): all three, or none for a single process.
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
# --mode=sample (sora_jax/sample.py); unset values come from the config's `sample` section.
flags.DEFINE_multi_string("prompt", [], "A prompt to generate from")
flags.DEFINE_integer("num_frames", None, "Frames to generate: 1 + 4k (1 = an image).")
flags.DEFINE_integer("height", None, "Output height in pixels (a multiple of the VAE's factor).")
flags.DEFINE_integer("width", None, "Output width in pixels (a multiple of the VAE's factor).")
flags.DEFINE_integer("steps", None, "Sampler steps.")
flags.DEFINE_float("guidance", None, "Classifier-free guidance scale (1 = no guidance).")
flags.DEFINE_integer("seed", None, "Sampling seed; sample i of a call uses seed + i.")
flags.DEFINE_string("sampler", None, "Sampler: euler, heun or dpmpp_2m.")
flags.DEFINE_string("negative_prompt", "", "Prompt guided away from (the unconditional branch).")
# Generation modes (sora_jax/modes.py): every one from the same model.
flags.DEFINE_string("prompts_file", None, "A text file with one prompt per line (# comments).")
flags.DEFINE_multi_string("image", [], "Image(s) to animate: the first frame (two: first and last)")
flags.DEFINE_string("image_position", None, "Where one --image goes: first | last (two: both).")
flags.DEFINE_string("video", None, "Input video for --extend/--keep_frames/--connect_video/edit.")
flags.DEFINE_string("extend", None, "Extend --video forward | backward by --seconds.")
flags.DEFINE_float("seconds", None, "Seconds to generate for --extend / --connect_video.")
flags.DEFINE_string("keep_frames", None, "Pixel-frame times to keep, e.g. 0,8,16 (infill).")
flags.DEFINE_string("connect_video", None, "Connect --video to this video (--seconds between).")
flags.DEFINE_bool("loop", False, "Generate a seamless loop (from --image or from text).")
flags.DEFINE_float("edit_strength", None, "SDEdit --video with the prompt: noise level in [0, 1].")
flags.DEFINE_float("fps", None, "Output frames per second (default: the input's or the world's).")
flags.DEFINE_string("guidance_interval", None, "Guide only for t in lo,hi (default 0,1).")
flags.DEFINE_float("shift", None, "Flow time shift for sampling (default: config.flow.shift).")
flags.DEFINE_float(
    "autoguidance", 1.0, "Autoguidance scale (guide away from --autoguide_step's DiT; 1 = off)."
)
flags.DEFINE_integer(
    "autoguide_step", 0, "The workdir's earlier DiT checkpoint that guides (--autoguidance)."
)
flags.DEFINE_bool(
    "factorized", False, "Text -> video as text -> image -> video (the first frame sampled first)."
)
flags.DEFINE_string("expand_prompt", None, "Expand prompts first: world | llm.")
flags.DEFINE_string("expand_model", None, "Local model folder for --expand_prompt=llm.")
FLAGS = flags.FLAGS


def _ints(text: str | None, flag: str) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(v) if flag == "guidance_interval" else int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--{flag}={text!r} must be comma-separated numbers.") from None


def _prompts() -> tuple[str, ...]:
    if not FLAGS.prompts_file:
        return tuple(FLAGS.prompt)
    if FLAGS.prompt:
        raise ValueError("pass prompts with --prompt or --prompts_file, not both.")
    if not os.path.isfile(FLAGS.prompts_file):
        raise ValueError(f"--prompts_file={FLAGS.prompts_file} does not exist.")
    with open(FLAGS.prompts_file) as f:  # one prompt a line; blank lines and # comments skipped
        return tuple(ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#"))


def _sample(config, workdir: str) -> None:
    from sora_jax import modes, sample_run

    req = modes.Request(
        prompts=_prompts(),
        image=tuple(FLAGS.image),
        image_position=FLAGS.image_position or "",
        video=FLAGS.video or "",
        extend=FLAGS.extend or "",
        seconds=FLAGS.seconds,
        keep_frames=_ints(FLAGS.keep_frames, "keep_frames"),
        connect_video=FLAGS.connect_video or "",
        loop=FLAGS.loop,
        edit_strength=FLAGS.edit_strength,
        num_frames=FLAGS.num_frames,
        height=FLAGS.height,
        width=FLAGS.width,
        fps=FLAGS.fps,
    )
    req.mode()  # conflicting flags fail here, before any weights load
    interval = _ints(FLAGS.guidance_interval, "guidance_interval") or (0.0, 1.0)
    if len(interval) != 2:
        raise ValueError(f"--guidance_interval={FLAGS.guidance_interval!r} must be lo,hi.")
    s = config.sample
    settings = {
        "steps": FLAGS.steps or s.steps,
        "guidance": s.guidance if FLAGS.guidance is None else FLAGS.guidance,
        "sampler": FLAGS.sampler or s.sampler,
        "seed": s.seed if FLAGS.seed is None else FLAGS.seed,
        "negative_prompt": FLAGS.negative_prompt,
        "guidance_interval": interval,
        "shift": FLAGS.shift,
        "autoguidance": FLAGS.autoguidance,
        "autoguide_step": FLAGS.autoguide_step,
        "factorized": FLAGS.factorized,
    }
    req, notes = _expand(config, req)
    config_args = [a for a in sys.argv[1:] if a.startswith("--config")]
    for paths in sample_run.run_request(
        config, workdir, req, settings, config_args=config_args, prompt_notes=notes
    ):
        print(json.dumps(paths))


def _expand(config, req):
    """--expand_prompt: the model sees expanded prompts; the sidecar keeps both."""
    if FLAGS.expand_model and FLAGS.expand_prompt != "llm":
        raise ValueError("--expand_model applies to --expand_prompt=llm only.")
    if not FLAGS.expand_prompt:
        return req, None
    import dataclasses

    from sora_jax import prompt_expansion
    from sora_jax.data import sources

    expander = prompt_expansion.PromptExpander(
        FLAGS.expand_prompt,
        model_dir=FLAGS.expand_model or "",
        world_cfg=sources.make_world(config).cfg,
    )
    expanded = expander(list(req.prompts))
    notes = [
        {"prompt": p, "expanded_prompt": e, "expand_prompt": FLAGS.expand_prompt,
         "expand_model": FLAGS.expand_model or ""}
        for p, e in zip(req.prompts, expanded)
    ]  # fmt: skip
    return dataclasses.replace(req, prompts=tuple(expanded)), notes


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.config is None or FLAGS.workdir is None:
        raise app.UsageError("--config and --workdir are required.")
    sys.path.insert(0, os.getcwd())
    logging.getLogger().setLevel(logging.INFO)
    from sora_jax import config_check
    from sora_jax.train import loop, runtime

    try:
        config_check.check(FLAGS.config)  # a bad setting fails here, before any work
    except ValueError as e:
        sys.exit(f"error: {e}")
    runtime.use_compile_cache(FLAGS.config, FLAGS.workdir)  # before the first compile
    runtime.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    try:
        _run(FLAGS.config, FLAGS.workdir)
    except (ValueError, FileNotFoundError, loop.NonFiniteError) as e:  # one sentence, no trace
        sys.exit(f"error: {e}")


def _run(config, workdir: str) -> None:
    if FLAGS.mode == "sample":
        _sample(config, workdir)
        return
    if FLAGS.mode == "eval":
        from sora_jax import eval_suite

        summary = eval_suite.run(config, workdir)
        keys = ("sets", "val_loss", "vae", "targets")
        print(json.dumps({k: v for k, v in summary.items() if k in keys}, indent=1))
        return
    from sora_jax import recipe

    summary = recipe.run(config, workdir, FLAGS.stages)
    print(json.dumps({k: v for k, v in summary.items() if k != "sample"}, indent=1))
    if "sample" in summary:
        print(json.dumps({"grader": summary["sample"]["grader"]}, indent=1))


if __name__ == "__main__":
    app.run(main)

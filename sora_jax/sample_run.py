"""Generation requests from the command line, and the files each sample writes.

Command line (every flag: ``python -m sora_jax.main --helpfull``; conflicting flags fail with one
sentence), e.g. with ``--config=configs/tiny.py --workdir=DIR --mode=sample`` and:

  --prompt="a red circle moving left" [--prompt=...] | --prompts_file=FILE   text -> video
  --num_frames=1                                     text -> image (png too)
  --image=first.png [--image=last.png] [--image_position=last]   image -> video
  --image=a.png --image=b.png --keep_frames=0,16     images at pixel-frame times
  --video=in.mp4 --extend=forward|backward --seconds=2   extend a video
  --video=in.mp4 --keep_frames=0,8,16                keep those frames, generate the rest
  --video=a.mp4 --connect_video=b.mp4 --seconds=1    connect two videos
  --loop [--image=first.png]                         a seamless loop
  --video=in.mp4 --edit_strength=0.6                 SDEdit with the (new) prompt
  --expand_prompt=world|llm [--expand_model=DIR]     expand short prompts first

Each sample writes ``<mode>_<seed>_<hash>.mp4/.gif(/.png)`` and a JSON sidecar with every
setting, the inputs' sha256, the checkpoint steps and the ``command`` that reproduces it alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shlex
from collections.abc import Sequence

import ml_collections
import numpy as np

from sora_jax import modes
from sora_jax.data import video_io
from sora_jax.sample import Generator, check_settings, temporal_factor


def _file_record(path: str) -> dict:
    with open(path, "rb") as f:
        return {"path": os.path.abspath(path), "sha256": hashlib.sha256(f.read()).hexdigest()}


def _command(req: modes.Request, prompt: str, seed: int, settings: dict, plan_frames: int,
             config_args: Sequence[str], workdir: str) -> str:  # fmt: skip
    """The command line that reproduces one sample alone (its own prompt and seed)."""
    args = ["python", "-m", "sora_jax.main", *config_args, f"--workdir={workdir}"]
    args += ["--mode=sample", f"--prompt={prompt}", f"--seed={seed}"]
    for k in ("steps", "guidance", "sampler", "negative_prompt", "shift"):
        args.append(f"--{k}={settings[k]}")
    args.append("--guidance_interval={},{}".format(*settings["guidance_interval"]))
    if float(settings.get("autoguidance", 1.0)) != 1.0:
        args += [f"--autoguidance={settings['autoguidance']}",
                 f"--autoguide_step={settings['autoguide_step']}"]  # fmt: skip
    if settings.get("factorized"):
        args.append("--factorized")
    args += [f"--image={p}" for p in req.image]
    for k in ("image_position", "video", "extend", "seconds", "connect_video", "edit_strength"):
        if getattr(req, k) not in ("", None):
            args.append(f"--{k}={getattr(req, k)}")
    if req.keep_frames:
        args.append("--keep_frames=" + ",".join(map(str, req.keep_frames)))
    if req.loop:
        args.append("--loop")
    if not req.video:
        args.append(f"--num_frames={plan_frames}")
    args += [f"--height={req.height}"] if req.height else []
    args += [f"--width={req.width}"] if req.width else []
    args += [f"--fps={req.fps}"] if req.fps else []
    return " ".join(shlex.quote(a) for a in args)


def run_request(
    config: ml_collections.ConfigDict,
    workdir: str,
    req: modes.Request,
    settings: dict,
    *,
    out_dir: str | None = None,
    config_args: Sequence[str] = (),
    generator: Generator | None = None,
    prompt_notes: Sequence[dict] | None = None,
) -> list[dict]:
    """Generates what ``req`` asks for (one video per prompt) and writes files + JSON sidecars.

    ``settings``: steps, guidance, sampler, seed, negative_prompt, guidance_interval, shift
    (None = the config's), and optionally autoguidance, autoguide_step and factorized (text ->
    video only). Inputs are checked and read before any weights are loaded.
    ``prompt_notes``: per prompt, entries that override the sidecar's (e.g. the user's prompt
    and its expansion, when ``req.prompts`` are expanded ones). Returns the written paths.
    """
    s = config.sample
    tf = temporal_factor(config)
    plan, fps = modes.build_plan(
        req, tf=tf, size=(s.height, s.width), num_frames=s.num_frames, fps=config.world.fps
    )
    check_settings(**settings)
    if settings.get("factorized") and plan.mode != "t2v":
        raise ValueError(
            f"--factorized samples text -> video as text -> image -> video; this request is "
            f"{plan.mode} (it needs no input files and more than one frame)."
        )
    sf = 2 ** (len(config.vae.channel_mults) - 1)
    if plan.height % sf or plan.width % sf:
        raise ValueError(
            f"frame size {plan.height}x{plan.width} is not supported; expected multiples of {sf}."
        )
    gen = generator or Generator(config, workdir)
    settings = {**settings, "shift": config.flow.shift if settings.get("shift") is None else
                settings["shift"]}  # fmt: skip
    settings["guidance_interval"] = tuple(float(v) for v in settings["guidance_interval"])
    prompts, seed = list(req.prompts), int(settings["seed"])
    if plan.mode == "loop" and plan.canvas is None:  # loop from text: its first frame from t2i
        image_plan = modes.text_to_video(1, plan.height, plan.width, tf=tf)
        images = gen.sample(prompts, image_plan, **settings).videos[:, 0]
        jobs = [([p], modes.loop(img, plan.num_frames, tf=tf), seed + i)
                for i, (p, img) in enumerate(zip(prompts, images))]  # fmt: skip
    else:
        jobs = [(prompts, plan, seed)]
    inputs = {"image": [_file_record(p) for p in req.image]}
    for k in ("video", "connect_video"):
        if getattr(req, k):
            inputs[k] = _file_record(getattr(req, k))
    out_dir = out_dir or os.path.join(workdir, "samples")
    written, notes = [], list(prompt_notes or [{}] * len(prompts))
    for job_prompts, job_plan, job_seed in jobs:
        out = gen.sample(job_prompts, job_plan, **{**settings, "seed": job_seed})
        for prompt, video, sample_seed in zip(job_prompts, out.videos, out.seeds):
            meta = {
                "prompt": prompt,
                "seed": sample_seed,
                "mode": job_plan.mode,
                "num_frames": int(video.shape[0]),
                "height": int(video.shape[1]),
                "width": int(video.shape[2]),
                "fps": float(fps),
                **{k: v for k, v in settings.items() if k != "seed"},
                "latent_frames": int(out.mask.shape[0]),
                "given_latent_frames": [int(i) for i in np.flatnonzero(out.mask)],
                "start_t": job_plan.start_t,
                "plan": job_plan.info,
                "inputs": inputs,
                "request": {k: v for k, v in dataclasses.asdict(req).items() if k != "prompts"},
                "workdir": os.path.abspath(workdir),
                "config": list(config_args),
                "checkpoint_steps": getattr(gen, "checkpoint_steps", {}),
                "command": _command(
                    req, prompt, sample_seed, settings, int(video.shape[0]), config_args, workdir
                ),
                "cwd": os.getcwd(),
                **notes[len(written)],
            }
            digest = hashlib.sha1(prompt.encode()).hexdigest()[:6]
            stem = os.path.join(out_dir, f"{job_plan.mode}_{sample_seed}_{digest}")
            written.append(save_video(stem, video, fps, meta))
    return written


def save_video(path_stem: str, video: np.ndarray, fps: float, meta: dict | None = None) -> dict:
    """Writes `<stem>.mp4`, `<stem>.gif` (and `<stem>.png` for 1 frame) plus a JSON sidecar."""
    os.makedirs(os.path.dirname(path_stem) or ".", exist_ok=True)
    paths = {"gif": path_stem + ".gif"}
    if video_io.has_mp4():
        paths["mp4"] = path_stem + ".mp4"
        video_io.write_mp4(paths["mp4"], video, fps)
    video_io.write_gif(paths["gif"], video, fps)
    if video.shape[0] == 1:
        paths["png"] = path_stem + ".png"
        video_io.write_png(paths["png"], video[0])
    if meta is not None:
        with open(path_stem + ".json", "w") as f:
            json.dump({**meta, "files": paths}, f, indent=1)
    logging.info("wrote %s", paths.get("mp4", paths["gif"]))
    return paths

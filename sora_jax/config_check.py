"""Start-up checks of a config's settings: a bad value fails before any stage runs, in one
sentence naming the field, the value and what was expected, instead of hours later or never
(a negative step count trains nothing; `flow.shift` 0 trains every step at t = 0; an EMA decay
above 1 diverges quietly).

This covers the scalar settings of the training stages, the data pipeline, the text encoder,
the flow, sampling and the evaluation suite, and the weights of the caption and conditioning
mixtures. Values whose checks need more than the config stay with the code that owns them:
bucket tables (sora_jax/data/buckets.py), model shapes (DiTConfig, VAEConfig), the world's
vocabulary (sora_jax/data/world.py), the mixtures' mode names (sora_jax/diffusion/conditioning.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from sora_jax import evaluate
from sora_jax.diffusion import samplers


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# (predicate, what is expected), by kind of setting.
_POS_INT = (lambda v: _int(v) and v >= 1, "an int >= 1")
_NONNEG_INT = (lambda v: _int(v) and v >= 0, "an int >= 0")
_POSITIVE = (lambda v: _number(v) and v > 0, "a finite number > 0")
_NONNEG = (lambda v: _number(v) and v >= 0, "a finite number >= 0")
_FRACTION = (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]")
_DECAY = (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)")
_TIME = (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]")
_BOOL = (lambda v: isinstance(v, bool), "True or False")
# The Generator samples the rectified-flow DiT (sora_jax/sample.py check_settings).
_FLOW_SAMPLER = (lambda v: v in samplers.FLOW_SAMPLERS, f"one of {samplers.FLOW_SAMPLERS}")

# The loop, optimiser and checkpoint settings of every training stage (configs/common.py
# train_config), then each stage's own.
_TRAIN = {
    "steps": _POS_INT,
    "lr": _POSITIVE,
    "lr_warmup_steps": _NONNEG_INT,
    "lr_min_ratio": _FRACTION,
    "lr_schedule": (lambda v: v in ("cosine", "constant"), "'cosine' or 'constant'"),
    "b1": _DECAY,
    "b2": _DECAY,
    "adam_eps": _POSITIVE,
    "weight_decay": _NONNEG,
    "grad_clip_norm": _NONNEG,
    "ema_decay": _DECAY,
    "nonfinite_stop_steps": _NONNEG_INT,
    "log_every_steps": _POS_INT,
    "checkpoint_every_steps": _POS_INT,
    "keep_checkpoints": _POS_INT,
    "keep_every_steps": _NONNEG_INT,
    "max_train_seconds": _NONNEG,
    "precompile_threads": _POS_INT,
    "profile_steps": (
        lambda v: len(v) == 0 or (len(v) == 2 and all(map(_int, v)) and 0 < v[0] < v[1]),
        "() or (a, b) with 0 < a < b",
    ),
}
_DATA_SOURCES = ("world", "array_record", "tfds")  # sora_jax/data/sources.py
_LOSS_WEIGHTS = ("l1_weight", "l2_weight", "ssim_weight", "grad_loss_weight", "kl_weight",
                 "disc_weight", "perceptual_weight")  # fmt: skip
_SECTIONS = {
    "vae_train": {
        **_TRAIN,
        **dict.fromkeys(_LOSS_WEIGHTS, _NONNEG),
        "eval_every_steps": _NONNEG_INT,
        "eval_clips": _POS_INT,
        "eval_occlusion_clips": _NONNEG_INT,
        "first_frame_weight": _NONNEG,
        "latent_noise": _NONNEG,
        "eval_latent_noise": _NONNEG,
    },
    "dit_train": {
        **_TRAIN,
        "caption_dropout": _FRACTION,
        "sample_every_steps": _NONNEG_INT,
        "sample_num_prompts": _POS_INT,
        "sample_num_occlusion": _NONNEG_INT,
        "sample_steps": _POS_INT,
        "sample_guidance": _NONNEG,
        "latent_cache_clips": _NONNEG_INT,
        "latent_cache_refresh_steps": _NONNEG_INT,
        "latent_cache_refresh_clips": _NONNEG_INT,
        "latent_cache_render_workers": _NONNEG_INT,
        "image_text_length": _NONNEG_INT,  # 0 = text.max_length
    },
    "data": {
        "source": (lambda v: v in _DATA_SOURCES, f"one of {_DATA_SOURCES}"),
        "num_threads": _POS_INT,
        "num_workers": _NONNEG_INT,
        "max_retries": _NONNEG_INT,
        "max_crop_fraction": _FRACTION,
        "max_upscale": _POSITIVE,
        "target_fps": _NONNEG,  # 0 = every source frame
        "token_budget": _NONNEG_INT,
    },
    "text": {"max_length": _POS_INT},
    "flow": {
        # SD3's time shift t -> s t / (1 + (s - 1) t): s > 0; 1 leaves the times as drawn.
        "shift": _POSITIVE,
        "logit_mean": (_number, "a finite number"),
        "logit_std": _POSITIVE,
    },
    "sample": {
        "steps": _POS_INT,
        "guidance": _NONNEG,
        "batch_size": _POS_INT,
        "num_frames": _POS_INT,
        "height": _POS_INT,
        "width": _POS_INT,
        "seed": (_int, "an int"),
        "sampler": _FLOW_SAMPLER,
        "autoguidance": _NONNEG,  # 1 = off
        "autoguide_step": _NONNEG_INT,
        "factorized": _BOOL,  # text -> image -> video
    },
    "eval": {
        "steps": _POS_INT,
        "guidance": _NONNEG,
        "batch_size": _POS_INT,
        "num_prompts": _POS_INT,
        "num_per_set": _POS_INT,
        "occlusion_prompts": _POS_INT,
        "modes_per_set": _POS_INT,
        "edit_strength": _TIME,
        "shift": _NONNEG,  # 0 = flow.shift
        "val_clips": _POS_INT,
        "threads": _POS_INT,
        "seed": (_int, "an int"),
        "val_timesteps": (lambda v: all(_TIME[0](t) for t in v), "times in (0, 1]"),
        "sampler": _FLOW_SAMPLER,
        "autoguidance": _NONNEG,
        "autoguide_step": _NONNEG_INT,
        "factorized": _BOOL,
    },
}


def _weights(v: Any) -> bool:
    """A mapping of names to weights >= 0 with a positive sum."""
    if not isinstance(v, Mapping) or not v:
        return False
    w = list(v.values())
    return all(_number(x) and x >= 0 for x in w) and sum(w) > 0


_MAPPINGS = {
    ("dit_train", "caption_probs"): "caption kinds to weights >= 0 with a positive sum",
    ("flow", "cond_mixture"): "conditioning modes to weights >= 0 with a positive sum",
}


def _check(name: str, value: Any, rule: tuple[Callable[[Any], bool], str]) -> None:
    ok, expected = rule
    try:
        good = bool(ok(value))
    except TypeError:  # e.g. a string where numbers were expected
        good = False
    if not good:
        raise ValueError(f"config.{name}={value!r} is not valid; expected {expected}.")


def check(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError (one sentence) at the first bad setting; sections or fields a config
    does not have are skipped (each config holds the stages it runs)."""
    if "seed" in config:
        _check("seed", config.seed, (_int, "an int"))
    for section, rules in _SECTIONS.items():
        cfg = config.get(section)
        if cfg is None:
            continue
        for key, rule in rules.items():
            if key in cfg:
                _check(f"{section}.{key}", cfg[key], rule)
    for (section, key), expected in _MAPPINGS.items():
        cfg = config.get(section)
        if cfg is not None and key in cfg and cfg[key] is not None:
            _check(f"{section}.{key}", dict(cfg[key]) if cfg[key] else {}, (_weights, expected))
    train, sample = config.get("dit_train"), config.get("sample")
    if sample is not None and sample.get("autoguidance", 1.0) != 1.0:
        if not sample.get("autoguide_step", 0):
            raise ValueError(f"config.sample.autoguidance={sample.autoguidance} needs "
                             "config.sample.autoguide_step, the step of the earlier DiT "
                             "checkpoint that guides, > 0.")  # fmt: skip
    text = config.get("text")
    n = train.get("image_text_length", 0) if train is not None else 0
    if n and text is not None and n > text.get("max_length", n):
        raise ValueError(f"config.dit_train.image_text_length={n} is longer than "
                         f"config.text.max_length={text.max_length}; expected 0 or at most "
                         "that.")  # fmt: skip
    if train is not None and sample is not None and train.get("sample_num_occlusion", 0):
        # Occlusion scenes are graded on frames before and after the bar's window.
        frames, least = sample.get("num_frames", 0), evaluate.PERMANENCE_FRAMES
        if not _int(frames) or frames < least:
            n = train.sample_num_occlusion
            raise ValueError(f"config.dit_train.sample_num_occlusion={n} needs "
                             f"config.sample.num_frames >= {least} (frames before and after the "
                             f"bar), got {frames!r}.")  # fmt: skip

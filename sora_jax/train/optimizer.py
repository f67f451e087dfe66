"""Optimizer of a training stage: AdamW, global-norm clipping, warmup + cosine schedule, and the
weight-decay mask, all read from the stage's config."""

from __future__ import annotations

import re
from typing import Any

import jax
import ml_collections
import optax

from sora_jax.train import checkpoint as ckpt_lib


def make_schedule(cfg: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over `lr_warmup_steps` (0 = none), then cosine decay to
    `lr * lr_min_ratio` at `steps` (`lr_schedule='cosine'`) or constant (`'constant'`)."""
    warmup = int(cfg.get("lr_warmup_steps", 0))
    kind = cfg.get("lr_schedule", "cosine")
    if kind == "cosine":
        decay_steps = max(int(cfg.steps) - warmup, 1)
        decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, cfg.get("lr_min_ratio", 0.1))
    elif kind == "constant":
        decay = optax.constant_schedule(cfg.lr)
    else:
        raise ValueError(f"lr_schedule {kind!r} is unknown; expected 'cosine' or 'constant'.")
    if warmup <= 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


def param_names(params: Any) -> list[str]:
    """Dotted path of every parameter leaf, in `jax.tree.leaves` order."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return [ckpt_lib.path_name(path) for path, _ in leaves]


def weight_decay_mask(params: Any, cfg: ml_collections.ConfigDict) -> Any:
    """True where weight decay applies: leaves with ndim >= `weight_decay_min_ndim` (default 2:
    no decay on biases, norm scales, modulation tables) whose dotted path matches none of the
    regexes in `weight_decay_exclude` (e.g. `('embed',)`)."""
    min_ndim = int(cfg.get("weight_decay_min_ndim", 2))
    exclude = [re.compile(p) for p in cfg.get("weight_decay_exclude", ())]
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    mask = [
        leaf.ndim >= min_ndim and not any(p.search(ckpt_lib.path_name(path)) for p in exclude)
        for path, leaf in leaves
    ]
    return jax.tree_util.tree_unflatten(treedef, mask)


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with global-norm clipping (`grad_clip_norm`, 0 = off) and `make_schedule`."""
    clip = float(cfg.get("grad_clip_norm", 1.0) or 0.0)
    adamw = optax.adamw(
        make_schedule(cfg),
        b1=cfg.get("b1", 0.9),
        b2=cfg.get("b2", 0.999),
        eps=cfg.get("adam_eps", 1e-8),
        weight_decay=cfg.get("weight_decay", 0.0),
        mask=lambda params: weight_decay_mask(params, cfg),
    )
    # The same state structure with and without clipping, so toggling it keeps resume working.
    return optax.chain(optax.clip_by_global_norm(clip) if clip > 0 else optax.identity(), adamw)

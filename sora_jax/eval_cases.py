"""The evaluation suite's cases: its sets of prompts, scenes and conditioning plans.

Legend: F H W pixel frames/height/width, T latent frames, tf the VAE's temporal factor.

Sets (sizes and settings in `config.eval`, see configs/world.py). Every prompt is built from the
world's vocabulary (`world.prompt_suite`, `world.make_spec`), deterministic in `eval.seed`:

  t2v              in-distribution short prompts ("a red circle moving left") at `eval.shape`
  t2v_holdout      the held-out colour x shape pairs of `world.holdout` (never trained on)
  t2v_occlusion    long captions of scenes where a bar hides the subject mid-clip
                   (`eval.occlusion_prompts` of them, default `eval.num_per_set`)
  (each mode below: `eval.modes_per_set` clips, default `eval.num_per_set`)
  t2v_multi        long captions of scenes with one or two smaller distractors
  t2v_sweep        short prompts at every shape of `eval.sweep_shapes` (aspect, duration)
  t2i              "an image of a ..." at one frame
  i2v              the first frame of a real clip given (image -> video)
  extend_forward   the first (T + 1) // 2 latent frames' pixels of a real clip given
  extend_backward  the last T // 2 latent frames' pixels given
  infill           every other latent frame's pixels given (and the last)
  connect          the head of a real clip and its last chunk given, the middle generated
  edit             a real clip noised to t = `eval.edit_strength` (SDEdit) and denoised with a
                   prompt that recolours its subject

`eval.sets` names the sets to run (empty: all of them); each keeps its prompts and seeds.

Conditioned modes take their given frames from the real clip rendered for the spec
(`world.render`) at the very frame positions the output has, so the output is graded against
a known truth. sora_jax/eval_suite.py samples and grades them.
"""

from __future__ import annotations

import copy
import dataclasses

import ml_collections
import numpy as np

from sora_jax import modes
from sora_jax import sample as sample_lib
from sora_jax.data import sources
from sora_jax.data import world as world_lib

CONDITIONED = ("i2v", "extend_forward", "extend_backward", "infill", "connect")


@dataclasses.dataclass(frozen=True)
class Case:
    """One sample of the suite: what to generate and the truth it is graded against."""

    prompt: str
    spec: dict  # the scene the output is graded against
    plan: modes.Plan
    seed: int
    truth: np.ndarray | None = None  # uint8 [F, H, W, 3]: the real clip of a conditioned mode


def parse_shape(text: str) -> tuple[int, int, int]:
    """'17x64x96' -> (frames, height, width)."""
    try:
        f, h, w = (int(v) for v in str(text).split("x"))
    except ValueError:
        raise ValueError(
            f"eval shape {text!r} must read FRAMESxHEIGHTxWIDTH, e.g. '17x64x64'."
        ) from None
    return f, h, w


# ---------------------------------------------------------------------------- the prompt suite


def _prompt_specs(world_cfg: world_lib.WorldConfig, n: int, seed: int, **changes) -> list[dict]:
    return world_lib.prompt_suite(dataclasses.replace(world_cfg, **changes), n, seed=seed)


def _distractors(cfg: world_lib.WorldConfig, spec: dict, count: int, rng) -> list[tuple]:
    """Distractors of other colours whose colour x shape pair is not held out."""
    held, out = set(cfg.holdout), []
    colors = [c for c in cfg.colors if c != spec["objects"][0]["color"]]
    for c in rng.permutation(colors)[:count]:
        shapes = [s for s in cfg.shapes if f"{c}:{s}" not in held]
        out.append((str(c), str(rng.choice(shapes)), str(rng.choice(cfg.motions))))
    return out


def _recolor(cfg: world_lib.WorldConfig, spec: dict, rng) -> dict:
    """The spec with its subject in another trainable colour (the edit's target)."""
    subject = spec["objects"][0]
    held = set(cfg.holdout)
    colors = [c for c in cfg.colors
              if c != subject["color"] and f"{c}:{subject['shape']}" not in held]  # fmt: skip
    out = copy.deepcopy(spec)
    color = str(rng.choice(colors))
    out["objects"][0].update(color=color, rgb=list(world_lib.PALETTE[color]))
    return out


def condition_plan(mode: str, truth: np.ndarray, tf: int, edit_strength: float = 0.7):
    """The plan of a conditioned mode on a real clip; given frames keep their clip positions."""
    f = len(truth)
    t = modes.num_latents(f, tf)
    if mode == "i2v":
        return modes.image_to_video([truth[0]], f, position="first", tf=tf)
    if mode == "extend_forward":
        head = 1 + tf * ((t + 1) // 2 - 1)
        return modes.extend(truth[:head], f - head, direction="forward", tf=tf)
    if mode == "extend_backward":
        tail = tf * (t // 2)
        return modes.extend(truth[f - tail :], f - tail, direction="backward", tf=tf)
    if mode == "infill":
        slots = sorted(set(range(0, t, 2)) | {t - 1})
        return modes.infill(truth, [tf * s for s in slots], tf=tf)
    if mode == "connect":
        b = max(1, (t - 1) // 4)
        a = max(1, (t - b) // 2)
        return modes.connect(
            truth[: 1 + tf * (a - 1)], truth[f - tf * b :], tf * (t - a - b), tf=tf
        )
    if mode == "edit":
        return modes.edit(truth, edit_strength, tf=tf)
    raise ValueError(f"unknown conditioned eval mode {mode!r}.")


def given_frames(plan: modes.Plan, tf: int) -> np.ndarray:
    """bool [F]: the pixel frames of the plan's given latent slots."""
    mask = np.zeros(plan.num_frames, bool)
    for s in plan.slots:
        mask[modes.slot_frames(s, tf)] = True
    return mask


def occlusion_count(ec: ml_collections.ConfigDict) -> int:
    """Scenes of the occlusion set: `eval.occlusion_prompts`, else `eval.num_per_set`."""
    n = ec.get("occlusion_prompts", None)
    n = ec.num_per_set if n is None else n
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"eval.occlusion_prompts={n!r} must be a positive int (scenes).")
    return n


def modes_count(ec: ml_collections.ConfigDict) -> int:
    """Cases of each conditioned mode's set and of edit: `eval.modes_per_set`, else
    `eval.num_per_set`."""
    n = ec.get("modes_per_set", None)
    n = ec.num_per_set if n is None else n
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"eval.modes_per_set={n!r} must be a positive int (clips per mode).")
    return n


def build_suite(config: ml_collections.ConfigDict) -> dict[str, list[Case]]:
    """Every set's cases (module docstring), a pure function of the config; no model needed."""
    ec, tf = config.eval, sample_lib.temporal_factor(config)
    cfg = sources.make_world(config).cfg
    f, h, w = parse_shape(ec.shape)
    if modes.num_latents(f, tf) < 3:
        raise ValueError(f"eval.shape={ec.shape!r} needs >= {1 + 2 * tf} frames for the "
                         "conditioned modes (3 latent frames).")  # fmt: skip
    n, m, seed = int(ec.num_prompts), int(ec.num_per_set), int(ec.seed)
    rng = np.random.default_rng([seed, 0xE7A1])
    t2v = lambda k: modes.text_to_video(*k, tf=tf)  # noqa: E731
    text = lambda specs, style, size=(f, h, w): [  # noqa: E731
        (world_lib.describe(s, style), s, t2v(size)) for s in specs
    ]
    sets: dict[str, list[tuple]] = {}
    sets["t2v"] = text(_prompt_specs(cfg, n, seed), "short")
    if cfg.holdout:
        sets["t2v_holdout"] = text(_prompt_specs(cfg, m, seed + 1, split="holdout"), "short")
    occluded = world_lib.occlusion_suite(cfg, occlusion_count(ec), seed=seed)
    sets["t2v_occlusion"] = text(occluded, "long")
    base = _prompt_specs(cfg, m, seed + 3)
    multi = [world_lib.respec(s, seed * 7919 + i, distractors=_distractors(cfg, s, 1 + i % 2, rng))
             for i, s in enumerate(base)]  # fmt: skip
    sets["t2v_multi"] = text(multi, "long")
    sweep = [parse_shape(x) for x in ec.sweep_shapes]
    base = _prompt_specs(cfg, m * len(sweep), seed + 4)
    sets["t2v_sweep"] = [case for j, size in enumerate(sweep)
                         for case in text(base[j * m : (j + 1) * m], "short", size)]  # fmt: skip
    stills = [world_lib.respec(s, seed * 7919 + i, motion="still", image=True)
              for i, s in enumerate(_prompt_specs(cfg, m, seed + 5))]  # fmt: skip
    sets["t2i"] = text(stills, "short", (1, h, w))
    for j, mode in enumerate((*CONDITIONED, "edit")):
        sets[mode] = []
        for s in _prompt_specs(cfg, modes_count(ec), seed + 6 + j):
            truth = world_lib.render(s, h, w, f)
            target = _recolor(cfg, s, rng) if mode == "edit" else s
            plan = condition_plan(mode, truth, tf, float(ec.edit_strength))
            sets[mode].append((world_lib.describe(target, "short"), target, plan, truth))
    out = {}
    for k, (name, cases) in enumerate(sets.items()):
        out[name] = [Case(*c[:3], seed=seed + 10_000 * k + i, truth=c[3] if len(c) > 3 else None)
                     for i, c in enumerate(cases)]  # fmt: skip
    # `eval.sets`: only these (seeds as in the whole suite, so a set's samples do not change).
    wanted = tuple(ec.get("sets", ()) or ())
    if set(wanted) - set(out):
        raise ValueError(f"eval.sets={wanted} must name sets of the suite {tuple(out)}.")
    return {name: cases for name, cases in out.items() if not wanted or name in wanted}

"""Procedural captioned video world: the embedded default dataset (numpy only, no download).

Every clip is a deterministic function of ``(cfg.seed, index)``: coloured shapes moving over a
background, optionally with a camera pan and an occluding bar, with captions at several levels of
detail and the ground-truth scene ``spec`` that ``sora_jax.evaluate`` grades generated videos
against. This module holds the vocabulary, the configuration, spec sampling and the `World`
dataset; rendering is in world_render.py (cached sprites, no loop over pixels), the captions
in world_captions.py and the shapes' geometry in world_geometry.py.

Spec schema (JSON-serialisable, size-independent). Positions are normalised per axis (x = 0 left,
1 right; y = 0 top, 1 bottom) and time ``t`` runs 0 → 1 over the clip whatever its frame count,
so one spec tells the same story at any (H, W, F). Lengths ("diameter", "width") are in units of
the frame's shorter side so shapes never distort with the aspect ratio::

    {"version": 1,
     "image": bool,                    # a still image: everything static, rendered at t = 0
     "background": {"kind": "flat" | "gradient" | "texture", "tone": "dark" | "light",
                    "color": str, "rgb": [r, g, b],
                    "color2": str, "rgb2": [r, g, b], "angle": degrees,   # gradient only
                    "pattern": "checks" | "stripes" | "waves",           # texture only
                    "frequency": float, "amplitude": float},             # texture only
     "camera": {"pan": "none" | "left" | "right" | "up" | "down", "distance": float},
     "objects": [{"role": "subject" | "distractor", "color": str, "rgb": [r, g, b],
                  "shape": str, "size": str, "diameter": float, "motion": str,
                  "start": [x, y], "end": [x, y],          # centre at t = 0 / 1, linear in t
                  "bounce_height": float, "bounces": int,  # y -= h·|sin(π·bounces·t)|
                  "scale": [s0, s1]}, ...],                 # linear in t (grow / shrink)
     "occluder": null | {"orientation": "vertical" | "horizontal", "color": str,
                         "rgb": [r, g, b], "width": float, "start": float, "end": float}}

``objects[0]`` is the subject the short prompt is about; the others are distractors, drawn first
(so never in front of the subject), 0.45× the subject's diameter and of other colours, so the
subject is always the largest object of its colour. Every shape has the area of a circle of the
given diameter. Pan "left" means the camera moves left: the whole scene (background, objects,
occluder) slides right on screen. The occluder is a bar spanning the frame that crosses the
subject exactly at t = 0.5 and covers it completely then (the middle frame of any 1 + 4k clip),
but never touches it at t < 0.12 or t > 0.88, so an object-permanence check sees the subject
before, not during, and after. Objects always stay fully inside the frame.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence

import numpy as np

from sora_jax.data.world_captions import STYLES, describe
from sora_jax.data.world_geometry import DIRECTIONS, SHAPE_EXTENT
from sora_jax.data.world_render import render

# fmt: off
ALL_COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan", "white", "orange")
PALETTE = {  # saturated / bright: every pair ≥ 90 apart, every one ≥ 100 from any background
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (40, 90, 240), "yellow": (245, 225, 40),
    "magenta": (215, 50, 215), "cyan": (40, 215, 225), "white": (250, 250, 250),
    "orange": (255, 135, 20),
}
ALL_SHAPES = ("square", "circle", "triangle", "diamond", "cross", "star", "ring")
ALL_SIZES = ("small", "medium", "large")
SIZE_DIAMETERS = {"small": 0.16, "medium": 0.22, "large": 0.30}  # fraction of the shorter side
DISTRACTOR_SCALE = 0.45  # distractor diameter / subject diameter: keeps the subject dominant
ALL_MOTIONS = (*DIRECTIONS, "bounce", "grow", "shrink", "still")
ALL_BACKGROUNDS = ("flat", "gradient", "texture")
PATTERNS = ("checks", "stripes", "waves")
TONES = {  # low-saturation tones far from every PALETTE colour, even ± a texture's amplitude
    "dark": {"black": (14, 14, 18), "charcoal": (48, 48, 52), "navy": (22, 28, 62),
             "dark brown": (58, 42, 30), "dark slate": (36, 52, 58)},
    "light": {"light gray": (172, 172, 172), "beige": (182, 172, 150),
              "pale blue": (152, 166, 186), "pale pink": (184, 160, 166),
              "pale green": (160, 180, 160)},
}
OCCLUDER_COLORS = {"dark": ("gray", (128, 128, 128)), "light": ("dark gray", (70, 70, 70))}
PAN_DIRECTIONS = ("left", "right", "up", "down")
# fmt: on
_OCCLUDER_MARGIN = 0.07  # bar half-width beyond the subject: ≥ 2 px of rounding slack at 32 px
_OCCLUDER_WINDOW = 0.38  # the bar overlaps the subject only for |t - 0.5| < this
_T_GRID = np.linspace(0.0, 1.0, 33)  # samples a path's extremes (bounce peaks at t = j/4)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Distribution of the synthetic world; every field is a plain python value (see module doc)."""

    seed: int = 0
    num_clips: int = 1_000_000  # length of the source
    resolutions: tuple[tuple[int, int], ...] = ((64, 64),)  # (height, width) choices
    num_frames: tuple[int, ...] = (9,)  # frame-count choices (1 = still image); models need 1+4k
    image_fraction: float = 0.0  # probability an item is a 1-frame still
    fps: int = 8
    colors: tuple[str, ...] = ALL_COLORS
    shapes: tuple[str, ...] = ALL_SHAPES
    sizes: tuple[str, ...] = ALL_SIZES
    # Relative frequencies of `sizes` for the subject of a clip (one weight per size, any
    # positive scale); () draws them equally. prompt_suite stays balanced over `sizes`.
    size_weights: tuple[float, ...] = ()
    motions: tuple[str, ...] = ALL_MOTIONS
    backgrounds: tuple[str, ...] = ALL_BACKGROUNDS
    max_objects: int = 3  # subject + up to 3 distractors (≤ 4)
    camera_pan_prob: float = 0.2
    occluder_prob: float = 0.2
    holdout: tuple[str, ...] = ()  # "colour:shape" pairs kept out of the train split entirely
    split: str = "train"  # "train": never yields held-out pairs; "holdout": subject always one


class _Draws:
    """Uniforms drawn in blocks from one generator (per-call Generator methods cost ~µs each)."""

    def __init__(self, rng: np.random.Generator):
        self._rng, self._u, self._i = rng, rng.random(48).tolist(), 0

    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        if self._i == len(self._u):
            self._u, self._i = self._rng.random(48).tolist(), 0
        self._i += 1
        return lo + (hi - lo) * self._u[self._i - 1]

    def index(self, n: int) -> int:
        return min(int(self.uniform() * n), n - 1)

    def choice(self, seq: Sequence):
        return seq[self.index(len(seq))]


def _check_names(field: str, values, vocab) -> None:
    values = tuple(values) if isinstance(values, (tuple, list)) else (values,)
    if not values or any(v not in vocab for v in values) or len(set(values)) != len(values):
        raise ValueError(f"{field}={values!r} must be distinct names from {tuple(vocab)}.")


def _validate(cfg: WorldConfig) -> None:
    for name, vocab in (("colors", ALL_COLORS), ("shapes", ALL_SHAPES), ("sizes", ALL_SIZES),
                        ("motions", ALL_MOTIONS), ("backgrounds", ALL_BACKGROUNDS)):  # fmt: skip
        _check_names(name, getattr(cfg, name), vocab)
    positive = lambda x: isinstance(x, int) and x >= 1
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ValueError(f"seed={cfg.seed!r} must be a non-negative int.")
    if not positive(cfg.num_clips) or not positive(cfg.fps):
        raise ValueError(f"num_clips={cfg.num_clips!r}, fps={cfg.fps!r} must be positive ints.")
    if not cfg.resolutions or any(len(r) != 2 or not all(positive(x) and x >= 8 for x in r)
                                  for r in cfg.resolutions):  # fmt: skip
        raise ValueError(f"resolutions={cfg.resolutions!r} must be (height, width) int pairs ≥ 8.")
    if not cfg.num_frames or not all(positive(f) for f in cfg.num_frames):
        raise ValueError(f"num_frames={cfg.num_frames!r} must be a non-empty tuple of ints ≥ 1.")
    for name in ("image_fraction", "camera_pan_prob", "occluder_prob"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"{name}={getattr(cfg, name)!r} must be a probability in [0, 1].")
    weights = tuple(cfg.size_weights)
    if weights and (len(weights) != len(tuple(cfg.sizes)) or sum(weights) <= 0
                    or not all(isinstance(x, (int, float)) and 0 <= x < float("inf")
                               for x in weights)):  # fmt: skip
        raise ValueError(f"size_weights={weights!r} must be one non-negative weight per size of "
                         f"{tuple(cfg.sizes)} (or empty), not all zero.")  # fmt: skip
    if not positive(cfg.max_objects) or cfg.max_objects > 4:
        raise ValueError(f"max_objects={cfg.max_objects!r} must be an int in [1, 4].")
    if cfg.split not in ("train", "holdout"):
        raise ValueError(f"split={cfg.split!r} must be 'train' or 'holdout'.")
    for pair in cfg.holdout:
        c, _, s = str(pair).partition(":")
        if c not in cfg.colors or s not in cfg.shapes:
            raise ValueError(f"holdout pair {pair!r} must be 'colour:shape' with a colour from "
                             f"{cfg.colors} and a shape from {cfg.shapes}.")  # fmt: skip


def subject_pairs(cfg: WorldConfig) -> list[tuple[str, str]]:
    """(colour, shape) pairs the subject may take in cfg.split (train excludes cfg.holdout)."""
    held = set(cfg.holdout)
    pairs = [(c, s) for c in cfg.colors for s in cfg.shapes]
    pairs = [p for p in pairs if (f"{p[0]}:{p[1]}" in held) == (cfg.split == "holdout")]
    if not pairs:
        raise ValueError(f"split={cfg.split!r} with holdout={cfg.holdout!r} leaves no "
                         "colour:shape pair for the subject.")  # fmt: skip
    return pairs


# ----------------------------------------------------------------------------- spec sampling


def _span(a: float, height: float, bounces: int) -> tuple[float, float]:
    """(min, max) over t ∈ [0, 1] of a·t - height·|sin(π·bounces·t)| (a screen path offset)."""
    if not bounces:
        return min(0.0, a), max(0.0, a)
    y = a * _T_GRID - height * np.abs(np.sin(np.pi * bounces * _T_GRID))
    return float(y.min()), float(y.max())


def _object(role, color, shape, size, diameter, motion, pan, draws: _Draws) -> dict:
    """One object whose on-screen path (world path minus camera pan) stays inside the frame."""
    dx, dy = DIRECTIONS.get(motion, (0, 0))
    if dx and dy:  # diagonals: both axes in [0.25, 0.4] keeps the angle within 45° ± 22.5°
        dx, dy = dx * draws.uniform(0.25, 0.4), dy * draws.uniform(0.25, 0.4)
    else:
        d = draws.uniform(0.3, 0.5)
        dx, dy = dx * d, dy * d
    height, bounces = (
        (draws.uniform(0.25, 0.4), 1 + draws.index(2)) if motion == "bounce" else (0, 0)
    )
    scale = {"grow": [0.5, 1.0], "shrink": [1.0, 0.5]}.get(motion, [1.0, 1.0])
    half = SHAPE_EXTENT[shape] * diameter / 2 * max(scale) + 0.02
    for _ in range(8):  # shrink the move until it fits (large objects + pan leave little room)
        (x_lo, x_hi), (y_lo, y_hi) = _span(dx - pan[0], 0, 0), _span(dy - pan[1], height, bounces)
        lo, hi = (half - x_lo, half - y_lo), (1 - half - x_hi, 1 - half - y_hi)
        if hi[0] >= lo[0] and hi[1] >= lo[1]:
            break
        dx, dy, height = 0.8 * dx, 0.8 * dy, 0.8 * height
    x0 = round(lo[0] + max(hi[0] - lo[0], 0) * draws.uniform(), 4)
    y0 = round(lo[1] + max(hi[1] - lo[1], 0) * draws.uniform(), 4)
    return {"role": role, "color": color, "rgb": list(PALETTE[color]), "shape": shape,
            "size": size, "diameter": round(diameter, 4), "motion": motion, "start": [x0, y0],
            "end": [round(x0 + dx, 4), round(y0 + dy, 4)], "bounce_height": round(height, 4),
            "bounces": bounces, "scale": scale}  # fmt: skip


def _background(kind: str, tone: str, draws: _Draws) -> dict:
    names = tuple(TONES[tone])
    color = draws.choice(names)
    bg = {"kind": kind, "tone": tone, "color": color, "rgb": list(TONES[tone][color])}
    if kind == "gradient":  # 16 angles, 6 frequencies: few enough to cache each field per size
        color2 = draws.choice(tuple(n for n in names if n != color))
        bg.update(color2=color2, rgb2=list(TONES[tone][color2]), angle=draws.index(16) * 22.5)
    elif kind == "texture":
        bg.update(pattern=draws.choice(PATTERNS), frequency=2.5 + 0.5 * draws.index(6),
                  amplitude=round(draws.uniform(7.0, 12.0), 3))  # fmt: skip
    return bg


def _occluder(subject: dict, tone: str, draws: _Draws) -> dict:
    """A bar crossing the subject at t = 0.5, wide enough to hide it, fast enough to be brief."""
    vertical = subject["motion"] == "bounce" or draws.uniform() < 0.5  # bounce: y is not linear
    axis = 0 if vertical else 1  # a vertical bar moves along x
    reach = SHAPE_EXTENT[subject["shape"]] * subject["diameter"] / 2 * max(subject["scale"])
    half = reach + _OCCLUDER_MARGIN
    # Speeds are per-axis normalised, lengths in shorter-side units: along either axis the bar is
    # only faster relative to the subject, so the overlap window never exceeds the bound.
    v_rel = (half + reach) / _OCCLUDER_WINDOW * (1 if draws.uniform() < 0.5 else -1)
    s0, s1 = subject["start"][axis], subject["end"][axis]
    mid, v = (s0 + s1) / 2, (s1 - s0) + v_rel
    name, rgb = OCCLUDER_COLORS[tone]
    return {"orientation": "vertical" if vertical else "horizontal", "color": name,
            "rgb": list(rgb), "width": round(2 * half, 4), "start": round(mid - v / 2, 4),
            "end": round(mid + v / 2, 4)}  # fmt: skip


def build_spec(subject: tuple[str, str, str, str], distractors: Sequence[tuple[str, str, str]],
               background: str, tone: str, pan: str, occluder: bool, image: bool,
               draws: _Draws) -> dict:  # fmt: skip
    """Scene spec from its discrete choices; continuous details (positions, speeds) from draws.

    subject: (colour, shape, size, motion); distractors: (colour, shape, motion) each.
    """
    distance = round(draws.uniform(0.06, 0.12), 4) if pan != "none" else 0.0
    pan_vec = tuple(distance * c for c in DIRECTIONS.get(pan, (0, 0)))
    color, shape, size, motion = subject
    d = SIZE_DIAMETERS[size]
    objects = [_object("subject", color, shape, size, d, motion, pan_vec, draws)]
    for c, s, m in distractors:
        objects.append(_object("distractor", c, s, "smaller", d * DISTRACTOR_SCALE, m, pan_vec,
                               draws))  # fmt: skip
    return {"version": 1, "image": image, "background": _background(background, tone, draws),
            "camera": {"pan": pan, "distance": distance}, "objects": objects,
            "occluder": _occluder(objects[0], tone, draws) if occluder else None}  # fmt: skip


def _sample_distractors(cfg, subject_color, count, draws) -> list[tuple[str, str, str]]:
    """Distinct colours (not the subject's); in the train split no held-out pair anywhere."""
    held, used, out = set(cfg.holdout), {subject_color}, []
    for _ in range(count):
        colors = [c for c in cfg.colors if c not in used]
        if not colors:
            break
        c = draws.choice(colors)
        shapes = [s for s in cfg.shapes if cfg.split == "holdout" or f"{c}:{s}" not in held]
        if shapes:
            used.add(c)
            out.append((c, draws.choice(shapes), draws.choice(cfg.motions)))
    return out


def _size_edges(cfg: WorldConfig) -> list[float] | None:
    """Cumulative `size_weights` normalised to end at 1 (None: sizes drawn equally)."""
    if not cfg.size_weights:
        return None
    return (np.cumsum(cfg.size_weights) / sum(cfg.size_weights)).tolist()


def _draw_size(sizes: Sequence[str], edges: list[float] | None, draws: _Draws) -> str:
    """The subject's size: one uniform either way, so weights move no later draw of the clip."""
    if edges is None:
        return draws.choice(sizes)
    return sizes[min(bisect.bisect_right(edges, draws.uniform()), len(sizes) - 1)]


# ----------------------------------------------------------------------------- public API


class World:
    """Random-access source of captioned clips; item i is a pure function of (cfg.seed, i)."""

    def __init__(self, cfg: WorldConfig):
        _validate(cfg)
        self.cfg = cfg
        self._pairs = subject_pairs(cfg)
        self._size_edges = _size_edges(cfg)

    def __len__(self) -> int:
        return self.cfg.num_clips

    def _index(self, index: int) -> int:
        if not -self.cfg.num_clips <= index < self.cfg.num_clips:
            raise IndexError(f"index {index} is out of range for {self.cfg.num_clips} clips.")
        return int(index) % self.cfg.num_clips

    def _draws(self, index: int) -> tuple[_Draws, int, int, int]:
        """Per-index draws and the item's (height, width, num_frames), which are drawn first."""
        draws = _Draws(np.random.default_rng([self.cfg.seed, index]))
        still = draws.uniform() < self.cfg.image_fraction
        h, w = draws.choice(self.cfg.resolutions)
        frames = draws.choice(self.cfg.num_frames)
        return draws, h, w, 1 if still else frames

    def spec(self, index: int) -> dict:
        """Ground-truth scene description of item `index` (see the module docstring)."""
        return self._spec(*self._draws(self._index(index)))

    def _spec(self, draws: _Draws, h: int, w: int, frames: int) -> dict:
        cfg, image = self.cfg, frames == 1
        color, shape = draws.choice(self._pairs)
        motion = "still" if image else draws.choice(cfg.motions)
        subject = (color, shape, _draw_size(cfg.sizes, self._size_edges, draws), motion)
        kind, tone = draws.choice(cfg.backgrounds), draws.choice(("dark", "light"))
        pan = draws.choice(PAN_DIRECTIONS) if draws.uniform() < cfg.camera_pan_prob else "none"
        occluder = draws.uniform() < cfg.occluder_prob
        distractors = _sample_distractors(cfg, color, draws.index(cfg.max_objects), draws)
        if image:  # a still: nothing moves, nothing hides
            pan, occluder = "none", False
            distractors = [(c, s, "still") for c, s, _ in distractors]
        return build_spec(subject, distractors, kind, tone, pan, occluder, image, draws)

    render = staticmethod(render)

    @staticmethod
    def captions(spec: dict) -> dict[str, str]:
        """{"short": the prompt, "medium": ..., "long": the descriptive recaption}."""
        return {style: describe(spec, style) for style in STYLES}

    def _clip(self, index: int, spec: dict, h: int, w: int, frames: int) -> dict:
        return {"video": render(spec, h, w, frames), "prompt": describe(spec, "short"),
                "caption": describe(spec, "long"), "spec": spec, "index": index,
                "fps": self.cfg.fps}  # fmt: skip

    def clip(self, index: int, height: int, width: int, num_frames: int) -> dict:
        """Item `index` rendered at a requested size (its spec does not depend on the size)."""
        index = self._index(index)
        return self._clip(index, self._spec(*self._draws(index)), height, width, num_frames)

    def __getitem__(self, index: int) -> dict:
        """Item `index` at its own (height, width, num_frames), drawn from the cfg choices."""
        index = self._index(index)
        draws, h, w, frames = self._draws(index)
        return self._clip(index, self._spec(draws, h, w, frames), h, w, frames)


def make_spec(color: str, shape: str, motion: str, *, size: str = "large",
              background: str = "flat", tone: str = "dark", pan: str = "none",
              occluder: bool = False, distractors: Sequence[tuple[str, str, str]] = (),
              image: bool = False, seed: int = 0) -> dict:  # fmt: skip
    """A spec from named choices (prompts, tests); positions and details drawn from `seed`.

    distractors: (colour, shape, motion) triples with colours other than the subject's.
    """
    for field, value, vocab in (("color", color, ALL_COLORS), ("shape", shape, ALL_SHAPES),
                                ("motion", motion, ALL_MOTIONS), ("size", size, ALL_SIZES),
                                ("background", background, ALL_BACKGROUNDS),
                                ("tone", tone, tuple(TONES)),
                                ("pan", pan, ("none", *PAN_DIRECTIONS))):  # fmt: skip
        _check_names(field, value, vocab)
    for c, s, m in distractors:
        if c == color or c not in PALETTE or s not in ALL_SHAPES or m not in ALL_MOTIONS:
            raise ValueError(f"distractor {(c, s, m)!r} must be (colour, shape, motion) from the "
                             f"world vocabulary, coloured other than {color!r}.")  # fmt: skip
    draws = _Draws(np.random.default_rng([seed, 0x5EC]))
    return build_spec((color, shape, size, motion), list(distractors), background, tone, pan,
                      occluder, image, draws)  # fmt: skip


def prompt_suite(cfg: WorldConfig, n: int, *, seed: int = 0) -> list[dict]:
    """n evaluation specs: subject colour:shape pairs, motions and sizes of cfg's split, balanced.

    One clean subject per scene (no distractors, pan or occluder: the short prompt names only the
    subject); background kind and tone drawn from cfg. Deterministic in (cfg, n, seed).
    """
    _validate(cfg)
    if n < 0:
        raise ValueError(f"n={n} must be ≥ 0.")
    if n == 0:  # e.g. no occlusion scenes among a stage's training samples
        return []
    pairs = subject_pairs(cfg)
    rng = np.random.default_rng([seed, 0xE7A1])

    def balanced(k: int) -> np.ndarray:  # fresh permutations back to back: equal counts, no
        return np.concatenate([rng.permutation(k) for _ in range(-(-n // k))])[:n]  # coupling

    pair_i, motion_i = balanced(len(pairs)), balanced(len(cfg.motions))
    size_i = balanced(len(cfg.sizes))
    specs = []
    for i in range(n):
        color, shape = pairs[pair_i[i]]
        draws = _Draws(np.random.default_rng([seed, 0xE7A1, i]))
        kind, tone = draws.choice(cfg.backgrounds), draws.choice(("dark", "light"))
        subject = (color, shape, cfg.sizes[size_i[i]], cfg.motions[motion_i[i]])
        specs.append(build_spec(subject, [], kind, tone, "none", False, False, draws))
    return specs


def respec(spec: dict, seed: int, *, motion: str = "", **kwargs) -> dict:
    """The subject of `spec` (colour, shape, size, motion unless given, background) in a new
    scene drawn by `make_spec` with `seed` and `kwargs` (occluder, distractors, image, ...)."""
    s, bg = spec["objects"][0], spec["background"]
    return make_spec(s["color"], s["shape"], motion or s["motion"], size=s["size"],
                     background=bg["kind"], tone=bg["tone"], seed=seed, **kwargs)  # fmt: skip


def occlusion_suite(cfg: WorldConfig, n: int, *, seed: int = 0) -> list[dict]:
    """The evaluation suite's n occlusion scenes (its t2v_occlusion set) for `eval.seed` = seed:
    the subjects of `prompt_suite(cfg, n, seed=seed + 2)`, each redrawn with a bar that hides it
    mid-clip (scene i from seed `seed * 7919 + i`, the suite's rule for redrawn scenes). The
    suite, the DiT's training samples and the VAE's round trips grade them with
    `sora_jax.evaluate.object_permanence`."""
    return [respec(s, seed * 7919 + i, occluder=True)
            for i, s in enumerate(prompt_suite(cfg, n, seed=seed + 2))]  # fmt: skip

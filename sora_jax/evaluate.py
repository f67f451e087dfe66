"""Evaluation of generated videos: the synthetic-world prompt-adherence grader (pure numpy).

``grade(video, spec)`` predicts the subject's colour, shape and direction of motion from the pixels
alone and compares them with the scene spec behind the prompt (``sora_jax.data.world``):

1. **Colour.** Every pixel goes to its nearest anchor colour: the 8 world palette colours plus
   neutral anchors (a gray ramp, the background tones, the occluder colours). Backgrounds are
   designed ≥ 100 RGB units from every palette colour, so only object pixels get a palette label,
   and blurred edges fall to a neutral anchor. The subject is the colour with the largest
   75th-percentile per-frame pixel count (robust to an occluder hiding it in a few frames); the
   world makes it the largest object of its colour.
2. **Shape.** On the frames where the subject's mask is largest, the mask is matched against every
   world shape rendered by the world's own rasteriser at the mask's centroid and at the radius its
   area implies (all shapes have equal area for a diameter), over ±1 px and ±10 % scale; the best
   mean IoU wins.
3. **Motion.** From the centroid and area of the subject in the first and last frames (the world
   never occludes the subject there): area ratio ≥ 2 (linear ratio ≥ 1.4) → grow / shrink; a
   path (frames showing ≥ 30 % of the end area: a bar cut moves a centroid ≤ 0.07) that leaves
   the start→end line by > 0.12 and by more than 0.6 × the net move → bounce; net move < 0.12 →
   still; otherwise one of 8 directions by the angle of the move in per-axis normalised
   coordinates (matching how specs define motion).

Well-posedness (``gradable``): motion is not graded for 1-frame inputs, nor under a camera pan —
the grader measures screen motion, while the spec's motion is relative to the scene (a still object
under a pan moves on screen). Colour and shape are always graded.

Validation on ground-truth world clips (default distribution; asserted in tests/test_grader.py):
at 64×64 (any aspect, 5-33 frames) colour, shape and motion all scored 100 % on 200-clip samples;
at 32×32 about 99 % each — but a small subject is 5 px across there, so shape (and colour when a
small subject starts half-size) is fragile on generated videos; only colour is required at 32×32.
After a σ ≈ 1 px blur plus noise (σ = 8 levels) colour stays ≥ 95 %, motion ≥ 90 %, shape ≥ 80 %.

Object permanence (``object_permanence``, occlusion scenes; the definition is in its docstring),
how an occluding bar moved (``occluder_motion``) and continuity across a conditioning boundary
(``continuity``) are pixel statistics too. PSNR, SSIM and the flow validation loss (jittable) are
in ``sora_jax.quality``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from sora_jax.data import world, world_geometry, world_render

_COLORS = world.ALL_COLORS
_NEUTRALS = np.array(
    [(g, g, g) for g in range(0, 225, 16)]
    + [rgb for tones in world.TONES.values() for rgb in tones.values()]
    + [rgb for _, rgb in world.OCCLUDER_COLORS.values()],
    np.float32,
)
_ANCHORS = np.concatenate([np.array([world.PALETTE[c] for c in _COLORS], np.float32), _NEUTRALS])
_MAX_PALETTE_DIST = 140.0  # farther than this from its palette colour: not an object pixel
_DIRECTIONS = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")


def _as_uint8(video: np.ndarray) -> np.ndarray:
    """uint8 [F, H, W, 3] or float in [0, 1] → uint8 [F, H, W, 3] (a single frame gets F = 1)."""
    video = np.asarray(video)
    if video.ndim == 3:
        video = video[None]
    if video.ndim != 4 or video.shape[-1] != 3 or min(video.shape[1:3]) < 8:
        raise ValueError(f"Expected a video of shape [F, H, W, 3], H, W ≥ 8; got {video.shape}.")
    if video.dtype == np.uint8:
        return video
    return np.rint(np.clip(video.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


@functools.cache
def _label_table() -> np.ndarray:
    """int8 [32, 32, 32]: nearest-anchor palette label of each 8-level RGB cell (-1: none)."""
    centres = np.arange(4, 256, 8, dtype=np.float32)
    cells = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), -1).reshape(-1, 3)
    d2 = ((cells[:, None, :] - _ANCHORS[None]) ** 2).sum(-1)  # [32³, anchors]
    best = d2.argmin(-1)
    ok = (best < len(_COLORS)) & (d2.min(-1) < _MAX_PALETTE_DIST**2)
    return np.where(ok, best, -1).astype(np.int8).reshape(32, 32, 32)


def palette_labels(video: np.ndarray) -> np.ndarray:
    """int8 [F, H, W]: index into world.ALL_COLORS of each pixel's colour, or -1 (not an object).

    A 32³ lookup table of nearest anchors (quantisation ≤ 4 levels per channel) makes this one
    gather per pixel.
    """
    q = _as_uint8(video) >> 3
    return _label_table()[q[..., 0], q[..., 1], q[..., 2]]


def predict_color(labels: np.ndarray) -> int | None:
    """Palette index of the subject: largest 75th-percentile per-frame count, None if no colour."""
    counts = np.stack([(labels == k).sum((1, 2)) for k in range(len(_COLORS))], 1)  # [F, 8]
    score = np.percentile(counts, 75, axis=0)
    return int(score.argmax()) if score.max() > 0 else None


def _centroids(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame (area, cy, cx) in pixels of pixel centres; NaN centroid where the mask is empty."""
    area = masks.sum((1, 2)).astype(np.float64)
    ys = np.arange(masks.shape[1]) + 0.5
    xs = np.arange(masks.shape[2]) + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = (masks.sum(2) * ys).sum(1) / area
        cx = (masks.sum(1) * xs).sum(1) / area
    return area, cy, cx


def _shape_scores(mask: np.ndarray, cy: float, cx: float, shapes: Sequence[str]) -> np.ndarray:
    """Best IoU of each shape's template against one frame's mask, searched over ±1 px, ±10 %."""
    radius = math.sqrt(mask.sum() / math.pi)
    n = int(math.ceil(max(world.SHAPE_EXTENT.values()) * radius * 1.1)) + 2
    padded = np.pad(mask, n + 1)
    iy, ix = int(math.floor(cy)) + n + 1, int(math.floor(cx)) + n + 1
    window = padded[iy - n : iy + n + 1, ix - n : ix + n + 1]
    outside = mask.sum() - window.sum()  # mask pixels the window misses count against every IoU
    o = np.arange(-n, n + 1, dtype=np.float32)
    shifts = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], np.float32)
    r = (radius * np.array([0.9, 1.0, 1.1], np.float32))[:, None, None, None]  # [S, 1, 1, 1]
    u = (o[None, None, :] - shifts[:, 1, None, None]) / r  # [S, K, 1, L]
    v = (o[None, :, None] - shifts[:, 0, None, None]) / r  # [S, K, L, 1]
    scores = []
    for shape in shapes:
        tpl = world_geometry.shape_mask(shape, u, v)  # [S, K, L, L]
        inter = (tpl & window).sum((-1, -2))
        union = tpl.sum((-1, -2)) + window.sum() + outside - inter
        scores.append((inter / np.maximum(union, 1)).max())
    return np.array(scores)


def predict_shape(masks: np.ndarray, shapes: Sequence[str] = world.ALL_SHAPES) -> str | None:
    """Shape of the subject from its masks [F, H, W]: template IoU on the 3 largest frames."""
    area, cy, cx = _centroids(masks)
    if area.max() < 4:
        return None
    frames = np.argsort(-area, kind="stable")[:3]
    frames = [f for f in frames if area[f] >= 0.8 * area.max()]
    scores = sum(_shape_scores(masks[f], cy[f], cx[f], shapes) for f in frames)
    return shapes[int(np.argmax(scores))]


def predict_motion(masks: np.ndarray) -> str | None:
    """Motion of the subject from its masks [F, H, W] (see the module docstring); None if F < 2."""
    f_n, h, w = masks.shape
    area, cy, cx = _centroids(masks)
    seen = np.nonzero(area > 0)[0]
    if f_n < 2 or len(seen) < 2:
        return None
    a, b = seen[0], seen[-1]
    ratio = math.sqrt(area[b] / area[a])
    if ratio >= 1.4 or ratio <= 1 / 1.4:
        return "grow" if ratio > 1 else "shrink"
    path = np.stack([cx / w, cy / h], 1)  # [F, 2] per-axis normalised
    move = path[b] - path[a]
    valid = np.nonzero(area >= 0.3 * min(area[a], area[b]))[0]  # a bar cut moves it ≤ 0.07
    frac = ((valid - a) / max(b - a, 1))[:, None]
    deviation = np.abs(path[valid] - (path[a] + frac * move)).max() if len(valid) else 0.0
    dist = float(np.hypot(*move))
    if deviation > 0.12 and deviation > 0.6 * dist:
        return "bounce"
    if dist < 0.12:
        return "still"
    angle = math.degrees(math.atan2(-move[1], move[0]))  # y grows downwards on screen
    return _DIRECTIONS[int(round(angle / 45.0)) % 8]


def gradable(spec: dict, num_frames: int) -> dict[str, bool]:
    """Which attributes are well-posed for a spec rendered with num_frames frames."""
    moving = num_frames > 1 and not spec.get("image") and spec["camera"]["pan"] == "none"
    return {"color": True, "shape": True, "motion": moving}


def grade(video: np.ndarray, spec: dict, *, shapes: Sequence[str] = world.ALL_SHAPES) -> dict:
    """Grade a video (uint8 [F, H, W, 3] or float in [0, 1]) against its prompt's spec.

    Returns {"color", "shape", "motion": bool (motion None when not gradable),
    "pred_color", "pred_shape", "pred_motion": str or None}.
    """
    labels = palette_labels(video)
    subject = spec["objects"][0]
    k = predict_color(labels)
    pred_color = None if k is None else _COLORS[k]
    masks = labels == k if k is not None else np.zeros(labels.shape, bool)
    pred_shape = predict_shape(masks, shapes) if k is not None else None
    pred_motion = predict_motion(masks) if k is not None else None
    motion_ok = gradable(spec, labels.shape[0])["motion"]
    return {
        "color": pred_color == subject["color"],
        "shape": pred_shape == subject["shape"],
        "motion": (pred_motion == subject["motion"]) if motion_ok else None,
        "pred_color": pred_color,
        "pred_shape": pred_shape,
        "pred_motion": pred_motion,
    }


def grade_many(videos: Sequence[np.ndarray], specs: Sequence[dict], **kwargs) -> dict:
    """Accuracies over (video, spec) pairs; motion only over the gradable ones (n_motion)."""
    if len(videos) != len(specs):
        raise ValueError(f"Got {len(videos)} videos but {len(specs)} specs; expected one each.")
    return accuracies([grade(v, s, **kwargs) for v, s in zip(videos, specs, strict=True)])


def accuracies(results: Sequence[dict]) -> dict:
    """grade_many's accuracies from `grade` results already at hand (or records holding them)."""
    mean = lambda key: float(np.mean([r[key] for r in results])) if results else float("nan")
    moving = [r["motion"] for r in results if r["motion"] is not None]
    return {
        "color_acc": mean("color"),
        "shape_acc": mean("shape"),
        "motion_acc": float(np.mean(moving)) if moving else float("nan"),
        "n": len(results),
        "n_motion": len(moving),
    }


def accuracy_by_shape(specs: Sequence[dict], shape_right: Sequence[bool]) -> dict[str, float]:
    """Shape accuracy per subject shape: {shape: mean of `shape_right` over its specs}."""
    by: dict[str, list[bool]] = {}
    for spec, right in zip(specs, shape_right, strict=True):
        by.setdefault(spec["objects"][0]["shape"], []).append(bool(right))
    return {k: float(np.mean(v)) for k, v in sorted(by.items())}


# ---- object permanence and continuity (occlusion scenes, conditioned modes) ----

_CLEAR_T = 0.12  # the world's occluder never touches the subject at t < 0.12 or t > 0.88
# Clips this long have frames on both sides of that window to grade (occlusion scenes).
PERMANENCE_FRAMES = 9


def _subject_area(spec: dict, height: int, width: int, t: float) -> float:
    """Pixels the spec's subject covers at time t (every shape has its circle's area)."""
    subject = spec["objects"][0]
    s0, s1 = subject["scale"]
    radius = subject["diameter"] / 2 * min(height, width) * (s0 + (s1 - s0) * t)
    return math.pi * radius * radius


def object_permanence(
    video: np.ndarray,
    spec: dict,
    *,
    min_visible: float = 0.2,
    size_tolerance: float = 2.0,
    shapes: Sequence[str] = world.ALL_SHAPES,
) -> dict:
    """Whether the object seen before an occluder is the same object seen after it.

    The frames before (t < 0.12) and after (t > 0.88) the occluder window of a world occlusion
    scene (the bar never touches the subject there) are compared, t = f / (F - 1):

      colour   k, the palette colour with the most pixels over those frames together (the
               largest object of the scene: the subject);
      visible  colour k covers >= max(4 px, ``min_visible`` x the spec's subject area at that
               time) in the first frame (``seen_before``) and in the last (``seen_after``);
      size     the last / first area ratio is within ``size_tolerance``x of the spec's
               (scale_end / scale_start)^2 (grow and shrink change the area on purpose);
      shape    the grader's shape of colour k on the frames before equals that after.

    ``permanent`` = visible before and after, same size, same shape. ``hidden`` reports whether
    an occluder did pass: the middle frame shows < 50 % of the subject's area there. For reading
    a failure: ``size_ratio`` (the measured area ratio over the spec's; 1 = as expected),
    ``shape_before`` / ``shape_after`` and ``area_first`` / ``area_last`` (pixels). Needs at
    least 3 frames; video is uint8 [F, H, W, 3] or float in [0, 1].
    """
    labels = palette_labels(video)
    f_n, h, w = labels.shape
    if f_n < 3:
        raise ValueError(f"object permanence needs a video of >= 3 frames, got {f_n}.")
    t = np.linspace(0.0, 1.0, f_n)
    before, after = np.flatnonzero(t < _CLEAR_T), np.flatnonzero(t > 1.0 - _CLEAR_T)
    ends = labels[np.concatenate([before, after])]
    counts = np.array([(ends == k).sum() for k in range(len(_COLORS))])
    k = int(counts.argmax())
    masks = labels == k
    area = masks.sum((1, 2)).astype(np.float64)
    expected = [_subject_area(spec, h, w, x) for x in (0.0, 0.5, 1.0)]
    seen_before = area[0] >= max(4.0, min_visible * expected[0])
    seen_after = area[-1] >= max(4.0, min_visible * expected[2])
    ratio = (area[-1] / max(area[0], 1.0)) / (expected[2] / expected[0])
    same_size = bool(seen_before and seen_after and 1 / size_tolerance <= ratio <= size_tolerance)
    shape_before, shape_after = (predict_shape(masks[x], shapes) for x in (before, after))
    same_shape = bool(seen_before and seen_after and shape_before == shape_after)
    return {
        "permanent": bool(seen_before and seen_after and same_size and same_shape),
        "seen_before": bool(seen_before),
        "seen_after": bool(seen_after),
        "same_size": same_size,
        "same_shape": same_shape,
        "hidden": bool(area[(f_n - 1) // 2] < 0.5 * expected[1]),
        "color": _COLORS[k] if counts[k] else None,
        "size_ratio": round(float(ratio), 3),
        "shape_before": shape_before,
        "shape_after": shape_after,
        "area_first": int(area[0]),
        "area_last": int(area[-1]),
    }


def occluder_track(video: np.ndarray, spec: dict, *, tolerance: int = 28,
                   coverage: float = 0.7) -> np.ndarray:  # fmt: skip
    """float [F]: where the spec's occluding bar is in each frame, the mean index of the lines
    (columns of a vertical bar, rows of a horizontal one) whose pixels are within `tolerance`
    levels of its colour over >= `coverage` of their length; NaN where no line is (the bar off
    screen or not drawn). No object is wider than half the frame, so only a bar fills a line."""
    occ = spec["occluder"]
    near = (np.abs(_as_uint8(video).astype(np.int16) - np.asarray(occ["rgb"])).max(-1)
            <= tolerance)  # fmt: skip
    filled = near.mean(1 if occ["orientation"] == "vertical" else 2) >= coverage  # [F, lines]
    lines = np.arange(filled.shape[1], dtype=np.float64)
    count = filled.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (filled * lines).sum(1) / count, np.nan)


def _track_slope(track: np.ndarray, min_frames: int) -> float:
    """Least-squares lines per frame of a bar's track over the frames it shows in (NaN if fewer
    than `min_frames`)."""
    shown = np.flatnonzero(np.isfinite(track))
    if len(shown) < min_frames:
        return float("nan")
    return float(np.polyfit(shown.astype(np.float64), track[shown], 1)[0])


def occluder_motion(video: np.ndarray, spec: dict, *, min_frames: int = 4) -> dict:
    """Whether a video's occluding bar moves the way its spec's does (the occlusion scenes'
    captions say "sweeps slowly downward", ...; `object_permanence` assumes the world's
    timing, the bar clear of the subject at t < 0.12 and t > 0.88).

    The bar is tracked by `occluder_track` in the video and in the spec's real clip rendered at
    the video's size (pans included); each track's slope is fitted over the frames it shows in.
      found         the bar shows in >= `min_frames` frames of the video;
      direction_ok  found, and its slope has the real clip's sign (None when not found);
      speed_ratio   its slope over the real clip's (1 = the world's speed; < 1 slower, so it may
                    still hide the subject at the end; < 0 the wrong way; NaN when not found).
    Needs a spec with an occluder and a video of >= `min_frames` frames."""
    if not spec.get("occluder"):
        raise ValueError("occluder_motion needs a spec with an occluder.")
    v = _as_uint8(video)
    if len(v) < min_frames:
        raise ValueError(f"occluder_motion needs >= {min_frames} frames, got {len(v)}.")
    real = world_render.render(spec, v.shape[1], v.shape[2], v.shape[0])
    want = _track_slope(occluder_track(real, spec), min_frames)
    got = _track_slope(occluder_track(v, spec), min_frames)
    found = bool(np.isfinite(got))
    return {
        "found": found,
        "direction_ok": bool(np.sign(got) == np.sign(want)) if found else None,
        "speed_ratio": round(got / want, 3) if found and want else float("nan"),
    }


def paired_outcomes(a: dict, b: dict) -> dict:
    """Two runs' pass/fail on the same cases ({case id: bool}, e.g. occlusion scene seed ->
    object kept), compared case by case over the ids both have: kept by both, by the first only,
    by the second only, by neither, and McNemar's exact two-sided p (under "no difference" each
    discordant case goes either way with probability 1/2)."""
    ids = sorted(set(a) & set(b))
    only_a = sum(bool(a[i]) and not b[i] for i in ids)
    only_b = sum(bool(b[i]) and not a[i] for i in ids)
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n if n else 0.5
    return {
        "cases": len(ids),
        "both": sum(bool(a[i]) and bool(b[i]) for i in ids),
        "only_first": only_a,
        "only_second": only_b,
        "neither": sum(not a[i] and not b[i] for i in ids),
        "p_two_sided": round(min(1.0, 2 * tail), 4),
    }


def frame_differences(video: np.ndarray) -> np.ndarray:
    """float [F - 1]: mean absolute difference (0-255 levels) of each pair of consecutive frames."""
    v = _as_uint8(video).astype(np.int16)
    return np.abs(np.diff(v, axis=0)).mean((1, 2, 3))


def mean_frame_difference(videos: Sequence[np.ndarray]) -> float:
    """The mean over videos of each one's mean `frame_differences` (how much a frame changes)."""
    return float(np.mean([frame_differences(v).mean() for v in videos]))


def flicker_ratio(videos: Sequence[np.ndarray], specs: Sequence[dict]) -> float:
    """How much generated frames change from one to the next, over how much the real clips of
    the same specs do (rendered at each video's size): ``mean_frame_difference`` of the videos
    over that of the renders. ~1 = as smooth as the world; a DiT whose latent frames disagree
    (objects that jump, double or change shape between frames) scores several times that,
    before its shapes and motions can be graded. NaN without a video of >= 2 frames whose real
    clip moves. A short prompt names only the subject, so a model that draws the world's
    occluding bars or camera pans for it (as its training clips have them) also scores above 1
    against the prompt's bare scene: `sweeps` tells those samples apart (`bar_metrics`)."""
    if len(videos) != len(specs):
        raise ValueError(f"Got {len(videos)} videos but {len(specs)} specs; expected one each.")
    pairs = [(_as_uint8(v), s) for v, s in zip(videos, specs, strict=True)]
    pairs = [(v, s) for v, s in pairs if len(v) >= 2]
    real = [world_render.render(s, v.shape[1], v.shape[2], v.shape[0]) for v, s in pairs]
    real_mad = mean_frame_difference(real) if real else 0.0
    if real_mad <= 0.0:
        return float("nan")
    return mean_frame_difference([v for v, _ in pairs]) / real_mad


def sweeps(video: np.ndarray, *, level: int = 24, fraction: float = 0.9) -> bool:
    """Whether a whole column or row of the frame changes between two consecutive frames (by
    > `level` in some channel over >= `fraction` of its length): an occluding bar passing or the
    camera panning over a textured background, which a moving object alone never does."""
    v = _as_uint8(video).astype(np.int16)
    if len(v) < 2:
        return False
    changed = np.abs(np.diff(v, axis=0)).max(-1) > level  # [F - 1, H, W]
    return bool((changed.mean(1) >= fraction).any() or (changed.mean(2) >= fraction).any())


def bar_metrics(videos: Sequence[np.ndarray], specs: Sequence[dict]) -> dict:
    """`bar_rate`: the share of the videos in which `sweeps` sees a bar pass (prompted in the
    occlusion scenes; in a short prompt's video, one the model added), and
    `flicker_ratio_without_bar`: `flicker_ratio` over the other videos (NaN if none)."""
    bar = [sweeps(v) for v in videos]
    rest = [i for i, b in enumerate(bar) if not b]
    return {
        "bar_rate": float(np.mean(bar)) if bar else float("nan"),
        "flicker_ratio_without_bar": (
            flicker_ratio([videos[i] for i in rest], [specs[i] for i in rest])
            if rest
            else float("nan")
        ),
    }


def boundaries(given: Sequence[bool]) -> list[int]:
    """Frames f whose given-ness differs from frame f - 1's (where generation meets a condition)."""
    g = np.asarray(given, bool)
    return [int(f) for f in np.flatnonzero(g[1:] != g[:-1]) + 1]


def continuity(video: np.ndarray, at: Sequence[int]) -> float:
    """Mean absolute difference (0-255 levels) between frames f - 1 and f over the frames ``at``
    (e.g. ``boundaries(given)``); NaN when ``at`` is empty. Compare it with the mean of
    ``frame_differences`` over real clips: a seamless boundary is no larger."""
    if not len(at):
        return float("nan")
    diffs = frame_differences(video)
    return float(np.mean([diffs[f - 1] for f in at]))

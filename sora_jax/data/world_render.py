"""Rendering a world spec (sora_jax/data/world.py has the schema) to uint8 pixels [F, H, W, 3]:
each shape is rasterised once as a cached sprite and scattered into all frames with one indexed
write, backgrounds are cached scalar fields looked up in a colour ramp; nothing loops over
pixels."""

from __future__ import annotations

import functools
import math

import numpy as np

from sora_jax.data.world_geometry import DIRECTIONS, SHAPE_EXTENT, shape_mask

_RAMP = np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]


@functools.lru_cache(maxsize=512)  # ≤ ~40 MB even at 256 px
def _field(kind: str, param, x0: int, y0: int, cols: int, rows: int, height: int, width: int):
    """uint8 [rows, cols] background field (0..255) at world pixels x0.., y0.. (cached per size).

    param: the gradient angle in degrees, or (pattern, frequency) of a texture.
    """
    xs, ys = np.arange(x0, x0 + cols) + 0.5, (np.arange(y0, y0 + rows) + 0.5)[:, None]
    if kind == "gradient":
        c, s = math.cos(math.radians(param)), math.sin(math.radians(param))
        proj = (xs / width - 0.5) * c + (ys / height - 0.5) * s
        field = np.clip(proj / (abs(c) + abs(s)) + 0.5, 0.0, 1.0)
    else:
        pattern, k = param[0], 2 * math.pi * param[1] / min(height, width)
        x, y = xs * k, ys * k
        if pattern == "checks":
            field = 0.5 + 0.5 * np.sign(np.sin(x) * np.sin(y))
        elif pattern == "stripes":
            field = 0.5 + 0.5 * np.sign(np.sin(0.8 * x + 0.6 * y))
        else:  # waves
            field = 0.5 + 0.5 * np.sin(x + 2.0 * np.sin(0.5 * y))
    out = np.rint(field * 255).astype(np.uint8)
    out.flags.writeable = False
    return out


def _draw_background(canvas: np.ndarray, bg: dict, pan_px: np.ndarray) -> None:
    """Fill the canvas; under a pan each frame is a shifted crop of one wider world image."""
    f_n, h, w, _ = canvas.shape
    if bg["kind"] == "flat":  # one tiled row: a trailing broadcast axis of 3 is ~20× slower
        canvas.reshape(f_n * h, w * 3)[:] = np.tile(np.asarray(bg["rgb"], np.uint8), w)
        return
    (x0, y0), (x1, y1) = pan_px.min(0).tolist(), pan_px.max(0).tolist()
    cols, rows = x1 - x0 + w, y1 - y0 + h
    lo = hi = np.asarray(bg["rgb"], np.float32)
    if bg["kind"] == "gradient":
        field = _field("gradient", bg["angle"], x0, y0, cols, rows, h, w)
        hi = np.asarray(bg["rgb2"], np.float32)
    else:
        param = (bg["pattern"], bg["frequency"])
        field = _field("texture", param, x0, y0, cols, rows, h, w)
        lo, hi = lo - bg["amplitude"], lo + bg["amplitude"]
    ramp = np.clip(np.rint(lo + (hi - lo) * _RAMP), 0, 255).astype(np.uint8)  # [256, 3]
    img = np.take(ramp, field, axis=0)  # [rows, cols, 3]
    if x0 == x1 and y0 == y1:
        canvas[...] = img
        return
    for f, (px, py) in enumerate(pan_px - [x0, y0]):  # one slice copy per frame
        canvas[f] = img[py : py + h, px : px + w]


@functools.lru_cache(maxsize=4096)
def _sprite(shape: str, radii: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel offsets (frame, dy, dx) from the centre pixel covered by a shape of radii [px].

    One radius: one sprite for every frame. Radii take few distinct values (sizes are discrete),
    so this is nearly always a cache hit.
    """
    if shape not in SHAPE_EXTENT:
        raise ValueError(f"Unknown shape {shape!r}; expected one of {tuple(SHAPE_EXTENT)}.")
    n = int(math.ceil(SHAPE_EXTENT[shape] * max(radii))) + 1
    o = np.arange(-n, n + 1, dtype=np.float32)
    r = np.asarray(radii, np.float32)[:, None, None]
    fs, ys, xs = np.nonzero(shape_mask(shape, o[None, None, :] / r, o[None, :, None] / r))
    out = (fs, ys - n, xs - n)
    for a in out:
        a.flags.writeable = False
    return out


def _draw_object(canvas: np.ndarray, obj: dict, t: np.ndarray, pan_px: np.ndarray) -> None:
    """Scatter the object's sprite into every frame at once, centred on pixel centres."""
    f_n, h, w, _ = canvas.shape
    (x0, y0), (x1, y1) = obj["start"], obj["end"]
    ix = np.floor((x0 + (x1 - x0) * t) * w).astype(int) - pan_px[:, 0]
    y = y0 + (y1 - y0) * t
    if obj["bounces"]:
        y = y - obj["bounce_height"] * np.abs(np.sin(np.pi * obj["bounces"] * t))
    iy = np.floor(y * h).astype(int) - pan_px[:, 1]
    (s0, s1), r = obj["scale"], obj["diameter"] / 2 * min(h, w)
    radii = (r * s0,) if s0 == s1 else tuple((r * (s0 + (s1 - s0) * t)).round(3).tolist())
    fs, ys, xs = _sprite(obj["shape"], radii)
    frames = np.arange(f_n)[:, None] if len(radii) == 1 else fs  # [F, 1] or [K]
    yy, xx = iy[frames] + ys, ix[frames] + xs
    flat = ((frames * h + yy) * w + xx).ravel()
    if flat.size == 0:  # smaller than a pixel (only at toy resolutions like 16x16)
        return
    if yy.min() < 0 or yy.max() >= h or xx.min() < 0 or xx.max() >= w:  # only by rounding
        flat = flat[((yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)).ravel()]
    # Write whole 3-byte pixels through a void view: ~2× faster than rows of a [N, 3] array.
    np.put(canvas.reshape(-1, 3).view("V3"), flat, np.asarray(obj["rgb"], np.uint8).view("V3"))


def _draw_occluder(canvas: np.ndarray, occ: dict, t: np.ndarray, pan_px: np.ndarray) -> None:
    _, h, w, _ = canvas.shape
    vertical = occ["orientation"] == "vertical"
    length, axis = (w, 0) if vertical else (h, 1)
    centre = (occ["start"] + (occ["end"] - occ["start"]) * t) * length - pan_px[:, axis]
    half = occ["width"] / 2 * min(h, w)
    lo = np.clip(np.rint(centre - half), 0, length).astype(int).tolist()
    hi = np.clip(np.rint(centre + half), 0, length).astype(int).tolist()
    rgb = np.asarray(occ["rgb"], np.uint8)
    for f in range(len(t)):
        if vertical:
            canvas[f, :, lo[f] : hi[f]] = rgb
        else:
            canvas[f, lo[f] : hi[f]] = rgb


@functools.lru_cache(maxsize=256)
def _times(num_frames: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    t.flags.writeable = False
    return t


def render(spec: dict, height: int, width: int, num_frames: int) -> np.ndarray:
    """Render a spec to uint8 [F, H, W, 3]; t = f / (F - 1), and t = 0 for a 1-frame still."""
    if min(height, width) < 8 or num_frames < 1:
        raise ValueError(f"Cannot render {num_frames} frames of {height}x{width}; expected "
                         "height, width ≥ 8 and num_frames ≥ 1.")  # fmt: skip
    t = _times(num_frames)
    canvas = np.empty((num_frames, height, width, 3), np.uint8)
    dx, dy = DIRECTIONS.get(spec["camera"]["pan"], (0, 0))
    d = spec["camera"]["distance"]  # screen pixel j shows world pixel j + pan_px
    pan_px = np.rint(np.stack([t * d * dx * width, t * d * dy * height], 1)).astype(int)
    _draw_background(canvas, spec["background"], pan_px)
    for obj in spec["objects"][1:] + spec["objects"][:1]:  # the subject on top of distractors
        _draw_object(canvas, obj, t, pan_px)
    if spec.get("occluder"):
        _draw_occluder(canvas, spec["occluder"], t, pan_px)
    return canvas

"""Spatial and temporal transforms that bring a clip to a bucket's shape, and scene cuts.

Spatial: resize so the frame *covers* the target (scale = max(h / H, w / W)), then centre-crop.
Nothing is stretched, so shapes keep their proportions; what is lost is the part of the longer
side that does not fit, measured by `crop_fraction`. Temporal: frames are sampled at a target fps
(the nearest source frame to each target time), from an offset in [0, 1] of the slack the caller
chooses, so 24 and 30 fps sources of the same motion play at the same speed on screen.

Shapes: F frames, H W height/width, C channels; clips are uint8 [F, H, W, C].
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def cover_size(src_h: int, src_w: int, height: int, width: int) -> tuple[int, int]:
    """The (h, w) to resize a src_h x src_w frame to so it covers height x width, aspect kept."""
    if min(src_h, src_w, height, width) < 1:
        raise ValueError(f"sizes must be positive, got {src_h}x{src_w} -> {height}x{width}.")
    scale = max(height / src_h, width / src_w)
    return max(height, round(src_h * scale)), max(width, round(src_w * scale))


def crop_fraction(src_h: int, src_w: int, height: int, width: int) -> float:
    """Fraction of the covering resize that the centre crop to height x width throws away."""
    r_src, r_dst = src_w / src_h, width / height
    return 1.0 - min(r_src, r_dst) / max(r_src, r_dst)


def center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """[F, H, W, C] -> [F, height, width, C], the centred window (H >= height, W >= width)."""
    h, w = frames.shape[1:3]
    if h < height or w < width:
        raise ValueError(f"cannot crop {h}x{w} frames to {height}x{width}; resize first.")
    top, left = (h - height) // 2, (w - width) // 2
    return frames[:, top : top + height, left : left + width]


def resize_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [F, H, W, 3] -> uint8 [F, height, width, 3]: covering resize, then centre crop.

    Pillow's bilinear resize widens its kernel when shrinking (antialiased), unlike a plain
    bilinear lookup that would alias fine textures at 4-8x downscales.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 [F, H, W, 3] frames, got {frames.dtype} {frames.shape}.")
    rh, rw = cover_size(frames.shape[1], frames.shape[2], height, width)
    if (rh, rw) != frames.shape[1:3]:
        frames = np.stack(
            [np.asarray(Image.fromarray(f).resize((rw, rh), Image.BILINEAR)) for f in frames]
        )
    return np.ascontiguousarray(center_crop(frames, height, width))


def source_step(src_fps: float, target_fps: float) -> float:
    """Source frames per output frame: src_fps / target_fps, or 1 when either is unknown (0)."""
    return src_fps / target_fps if src_fps > 0 and target_fps > 0 else 1.0


def fits_in_time(src_frames: int, src_fps: float, target_fps: float, num_frames: int) -> bool:
    """Whether `num_frames` frames at `target_fps` fit in a clip of `src_frames` frames."""
    span = (num_frames - 1) * source_step(src_fps, target_fps)
    return src_frames >= 1 and span <= src_frames - 1 + 1e-6


def temporal_indices(
    src_frames: int, src_fps: float, target_fps: float, num_frames: int, offset: float
) -> np.ndarray:
    """int64 [num_frames] source frame indices of a window sampled at `target_fps`.

    offset in [0, 1] places the window in the clip's slack (0 = start, 1 = end).
    """
    if not fits_in_time(src_frames, src_fps, target_fps, num_frames):
        raise ValueError(
            f"a clip of {src_frames} frames at {src_fps:g} fps is too short for {num_frames} "
            f"frames at {target_fps:g} fps."
        )
    step = source_step(src_fps, target_fps)
    slack = max(0.0, src_frames - 1 - (num_frames - 1) * step)
    start = float(np.clip(offset, 0.0, 1.0)) * slack
    idx = np.floor(start + step * np.arange(num_frames) + 0.5).astype(np.int64)
    return np.minimum(idx, src_frames - 1)


def parse_aspect(text: str) -> float:
    """'16:9' -> 16/9 (width / height); also accepts a plain float '1.78'."""
    w, sep, h = str(text).partition(":")
    try:
        value = float(w) / float(h) if sep else float(w)
    except (ValueError, ZeroDivisionError):
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(
            f"aspect ratio {text!r} must read 'W:H' (e.g. '16:9') or a positive float."
        )
    return value


def frame_difference(prev: np.ndarray | None, frame: np.ndarray) -> float:
    """Mean absolute difference in [0, 1] of two grey frames (uint8 [h, w]); 0 for the first."""
    if prev is None:
        return 0.0
    return float(np.mean(np.abs(frame.astype(np.int16) - prev.astype(np.int16)))) / 255.0


def scene_cuts(diffs: np.ndarray, threshold: float, min_frames: int) -> list[tuple[int, int]]:
    """[start, end) frame ranges of the scenes of a clip from its consecutive-frame differences.

    diffs: float [F] with diffs[i] = difference between frames i-1 and i (diffs[0] = 0). A cut
    sits before frame i when diffs[i] > threshold; scenes shorter than `min_frames` are dropped
    (flashes and fades, which a hard threshold splits into slivers).
    """
    diffs = np.asarray(diffs, np.float64)
    starts = [0] + [int(i) for i in np.flatnonzero(diffs > threshold) if i > 0]
    bounds = [*starts, len(diffs)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b - a >= max(1, min_frames)]

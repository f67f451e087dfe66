"""Buckets of (frames, height, width), clip -> bucket assignment, and the per-step schedule.

Every batch holds clips of one shape, so each bucket compiles one train step. A bucket table in
the config has rows `(spec, batch_size, weight)` where spec is either an explicit shape
`"FxHxW"` ("33x256x448") or frames at a named resolution `"F@RES"` ("33@256p"), which expands
into one bucket per aspect-ratio class (`aspect_ratios=("16:9", "1:1", "9:16")`; RES is the
shorter side, sides rounded to multiples of 16). A batch size of 0 is derived from a token
budget: the most clips whose DiT tokens (after the VAE's 4x8x8 compression and 1x2x2 patches)
fit in `token_budget`, rounded down to a multiple of `batch_multiple` (the number of hosts).

Which bucket a step draws is a pure function of (seed, step) — a counter-based hash, not a
stateful RNG — so every host picks the same bucket at the same step, and `StepSchedule` gives
how many earlier steps drew that bucket (the bucket's own stream position) in O(1) amortised, so
a resumed run continues the same sequence without saving any iterator state.

Assignment (`eligible_indices`): a clip of F frames at `fps`, H x W, may fill a bucket when
  * images (F = 1) go only to 1-frame buckets; videos go to video buckets whose frame count fits
    in their duration at the target fps, and (by default) to 1-frame buckets as stills;
  * the bucket's aspect ratio is the table's nearest to the clip's (log scale), and the centre
    crop after a covering resize keeps at least 1 - max_crop_fraction of the frame;
  * the bucket is not larger than the clip by more than max_upscale on either side.
Clips that fit no bucket (absurd aspect ratios, too short, too small) are never drawn.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from sora_jax.data import transforms

_SHAPE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*$")
_NAMED = re.compile(r"^\s*(\d+)\s*@\s*(\d+)p\s*$")
SIDE_MULTIPLE = 16  # VAE 8x spatial compression x 2x2 patches


@dataclasses.dataclass(frozen=True)
class Bucket:
    num_frames: int
    height: int
    width: int
    batch_size: int  # global batch size
    weight: float  # relative sampling probability
    aspect: str = ""  # aspect class it was expanded from ("16:9"), "" for explicit shapes

    @property
    def name(self) -> str:
        return f"{self.num_frames}x{self.height}x{self.width}"

    @property
    def aspect_ratio(self) -> float:
        return self.width / self.height


def named_shape(short_side: int, aspect: str) -> tuple[int, int]:
    """(height, width) of a resolution class: shorter side `short_side`, width/height `aspect`."""
    r = transforms.parse_aspect(aspect)
    h, w = (short_side, short_side * r) if r >= 1 else (short_side / r, short_side)
    rnd = lambda x: max(SIDE_MULTIPLE, int(round(x / SIDE_MULTIPLE)) * SIDE_MULTIPLE)
    return rnd(h), rnd(w)


def tokens_per_clip(
    num_frames: int, height: int, width: int, compression=(4, 8, 8), patch=(1, 2, 2)
) -> int:
    """DiT tokens of a clip: causal VAE keeps frame 0 alone (1 + (F-1)/ct latent frames)."""
    t = 1 + math.ceil((num_frames - 1) / compression[0])
    h = math.ceil(height / compression[1] / patch[1])
    w = math.ceil(width / compression[2] / patch[2])
    return math.ceil(t / patch[0]) * h * w


def _aspect_classes(aspect_ratios) -> list[tuple[str, float]]:
    """("16:9", ("1:1", 2.0), ...) -> [(name, weight)] (weights relative, default 1)."""
    out = []
    for a in aspect_ratios or ("1:1",):
        name, weight = (a, 1.0) if isinstance(a, str) else (str(a[0]), float(a[1]))
        transforms.parse_aspect(name)
        if weight <= 0:
            raise ValueError(f"aspect class {a!r} needs a positive weight.")
        out.append((name, weight))
    return out


def parse_buckets(
    table: Sequence[Sequence],
    *,
    aspect_ratios: Sequence = (),
    token_budget: int = 0,
    batch_multiple: int = 1,
    compression: Sequence[int] = (4, 8, 8),
    patch: Sequence[int] = (1, 2, 2),
) -> list[Bucket]:
    """Buckets from config rows `(spec, batch_size, weight)` (see the module docstring)."""
    if not table:
        raise ValueError("the bucket table is empty; give at least one ('FxHxW', batch, weight).")
    classes = _aspect_classes(aspect_ratios)
    buckets = []
    for row in table:
        if len(row) != 3:
            raise ValueError(f"bucket {row!r} must be ('FxHxW' or 'F@RESp', batch_size, weight).")
        spec, batch, weight = str(row[0]), int(row[1]), float(row[2])
        if batch < 0 or weight <= 0:
            raise ValueError(f"bucket {row!r} needs a batch size >= 0 and a positive weight.")
        if m := _SHAPE.match(spec):
            f, h, w = map(int, m.groups())
            shapes = [(f, h, w, 1.0, "")]
        elif m := _NAMED.match(spec):
            f, side = map(int, m.groups())
            total = sum(wt for _, wt in classes)
            shapes = [(f, *named_shape(side, a), wt / total, a) for a, wt in classes]
        else:
            raise ValueError(f"bucket shape {spec!r} must read 'FxHxW' ('9x32x32') or 'F@RESp'.")
        for f, h, w, share, aspect in shapes:
            if min(f, h, w) < 1:
                raise ValueError(f"bucket {row!r} needs positive frames and size.")
            b = batch
            if b == 0:
                if token_budget <= 0:
                    raise ValueError(
                        f"bucket {row!r} has batch size 0 but token_budget is not set."
                    )
                n = token_budget // tokens_per_clip(f, h, w, compression, patch)
                b = max(batch_multiple, n // batch_multiple * batch_multiple)
            buckets.append(Bucket(f, h, w, b, weight * share, aspect))
    names = [b.name for b in buckets]
    if len(set(names)) != len(names):
        raise ValueError(f"the bucket table repeats a shape: {names}.")
    return buckets


def buckets_from_config(table, data_cfg: Mapping | None = None, batch_multiple: int = 1):
    """parse_buckets with the aspect classes and token budget of a config's `data` section."""
    data_cfg = dict(data_cfg or {})
    return parse_buckets(
        table,
        aspect_ratios=tuple(data_cfg.get("aspect_ratios", ()) or ()),
        token_budget=int(data_cfg.get("token_budget", 0) or 0),
        batch_multiple=batch_multiple,
    )


def eligible_indices(
    buckets: Sequence[Bucket],
    meta: Mapping[str, np.ndarray] | None,
    *,
    target_fps: float = 0.0,
    max_crop_fraction: float = 0.5,
    max_upscale: float = 1.0,
    videos_as_images: bool = True,
) -> list[np.ndarray] | None:
    """Per bucket, the int64 indices of the clips that may fill it (None: every clip fits any).

    meta: arrays `num_frames`, `fps`, `height`, `width` of shape [N] (see sources.Source.meta).
    """
    if meta is None:
        return None
    frames = np.asarray(meta["num_frames"], np.int64)
    fps = np.asarray(meta["fps"], np.float64)
    h = np.maximum(np.asarray(meta["height"], np.float64), 1)
    w = np.maximum(np.asarray(meta["width"], np.float64), 1)
    log_r = np.log(w / h)
    table_r = np.unique(np.round([math.log(b.aspect_ratio) for b in buckets], 3))
    nearest = table_r[np.argmin(np.abs(log_r[:, None] - table_r[None, :]), axis=1)]
    out = []
    for b in buckets:
        ok = (frames >= 1) & (np.abs(nearest - round(math.log(b.aspect_ratio), 3)) < 1e-6)
        r_b = b.aspect_ratio
        ok &= 1.0 - np.minimum(w / h, r_b) / np.maximum(w / h, r_b) <= max_crop_fraction
        scale = np.maximum(b.height / h, b.width / w)  # the covering resize
        ok &= scale <= max_upscale + 1e-9
        if b.num_frames == 1:
            ok &= (frames == 1) | videos_as_images
        else:
            step = np.where((fps > 0) & (target_fps > 0), fps / max(target_fps, 1e-9), 1.0)
            ok &= (frames > 1) & ((b.num_frames - 1) * step <= frames - 1 + 1e-6)
        out.append(np.flatnonzero(ok).astype(np.int64))
    return out


def _hash_uniform(seed: int, counters: np.ndarray, stream: int = 0) -> np.ndarray:
    """Uniform [0, 1) floats from (seed, stream, counter) via splitmix64; vectorised, stateless."""
    with np.errstate(over="ignore"):
        x = (
            np.asarray(counters, np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            + np.uint64(seed & 0xFFFFFFFF) * np.uint64(0xD1B54A32D192ED03)
            + np.uint64(stream) * np.uint64(0x8CB92BA72F3D8DD7)
        )
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def hash_uniform(seed: int, counters, stream: int = 0) -> np.ndarray:
    return _hash_uniform(seed, np.asarray(counters), stream)


def name_seed(name: str) -> int:
    """A stable 31-bit integer from a string (python's hash() is salted per process)."""
    h = 0
    for ch in name.encode():
        h = (h * 1_000_003 + ch) % (1 << 31)
    return h


def bucket_of_steps(buckets: Sequence[Bucket], seed: int, steps: np.ndarray) -> np.ndarray:
    """The bucket index drawn at each step (same on every host)."""
    weights = np.array([b.weight for b in buckets], np.float64)
    cdf = np.cumsum(weights / weights.sum())
    u = _hash_uniform(seed, np.asarray(steps), stream=1)
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(buckets) - 1)


def bucket_position(buckets: Sequence[Bucket], seed: int, step: int) -> tuple[int, int]:
    """(bucket index of `step`, how many earlier steps drew that bucket)."""
    idx = bucket_of_steps(buckets, seed, np.arange(step + 1))
    return int(idx[-1]), int(np.sum(idx[:-1] == idx[-1]))


class StepSchedule:
    """`bucket_position` for any step in O(block): per-bucket counts cached every `block` steps."""

    def __init__(self, buckets: Sequence[Bucket], seed: int, block: int = 4096):
        self.buckets, self.seed, self.block = list(buckets), int(seed), int(block)
        self._prefix = np.zeros((1, len(self.buckets)), np.int64)  # counts before block i

    def _extend(self, blocks: int) -> None:
        rows = [self._prefix]
        last = self._prefix[-1]
        for i in range(len(self._prefix) - 1, blocks):
            steps = np.arange(i * self.block, (i + 1) * self.block)
            drawn = bucket_of_steps(self.buckets, self.seed, steps)
            last = last + np.bincount(drawn, minlength=len(self.buckets))
            rows.append(last[None])
        self._prefix = np.concatenate(rows)

    def position(self, step: int) -> tuple[int, int]:
        """(bucket index drawn at `step`, how many earlier steps drew it)."""
        block = step // self.block
        if block >= len(self._prefix):
            self._extend(block)
        steps = np.arange(block * self.block, step + 1)
        drawn = bucket_of_steps(self.buckets, self.seed, steps)
        b = int(drawn[-1])
        return b, int(self._prefix[block, b] + np.sum(drawn[:-1] == b))

"""Buckets of (frames, height, width) and the deterministic per-step bucket schedule.

Every batch holds clips of one shape, so each bucket compiles one train step. Which bucket a
step draws is a pure function of (seed, step) — a counter-based hash, not a stateful RNG — so
every host picks the same bucket at the same step and a resumed run continues the same sequence
without saving any iterator state.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

_SPEC = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class Bucket:
    num_frames: int
    height: int
    width: int
    batch_size: int  # global batch size
    weight: float  # relative sampling probability

    @property
    def name(self) -> str:
        return f"{self.num_frames}x{self.height}x{self.width}"


def parse_buckets(table: Sequence[Sequence]) -> list[Bucket]:
    """Parses `(("FxHxW", batch_size, weight), ...)` from a config into buckets."""
    if not table:
        raise ValueError("the bucket table is empty; give at least one ('FxHxW', batch, weight).")
    buckets = []
    for row in table:
        if len(row) != 3:
            raise ValueError(f"bucket {row!r} must be ('FxHxW', batch_size, weight).")
        spec, batch, weight = row
        m = _SPEC.match(str(spec))
        if not m:
            raise ValueError(f"bucket shape {spec!r} must read 'FxHxW', e.g. '9x32x32'.")
        f, h, w = map(int, m.groups())
        if f < 1 or h < 1 or w < 1 or int(batch) < 1 or float(weight) <= 0:
            raise ValueError(f"bucket {row!r} needs positive frames, size, batch and weight.")
        buckets.append(Bucket(f, h, w, int(batch), float(weight)))
    return buckets


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

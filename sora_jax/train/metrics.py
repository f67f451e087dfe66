"""Metric writers, progress reporting and MFU accounting.

`clu.metric_writers` (TensorBoard) imports TensorFlow; when it is not installed the loop still
runs and writes every scalar to the log and to `<workdir>/metrics.jsonl` (one JSON object per
step), which is also what the tests and `summary.json` read back.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping

import jax
import numpy as np

# Datasheet dense bf16 peak FLOP/s per device kind (substring of `device.device_kind`).
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("TPU v5p", 459e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v4", 275e12),
    ("TPU v6", 918e12),
)


def peak_flops(device=None) -> float | None:
    """Datasheet dense bf16 peak of a device, or None when unknown (e.g. CPU)."""
    kind = (device or jax.devices()[0]).device_kind
    for key, value in PEAK_BF16_FLOPS:
        if key.lower() in kind.lower():
            return value
    return None


class JsonlWriter:
    """Scalars to `metrics.jsonl` and the log (process 0 only)."""

    def __init__(self, path: str, prefix: str = ""):
        self._path = path
        self._prefix = prefix
        self._active = jax.process_index() == 0
        if self._active:
            os.makedirs(os.path.dirname(path), exist_ok=True)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self._active:
            return
        row = {"step": int(step)}
        row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
        with open(self._path, "a") as f:
            f.write(json.dumps(row) + "\n")
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k != "step")
        logging.info("%s[%d] %s", self._prefix, step, shown)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"


class MultiWriter:
    def __init__(self, writers):
        self.writers = list(writers)

    def write_scalars(self, step, scalars):
        for w in self.writers:
            w.write_scalars(step, scalars)

    def flush(self):
        for w in self.writers:
            w.flush()

    def close(self):
        for w in self.writers:
            w.close()


def create_writer(workdir: str, prefix: str = "") -> MultiWriter:
    """JSONL + log always; TensorBoard through clu when TensorFlow is importable."""
    writers = [JsonlWriter(os.path.join(workdir, "metrics.jsonl"), prefix)]
    try:
        from clu import metric_writers  # imports tensorflow

        if jax.process_index() == 0:
            writers.append(metric_writers.SummaryWriter(os.path.join(workdir, "tb")))
    except Exception:  # noqa: BLE001 - no TensorFlow: JSONL + log only.
        pass
    return MultiWriter(writers)


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Progress:
    """Steps/s, ETA and time split (data wait / compute / checkpoint) between reports."""

    def __init__(self, total_steps: int, start_step: int):
        self.total = total_steps
        self.last_step = start_step
        self.last_time = time.perf_counter()
        self.timers = {"data_s": 0.0, "compute_s": 0.0, "checkpoint_s": 0.0}

    def add(self, name: str, seconds: float) -> None:
        self.timers[name] += seconds

    def report(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        steps = max(step - self.last_step, 1)
        elapsed = max(now - self.last_time, 1e-9)
        rate = steps / elapsed
        out = {
            "steps_per_s": rate,
            "eta_s": (self.total - step) / rate,
            **{f"time_{k}": v / steps for k, v in self.timers.items()},
        }
        self.last_step, self.last_time = step, now
        self.timers = dict.fromkeys(self.timers, 0.0)
        return out

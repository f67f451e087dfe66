"""What ends a training stage early, besides its step count: its time budget
(`max_train_seconds`) and a streak of non-finite steps. The loop (loop.py) consults both."""

from __future__ import annotations

import collections
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils


class TimeBudget:
    """Wall seconds a stage may train per invocation (`max_train_seconds`; compiles count).

    Checked at log steps only. Every process takes process 0's answer, so all of them stop at
    the same step (multi-host); 0 = no limit.
    """

    def __init__(self, seconds: float):
        if seconds < 0:
            raise ValueError(f"max_train_seconds must be >= 0 (0 = no limit), not {seconds}.")
        self.seconds = seconds
        self.start = time.perf_counter()

    def spent(self) -> bool:
        if not self.seconds:
            return False
        over = np.int32(time.perf_counter() - self.start > self.seconds)
        if jax.process_count() > 1:
            over = multihost_utils.broadcast_one_to_all(over)
        return bool(over)


class NonFiniteGuard:
    """Counts consecutive non-finite steps; after `limit` in a row explains them."""

    def __init__(self, limit: int, names: list[str]):
        self.limit = int(limit)
        self.names = names
        self.streak: collections.deque = collections.deque()

    def observe(self, step: int, nonfinite: bool, diag: Any) -> None:
        if nonfinite:
            self.streak.append((step, diag))
        else:
            self.streak.clear()

    @property
    def tripped(self) -> bool:
        return self.limit > 0 and len(self.streak) >= self.limit

    def message(self) -> str:
        parts = []
        for step, diag in jax.device_get(list(self.streak)):
            bad_batch = sorted(k for k, ok in diag["batch_finite"].items() if not ok)
            bad = [n for n, ok in zip(self.names, diag["grads_finite"]) if not ok]
            if bad_batch:
                what = f"the batch has non-finite values in {bad_batch}"
            elif not diag["loss_finite"]:
                what = "the loss is non-finite with a finite batch"
            else:
                what = "the loss is finite"
            shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
            grads = f"non-finite gradients in {len(bad)} parameters ({shown})" if bad else ""
            parts.append(f"step {step}: {what}" + (f"; {grads}" if grads else ""))
        return (
            f"{len(self.streak)} consecutive steps had a non-finite loss or gradient "
            f"({'; '.join(parts)}); stopped with a checkpoint of the last good parameters."
        )

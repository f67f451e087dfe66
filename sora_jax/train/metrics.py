"""Metric writers, interval averages, progress, profiling and MFU accounting.

`clu.metric_writers` (TensorBoard) imports TensorFlow; when it is not installed the loop still
runs and writes every scalar to the log and to `<workdir>/metrics.jsonl` (one JSON object per
logged step), which is also what the tests and `summary.json` read back. Only process 0
writes. Legend: B batch.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.train import trace_summary

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


def truncate_jsonl(path: str, max_step: int) -> int:
    """Drops rows logged after `max_step` (a resumed run recomputes them); returns how many.

    Only process 0 touches the file. The rewrite goes through a temporary file and a rename,
    so a kill during it leaves either the old or the new file.
    """
    if jax.process_index() != 0 or not os.path.exists(path):
        return 0
    rows = read_jsonl(path)
    keep = [r for r in rows if int(r.get("step", 0)) <= max_step]
    if len(keep) == len(rows):
        return 0
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)
    os.replace(tmp, path)
    return len(rows) - len(keep)


def timestep_binned(
    values: jax.Array, t: jax.Array, num_bins: int = 4, name: str = "loss"
) -> dict[str, jax.Array]:
    """Mean of per-sample `values` [B] in `num_bins` equal bins of the timestep `t` [B] in [0, 1].

    Returns {f"{name}_t{i}": mean over samples with t in [i/n, (i+1)/n)}; an empty bin is NaN,
    which `mean_rows` ignores, so the logged value averages the samples that fell in the bin
    over the log interval (per step). Jittable; a task returns it among its aux metrics.
    """
    values = values.astype(jnp.float32).reshape(-1)
    t = t.astype(jnp.float32).reshape(-1)
    idx = jnp.clip(jnp.floor(t * num_bins).astype(jnp.int32), 0, num_bins - 1)
    onehot = jax.nn.one_hot(idx, num_bins, dtype=jnp.float32)  # [B, bins]
    sums = onehot.T @ values
    counts = onehot.sum(0)
    means = jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), jnp.nan)
    return {f"{name}_t{i}": means[i] for i in range(num_bins)}


def mean_rows(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-key mean over the steps of a log interval, ignoring NaN (all NaN stays NaN)."""
    keys = dict.fromkeys(k for r in rows for k in r)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN slices
        for k in keys:
            vals = np.asarray([float(r[k]) for r in rows if k in r], np.float64)
            out[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float(vals[-1])
    return out


class Progress:
    """Steps/s, ETA and the wall time of an interval split into data / compute / ckpt / hooks.

    The loop adds the time it spends waiting for data, saving checkpoints and running hooks;
    `report` is called after blocking on the interval's last step, so the rest of the wall
    time is device compute (plus dispatch) and the four parts add up to the interval.
    """

    PARTS = ("data_s", "checkpoint_s", "hooks_s")

    def __init__(self, total_steps: int, start_step: int):
        self.total = total_steps
        self.last_step = start_step
        self.last_time = time.perf_counter()
        self.timers = dict.fromkeys(self.PARTS, 0.0)

    def add(self, name: str, seconds: float) -> None:
        self.timers[name] += seconds

    def report(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        steps = max(step - self.last_step, 1)
        elapsed = max(now - self.last_time, 1e-9)
        rate = steps / elapsed
        compute = max(elapsed - sum(self.timers.values()), 0.0)
        out = {
            "steps_per_s": rate,
            "eta_s": (self.total - step) / rate,
            "time_compute_s": compute / steps,
            **{f"time_{k}": v / steps for k, v in self.timers.items()},
        }
        self.last_step, self.last_time = step, now
        self.timers = dict.fromkeys(self.PARTS, 0.0)
        return out


class StepTimes:
    """The wall time of each finished step, per batch shape (one bucket of a bucketed run), and
    where the host spent it.

    The loop reads step n's metrics once step n has finished, while step n+1 is queued behind
    it, so with the device the bottleneck the time between two such reads is the device's time
    for step n. The median per shape is then what a step of that bucket costs in the run (a
    shape's first step, which compiles, and the steps after a sample round or a drained queue
    land in the tail), where the profile's traced steps show one bucket only; the mean is what
    the run's total time is made of.

    The host's share of a step, per shape (means): `data_ms` waiting for its host batch and
    putting it on the devices, `dispatch_ms` the call of the jitted step (it returns once the
    step is queued; on GPUs its kernel launches happen in it where the runtime launches from the
    calling thread), `wait_ms` blocked reading the previous step's metrics. A mean interval well
    above the median with a small wait says the host, not the device, held the steps back.
    """

    def __init__(self):
        self.last: float | None = None
        self.seconds: dict[str, list[float]] = collections.defaultdict(list)
        self.parts: dict[str, dict[str, list[float]]] = collections.defaultdict(
            lambda: collections.defaultdict(list)
        )

    def dispatched(self, label: str, data_s: float, dispatch_s: float) -> None:
        """The host's time for the step of shape `label`: its batch, its dispatch."""
        self.parts[label]["data"].append(data_s)
        self.parts[label]["dispatch"].append(dispatch_s)

    def finished(self, label: str, wait_s: float | None = None) -> None:
        """Step finished now; `label` names its batch shape (precompile.shapes_text); `wait_s`:
        how long the host was blocked waiting for it."""
        now = time.perf_counter()
        if self.last is not None:
            self.seconds[label].append(now - self.last)
        self.last = now
        if wait_s is not None:
            self.parts[label]["wait"].append(wait_s)

    def summary(self) -> dict[str, dict[str, float]]:
        """{label: {steps, median_ms, p90_ms, mean_ms[, data_ms, dispatch_ms, wait_ms]}}, the
        most frequent shape first."""
        out = {}
        for label, times in sorted(self.seconds.items(), key=lambda kv: -len(kv[1])):
            ms = np.asarray(times) * 1e3
            out[label] = {"steps": len(times), "median_ms": round(float(statistics.median(ms)), 2),
                          "p90_ms": round(float(np.percentile(ms, 90)), 2),
                          "mean_ms": round(float(ms.mean()), 2)}  # fmt: skip
            for part, seconds in self.parts.get(label, {}).items():
                out[label][f"{part}_ms"] = round(float(np.mean(seconds)) * 1e3, 2)
        return out

    def write(self, path: str) -> None:
        if self.seconds and jax.process_index() == 0:
            with open(path, "w") as f:
                json.dump(self.summary(), f, indent=1)


class Profiler:
    """A `jax.profiler` trace of steps [a, b) (the 1-based numbers the metrics are logged at).

    The trace starts before step a is dispatched and stops once step b-1 has finished, into
    `<workdir>/profile` (TensorBoard's profile plugin or Perfetto read it). Process 0 only.
    Then the device time per kernel of those steps goes to `<workdir>/profile/summary.json`
    (sora_jax/train/trace_summary.py: top kernels, time per category, per step), small enough
    to come back from a machine whose traces stay there.
    """

    def __init__(self, workdir: str, steps: Sequence[int] | None):
        steps = tuple(steps or ())
        if steps and (len(steps) != 2 or not 0 < int(steps[0]) < int(steps[1])):
            raise ValueError(f"profile_steps {steps} must be (a, b) with 0 < a < b, or empty.")
        self.window = (int(steps[0]), int(steps[1])) if steps else None
        self.logdir = os.path.join(workdir, "profile")
        self.active = False

    def before(self, step_number: int) -> None:
        if self.window and step_number == self.window[0] and jax.process_index() == 0:
            # No Python tracer: every Python call of every thread (the data threads, a step's
            # first trace) would fill the trace's event cap before the kernels got in.
            options = jax.profiler.ProfileOptions()
            options.python_tracer_level = 0
            try:  # a trace is a diagnostic: one that cannot start must not stop the training
                jax.profiler.start_trace(
                    self.logdir, create_perfetto_trace=True, profiler_options=options
                )
            except Exception as e:  # e.g. another trace is running in this process
                logging.warning("profiling steps [%d, %d) did not start: %s", *self.window, e)
                return
            self.active = True
            logging.info("profiling steps [%d, %d) into %s", *self.window, self.logdir)

    def after(self, step_number: int, result) -> None:
        if self.active and step_number >= self.window[1] - 1:
            jax.block_until_ready(result)
            self.stop()

    def stop(self) -> None:
        if self.active:
            self.active = False
            try:
                jax.profiler.stop_trace()
            except Exception as e:  # the trace is lost, the run goes on
                logging.warning("profile of steps [%d, %d) could not be written: %s",
                                *self.window, e)  # fmt: skip
                return
            self._summarize()

    def _summarize(self) -> None:
        """Writes summary.json; a trace it cannot read costs a warning, never the run."""
        steps = self.window[1] - self.window[0]
        try:
            summary = trace_summary.summarize_dir(self.logdir, steps)
        except (OSError, ValueError, KeyError) as e:
            logging.warning("profile summary of steps [%d, %d) failed: %s", *self.window, e)
            return
        out = {"steps": list(self.window), "backend": jax.default_backend(), **summary}
        with open(os.path.join(self.logdir, "summary.json"), "w") as f:
            json.dump(out, f, indent=1)
        cats = ", ".join(f"{c} {v['ms_per_iter']:.2f} ms" for c, v in summary["categories"].items())
        logging.info("profile: %.2f ms of kernels per step (%s)", summary["total_ms"], cats)

"""Where a world run's time went outside its training steps (tools/world_report.py's
`fixed_costs`), from what tools/experiments/world_gpu.sh leaves in the workdir: each stage's
absl log (<stage>.log: start to first step, latent caches and their wait for rendered clips,
programs compiled beside the steps, a render-worker failure), its metrics.jsonl (hooks,
checkpoints, log intervals slower than the median) and stage dit_compile's dit_compile.ready.
"""

from __future__ import annotations

import os
import re
import statistics

from bench import report  # tools/bench/report.py (tools/ is on the path: world_report.py)

from sora_jax.train import metrics as metrics_lib

_ABSL_TIME = re.compile(r"^[IWEF]\d{4} (\d\d):(\d\d):(\d\d\.\d+) ")
_CACHE_LINE = re.compile(r"latent cache of bucket (\S+): \d+ clips in ([\d.]+) s \(([\d.]+) s wait")
_PERIODIC_LINE = re.compile(r"periodic programs compiled beside the steps in ([\d.]+) s")


def _log_seconds(line: str) -> float | None:
    """Seconds since midnight of an absl log line ("I1205 16:42:38.659932 ..."), else None."""
    m = _ABSL_TIME.match(line)
    return None if m is None else int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])


def _stage_log(path: str, name: str) -> dict | None:
    """Start-up costs in a stage's log (world_gpu.sh's <stage>.log): seconds from the stage's
    start to its first step, its latent caches (DiT: seconds and the wait for rendered clips,
    per bucket), the periodic programs' compile beside the steps (VAE), a render-worker
    failure."""
    if not os.path.exists(path):
        return None
    start = first = None
    out: dict = {}
    with open(path, errors="replace") as f:
        for line in f:
            t = _log_seconds(line)
            if t is None:
                continue
            if start is None and line.rstrip().endswith(f"] stage {name}"):
                start = t
            elif first is None and f"{name}: step " in line and ": first batch" in line:
                first = t
            elif m := _CACHE_LINE.search(line):
                out.setdefault("latent_caches", []).append(
                    {"bucket": m[1], "seconds": float(m[2]), "waiting_s": float(m[3])}
                )
            elif m := _PERIODIC_LINE.search(line):
                out["periodic_compile_s"] = float(m[1])
            elif "render workers failed" in line:
                out["render_workers_failed"] = True
    if start is not None and first is not None:
        out["start_to_first_step_s"] = round((first - start) % 86400, 1)
    return out or None


def _interval_costs(rows: list[dict]) -> dict | None:
    """From a stage's metrics.jsonl rows: the median steps/s of its log intervals (the first,
    which holds the compile, left out), the seconds its periodic hooks (evaluations, sample
    rounds) and checkpoints took, and the intervals slower than 0.9x the median."""
    rows = [r for r in rows if "steps_per_s" in r]
    if len(rows) < 3:
        return None
    spans = [(r, r["step"] - p["step"]) for p, r in zip(rows, rows[1:])]
    median = statistics.median(r["steps_per_s"] for r, _ in spans)
    return {
        "median_steps_per_s": round(median, 2),
        "hooks_s": round(sum(r.get("time_hooks_s", 0.0) * n for r, n in spans), 1),
        "checkpoint_s": round(sum(r.get("time_checkpoint_s", 0.0) * n for r, n in spans), 1),
        "slow_intervals": [
            [r["step"], round(r["steps_per_s"], 2)]
            for r, _ in spans
            if r["steps_per_s"] < 0.9 * median
        ],  # fmt: skip
    }


def fixed_costs(workdir: str) -> dict | None:
    """Where a run's time went outside its steps, per stage: its logs' start-up costs, its
    metrics' hooks and checkpoints, and stage dit_compile's `dit_compile.ready` (the compiles
    the DiT stage waited for)."""
    out: dict = {}
    for name in ("vae", "dit"):
        costs = _stage_log(os.path.join(workdir, f"{name}.log"), name) or {}
        rows = metrics_lib.read_jsonl(os.path.join(workdir, name, "metrics.jsonl"))
        costs.update(_interval_costs(rows) or {})
        # The traced steps (`profile_steps`, one bucket's): their kernels' device time and the
        # time the device was busy within their span.
        profile = report.read_json(os.path.join(workdir, name, "profile", "summary.json")) or {}
        for key, field in (("total_ms", "kernel_ms_per_step"), ("busy_ms", "busy_ms_per_step"),
                           ("span_ms", "span_ms_per_step")):  # fmt: skip
            if profile.get(key):
                costs[field] = round(float(profile[key]), 1)
        if profile.get("host"):  # where the traced steps' work was issued from (GPU traces)
            costs["traced_host"] = profile["host"]
        # The median wall time of a step per batch shape (the loop's step_times.json).
        by_shape = report.read_json(os.path.join(workdir, name, "step_times.json"))
        if by_shape:
            costs["step_ms_by_shape"] = by_shape
        if costs:
            out[name] = costs
    ready = report.read_json(os.path.join(workdir, "dit_compile.ready"))
    if ready is not None:
        out["dit_compile_ready"] = ready
    return out or None


def _step_text(t: dict) -> str:
    """A bucket's step: its median, and where step_times.json has them (runs since the
    seventeenth) its mean and the host's share (batch, dispatch, waiting for the device)."""
    text = f"{t['median_ms']:.1f} ms"
    if "mean_ms" in t:
        text += f" median, {t['mean_ms']:.1f} mean"
    host = [f"{k} {t[k + '_ms']:.1f}" for k in ("data", "dispatch", "wait") if k + "_ms" in t]
    return text + (f" (host: {', '.join(host)} ms)" if host else "")


def costs_text(costs: dict) -> str:
    """One line of a stage's `fixed_costs`."""
    parts = []
    if "start_to_first_step_s" in costs:
        parts.append(f"first step after {costs['start_to_first_step_s']:.0f} s")
    if costs.get("latent_caches"):
        built = sum(c["seconds"] for c in costs["latent_caches"])
        waiting = sum(c["waiting_s"] for c in costs["latent_caches"])
        parts.append(f"latent caches {built:.0f} s ({waiting:.0f} s waiting for clips)")
    if costs.get("render_workers_failed"):
        parts.append("render workers failed")
    for key, label in (("periodic_compile_s", "periodic programs compiled beside in"),
                       ("hooks_s", "hooks"), ("checkpoint_s", "checkpoints"),
                       ("caption_compile_s", "caption programs"),
                       ("encode_compile_s", "encodes"), ("compile_s", "steps")):  # fmt: skip
        if key in costs:
            parts.append(f"{label} {costs[key]:.0f} s")
    if "median_steps_per_s" in costs:
        slow = costs.get("slow_intervals", [])
        parts.append(f"median {costs['median_steps_per_s']:.1f} steps/s, "
                     f"{len(slow)} slower log intervals")  # fmt: skip
        if "kernel_ms_per_step" in costs:  # the traced steps' bucket against all buckets'
            step_ms = 1000.0 / costs["median_steps_per_s"]
            parts.append(f"kernels {costs['kernel_ms_per_step']:.1f} ms a traced step "
                         f"(a step {step_ms:.1f} ms at the median rate)")  # fmt: skip
        if "busy_ms_per_step" in costs and "span_ms_per_step" in costs:
            parts.append(f"device busy {costs['busy_ms_per_step']:.1f} of "
                         f"{costs['span_ms_per_step']:.1f} ms a traced step")  # fmt: skip
    host = costs.get("traced_host")
    if host:
        calls = ", ".join(f"{c['call']} {c['calls_per_iter']:.0f}x {c['ms_per_iter']:.1f} ms"
                          for c in host.get("cuda_api", [])[:3])  # fmt: skip
        parts.append(f"{host['launches_per_iter']:.0f} launches a traced step, "
                     f"{host['launch_ms_per_iter']:.1f} ms on {'/'.join(host['launch_threads'])}"
                     + (f" ({calls})" if calls else ""))  # fmt: skip
    if costs.get("step_ms_by_shape"):  # its first array names the bucket: "latents 256x5x8x8x16"
        parts.append("a step by batch: " + ", ".join(
            f"{label.split(',')[0]} {_step_text(t)} ({t['steps']} steps)"
            for label, t in costs["step_ms_by_shape"].items()))  # fmt: skip
    return ", ".join(parts)

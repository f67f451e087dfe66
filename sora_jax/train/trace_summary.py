"""Device time per kernel from a `jax.profiler` trace: what a step's time is spent in.

`jax.profiler.trace(dir, create_perfetto_trace=True)` (or `start_trace` with the same flag)
writes a Chrome/Perfetto trace JSON (`*.trace.json.gz`); this reads it with gzip + json and sums
the device-side events per kernel: on GPU the CUPTI kernels and memcpys on the "Stream #..."
tracks of the "/device:GPU:N" process; on TPU the "XLA Ops" track; on CPU (no device process)
the XLA op events of the host threads (the ones carrying `hlo_op`). Times are per iteration (one
traced call or train step); a row's % is of the summed kernel time (kernels that overlap on
several streams are each counted in full). Used by the train loop's `profile_steps` (it writes
`<workdir>/profile/summary.json`) and by tools/bench/dit_profile.py.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re

TOP = 25  # rows before "other"
CATEGORIES = (  # first match wins: a fused attention kernel is "attention", not a GEMM
    ("attention", r"attention|fmha|flash|sdpa"),
    # cuDNN's convolutions (the VAE): implicit GEMMs, forward / data-grad / weight-grad kernels.
    # Not XLA's dtype conversions, "convert" ("loop_convert_multiply_fusion", "wrapped_convert":
    # the fourteenth world run's DiT trace had 6 ms of them under conv): those are fusions.
    ("conv", r"conv(?!ert)|implicit_gemm|fprop|dgrad|wgrad"),
    ("matmul", r"matmul|gemm|cublas|dot|nvjet"),
    ("fusion", r"fusion|loop|reduce|elementwise|convert"),
    ("copy", r"copy|transpose|memcpy|memset"),
)


def category(name: str) -> str:
    low = name.lower()
    return next((c for c, pattern in CATEGORIES if re.search(pattern, low)), "other")


def kernel_events(trace: dict) -> list[tuple[str, float]]:
    """(name, duration in us) of each device-side event of a Chrome/Perfetto trace JSON."""
    return [(e["name"], float(e["dur"])) for e in _device_events(trace)]


def _events_and_names(trace: dict) -> tuple[list[dict], dict, dict]:
    """The trace's events, its process names {pid: name} and thread names {(pid, tid): name}."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    procs, threads = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            procs[e["pid"]] = e["args"]["name"]
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e["pid"], e["tid"])] = e["args"]["name"]
    return events, procs, threads


def _device_events(trace: dict) -> list[dict]:
    """The trace's device-side "X" events (see `kernel_events`)."""
    events, procs, threads = _events_and_names(trace)
    timed = [e for e in events if e.get("ph") == "X" and e.get("dur", 0) > 0]
    devices = {pid for pid, name in procs.items() if "/device:" in name}
    if not devices:  # CPU: thunks run on the client's pool (or inline on the caller), tagged hlo_op
        return [e for e in timed if "hlo_op" in e.get("args", {})]
    # GPU: CUPTI puts kernels and memcpys on "Stream #<id>(Kernel,...)" lines of "/device:GPU:N";
    # kernel launches (which carry hlo_op too) are host events; "CUPTI overhead" is left out.
    on = {k for k, name in threads.items() if k[0] in devices and name.startswith("Stream")}
    on = on or {k for k, name in threads.items() if k[0] in devices and name == "XLA Ops"}  # TPU
    return [e for e in timed if (e["pid"], e["tid"]) in on]


def busy_and_span(trace: dict) -> tuple[float, float]:
    """(busy, span) in us of the trace's device-side events: the time at least one of them runs
    (overlapping ones counted once), and from the first one's start to the last one's end. Where
    busy is well below span, the device waits between kernels: for the host (dispatch, batches,
    a synchronising read) or for a transfer."""
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"]))
                   for e in _device_events(trace) if "ts" in e)  # fmt: skip
    if not spans:
        return 0.0, 0.0
    busy, end = 0.0, spans[0][0]
    for a, b in spans:
        if b > end:
            busy += b - max(a, end)
            end = b
    return busy, end - spans[0][0]


def load_trace(trace_dir: str) -> dict:
    """The newest *.trace.json.gz the profiler wrote under `trace_dir`."""
    paths = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}: did jax.profiler run?")
    with gzip.open(max(paths, key=os.path.getmtime)) as f:
        return json.load(f)


def summarize(events: list[tuple[str, float]], iters: int) -> dict:
    """Top kernels by time (per iteration), the rest as "other", and totals per category."""
    calls, us = collections.Counter(), collections.Counter()
    for name, dur in events:
        calls[name] += 1
        us[name] += dur
    total_ms = sum(us.values()) / iters / 1e3
    if not total_ms:
        raise ValueError("the trace holds no kernel events; see kernel_events() for the filter.")

    def row(name, n, t_us, cat):
        ms = t_us / iters / 1e3
        return {"kernel": name, "category": cat, "calls_per_iter": n / iters,
                "ms_per_iter": ms, "pct": 100 * ms / total_ms}  # fmt: skip

    ranked = [row(k, calls[k], t, category(k)) for k, t in us.most_common()]
    rest = ranked[TOP:]
    rows = ranked[:TOP]
    if rest:
        rows.append(row("other", sum(calls[r["kernel"]] for r in rest),
                        sum(us[r["kernel"]] for r in rest), "-"))  # fmt: skip
    cats = collections.Counter()
    for r in ranked:
        cats[r["category"]] += r["ms_per_iter"]
    categories = {c: {"ms_per_iter": ms, "pct": 100 * ms / total_ms} for c, ms in cats.items()}
    return {"rows": rows, "kernels": len(ranked), "total_ms": total_ms, "categories": categories}


_CUDA_API = re.compile(r"^cu(da)?[A-Z]")  # cuLaunchKernelEx, cuGraphLaunch, cudaMemcpyAsync, ...


def host_side(trace: dict, iters: int, top: int = 8) -> dict:
    """Where a GPU's work was issued from, per iteration: the host events of its launches (the
    ones tagged `hlo_op`: calls, ms, and the host threads they ran on) and the top CUDA API calls
    by host time. Kernel launches on the Python thread that dispatched the step, at a cost near
    the device's time per step, say the host's launches hold the device back; graph launches
    (cuGraphLaunch) in place of thousands of kernel launches say XLA's command buffers (CUDA
    graphs) replay the step. Empty where the trace has no device process (CPU)."""
    events, procs, threads = _events_and_names(trace)
    if not any("/device:" in name for name in procs.values()):
        return {}
    host = [e for e in events if e.get("ph") == "X" and "/device:" not in procs.get(e["pid"], "")]
    launches = [e for e in host if "hlo_op" in e.get("args", {})]
    api_calls, api_us = collections.Counter(), collections.Counter()
    for e in host:
        if _CUDA_API.match(e.get("name", "")):
            api_calls[e["name"]] += 1
            api_us[e["name"]] += float(e.get("dur", 0.0))
    return {
        "launches_per_iter": len(launches) / iters,
        "launch_ms_per_iter": sum(float(e.get("dur", 0.0)) for e in launches) / iters / 1e3,
        "launch_threads": sorted(
            {threads.get((e["pid"], e["tid"]), str(e["tid"])) for e in launches}
        ),  # fmt: skip
        "cuda_api": [
            {
                "call": name,
                "calls_per_iter": api_calls[name] / iters,
                "ms_per_iter": us / iters / 1e3,
            }
            for name, us in api_us.most_common(top)
        ],  # fmt: skip
    }


def summarize_dir(trace_dir: str, iters: int) -> dict:
    """`summarize` of the newest trace under `trace_dir`, with the device's busy time and the
    span of its events per iteration (`busy_and_span`: `busy_ms`, `span_ms`) and, on GPUs,
    where its work was issued from (`host_side`: `host`)."""
    trace = load_trace(trace_dir)
    out = summarize(kernel_events(trace), iters)
    busy, span = busy_and_span(trace)
    out.update(busy_ms=busy / iters / 1e3, span_ms=span / iters / 1e3)
    host = host_side(trace, iters)
    if host:
        out["host"] = host
    return out

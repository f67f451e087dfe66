"""Benchmark: synthetic-world clips per second on one CPU core (spec + captions + render).

    python tools/bench/world.py [--seconds 2] [--out tools/bench/results/world_cpu.json]

Each size renders distinct indices of the default WorldConfig distribution (pans, occluders,
distractors, all backgrounds) in this single process, so the numbers are per core; a Grain
pipeline with N workers scales them by about N.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

import numpy as np

from sora_jax.data.world import World, WorldConfig

SIZES = ((64, 64, 9), (64, 64, 16), (128, 128, 33), (256, 256, 33))  # (height, width, frames)


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=pathlib.Path(__file__).parent, timeout=10)  # fmt: skip
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def bench_size(world: World, height: int, width: int, frames: int, seconds: float) -> dict:
    """Clips/s rendering consecutive indices at one size for about `seconds` (after warm-up)."""
    for i in range(20):  # warm the sprite / background caches, as a long run would
        world.clip(i, height, width, frames)
    count, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - start) < seconds or count < 20:
        world.clip(1000 + count, height, width, frames)
        count += 1
    # Process CPU time is the per-core cost even when other jobs share the cores; wall time is
    # what this process saw.
    per_s = count / (time.process_time() - cpu_start)
    return {"height": height, "width": width, "frames": frames, "clips": count,
            "clips_per_s": round(per_s, 1), "ms_per_clip": round(1e3 / per_s, 3),
            "wall_clips_per_s": round(count / elapsed, 1),
            "output_mb_per_s": round(per_s * frames * height * width * 3 / 1e6, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per size")
    parser.add_argument("--out", default="tools/bench/results/world_cpu.json")
    args = parser.parse_args(argv)
    world = World(WorldConfig())
    rows = [bench_size(world, h, w, f, args.seconds) for h, w, f in SIZES]
    print(f"{'size (H×W×F)':>14} {'clips/s/core':>13} {'ms/clip':>8} {'wall clips/s':>13} "
          f"{'MB/s out':>9}")  # fmt: skip
    for r in rows:
        size = f"{r['height']}×{r['width']}×{r['frames']}"
        print(f"{size:>14} {r['clips_per_s']:>13.1f} {r['ms_per_clip']:>8.3f} "
              f"{r['wall_clips_per_s']:>13.1f} {r['output_mb_per_s']:>9.1f}")  # fmt: skip
    report = {
        "benchmark": "world_cpu",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": {"cpu": _cpu_model(), "logical_cpus": os.cpu_count(),
                   "load_avg_1min": os.getloadavg()[0], "machine": platform.machine()},
        "versions": {"python": sys.version.split()[0], "numpy": np.__version__,
                     "sora_jax": importlib.metadata.version("sora_jax"),
                     "commit": _commit()},
        "config": "WorldConfig() defaults; one process; clips_per_s from process CPU time",
        "results": rows,
    }  # fmt: skip
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()

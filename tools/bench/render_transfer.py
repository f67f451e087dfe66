"""Benchmark (CPU): what receiving rendered clips from RenderPool's workers costs the trainer.

    python tools/bench/render_transfer.py [--config configs/world.py] [--bucket 0] \
        [--batches 16] [--workers 2] [--out tools/bench/results/render_transfer_cpu.json]

The DiT stage's latent caches are rendered by worker processes (`pipeline.RenderPool`,
`dit_train.latent_cache_render_workers`); a refresh of the world recipe's caches brings ~1.3 GB
of clips into the trainer every 500 steps, while its main thread dispatches steps. Each row
renders the same `--batches` batches of one bucket of the config's world in `--workers`
processes and receives them in this process, while a ticker thread (a stand-in for the step
loop's thread) sleeps 1 ms at a time and records how late it wakes: time it could not get the
GIL. Rows: `pipe` (every array pickled through the result pipe: `spill_bytes` above any batch)
against `file` (the default: arrays of >= 1 MB through a mapped file of the pool's folder).
Reported: wall time to receive them all (rendering included, the same in both), the ticker's
lateness in all (ms) and its worst and 99th-percentile wake-ups, and the ratio of each to the
first row. A batch is a pure function of its bucket and index, so both rows receive the same
bytes (checked).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import sys
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tools" / "bench"))
import aot_compile  # noqa: E402  (tools/aot_compile.py: a config file by path)
import report  # noqa: E402  (tools/bench/report.py)


def _ticker(stop: threading.Event, late: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        time.sleep(0.001)
        late.append(time.perf_counter() - t - 0.001)


def measure(stream, bucket: int, batches: int, workers: int, spill_bytes: int) -> dict:
    from sora_jax.data import pipeline

    pool = pipeline.RenderPool(stream, workers, spill_bytes=spill_bytes)
    try:
        next(pool.batches(bucket, [batches]))  # the workers started and warm, not timed
        stop, late = threading.Event(), []
        ticker = threading.Thread(target=_ticker, args=(stop, late))
        digest, nbytes = hashlib.sha256(), 0
        ticker.start()
        t = time.perf_counter()
        for batch in pool.batches(bucket, range(batches)):
            video = np.asarray(batch["video"])
            nbytes += video.nbytes
            digest.update(video[:, 0, 0, 0].tobytes())  # reads a page of every clip
        wall = time.perf_counter() - t
        stop.set()
        ticker.join()
    finally:
        pool.close()
    late_ms = np.asarray(late) * 1e3
    return {"wall_s": wall, "mb": nbytes / 1e6, "late_total_ms": float(late_ms.sum()),
            "late_max_ms": float(late_ms.max()), "late_p99_ms": float(np.percentile(late_ms, 99)),
            "digest": digest.hexdigest()[:16]}  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=str(ROOT / "configs" / "world.py"))
    p.add_argument("--bucket", type=int, default=0, help="index into dit_train.buckets")
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "tools/bench/results/render_transfer_cpu.json"))
    args = p.parse_args(argv)

    from sora_jax.data import buckets as buckets_lib
    from sora_jax.data import pipeline, sources

    config = aot_compile.load_config(args.config, [])
    table = buckets_lib.buckets_from_config(config.dit_train.buckets, config.get("data", None))
    source = sources.make_source(config, lambda: sources.make_world(config))
    stream = pipeline.from_config(
        config,
        source,
        table,
        seed=config.seed + 1,
        caption_probs=config.dit_train.get("caption_probs", None),
    )
    bucket = table[args.bucket]
    out = report.jax_header("render_transfer", config=os.path.relpath(args.config, ROOT),
                            bucket=bucket.name, batch=bucket.batch_size, batches=args.batches,
                            workers=args.workers, cpu_count=os.cpu_count())  # fmt: skip
    out["versions"] = report.versions("numpy", "grain")
    rows = [("pipe", 1 << 62), ("file", pipeline.SPILL_BYTES)]
    for name, spill in rows:
        out["rows"].append({"transfer": name, **measure(stream, args.bucket, args.batches,
                                                        args.workers, spill)})  # fmt: skip
    if len({r["digest"] for r in out["rows"]}) != 1:
        raise SystemExit("the rows received different clips")
    for key, ratio in (("wall_s", "wall_x"), ("late_total_ms", "late_total_x"),
                       ("late_max_ms", "late_max_x")):  # fmt: skip
        report.ratios_to_first(out["rows"], key, ratio)
    report.print_table(
        out["rows"],
        [
            "transfer",
            "mb",
            "wall_s",
            "late_total_ms",
            "late_max_ms",
            "late_p99_ms",
            "wall_x",
            "late_total_x",
            "late_max_x",
        ],
    )
    report.write_json(args.out, out)


if __name__ == "__main__":
    main()

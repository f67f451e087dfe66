r"""Folder of videos and images + captions -> sharded ArrayRecord in TFDS layout.

    python tools/prepare_dataset.py --input=/data/raw --data_dir=/data/tfds \
        [--captions=captions.csv|captions.jsonl] [--num_shards=16] [--workers=8] \
        [--scene_threshold=0.3 --min_scene_frames=16]

Media: mp4, webm, mov, mkv, avi, m4v, gif, png, jpg, jpeg, bmp, webp (searched recursively).
Captions, per file: a sidecar `<name>.txt` (first line = short prompt, the other lines = long
caption, or the prompt again when there is one line), or a CSV / JSONL with a `path` column
(relative to --input) and `prompt`, `caption` or `text` columns.

Output: `<data_dir>/sora_videos/1.0.0/` with the shards, dataset_info.json and features.json
(read by `tfds.data_source("sora_videos", data_dir=...)` or `sources.ArrayRecordSource`),
sora_meta.npz (per-record frames/fps/size, for bucketing) and report.json. A file that cannot
be read (corrupt, truncated, zero frames, too small, absurd aspect ratio, missing or non-UTF-8
caption) is logged, counted by reason and skipped; the run never stops for one bad file.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import logging
import multiprocessing
import os
import sys

import numpy as np
import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sora_jax.data import sources, tfds_builder  # noqa: E402

MEDIA = tfds_builder.MEDIA


def find_media(folder: str) -> list[str]:
    """Media files under `folder`, relative paths, sorted (the record order is deterministic)."""
    out = []
    for root, _, names in os.walk(folder):
        for name in names:
            if os.path.splitext(name)[1].lower().lstrip(".") in MEDIA:
                out.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(out)


def _clean(text) -> str:
    """A caption as valid UTF-8 text; raises ValueError for undecodable bytes."""
    text = "" if text is None else str(text)
    text.encode("utf-8")  # surrogate-escaped (non-UTF-8) input fails here
    return " ".join(text.split())


def load_caption_table(path: str) -> dict[str, tuple[str, str] | str]:
    """{relative path: (prompt, caption)} from a CSV or JSONL; a bad row maps to its reason."""
    rows = []
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        if path.endswith(".jsonl"):
            for n, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    logging.warning("%s line %d is not JSON; skipped", path, n + 1)
        else:
            rows = list(csv.DictReader(f))
    table: dict[str, tuple[str, str] | str] = {}
    for row in rows:
        if "path" not in row:
            raise ValueError(f"{path}: every row needs a 'path' column, got {sorted(row)}.")
        try:
            prompt = _clean(row.get("prompt") or row.get("text") or row.get("caption"))
            caption = _clean(row.get("caption") or row.get("text") or prompt)
        except UnicodeEncodeError:
            table[os.path.normpath(row["path"])] = "caption is not UTF-8"
            continue
        table[os.path.normpath(row["path"])] = (prompt, caption)
    return table


def _process(job: tuple) -> tuple[str, list[dict] | None, str]:
    """Worker: (rel, abs path, captions or reason, options) -> (rel, records | None, reason)."""
    rel, path, captions, opts = job
    if isinstance(captions, str):
        return rel, None, captions
    try:
        return rel, tfds_builder.file_records(path, rel, *captions, **opts), ""
    except tfds_builder.BadFile as e:
        return rel, None, str(e)
    except Exception as e:  # noqa: BLE001 - one bad file must never stop the run.
        return rel, None, f"unexpected {type(e).__name__}: {e}"


def _reason_key(reason: str) -> str:
    """A short category of a failure message, for the counts."""
    for key in ("missing caption", "not UTF-8", "no decodable frames", "unreadable", "aspect",
                "smaller than", "empty", "unknown extension", "no video stream"):  # fmt: skip
        if key in reason:
            return key
    return "other"


class ShardWriter:
    """Writes records round-robin into `num_shards` ArrayRecord files and their metadata."""

    def __init__(self, data_dir: str, num_shards: int):
        from array_record.python import array_record_module

        os.makedirs(tfds_builder.version_dir(data_dir), exist_ok=True)
        self.data_dir, self.num_shards = data_dir, num_shards
        self.paths = [tfds_builder.shard_path(data_dir, i, num_shards) for i in range(num_shards)]
        self.writers = [
            array_record_module.ArrayRecordWriter(p, "group_size:1") for p in self.paths
        ]
        self.meta: list[list[dict]] = [[] for _ in range(num_shards)]
        self.count = self.num_bytes = 0

    def write(self, record: dict) -> None:
        shard = self.count % self.num_shards
        data = sources.encode_record(record)
        self.writers[shard].write(data)
        self.meta[shard].append({k: record[k] for k in sources.META_FIELDS})
        self.count += 1
        self.num_bytes += len(data)

    def close(self) -> list[int]:
        for w in self.writers:
            w.close()
        lengths = [len(m) for m in self.meta]
        rows = [r for m in self.meta for r in m]
        cols = {k: np.array([r[k] for r in rows], sources.FIELDS[k]) for k in sources.META_FIELDS}
        np.savez(
            os.path.join(tfds_builder.version_dir(self.data_dir), sources.META_FILE),
            shards=np.array([os.path.basename(p) for p in self.paths]),
            shard_lengths=np.array(lengths, np.int64),
            **cols,
        )
        tfds_builder.write_dataset_info(self.data_dir, lengths, self.num_bytes)
        return lengths


def prepare(
    input_dir: str,
    data_dir: str,
    *,
    captions: str = "",
    num_shards: int = 0,
    workers: int = 0,
    progress: bool = True,
    **opts,
) -> dict:
    """Converts `input_dir`; returns the report (also written to report.json)."""
    files = find_media(input_dir)
    if not files:
        raise FileNotFoundError(f"no media files ({', '.join(MEDIA)}) under {input_dir!r}.")
    table = load_caption_table(captions) if captions else None
    jobs = []
    for rel in files:
        path = os.path.join(input_dir, rel)
        caps = (
            tfds_builder.sidecar_caption(path)
            if table is None
            else table.get(rel, "missing caption")
        )
        jobs.append((rel, path, caps, opts))
    num_shards = num_shards or max(1, min(len(files) // 1000 + 1, 64))
    writer = ShardWriter(data_dir, num_shards)
    bad: collections.Counter = collections.Counter()
    bad_files = []
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 0 else None
    results = pool.imap(_process, jobs) if pool else map(_process, jobs)
    for rel, records, reason in tqdm.tqdm(results, total=len(jobs), disable=not progress):
        if records is None:
            logging.warning("skipping %s: %s", rel, reason)
            bad[_reason_key(reason)] += 1
            bad_files.append([rel, reason])
            continue
        for rec in records:
            writer.write(rec)
    if pool:
        pool.close()
        pool.join()
    lengths = writer.close()
    report = {"files": len(files), "records": writer.count, "bytes": writer.num_bytes,
              "shard_lengths": lengths, "bad": dict(bad), "bad_files": bad_files}  # fmt: skip
    with open(os.path.join(tfds_builder.version_dir(data_dir), "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    logging.info("%d files -> %d records; skipped %s", len(files), writer.count, dict(bad))
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", required=True, help="folder of media files")
    p.add_argument("--data_dir", required=True, help="TFDS data_dir to write sora_videos/ into")
    p.add_argument("--captions", default="", help="CSV or JSONL (default: sidecar .txt files)")
    p.add_argument("--num_shards", type=int, default=0, help="0 = one per ~1000 files")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--scene_threshold", type=float, default=0.0, help="0 disables scene split")
    p.add_argument("--min_scene_frames", type=int, default=8)
    p.add_argument("--min_side", type=int, default=16)
    p.add_argument("--max_aspect", type=float, default=4.0)
    p.add_argument("--crf", type=int, default=18, help="x264 quality of re-encoded scenes")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    report = prepare(
        a.input, a.data_dir, captions=a.captions, num_shards=a.num_shards, workers=a.workers,
        scene_threshold=a.scene_threshold, min_scene_frames=a.min_scene_frames,
        min_side=a.min_side, max_aspect=a.max_aspect, crf=a.crf,
    )  # fmt: skip
    print(json.dumps({k: v for k, v in report.items() if k != "bad_files"}))


if __name__ == "__main__":
    main()

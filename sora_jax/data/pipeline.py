"""Host batches for training: bucketed, host-sharded, a pure function of (seed, step).

For bucket b, a Grain `MapDataset` shuffles and repeats the source's indices with a per-bucket
seed; the k-th batch drawn from bucket b takes elements [k*B, (k+1)*B) of it, and this host
takes its contiguous 1/num_processes slice. Because the bucket of each step and k are pure
functions of the step (see `buckets.py`), restarting at step s reproduces the exact batches an
uninterrupted run would have seen, on any number of hosts.

Items are rendered/decoded in a thread pool; a source must offer
`clip(index, height, width, num_frames) -> {"video": uint8 [F,H,W,3], "prompt", "caption", ...}`
and `__len__`.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np

from sora_jax.data import buckets as buckets_lib

CAPTION_KEYS = ("prompt", "caption")


class BucketedBatches:
    """Deterministic bucketed batches of rendered clips with chosen captions."""

    def __init__(
        self,
        source: Any,
        buckets: Sequence[buckets_lib.Bucket],
        *,
        seed: int,
        caption_probs: Mapping[str, float] | None = None,
        num_threads: int = 4,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        self.source = source
        self.buckets = list(buckets)
        self.seed = int(seed)
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        for b in self.buckets:
            if b.batch_size % self.process_count:
                raise ValueError(
                    f"bucket {b.name} batch size {b.batch_size} is not divisible by the "
                    f"{self.process_count} processes."
                )
        probs = dict(caption_probs or {"prompt": 1.0})
        if not probs or any(k not in CAPTION_KEYS for k in probs) or min(probs.values()) < 0:
            raise ValueError(f"caption_probs {probs} must weight keys among {CAPTION_KEYS}.")
        total = sum(probs.values())
        self._caption_keys = list(probs)
        self._caption_cdf = np.cumsum([probs[k] / total for k in self._caption_keys])
        self._orders = [
            grain.MapDataset.range(len(source)).shuffle(seed=self.seed * 7919 + i).repeat()
            for i in range(len(self.buckets))
        ]
        self._pool = concurrent.futures.ThreadPoolExecutor(num_threads)
        self.skipped = 0

    def _element(self, bucket: buckets_lib.Bucket, order_idx: int, pos: int) -> dict:
        index = int(self._orders[order_idx][pos])
        item = self.source.clip(index, bucket.height, bucket.width, bucket.num_frames)
        u = buckets_lib.hash_uniform(self.seed, [pos], stream=100 + order_idx)[0]
        choice = int(np.searchsorted(self._caption_cdf, u, side="right"))
        key = self._caption_keys[min(choice, len(self._caption_keys) - 1)]
        item = dict(item)
        item["text"] = item[key]
        return item

    def batch(self, bucket_idx: int, k: int) -> dict[str, Any]:
        """The k-th batch of bucket `bucket_idx`, this host's slice."""
        bucket = self.buckets[bucket_idx]
        per_host = bucket.batch_size // self.process_count
        start = k * bucket.batch_size + self.process_index * per_host
        items = list(
            self._pool.map(lambda p: self._element(bucket, bucket_idx, p),
                           range(start, start + per_host))
        )
        return {
            "video": np.stack([it["video"] for it in items]),
            "text": [it["text"] for it in items],
            "index": np.array([it.get("index", -1) for it in items], np.int64),
            "bucket": bucket.name,
        }

    def iterate(self, start_step: int, end_step: int | None = None) -> Iterator[dict[str, Any]]:
        """Batches for steps start_step, start_step+1, ... (the same on every restart)."""
        history = buckets_lib.bucket_of_steps(self.buckets, self.seed, np.arange(start_step))
        counts = np.bincount(history, minlength=len(self.buckets)).astype(np.int64)
        step = start_step
        while end_step is None or step < end_step:
            bidx = int(buckets_lib.bucket_of_steps(self.buckets, self.seed, np.array([step]))[0])
            yield self.batch(bidx, int(counts[bidx]))
            counts[bidx] += 1
            step += 1

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def log_buckets(buckets: Sequence[buckets_lib.Bucket]) -> None:
    for b in buckets:
        logging.info("bucket %s: batch %d weight %.3g", b.name, b.batch_size, b.weight)

"""Host batches for training: bucketed, host-sharded, a pure function of (seed, step).

Assembly (Grain Dataset API):

  per bucket b:  MapDataset.range(#clips fitting b).shuffle(seed_b).repeat()   (an epoch order)
  per step s:    bucket b, k = StepSchedule.position(s)      (same on every host)
                 global batch = elements [k*B, (k+1)*B) of b's order; this host decodes its
                 contiguous 1/num_processes slice (disjoint across hosts), in a thread pool
  all steps:     MapDataset.range(start, ∞).map(step -> host batch).to_iter_dataset()
                 [.mp_prefetch(num_workers)]  ->  parallel.host_to_global on device

Because every batch is a pure function of the step, restarting at step s reproduces exactly
the batches an uninterrupted run would have seen, on any number of hosts and with any number of
prefetch workers; the iterator state is just the next step (`StepIterator.get_state`).

Bad data: a clip the source cannot decode (`ClipError` or any exception from `source.clip`) is
replaced by a deterministic fallback draw from the same bucket, up to `max_retries` times; each
batch reports how many draws it skipped in `skipped` (int32 [B]), which the tasks log.

Changing the bucket table between runs (documented behaviour): the schedule is recomputed from
(seed, new table, step) as if the new table had been used from step 0 — no crash, no state to
migrate. Each bucket's epoch order is seeded by its *name* ("33x256x448"), so buckets that stay
keep their order; their stream position k(s) follows the new weights, so some clips of a kept
bucket may be seen again or skipped once around the change (at most a fraction of an epoch).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from sora_jax.data import buckets as buckets_lib

CAPTION_KEYS = ("prompt", "caption")


def _ensure_absl_flags() -> None:
    """Grain's multiprocessing reads absl flags; outside an absl app they are unparsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class BucketedBatches:
    """Deterministic bucketed batches of decoded clips with chosen captions."""

    def __init__(
        self,
        source: Any,
        buckets: Sequence[buckets_lib.Bucket],
        *,
        seed: int,
        caption_probs: Mapping[str, float] | None = None,
        num_threads: int = 4,
        num_workers: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
        max_retries: int = 16,
        max_crop_fraction: float = 0.5,
        max_upscale: float = 1.0,
        videos_as_images: bool = True,
    ):
        import jax

        self.source = source
        self.buckets = list(buckets)
        self.seed = int(seed)
        self.num_threads, self.num_workers = int(num_threads), int(num_workers)
        self.max_retries = int(max_retries)
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
        if hasattr(source, "eligible"):  # a source that knows its buckets (latent cache)
            self.eligible = source.eligible(self.buckets)
        else:
            self.eligible = buckets_lib.eligible_indices(
                self.buckets, source.meta() if hasattr(source, "meta") else None,
                target_fps=float(getattr(source, "target_fps", 0.0)),
                max_crop_fraction=max_crop_fraction, max_upscale=max_upscale,
                videos_as_images=videos_as_images,
            )  # fmt: skip
        sizes = (
            [len(source)] * len(self.buckets) if self.eligible is None else map(len, self.eligible)
        )
        self._orders, self._sizes = [], []
        for b, n in zip(self.buckets, sizes):
            if n == 0:
                raise ValueError(
                    f"no clip of the dataset fits bucket {b.name} (frames, aspect ratio or size); "
                    "remove it from the bucket table or relax data.max_crop_fraction/max_upscale."
                )
            bseed = self.seed * 7919 + buckets_lib.name_seed(b.name)
            self._orders.append(grain.MapDataset.range(n).shuffle(seed=bseed).repeat())
            self._sizes.append(int(n))
        self.schedule = buckets_lib.StepSchedule(self.buckets, self.seed)
        self._pool = None
        self.skipped = 0  # draws skipped in batches consumed through iterate()

    def __getstate__(self):  # pickled into prefetch workers: no thread pool
        return {**self.__dict__, "_pool": None}

    def _index(self, bucket_idx: int, pos: int) -> int:
        i = int(self._orders[bucket_idx][pos])
        return i if self.eligible is None else int(self.eligible[bucket_idx][i])

    def _element(self, bucket_idx: int, pos: int) -> dict:
        """The clip at position `pos` of the bucket's order, or its fallbacks if undecodable."""
        bucket = self.buckets[bucket_idx]
        stream = buckets_lib.name_seed(bucket.name)
        n = self._sizes[bucket_idx]  # clips in one epoch
        draw, errors = pos, []
        for attempt in range(self.max_retries + 1):
            if attempt:  # deterministic fallback: a hashed position of the first epoch
                u = buckets_lib.hash_uniform(self.seed, [pos], stream=stream + attempt)[0]
                draw = int(u * n)
            index = self._index(bucket_idx, draw)
            try:
                item = dict(self.source.clip(index, bucket.height, bucket.width, bucket.num_frames))
            except Exception as e:  # noqa: BLE001 - bad data is skipped and counted.
                errors.append(f"clip {index}: {e}")
                continue
            u = buckets_lib.hash_uniform(self.seed, [pos], stream=100 + stream)[0]
            choice = int(np.searchsorted(self._caption_cdf, u, side="right"))
            key = self._caption_keys[min(choice, len(self._caption_keys) - 1)]
            item["text"], item["skipped"] = item[key], attempt
            item["caption_key"] = key
            if f"emb_{key}" in item:  # a latent cache stores each caption's embedding
                item["text_emb"], item["text_mask"] = item[f"emb_{key}"], item[f"mask_{key}"]
            if errors:
                logging.warning("skipped %d undecodable draw(s): %s", len(errors), errors[0])
            return item
        raise RuntimeError(
            f"{self.max_retries + 1} draws in a row from bucket {bucket.name} failed to decode; "
            f"is the dataset corrupt? Last error: {errors[-1]}"
        )

    def num_clips(self, bucket_idx: int) -> int:
        """Clips that fit bucket `bucket_idx` (one epoch of its order)."""
        return self._sizes[bucket_idx]

    def element(self, bucket_idx: int, pos: int) -> dict:
        """The item at position `pos` of the bucket's order (decoded, caption chosen)."""
        return self._element(bucket_idx, pos)

    def batch(self, bucket_idx: int, k: int) -> dict[str, Any]:
        """The k-th batch of bucket `bucket_idx`, this host's slice."""
        bucket = self.buckets[bucket_idx]
        per_host = bucket.batch_size // self.process_count
        start = k * bucket.batch_size + self.process_index * per_host
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.num_threads)
        items = list(
            self._pool.map(lambda p: self._element(bucket_idx, p), range(start, start + per_host))
        )
        batch = {
            "text": [it["text"] for it in items],
            "caption_key": [it["caption_key"] for it in items],
            "index": np.array([it.get("index", -1) for it in items], np.int64),
            "skipped": np.array([it["skipped"] for it in items], np.int32),
            "bucket": bucket.name,
        }
        for key in ("video", "latents"):  # decoded clips, or cached latents
            if key in items[0]:
                batch[key] = np.stack([it[key] for it in items])
        for key in ("text_emb", "text_mask"):  # cached caption embeddings, if the source has them
            if key in items[0]:
                batch[key] = np.stack([it[key] for it in items])
        return batch

    def step_batch(self, step: int) -> dict[str, Any]:
        """This host's batch of `step` (a pure function of the step)."""
        bucket_idx, k = self.schedule.position(int(step))
        return {**self.batch(bucket_idx, k), "step": int(step)}

    def dataset(self, start_step: int = 0) -> grain.IterDataset:
        """Grain dataset of the host batches of steps start_step, start_step + 1, ..."""
        ds = grain.MapDataset.range(int(start_step), sys.maxsize).map(self.step_batch)
        ds = ds.to_iter_dataset()
        if self.num_workers > 0:
            _ensure_absl_flags()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers))
        return ds

    def iterator(self, start_step: int = 0) -> StepIterator:
        return StepIterator(self, start_step)

    def iterate(self, start_step: int, end_step: int | None = None) -> Iterator[dict[str, Any]]:
        """Batches for steps start_step, start_step+1, ... (the same on every restart)."""
        it = self.iterator(start_step)
        try:
            while end_step is None or it.next_step < end_step:
                batch = next(it)
                self.skipped += int(batch["skipped"].sum())
                yield batch
        finally:
            it.close()
            self.close()

    def close(self) -> None:
        """Stops the decode threads (a later batch starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


SPILL_BYTES = 1 << 20  # a RenderPool worker's arrays at least this big come back through a file


class RenderPool:
    """Renders (decodes) batches of a BucketedBatches in worker processes, in order.

    `batches(bucket_idx, ks)` yields `data.batch(bucket_idx, k)` for each k, the same arrays as
    rendering them in this process (a batch is a pure function of its bucket and k), with up to
    `ahead` batches in flight. For a trainer whose own threads would otherwise render beside its
    steps under one GIL (the DiT stage's latent caches: dit_latent_cache.py). The workers start
    once (spawned: no copy of this process's JAX state) and live until `close`.

    Arrays of at least `spill_bytes` (default SPILL_BYTES) come back through a file of the
    pool's own temporary folder, mapped read-only here (and unlinked at once: the mapping keeps
    the pages), not pickled through the result pipe: unpickling a batch of rendered clips (a
    refresh of the world recipe's caches moves ~1.3 GB) copies it under the GIL in this
    process. Receiving 856 MB of world clips that way kept another Python thread from running
    for up to 58 ms at a time (1,050 ms in all) on a 2-core CPU; through files 10 ms (334 ms),
    in 0.62x the wall time (tools/bench/render_transfer.py).
    """

    def __init__(self, data: BucketedBatches, workers: int, ahead: int = 0,
                 spill_bytes: int | None = None, spill_dir: str | None = None):  # fmt: skip
        if workers < 1:
            raise ValueError(f"a RenderPool needs >= 1 worker, not {workers}.")
        self.ahead = int(ahead) or 2 * int(workers)
        # Files of results never received (a generator closed early) go with the folder.
        self.spill_dir = tempfile.mkdtemp(prefix="sora_render_", dir=spill_dir)
        self.pool = concurrent.futures.ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_render_worker_init,
            # pickled for each worker (the data without its thread pool)
            initargs=(data, self.spill_dir, SPILL_BYTES if spill_bytes is None else spill_bytes),
        )

    def batches(self, bucket_idx: int, ks: Sequence[int]) -> Iterator[dict[str, Any]]:
        rendered = ordered(self.pool, lambda k: (_render_batch, bucket_idx, k), ks, self.ahead)
        with contextlib.closing(rendered):  # closing this generator cancels the ones not started
            for batch in rendered:
                yield {key: _unspill(v) for key, v in batch.items()}

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.spill_dir, ignore_errors=True)


def ordered(executor: concurrent.futures.Executor, call: Callable[[Any], tuple], items: Sequence,
            ahead: int) -> Iterator[Any]:  # fmt: skip
    """Yields fn(*args) for each item's `call(item)` = (fn, *args), in order, run by `executor`
    with up to `ahead` of them submitted at once (the one being yielded included). Closing the
    generator early cancels the ones not started."""
    pending: collections.deque[concurrent.futures.Future] = collections.deque()
    items = list(items)
    try:
        for i in range(len(items)):
            while len(pending) < ahead and i + len(pending) < len(items):
                pending.append(executor.submit(*call(items[i + len(pending)])))
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()


_WORKER_DATA: BucketedBatches | None = None  # a RenderPool worker's copy
_WORKER_SPILL: tuple[str, int] = ("", 0)  # its pool's folder and spill_bytes


def _render_worker_init(data: BucketedBatches, spill_dir: str, spill_bytes: int) -> None:
    global _WORKER_DATA, _WORKER_SPILL
    # Rendering is numpy only; a worker that imported JAX (the trainer's main module, re-imported
    # by spawn) must never start a GPU backend beside the trainer's (its default would take 75%
    # of the GPU's memory).
    if "jax" in sys.modules:
        sys.modules["jax"].config.update("jax_platforms", "cpu")
    _WORKER_DATA, _WORKER_SPILL = data, (spill_dir, spill_bytes)


class _Spilled(str):
    """The path of an array a worker wrote as .npy (a str, so it pickles as one)."""


def _render_batch(bucket_idx: int, k: int) -> dict[str, Any]:
    batch, (folder, spill_bytes) = _WORKER_DATA.batch(bucket_idx, k), _WORKER_SPILL
    return {key: _spill(v, folder) if isinstance(v, np.ndarray) and v.nbytes >= spill_bytes
            else v for key, v in batch.items()}  # fmt: skip


def _spill(a: np.ndarray, folder: str) -> _Spilled | np.ndarray:
    """`a` written to a file of `folder`: its path; where that fails (a full disk), `a` itself,
    to go through the pipe."""
    try:
        fd, path = tempfile.mkstemp(suffix=".npy", dir=folder)
    except OSError:
        return a
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, a, allow_pickle=False)
    except OSError:
        os.unlink(path)
        return a
    return _Spilled(path)


def _unspill(v: Any) -> Any:
    if not isinstance(v, _Spilled):
        return v
    try:
        return np.load(v, mmap_mode="r", allow_pickle=False)
    finally:
        os.unlink(v)  # the mapping keeps the pages until the array is gone


class StepIterator:
    """Iterator over host batches whose whole state is the next step (JSON, checkpointable).

    `get_state()` -> {"next_step": s}; `set_state` restarts the Grain iterator at s, which
    reproduces the same batches whatever the number of prefetch workers.
    """

    def __init__(self, data: BucketedBatches, start_step: int = 0):
        self.data = data
        self.next_step = int(start_step)
        self._it = iter(data.dataset(self.next_step))

    def __iter__(self) -> StepIterator:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self._it)
        if batch["step"] != self.next_step:  # the design's invariant; fail loudly if broken
            raise RuntimeError(f"expected the batch of step {self.next_step}, got {batch['step']}.")
        self.next_step += 1
        return batch

    def get_state(self) -> dict[str, int]:
        return {"next_step": self.next_step}

    def set_state(self, state: Mapping[str, int]) -> None:
        self.close()
        self.next_step = int(state["next_step"])
        self._it = iter(self.data.dataset(self.next_step))

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
        # Drop it now: Grain's __del__ would close it again at interpreter exit, after its
        # modules are torn down (noisy AttributeErrors).
        self._it = iter(())


def to_global(batch: Mapping[str, Any], mesh) -> dict:
    """The numeric arrays of a host batch as global jax arrays sharded over the batch axes.

    Multi-host: each process passes its own slice; `jax.make_array_from_process_local_data`
    assembles the global batch (via `sora_jax.parallel.host_to_global`).
    """
    from sora_jax import parallel

    arrays = {k: v for k, v in batch.items() if isinstance(v, np.ndarray) and v.dtype != object}
    return parallel.host_to_global(arrays, mesh)


def log_buckets(data_or_buckets) -> None:
    """Logs each bucket's shape, batch, weight and (for a pipeline) how many clips fit it."""
    data = data_or_buckets if isinstance(data_or_buckets, BucketedBatches) else None
    buckets = data.buckets if data else data_or_buckets
    for i, b in enumerate(buckets):
        fits = "all" if data is None or data.eligible is None else len(data.eligible[i])
        logging.info(
            "bucket %s: batch %d weight %.3g clips %s", b.name, b.batch_size, b.weight, fits
        )


def from_config(config, source: Any, buckets: Sequence[buckets_lib.Bucket], *, seed: int,
                caption_probs: Mapping[str, float] | None = None) -> BucketedBatches:  # fmt: skip
    """A BucketedBatches with the decode and assignment options of the config's `data` section."""
    data = dict(config.get("data", None) or {})
    return BucketedBatches(
        source,
        buckets,
        seed=seed,
        caption_probs=caption_probs,
        num_threads=int(data.get("num_threads", 4)),
        num_workers=int(data.get("num_workers", 0)),
        max_retries=int(data.get("max_retries", 16)),
        max_crop_fraction=float(data.get("max_crop_fraction", 0.5)),
        max_upscale=float(data.get("max_upscale", 1.0)),
        videos_as_images=bool(data.get("videos_as_images", True)),
    )

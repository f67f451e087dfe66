"""The DiT stage's in-memory latent cache (`dit_train.latent_cache_clips`): each bucket's clips
encoded once by the frozen VAE, then sampled per step; with `latent_cache_refresh_steps` every K
steps each bucket swaps one group of its clips for unseen ones (CacheLayout). The cache at a step
is a function of the step alone, so a resumed run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import jax
import ml_collections
import numpy as np

from sora_jax.data import buckets as buckets_lib
from sora_jax.data import pipeline
from sora_jax.train import device_gate, precompile

if TYPE_CHECKING:
    from sora_jax.train.dit_task import DiTTask


def batches(task: DiTTask, start_step: int) -> Iterator[dict]:
    """The DiT stage's batches from the in-memory latent cache, from `start_step` on."""
    # One thread encodes every bucket's cache, in the order the steps first need them, from
    # the start: the step compiles (loop.py) and the first steps overlap the encoding of
    # later buckets. A bucket's cache depends on the bucket and the step alone: the order
    # and the speed of encoding change no number. With `latent_cache_refresh_steps` (K) the
    # same thread then encodes fresh clips, `REFRESH_AHEAD` refreshes ahead of the steps,
    # and every K steps each bucket swaps one group of its cache for them (CacheLayout).
    builder = Builder(task)
    encoding = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="latent-cache")
    order = task.first_use_order(start_step)
    cache = {b: encoding.submit(builder.bucket, b, start_step) for b in order}
    every = int(task.train_cfg.get("latent_cache_refresh_steps", 0))
    refreshes: dict[tuple[int, int], concurrent.futures.Future] = {}
    ahead: collections.deque = collections.deque()  # prepared steps whose captions encode
    request = getattr(task.embedder, "request", None)  # CaptionEmbedder.request

    def submit(j: int) -> None:
        for b in order:
            refreshes[b, j] = encoding.submit(builder.refresh, b, j)

    try:
        if not precompile.overlap_setting(task.train_cfg):
            # No overlap (GPUs): every cache is built before the first step, so no VAE
            # encode compiles or runs while a step's first run captures its CUDA graphs.
            for future in cache.values():
                future.result()
        if every:
            first = start_step // every + 1  # the refreshes before start_step are in `cache`
            for j in range(first, first + REFRESH_AHEAD):
                submit(j)
        for step in itertools.count(start_step):
            if every and step > start_step and step % every == 0:
                j, t, clips = step // every, time.perf_counter(), 0
                for b in order:
                    fresh = refreshes.pop((b, j)).result()
                    builder.swap_in(cache[b].result(), b, j, fresh)
                    clips += len(fresh[1])
                submit(j + REFRESH_AHEAD)
                logging.info(  # waiting > 0: encoding fell behind the steps
                    "dit: step %d: latent-cache refresh %d swapped in %d unseen clips "
                    "(waited %.1f s for it)", step, j, clips, time.perf_counter() - t,
                )  # fmt: skip
            b_idx = int(buckets_lib.bucket_of_steps(task.buckets, task.config.seed, [step])[0])
            latents, texts = cache[b_idx].result()
            # This host's share of the global batch, drawn from its own cache (its slices).
            n = task.buckets[b_idx].batch_size // builder.stream.process_count
            u = buckets_lib.hash_uniform(task.config.seed, step * 4096 + np.arange(n), 11)
            idx = (u * len(texts)).astype(np.int64)
            captions = task.captions(step, [texts[i] for i in idx])
            if request is not None:  # the captions' encode starts now, read TEXT_AHEAD later
                request(captions)
            ahead.append(({"latents": latents[idx]}, captions))  # copies: refreshes write in place
            if len(ahead) > TEXT_AHEAD:
                yield task.with_captions(*ahead.popleft())
    finally:
        builder.stop.set()  # a bucket being encoded ends at its next batch
        encoding.shutdown(wait=True, cancel_futures=True)
        builder.close()


REFRESH_AHEAD = 2  # latent-cache refreshes encoded ahead of the step that swaps them in
# Steps whose batches are drawn, and whose new captions' encodes queued, before the batch of the
# first of them is yielded (caption_embedder.py): by then those encodes have run.
TEXT_AHEAD = 8


def check_refresh(cfg: ml_collections.ConfigDict) -> None:
    every = int(cfg.get("latent_cache_refresh_steps", 0))
    clips = int(cfg.get("latent_cache_refresh_clips", 0))
    size = int(cfg.get("latent_cache_clips", 0))
    if every < 0:
        raise ValueError(f"dit_train.latent_cache_refresh_steps={every} must be >= 0 (0 = off).")
    if every and not 0 < clips <= size:
        raise ValueError(
            f"dit_train.latent_cache_refresh_clips={clips} must be in (0, latent_cache_clips="
            f"{size}] when latent_cache_refresh_steps={every} refreshes the latent cache."
        )


class CacheLayout:
    """Which stream batches of one bucket fill its latent cache at a given step.

    The cache holds `n` batches, in G = ceil(n / r) groups of `r` batches (the last may be
    shorter). Without refresh (`every` = 0; r = n) it is the bucket's stream batches 0..n-1 for
    the whole run. With refresh, before step j * every (j >= 1) group (j - 1) mod G is replaced by
    the bucket's next unseen stream batches, n + (j - 1) * r onwards. The cache at a step is thus
    a function of the step alone: a resumed run rebuilds exactly the cache it stopped with.
    """

    def __init__(self, n: int, r: int, every: int):
        self.n, self.every = n, every
        self.r = min(max(r, 1), n) if every else n
        self.num_groups = -(-n // self.r)

    def group(self, g: int) -> tuple[int, int]:
        """(first slot batch, number of batches) of group g."""
        return g * self.r, min(self.r, self.n - g * self.r)

    def refresh(self, j: int) -> tuple[int, int]:
        """(group, first stream batch) of refresh j >= 1."""
        return (j - 1) % self.num_groups, self.n + (j - 1) * self.r

    def sources_at(self, step: int) -> list[int]:
        """The first stream batch held by each group while step `step` trains."""
        applied = step // self.every if self.every else 0  # refreshes 1..applied are in
        out = []
        for g in range(self.num_groups):
            if applied >= g + 1:
                last = g + 1 + (applied - g - 1) // self.num_groups * self.num_groups
                out.append(self.refresh(last)[1])
            else:
                out.append(self.group(g)[0])
        return out


def encoder(task: DiTTask):
    """The cache's jitted VAE encode (frozen, uint8 clips [B, F, H, W, 3]) -> latents: one
    definition for the Builder and for stage dit_compile's precompile, so their programs match."""
    return jax.jit(task.encode_latents)


class Stopped(Exception):
    """A latent-cache build abandoned because training ended first."""


class Builder:
    """Encodes buckets' latent caches with the frozen VAE (DiTTask's cache) and their refreshes."""

    def __init__(self, task: DiTTask):
        self.task = task
        self.stream, self.frozen = task._stream(), task.frozen()
        self.encode = encoder(task)
        self.stop = threading.Event()  # set: encoding raises Stopped at its next batch
        # Clips rendered in worker processes (`latent_cache_render_workers`), not in a thread of
        # the trainer, whose steps' dispatch and program loads it would slow under the GIL.
        workers = int(task.train_cfg.get("latent_cache_render_workers", 0))
        self.render = pipeline.RenderPool(self.stream, workers) if workers else None

    def layout(self, b_idx: int) -> CacheLayout:
        cfg, batch = self.task.train_cfg, self.task.buckets[b_idx].batch_size
        refresh_clips = int(cfg.get("latent_cache_refresh_clips", 0))
        return CacheLayout(
            -(-int(cfg.latent_cache_clips) // batch),
            -(-refresh_clips // batch),
            int(cfg.get("latent_cache_refresh_steps", 0)),
        )

    def bucket(self, b_idx: int, step: int = 0) -> tuple[np.ndarray, list[str]]:
        """The cache of bucket `b_idx` while step `step` trains."""
        layout, t0 = self.layout(b_idx), time.perf_counter()
        ranges = [(first, layout.group(g)[1]) for g, first in enumerate(layout.sources_at(step))]
        out, texts, wait_s = self._encode(b_idx, ranges)
        logging.info(
            "dit: latent cache of bucket %s: %d clips in %.1f s (%.1f s waiting for "
            "decoded/rendered clips)", self.task.buckets[b_idx].name, len(texts),
            time.perf_counter() - t0, wait_s,
        )  # fmt: skip
        return out, texts

    def refresh(self, b_idx: int, j: int) -> tuple[np.ndarray, list[str]]:
        """The fresh clips of refresh j of bucket `b_idx` (see CacheLayout)."""
        layout = self.layout(b_idx)
        g, first = layout.refresh(j)
        out, texts, _ = self._encode(b_idx, [(first, layout.group(g)[1])])
        return out, texts

    def swap_in(self, cache: tuple[np.ndarray, list[str]], b_idx: int, j: int,
                fresh: tuple[np.ndarray, list[str]]) -> None:  # fmt: skip
        """Writes refresh j of bucket `b_idx` over its group of `cache`, in place."""
        layout = self.layout(b_idx)
        first_slot, count = layout.group(layout.refresh(j)[0])
        (latents, texts), (new, new_texts) = cache, fresh
        a = first_slot * (len(new_texts) // count)  # clips per batch on this host
        latents[a : a + len(new_texts)] = new
        texts[a : a + len(new_texts)] = new_texts

    def _encode(self, b_idx: int, ranges: list[tuple[int, int]]):
        """Encodes the bucket's stream batches [first, first + count) of every range, in order:
        (latents, texts, seconds spent waiting for rendered/decoded clips)."""
        indices = [k for first, count in ranges for k in range(first, first + count)]
        if self.render is not None:
            try:
                return self._encode_from(self.render.batches(b_idx, indices), b_idx)
            except concurrent.futures.process.BrokenProcessPool as e:
                # A worker died (or could not start): the trainer renders from now on; the clips
                # and so the numbers are the same either way.
                logging.warning("dit: latent-cache render workers failed (%s); rendering in "
                                "the trainer instead", e)  # fmt: skip
                self.render.close()
                self.render = None
        return self._encode_from(_rendered_ahead(self.stream, b_idx, indices), b_idx)

    def _encode_from(self, rendered: Iterator[dict], b_idx: int):
        latents, texts, wait_s = [], [], 0.0
        with contextlib.closing(rendered):
            while True:
                if self.stop.is_set():
                    raise Stopped(self.task.buckets[b_idx].name)
                t = time.perf_counter()
                batch = next(rendered, None)
                wait_s += time.perf_counter() - t
                if batch is None:
                    break
                with device_gate.GATE.shared():  # not during a program's first step
                    latents.append(self.encode(self.frozen, batch["video"]))
                texts.extend(batch["text"])
        return np.concatenate([np.asarray(x) for x in latents]), texts, wait_s

    def close(self) -> None:
        if self.render is not None:
            self.render.close()
        self.stream.close()


def _rendered_ahead(stream, b_idx: int, indices: list[int]) -> Iterator[dict]:
    """The bucket's batches `indices`, in order: one thread renders batch k + 1 while the
    device encodes batch k (dispatch is async)."""
    with concurrent.futures.ThreadPoolExecutor(1) as ahead:
        yield from pipeline.ordered(ahead, lambda k: (stream.batch, b_idx, k), indices, 2)

"""Bucketed host batches: deterministic by step, disjoint across hosts, resumable anywhere."""

import numpy as np

from sora_jax.data import buckets as buckets_lib
from sora_jax.data import pipeline
from sora_jax.data import world as world_lib

BUCKETS = buckets_lib.parse_buckets((("5x16x16", 4, 2.0), ("1x16x24", 8, 1.0)))


def _world():
    return world_lib.World(world_lib.WorldConfig(seed=3, num_clips=10_000))


def _batches(start, n, **kw):
    data = pipeline.BucketedBatches(_world(), BUCKETS, seed=5, **kw)
    return list(data.iterate(start, start + n))


def test_batches_are_static_per_bucket_and_follow_the_schedule():
    batches = _batches(0, 12)
    sched = buckets_lib.bucket_of_steps(BUCKETS, 5, np.arange(12))
    for b, idx in zip(batches, sched):
        bucket = BUCKETS[idx]
        assert b["bucket"] == bucket.name
        assert b["video"].shape == (
            bucket.batch_size,
            bucket.num_frames,
            bucket.height,
            bucket.width,
            3,
        )
        assert b["video"].dtype == np.uint8 and len(b["text"]) == bucket.batch_size


def test_restart_at_any_step_reproduces_the_next_batches():
    straight = _batches(0, 20)
    resumed = _batches(12, 8)
    for a, b in zip(straight[12:], resumed):
        np.testing.assert_array_equal(a["video"], b["video"])
        assert a["text"] == b["text"]


def test_two_hosts_read_disjoint_halves_of_the_same_global_batch():
    one = _batches(0, 6, process_index=0, process_count=1)
    h0 = _batches(0, 6, process_index=0, process_count=2)
    h1 = _batches(0, 6, process_index=1, process_count=2)
    for g, a, b in zip(one, h0, h1):
        assert a["bucket"] == b["bucket"] == g["bucket"]
        np.testing.assert_array_equal(np.concatenate([a["video"], b["video"]]), g["video"])
        assert not set(a["index"]) & set(b["index"])


def test_caption_mixture_uses_both_caption_lengths():
    texts = [
        t for b in _batches(0, 10, caption_probs={"prompt": 0.5, "caption": 0.5}) for t in b["text"]
    ]
    short = sum(len(t.split()) < 12 for t in texts)
    assert 0.25 < short / len(texts) < 0.75

"""Bucketed host batches: deterministic by step, disjoint across hosts, resumable anywhere."""

import json

import numpy as np
import pytest

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


class _FlakySource:
    """World clips, but indices divisible by 3 fail to decode (a corrupt record)."""

    def __init__(self, fail=lambda i: i % 3 == 0):
        self.world, self.fail = _world(), fail

    def __len__(self):
        return len(self.world)

    def clip(self, index, height, width, num_frames):
        if self.fail(index):
            raise ValueError(f"clip {index} is corrupt")
        return self.world.clip(index, height, width, num_frames)


def test_undecodable_clips_are_skipped_deterministically_and_counted():
    data = pipeline.BucketedBatches(_FlakySource(), BUCKETS, seed=5)
    batches = list(data.iterate(0, 10))
    assert all(i % 3 for b in batches for i in b["index"])
    total = sum(int(b["skipped"].sum()) for b in batches)
    assert total > 0 and data.skipped == total
    again = list(pipeline.BucketedBatches(_FlakySource(), BUCKETS, seed=5).iterate(0, 10))
    for a, b in zip(batches, again):
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["skipped"], b["skipped"])


def test_a_dataset_that_never_decodes_fails_with_a_clear_error():
    data = pipeline.BucketedBatches(_FlakySource(lambda i: True), BUCKETS, seed=5, max_retries=3)
    with pytest.raises(RuntimeError, match="4 draws in a row"):
        data.step_batch(0)


def test_iterator_state_restores_the_next_20_batches_exactly():
    data = pipeline.BucketedBatches(_world(), BUCKETS, seed=5)
    it = data.iterator(0)
    for _ in range(7):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    straight = [next(it) for _ in range(20)]
    it.close()
    fresh = pipeline.BucketedBatches(_world(), BUCKETS, seed=5).iterator(0)
    fresh.set_state(state)
    for a, b in zip(straight, [next(fresh) for _ in range(20)]):
        assert a["step"] == b["step"] and a["text"] == b["text"]
        np.testing.assert_array_equal(a["video"], b["video"])
    fresh.close()


def test_prefetch_workers_give_the_same_batches_as_in_process():
    ref = _batches(3, 6)
    data = pipeline.BucketedBatches(_world(), BUCKETS, seed=5, num_workers=2)
    it = data.iterator(3)
    got = [next(it) for _ in range(6)]
    it.close()
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a["video"], b["video"])
        assert a["text"] == b["text"] and a["bucket"] == b["bucket"]


def test_changing_the_bucket_table_keeps_the_order_of_kept_buckets():
    old = pipeline.BucketedBatches(_world(), BUCKETS, seed=5)
    table = buckets_lib.parse_buckets((("1x16x24", 8, 1.0), ("9x16x16", 2, 1.0)))
    new = pipeline.BucketedBatches(_world(), table, seed=5)
    old_k = old.batch(1, 4)  # the 5th batch of bucket 1x16x24, at index 1 in the old table
    new_k = new.batch(0, 4)  # same bucket, now first in the table
    np.testing.assert_array_equal(old_k["index"], new_k["index"])
    resumed = list(new.iterate(50, 53))  # resuming step 50 under the new table just works
    assert [b["step"] for b in resumed] == [50, 51, 52]


def test_only_clips_that_fit_a_bucket_are_drawn():
    class Meta(_FlakySource):
        def meta(self):  # even indices: 2-frame videos (too short for 5 frames); odd: long
            n = 10_000
            return {"num_frames": np.where(np.arange(n) % 2, 40, 2), "fps": np.full(n, 8.0),
                    "height": np.full(n, 64), "width": np.full(n, 64)}  # fmt: skip

    table = buckets_lib.parse_buckets((("5x16x16", 4, 1.0), ("1x16x16", 8, 1.0)))
    data = pipeline.BucketedBatches(Meta(lambda i: False), table, seed=5)
    parities = {"5x16x16": set(), "1x16x16": set()}
    for b in data.iterate(0, 10):
        parities[b["bucket"]] |= set((b["index"] % 2).tolist())
    assert parities == {"5x16x16": {1}, "1x16x16": {0, 1}}


def test_to_global_puts_numeric_arrays_on_the_mesh():
    import jax

    from sora_jax import parallel

    batch = _batches(0, 1)[0]
    g = pipeline.to_global(batch, parallel.make_mesh())
    assert set(g) == {"video", "index", "skipped"}
    np.testing.assert_array_equal(np.asarray(jax.device_get(g["video"])), batch["video"])

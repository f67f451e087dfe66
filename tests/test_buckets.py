"""Bucket table parsing and the deterministic, host-independent bucket schedule."""

import numpy as np
import pytest

from sora_jax.data import buckets as buckets_lib

TABLE = (("9x32x32", 8, 3.0), ("1x32x32", 16, 1.0))


def test_parse_buckets_reads_shapes_and_rejects_bad_rows():
    b = buckets_lib.parse_buckets(TABLE)
    assert [x.name for x in b] == ["9x32x32", "1x32x32"]
    assert b[1].batch_size == 16 and b[0].weight == 3.0
    for bad in [(), (("9x32", 8, 1.0),), (("9x32x32", 0, 1.0),), (("9x32x32", 8),)]:
        with pytest.raises(ValueError):
            buckets_lib.parse_buckets(bad)


def test_schedule_is_deterministic_and_follows_weights():
    b = buckets_lib.parse_buckets(TABLE)
    steps = np.arange(20_000)
    a = buckets_lib.bucket_of_steps(b, 3, steps)
    np.testing.assert_array_equal(a, buckets_lib.bucket_of_steps(b, 3, steps))
    assert abs(np.mean(a == 0) - 0.75) < 0.015
    assert not np.array_equal(a, buckets_lib.bucket_of_steps(b, 4, steps))


def test_bucket_position_counts_earlier_draws():
    b = buckets_lib.parse_buckets(TABLE)
    sched = buckets_lib.bucket_of_steps(b, 0, np.arange(100))
    idx, k = buckets_lib.bucket_position(b, 0, 99)
    assert idx == sched[99] and k == int(np.sum(sched[:99] == idx))

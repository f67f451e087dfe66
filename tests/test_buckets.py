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


def test_named_resolutions_expand_into_aspect_classes_with_sides_of_16():
    b = buckets_lib.parse_buckets(
        (("33@256p", 4, 3.0), ("1@256p", 8, 1.0)), aspect_ratios=("16:9", ("1:1", 2.0), "9:16")
    )
    shapes = {(x.num_frames, x.height, x.width): x for x in b}
    assert set(shapes) == {(33, 256, 448), (33, 256, 256), (33, 448, 256),
                           (1, 256, 448), (1, 256, 256), (1, 448, 256)}  # fmt: skip
    # a row's weight is shared among its aspect classes by their weights
    assert shapes[(33, 256, 256)].weight == 1.5 and shapes[(33, 256, 448)].weight == 0.75
    assert shapes[(33, 256, 448)].aspect == "16:9"
    assert buckets_lib.named_shape(480, "16:9") == (480, 848)


def test_token_budget_derives_batch_sizes_in_multiples_of_hosts():
    # 33x256x256 -> 9 latent frames x 16 x 16 tokens = 2304; 1x256x256 -> 256 tokens
    assert buckets_lib.tokens_per_clip(33, 256, 256) == 2304
    b = buckets_lib.parse_buckets(
        (("33x256x256", 0, 1.0), ("1x256x256", 0, 1.0), ("9x64x64", 3, 1.0)),
        token_budget=20_000, batch_multiple=4,
    )  # fmt: skip
    assert [x.batch_size for x in b] == [8, 76, 3]  # 20000 // 2304 = 8; 20000 // 256 = 78 -> 76
    with pytest.raises(ValueError, match="token_budget"):
        buckets_lib.parse_buckets((("9x64x64", 0, 1.0),))


def test_step_schedule_matches_bucket_position_at_any_step():
    b = buckets_lib.parse_buckets(TABLE + (("5x16x16", 2, 0.5),))
    sched = buckets_lib.StepSchedule(b, 7, block=64)
    for step in (0, 1, 63, 64, 65, 1000, 777, 3):  # out of order on purpose
        assert sched.position(step) == buckets_lib.bucket_position(b, 7, step)


def test_clips_are_assigned_to_buckets_they_fit():
    b = buckets_lib.parse_buckets((("9x64x64", 2, 1.0), ("9x64x112", 2, 1.0), ("1x64x64", 2, 1.0)))
    meta = {  # video 1:1 long | video 16:9 | image | too short | absurd 8:1 | small
        "num_frames": np.array([40, 40, 1, 5, 40, 40]),
        "fps": np.array([24.0, 24.0, 0.0, 24.0, 24.0, 24.0]),
        "height": np.array([128, 360, 100, 128, 64, 32]),
        "width": np.array([128, 640, 100, 128, 512, 32]),
    }
    elig = buckets_lib.eligible_indices(b, meta, target_fps=8.0)
    # 9 frames at 8 fps from 24 fps needs 1 + 8 * 3 = 25 source frames
    assert elig[0].tolist() == [0] and elig[1].tolist() == [1]
    assert elig[2].tolist() == [0, 2, 3]  # videos as stills; the 16:9 clip is nearer 9x64x112
    only_images = buckets_lib.eligible_indices(b, meta, target_fps=8.0, videos_as_images=False)
    assert only_images[2].tolist() == [2]
    upscale = buckets_lib.eligible_indices(b, meta, target_fps=8.0, max_upscale=2.0)
    assert upscale[0].tolist() == [0, 5]


def test_bucket_shuffle_seed_depends_on_the_name_only():
    assert buckets_lib.name_seed("9x32x32") == buckets_lib.name_seed("9x32x32")
    assert buckets_lib.name_seed("9x32x32") != buckets_lib.name_seed("9x32x64")

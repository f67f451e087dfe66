"""World grader: ≥ 95 % on ground-truth clips, chance on shuffled pairs, robust to blur/noise."""

import numpy as np
import pytest

from sora_jax import evaluate
from sora_jax.data import world
from sora_jax.data.world import World, WorldConfig, make_spec, render


@pytest.fixture(scope="module")
def clips64():
    w = World(WorldConfig(seed=11))  # the default distribution: pans, occluders, distractors
    clips = [w.clip(i, 64, 64, 9) for i in range(200)]
    return [c["video"] for c in clips], [c["spec"] for c in clips]


def test_grader_scores_ground_truth_clips_at_64(clips64):
    acc = evaluate.grade_many(*clips64)
    assert acc["n"] == 200 and acc["n_motion"] > 130  # pan clips do not count for motion
    assert acc["color_acc"] >= 0.95
    assert acc["shape_acc"] >= 0.95
    assert acc["motion_acc"] >= 0.95


def test_grader_scores_colour_at_32():
    w = World(WorldConfig(seed=12))
    clips = [w.clip(i, 32, 32, 9) for i in range(200)]
    acc = evaluate.grade_many([c["video"] for c in clips], [c["spec"] for c in clips])
    assert acc["color_acc"] >= 0.95


def test_grader_is_near_chance_on_shuffled_pairs(clips64):
    videos, specs = clips64
    perm = np.random.default_rng(0).permutation(len(specs))
    acc = evaluate.grade_many(videos, [specs[j] for j in perm])
    assert acc["color_acc"] < 0.3  # chance ≈ 1/8
    assert acc["shape_acc"] < 0.3  # chance ≈ 1/7
    assert acc["motion_acc"] < 0.3  # chance ≈ 1/12


@pytest.mark.parametrize("motion", world.ALL_MOTIONS)
def test_every_motion_is_recognised(motion):
    for seed, size in ((0, "small"), (1, "large")):
        spec = make_spec("orange", "star", motion, size=size, background="gradient", seed=seed)
        result = evaluate.grade(render(spec, 64, 64, 9), spec)
        assert result["pred_motion"] == motion and result["motion"] is True


@pytest.mark.parametrize("shape", world.ALL_SHAPES)
def test_every_shape_and_colour_is_recognised(shape):
    for i, color in enumerate(world.ALL_COLORS):
        spec = make_spec(color, shape, "right", size="small", tone=("dark", "light")[i % 2],
                         background="texture", seed=i)  # fmt: skip
        result = evaluate.grade(render(spec, 64, 64, 9), spec)
        assert result["pred_color"] == color and result["pred_shape"] == shape


def test_motion_is_not_graded_for_stills_or_pans():
    still = make_spec("red", "circle", "left", image=True)
    result = evaluate.grade(render(still, 64, 64, 1), still)
    assert result["motion"] is None and result["color"] and result["shape"]
    pan = make_spec("red", "circle", "still", pan="left", background="texture")
    assert evaluate.grade(render(pan, 64, 64, 9), pan)["motion"] is None


def test_float_input_grades_like_uint8(clips64):
    videos, specs = clips64
    for v, s in zip(videos[:10], specs[:10], strict=True):
        assert evaluate.grade(v.astype(np.float32) / 255.0, s) == evaluate.grade(v, s)


def _blur_and_noise(video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[1, 2, 1]/4 blur applied twice per spatial axis (σ ≈ 1 px) plus noise of σ = 8 levels."""
    x = video.astype(np.float32)
    for axis in (1, 2):
        for _ in range(2):
            p = np.pad(x, [(1, 1) if a == axis else (0, 0) for a in range(4)], mode="edge")
            lo, mid, hi = (np.take(p, np.arange(i, i + x.shape[axis]), axis) for i in range(3))
            x = 0.25 * lo + 0.5 * mid + 0.25 * hi
    return np.clip(x + rng.normal(0.0, 8.0, x.shape), 0, 255).astype(np.uint8)


def test_grader_is_robust_to_blur_and_noise(clips64):
    rng = np.random.default_rng(0)
    videos, specs = clips64
    acc = evaluate.grade_many([_blur_and_noise(v, rng) for v in videos[:80]], specs[:80])
    assert acc["color_acc"] >= 0.95
    assert acc["motion_acc"] >= 0.9
    assert acc["shape_acc"] >= 0.8


def test_blank_video_predicts_nothing():
    spec = make_spec("red", "circle", "left")
    result = evaluate.grade(np.full((9, 32, 32, 3), 20, np.uint8), spec)
    assert result == {"color": False, "shape": False, "motion": False, "pred_color": None,
                      "pred_shape": None, "pred_motion": None}  # fmt: skip


def test_bad_inputs_raise_value_error():
    spec = make_spec("red", "circle", "left")
    with pytest.raises(ValueError, match="shape"):
        evaluate.grade(np.zeros((9, 64, 64)), spec)
    with pytest.raises(ValueError, match="videos"):
        evaluate.grade_many([np.zeros((9, 64, 64, 3), np.uint8)], [])


def test_paired_outcomes_counts_cases_and_gives_mcnemars_exact_p():
    a = {1: True, 2: True, 3: False, 4: False, 5: True, 9: True}
    b = {1: True, 2: False, 3: True, 4: False, 5: False, 7: True}  # ids 7 and 9: one run only
    out = evaluate.paired_outcomes(a, b)
    assert out == {"cases": 5, "both": 1, "only_first": 2, "only_second": 1, "neither": 1,
                   "p_two_sided": 1.0}  # fmt: skip
    # 9 discordant cases split 8 : 1 -> 2 * (1 + 9) / 2**9 = 0.0391 (run 6 vs 7 had 21 : 9).
    lop = {i: i < 8 for i in range(9)}
    out = evaluate.paired_outcomes(lop, {i: not v for i, v in lop.items()})
    assert out["p_two_sided"] == pytest.approx(20 / 512, abs=1e-4)
    assert evaluate.paired_outcomes({}, {})["p_two_sided"] == 1.0


def test_flicker_ratio_is_one_on_real_clips_and_grows_when_frames_jump(clips64):
    videos, specs = clips64
    assert evaluate.flicker_ratio(videos, specs) == pytest.approx(1.0, abs=1e-9)
    assert evaluate.flicker_ratio(videos[:20], specs[:20]) == pytest.approx(1.0, abs=1e-9)
    # Played backwards: the same changes between frames.
    backwards = [v[::-1] for v in videos]
    assert evaluate.flicker_ratio(backwards, specs) == pytest.approx(1.0, abs=1e-9)
    # Frames in a random order: objects jump (and occluders with them) from frame to frame.
    rng = np.random.default_rng(0)
    jumping = [v[rng.permutation(len(v))] for v in videos]
    assert evaluate.flicker_ratio(jumping, specs) > 1.5
    # Another clip's frame every other frame: the layout changes between frames.
    mixed = [np.where((np.arange(len(v)) % 2 == 1)[:, None, None, None], videos[i - 1], v)
             for i, v in enumerate(videos)]  # fmt: skip
    assert evaluate.flicker_ratio(mixed, specs) > 3.0
    # Each generated frame holds still (the first frame repeated): no change at all.
    frozen = [np.repeat(v[:1], len(v), axis=0) for v in videos]
    assert evaluate.flicker_ratio(frozen, specs) == 0.0


def test_flicker_ratio_needs_moving_real_clips_and_one_spec_per_video():
    spec = make_spec("red", "circle", "still", size="large")
    still = render(spec, 32, 32, 5)
    assert np.isnan(evaluate.flicker_ratio([still], [spec]))  # nothing moves in the real clip
    assert np.isnan(evaluate.flicker_ratio([still[:1]], [spec]))  # one frame: no change to measure
    with pytest.raises(ValueError, match="one each"):
        evaluate.flicker_ratio([still, still], [spec])

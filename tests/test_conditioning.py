"""Per-frame conditioning masks: constructors, apply_condition, training mixture."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.diffusion import conditioning as cm


def _rows(mask):
    """The distinct rows of a [B, T] mask as tuples of 0/1."""
    return {tuple(int(v) for v in row) for row in np.asarray(mask)}


def test_t2v_and_t2i_give_nothing():
    assert cm.t2v_mask(2, 5).shape == (2, 5) and not cm.t2v_mask(2, 5).any()
    assert cm.t2i_mask(3).shape == (3, 1) and not cm.t2i_mask(3).any()


@pytest.mark.parametrize(
    "position,row",
    [("head", (1, 0, 0, 0, 0)), ("tail", (0, 0, 0, 0, 1)), ("both", (1, 0, 0, 0, 1))],
)
def test_i2v_masks(position, row):
    mask = cm.i2v_mask(2, 5, position=position)
    assert mask.dtype == jnp.bool_ and _rows(mask) == {row}


def test_extend_masks_give_the_existing_frames():
    assert _rows(cm.extend_mask(2, 6, 2, direction="forward")) == {(1, 1, 0, 0, 0, 0)}
    assert _rows(cm.extend_mask(2, 6, 2, direction="backward")) == {(0, 0, 0, 0, 1, 1)}


def test_infill_connect_loop_masks():
    assert _rows(cm.infill_mask(1, 6, [1, 3, -1])) == {(0, 1, 0, 1, 0, 1)}
    assert _rows(cm.connect_mask(1, 7, 2)) == {(1, 1, 0, 0, 0, 1, 1)}
    assert _rows(cm.loop_mask(1, 4)) == {(1, 0, 0, 1)}


@pytest.mark.parametrize(
    "call",
    [
        lambda: cm.i2v_mask(1, 4, position="middle"),
        lambda: cm.extend_mask(1, 4, 5),
        lambda: cm.extend_mask(1, 4, 1, direction="sideways"),
        lambda: cm.connect_mask(1, 4, 3),
        lambda: cm.infill_mask(1, 4, [4]),
        lambda: cm.t2v_mask(1, 0),
    ],
)
def test_bad_mask_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_scatter_frames_and_loop_given():
    frames = jnp.arange(2 * 2 * 1 * 1 * 3, dtype=jnp.float32).reshape(2, 2, 1, 1, 3) + 1
    given = cm.scatter_frames(frames, [0, 3], 5)
    assert given.shape == (2, 5, 1, 1, 3)
    np.testing.assert_array_equal(given[:, [0, 3]], frames)
    assert not np.asarray(given[:, [1, 2, 4]]).any()
    first = frames[:, :1]
    looped, mask = cm.loop_given(first, 4)
    np.testing.assert_array_equal(looped[:, 0], looped[:, -1])
    np.testing.assert_array_equal(looped[:, 0], first[:, 0])
    assert _rows(mask) == {(1, 0, 0, 1)}


def test_apply_condition_replaces_given_frames_and_zeroes_their_t():
    x = jnp.ones((2, 4, 2, 2, 3))
    given = jnp.full_like(x, 7.0)
    t = jnp.full((2, 4), 0.8)
    mask = cm.i2v_mask(2, 4, position="both")
    x2, t2 = cm.apply_condition(x, t, given, mask)
    np.testing.assert_array_equal(x2[:, [0, 3]], given[:, [0, 3]])
    np.testing.assert_array_equal(x2[:, 1:3], x[:, 1:3])
    np.testing.assert_array_equal(t2, np.float32([[0.0, 0.8, 0.8, 0.0]] * 2))


def test_training_mask_frequencies_match_the_mixture():
    # Modes chosen so each has one distinct mask pattern at T = 5.
    mixture = {"t2v": 0.4, "i2v_head": 0.25, "i2v_tail": 0.2, "loop": 0.15}
    n = 20000
    mask = np.asarray(cm.sample_training_masks(jax.random.key(0), n, 5, mixture))
    rows = [tuple(r) for r in mask.astype(int)]
    patterns = {
        "t2v": (0, 0, 0, 0, 0),
        "i2v_head": (1, 0, 0, 0, 0),
        "i2v_tail": (0, 0, 0, 0, 1),
        "loop": (1, 0, 0, 0, 1),
    }
    for name, p in mixture.items():
        freq = sum(r == patterns[name] for r in rows) / n
        assert abs(freq - p) < 0.015, (name, freq, p)  # 4.5 sigma at n = 20k


def test_unnormalised_mixture_weights_are_normalised():
    mask = cm.sample_training_masks(jax.random.key(1), 8000, 4, {"t2v": 3.0, "i2v_head": 1.0})
    frac_given = float(np.asarray(mask)[:, 0].mean())
    assert abs(frac_given - 0.25) < 0.02


@pytest.mark.parametrize("mode", cm.TRAINING_MODES)
def test_each_training_mode_draws_its_shape(mode):
    t = 6
    mask = np.asarray(cm.sample_training_masks(jax.random.key(2), 500, t, {mode: 1.0}))
    assert mask.shape == (500, t) and mask.dtype == bool
    assert not mask.all(axis=1).any()  # something is always left to generate
    idx = np.arange(t)
    for row in mask:
        k = int(row.sum())
        if mode == "t2v":
            assert k == 0
        elif mode == "i2v_head":
            assert row.tolist() == (idx == 0).tolist()
        elif mode == "i2v_tail":
            assert row.tolist() == (idx == t - 1).tolist()
        elif mode == "loop":
            assert row.tolist() == ((idx == 0) | (idx == t - 1)).tolist()
        elif mode == "extend_head":
            assert 1 <= k <= t - 1 and row.tolist() == (idx < k).tolist()
        elif mode == "extend_tail":
            assert 1 <= k <= t - 1 and row.tolist() == (idx >= t - k).tolist()
        elif mode == "connect":
            h = k // 2
            assert 1 <= h <= (t - 1) // 2 and row.tolist() == ((idx < h) | (idx >= t - h)).tolist()
    if mode in ("extend_head", "extend_tail", "connect"):
        assert len(_rows(mask)) > 1  # k varies per sample
    if mode == "infill":
        assert abs(mask.mean() - 0.5) < 0.05


def test_single_frame_draws_fall_back_to_nothing_given():
    mixture = dict.fromkeys(cm.TRAINING_MODES, 1.0)
    mask = cm.sample_training_masks(jax.random.key(3), 64, 1, mixture)
    assert mask.shape == (64, 1) and not np.asarray(mask).any()


def test_sample_training_masks_is_jittable_and_deterministic():
    mixture = dict.fromkeys(cm.TRAINING_MODES, 1.0)
    fn = jax.jit(partial(cm.sample_training_masks, batch=16, num_frames=5, mixture=mixture))
    a, b = fn(jax.random.key(4)), fn(jax.random.key(4))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, cm.sample_training_masks(jax.random.key(4), 16, 5, mixture))


@pytest.mark.parametrize("mixture", [{"t2v": 1.0, "i2v_middle": 1.0}, {"t2v": 0.0}, {"t2v": -1.0}])
def test_bad_mixtures_raise_value_error(mixture):
    with pytest.raises(ValueError):
        cm.sample_training_masks(jax.random.key(0), 4, 5, mixture)

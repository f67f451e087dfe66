"""Video I/O: mp4 round trips within PSNR bounds, gif/png written, clear errors on bad input."""

import numpy as np
import pytest

from sora_jax.data import video_io
from sora_jax.data.world import World, WorldConfig


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


@pytest.fixture(scope="module")
def videos():
    w = World(WorldConfig(seed=21))
    return [w.clip(i, 64, 64, 9)["video"] for i in range(4)]


def test_mp4_round_trip_psnr_above_30db(tmp_path):
    # 4:2:0 halves colour resolution, which costs most on small frames: test at 128 px.
    w = World(WorldConfig(seed=21))
    for i in range(3):
        video = w.clip(i, 128, 128, 9)["video"]
        video_io.write_mp4(tmp_path / f"{i}.mp4", video, fps=8)
        decoded, fps = video_io.read_video(tmp_path / f"{i}.mp4")
        assert decoded.shape == video.shape and decoded.dtype == np.uint8 and fps == 8.0
        assert _psnr(decoded, video) > 30.0


def test_mp4_444_round_trip_psnr_above_38db(videos):
    for video in videos:
        decoded, _ = video_io.read_video(video_io.encode_mp4(video, 8, chroma="444"))
        assert _psnr(decoded, video) > 38.0


def test_odd_sizes_round_trip_at_their_size():
    video = World(WorldConfig())[0]["video"][:, :33, :47]
    decoded, fps = video_io.read_video(video_io.encode_mp4(video, fps=12))
    assert decoded.shape == (9, 33, 47, 3) and fps == 12.0
    assert _psnr(decoded, video) > 35.0


def test_float_input_matches_uint8(videos):
    video = videos[0]
    as_float = video.astype(np.float32) / 255.0
    np.testing.assert_array_equal(video_io._as_video(as_float), video)  # the exact conversion
    # x264 output is not byte-deterministic across calls, so decoded videos are compared loosely.
    a = video_io.read_video(video_io.encode_mp4(video, 8))[0].astype(np.float64)
    b = video_io.read_video(video_io.encode_mp4(as_float, 8))[0].astype(np.float64)
    assert 10 * np.log10(255.0**2 / np.mean((a - b) ** 2 + 1e-12)) > 30.0


def test_gif_and_png_written(videos, tmp_path):
    video_io.write_gif(tmp_path / "a.gif", videos[0], fps=8)
    decoded, fps = video_io.read_video(tmp_path / "a.gif")
    assert decoded.shape == videos[0].shape and abs(fps - 8) < 0.5  # 10 ms delay units
    assert np.abs(decoded.astype(int) - videos[0]).mean() < 2.0  # ≤ 256 colours per frame
    video_io.write_png(tmp_path / "a.png", videos[0][0])
    png, _ = video_io.read_video(tmp_path / "a.png")
    np.testing.assert_array_equal(png[0], videos[0][0])


def test_unreadable_or_bad_input_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="Could not read"):
        video_io.read_video(b"definitely not a video")
    with pytest.raises(ValueError, match="Could not read"):
        video_io.read_video(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="shape"):
        video_io.encode_mp4(np.zeros((4, 16, 16), np.uint8), 8)
    with pytest.raises(ValueError, match="fps"):
        video_io.encode_mp4(np.zeros((4, 16, 16, 3), np.uint8), 0)
    with pytest.raises(ValueError, match="one frame"):
        video_io.write_png(tmp_path / "b.png", np.zeros((2, 16, 16, 3), np.uint8))

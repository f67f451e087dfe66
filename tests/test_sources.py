"""Record schema, clip decoding (resize + centre crop, sampling at a target fps), sources."""

import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from sora_jax.data import sources, transforms, video_io
from sora_jax.data import world as world_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(video=b"", image=b"", **kw):
    rec = {"video": video, "image": image, "format": "mp4", "prompt": "p", "caption": "a long c",
           "fps": 24.0, "num_frames": 24, "width": 48, "height": 32, "duration_s": 1.0,
           "source_id": "x.mp4"}  # fmt: skip
    rec.update(kw)
    return rec


def _ramp_video(frames=24, h=32, w=48):
    """Frame i is flat grey 10*i: decoded grey levels identify the source frame."""
    return np.broadcast_to((np.arange(frames) * 10).astype(np.uint8)[:, None, None, None],
                           (frames, h, w, 3)).copy()  # fmt: skip


def test_record_round_trips_through_the_tfds_codec():
    rec = _record(video=b"\x00\x01\xff" * 10, prompt="ünïcode ✓")
    out = sources.decode_record(sources.encode_record(rec))
    assert out == {**rec, "fps": 24.0}
    with pytest.raises(ValueError, match="lacks fields"):
        sources.encode_record({"video": b""})


def test_temporal_sampling_at_a_target_fps_picks_the_right_source_frames():
    data = video_io.encode_mp4(_ramp_video(), 24, crf=0)
    rec = _record(video=data)
    # 24 fps source, 12 fps target: every second frame; offset 0 starts at frame 0
    clip = sources.decode_clip(rec, 32, 48, 5, target_fps=12.0, offset=0.0)
    np.testing.assert_allclose(clip.mean(axis=(1, 2, 3)), [0, 20, 40, 60, 80], atol=1.5)
    # offset 1 ends the window at the last frame (23): frames 15, 17, ..., 23
    clip = sources.decode_clip(rec, 32, 48, 5, target_fps=12.0, offset=1.0)
    np.testing.assert_allclose(clip.mean(axis=(1, 2, 3)), [150, 170, 190, 210, 230], atol=1.5)
    with pytest.raises(sources.ClipError, match="too short"):
        sources.decode_clip(rec, 32, 48, 13, target_fps=12.0)


def test_resize_covers_then_centre_crops_without_stretching():
    frames = np.zeros((1, 40, 80, 3), np.uint8)
    frames[:, :, 20:60] = 255  # a centred white square of 40x40 in a 2:1 frame
    out = transforms.resize_crop(frames, 16, 16)  # cover: 16x32, crop the middle 16 columns
    assert out.shape == (1, 16, 16, 3)
    assert out[:, :, 1:-1].min() == 255 and out.min() > 200  # edges only antialiased
    assert transforms.cover_size(360, 640, 256, 256) == (256, 455)
    assert transforms.crop_fraction(360, 640, 256, 256) == pytest.approx(1 - 9 / 16)
    np.testing.assert_array_equal(transforms.temporal_indices(30, 30.0, 10.0, 4, 0.0), [0, 3, 6, 9])


def test_scene_cuts_split_at_large_differences_and_drop_slivers():
    diffs = np.zeros(30)
    diffs[[10, 12, 20]] = 0.5
    assert transforms.scene_cuts(diffs, 0.3, 4) == [(0, 10), (12, 20), (20, 30)]


def test_images_and_bad_payloads():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(buf, format="PNG")
    rec = _record(image=buf.getvalue(), num_frames=1, fps=0.0)
    assert sources.decode_clip(rec, 16, 16, 1).shape == (1, 16, 16, 3)
    with pytest.raises(sources.ClipError, match="image"):
        sources.decode_clip(rec, 16, 16, 5)
    with pytest.raises(sources.ClipError):
        sources.decode_clip(_record(video=b"not a video at all" * 50), 16, 16, 5)
    good = video_io.encode_mp4(_ramp_video(), 24)
    with pytest.raises(sources.ClipError):  # metadata claims more frames than the file holds
        sources.decode_clip(_record(video=good, num_frames=60), 16, 16, 33, offset=1.0)


def test_record_source_reads_a_sequence_of_records_and_its_meta():
    data = video_io.encode_mp4(_ramp_video(), 24)
    recs = [sources.encode_record(_record(video=data, source_id=f"c{i}")) for i in range(3)]
    src = sources.RecordSource(recs, target_fps=8.0)
    meta = src.meta()  # no sidecar: scanned
    assert meta["num_frames"].tolist() == [24] * 3 and meta["width"].tolist() == [48] * 3
    item = src.clip(1, 16, 16, 5)  # 5 frames at 8 fps span 13 source frames
    assert item["video"].shape == (5, 16, 16, 3) and item["source_id"] == "c1"
    assert item["fps"] == 8.0 and item["prompt"] == "p"
    np.testing.assert_array_equal(src.clip(1, 16, 16, 5)["video"], item["video"])  # pure


def test_make_source_dispatches_on_config_data():
    world = world_lib.World(world_lib.WorldConfig(num_clips=10))
    config = ml_collections.ConfigDict({"seed": 0, "data": {"source": "world"}})
    src = sources.make_source(config, lambda: world)
    assert len(src) == 10 and src.meta() is None
    assert src.clip(2, 16, 24, 5)["video"].shape == (5, 16, 24, 3)
    config.data.source = "array_record"
    with pytest.raises(ValueError, match="data.paths"):
        sources.make_source(config)
    config.data.source = "hdf5"
    with pytest.raises(ValueError, match="hdf5"):
        sources.make_source(config)
    with pytest.raises(FileNotFoundError):
        sources.ArrayRecordSource("/nonexistent/*.array_record")


def test_make_source_builds_the_configs_world_by_default():
    config = ml_collections.ConfigDict(
        {"seed": 0, "data": {"source": "world"}, "world": {"num_clips": 10, "seed": 3}}
    )
    src = sources.make_source(config)
    direct = world_lib.World(world_lib.WorldConfig(num_clips=10, seed=3))
    assert len(src) == 10
    np.testing.assert_array_equal(
        src.clip(2, 16, 24, 5)["video"], direct.clip(2, 16, 24, 5)["video"]
    )
    other = sources.make_world(config, seed=4)  # overrides win, the config is unchanged
    assert other.cfg.seed == 4 and config.world.seed == 3


def test_sources_and_tfds_builder_import_without_tensorflow():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'tensorflow':\n"
        "            raise ImportError('tensorflow is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from sora_jax.data import sources, tfds_builder\n"
        "sources.decode_record(sources.encode_record({k: b'' if v is object else 0\n"
        "    for k, v in {f: object if t == sources.np.object_ else int\n"
        "    for f, t in sources.FIELDS.items()}.items()}))\n"
        "assert tfds_builder.SoraVideos.name == 'sora_videos'\n"
        "print('ok', 'tensorflow' in sys.modules)\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok False")

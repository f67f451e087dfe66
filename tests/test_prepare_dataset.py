"""tools/prepare_dataset.py: good clips become records, every bad file is skipped and counted."""

import io
import os
import sys

import av
import numpy as np
import pytest
from PIL import Image

from sora_jax.data import sources, tfds_builder, video_io
from sora_jax.data import world as world_lib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
import prepare_dataset  # noqa: E402

WORLD = world_lib.World(world_lib.WorldConfig(seed=1, num_clips=100))


def _clip(i, h=32, w=48, f=9):
    return WORLD.clip(i, h, w, f)


def _write(folder, name, data: bytes, caption: bytes | None = b"a caption\nlong caption"):
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)
    if caption is not None:
        with open(os.path.join(folder, os.path.splitext(name)[0] + ".txt"), "wb") as f:
            f.write(caption)


def _png(h, w, seed=0):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)).save(
        buf, format="PNG"
    )
    return buf.getvalue()


def _header_only_mp4():
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as cont:
        s = cont.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        cont.start_encoding()
        cont.mux(s.encode())
    return buf.getvalue()


@pytest.fixture(scope="module")
def raw_folder(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("raw"))
    os.makedirs(os.path.join(d, "sub"))
    for i in range(3):  # good videos, one in a subfolder
        c = _clip(i)
        name = f"sub/clip{i}.mp4" if i == 2 else f"clip{i}.mp4"
        _write(
            d, name, video_io.encode_mp4(c["video"], 8), f"{c['prompt']}\n{c['caption']}".encode()
        )
    dark, light = (next(i for i in range(10, 99) if WORLD.spec(i)["background"]["tone"] == t)
                   for t in ("dark", "light"))  # fmt: skip
    two = np.concatenate([_clip(dark, f=12)["video"], _clip(light, f=10)["video"]])  # a hard cut
    _write(d, "two_scenes.mp4", video_io.encode_mp4(two, 8))
    _write(d, "still.png", _png(40, 30))
    jpg = io.BytesIO()
    Image.fromarray(_clip(5, f=1)["video"][0]).save(jpg, format="JPEG")
    _write(d, "still.jpg", jpg.getvalue())
    good = video_io.encode_mp4(_clip(7)["video"], 8)
    _write(d, "corrupt.mp4", np.random.default_rng(0).bytes(3000))
    _write(d, "truncated.mp4", good[: len(good) // 3])
    _write(d, "zero_frames.mp4", _header_only_mp4())
    _write(d, "empty.mp4", b"")
    _write(d, "bad_caption.mp4", good, caption=b"\xff\xfe caption \x80")
    _write(d, "no_caption.mp4", good, caption=None)
    _write(d, "absurd.png", _png(20, 400))
    _write(d, "tiny.png", _png(4, 4))
    _write(d, "broken.png", _png(40, 40)[:50])
    return d


@pytest.fixture(scope="module")
def prepared(raw_folder, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tfds"))
    report = prepare_dataset.prepare(
        raw_folder, out, num_shards=2, workers=2, progress=False, scene_threshold=0.2,
        min_scene_frames=4,
    )  # fmt: skip
    return out, report


def test_bad_files_are_skipped_and_counted_by_reason(prepared):
    _, report = prepared
    assert report["files"] == 15
    skipped = {rel for rel, _ in report["bad_files"]}
    assert skipped == {"corrupt.mp4", "truncated.mp4", "zero_frames.mp4", "empty.mp4",
                       "bad_caption.mp4", "no_caption.mp4", "absurd.png", "tiny.png",
                       "broken.png"}  # fmt: skip
    assert report["bad"]["not UTF-8"] == 1 and report["bad"]["missing caption"] == 1
    assert report["bad"]["aspect"] == 1 and report["bad"]["smaller than"] == 1
    assert sum(report["bad"].values()) == 9
    # 3 clips + 2 scenes of the cut clip + 2 images
    assert report["records"] == 7 and sum(report["shard_lengths"]) == 7


def test_tfds_data_source_reads_the_prepared_folder_without_tensorflow(prepared):
    import tensorflow_datasets as tfds

    out, _ = prepared
    ds = tfds.data_source("sora_videos", data_dir=out, split="train")
    assert len(ds) == 7
    recs = {
        sources.decode_record(ds[i])["source_id"]: sources.decode_record(ds[i]) for i in range(7)
    }
    assert set(recs) == {"clip0.mp4", "clip1.mp4", "sub/clip2.mp4", "two_scenes.mp4#0",
                         "two_scenes.mp4#1", "still.png", "still.jpg"}  # fmt: skip
    clip = recs["clip0.mp4"]
    assert (clip["num_frames"], clip["fps"], clip["width"], clip["height"]) == (9, 8.0, 48, 32)
    assert clip["duration_s"] == pytest.approx(9 / 8)
    assert clip["prompt"] == _clip(0)["prompt"] and clip["caption"] == _clip(0)["caption"]
    assert (recs["two_scenes.mp4#0"]["num_frames"], recs["two_scenes.mp4#1"]["num_frames"]) == (
        12,
        10,
    )
    png = recs["still.png"]
    assert (png["num_frames"], png["width"], png["height"], png["video"]) == (1, 30, 40, b"")
    assert "tensorflow" not in sys.modules


def test_array_record_source_decodes_clips_and_reads_sidecar_meta(prepared):
    out, _ = prepared
    src = sources.ArrayRecordSource(tfds_builder.version_dir(out))
    meta = src.meta()
    assert len(src) == 7 and sorted(meta["num_frames"].tolist()) == [1, 1, 9, 9, 9, 10, 12]
    ids = [src.record(i)["source_id"] for i in range(7)]
    i0 = ids.index("clip0.mp4")
    item = src.clip(i0, 32, 48, 9)
    assert item["video"].shape == (9, 32, 48, 3)
    # H.264 4:2:0 at crf 18 round-trips a 32x48 world clip within a few grey levels
    err = np.abs(item["video"].astype(np.float32) - _clip(0)["video"]).mean()
    assert err < 8.0
    assert src.clip(ids.index("still.png"), 16, 16, 1)["video"].shape == (1, 16, 16, 3)
    with pytest.raises(sources.ClipError):
        src.clip(ids.index("still.png"), 16, 16, 5)
    with pytest.raises(sources.ClipError):
        src.clip(i0, 16, 16, 13)  # longer than the clip


def test_caption_table_from_jsonl_and_csv(raw_folder, tmp_path):
    jsonl = tmp_path / "caps.jsonl"
    jsonl.write_text('{"path": "clip0.mp4", "prompt": "p0", "caption": "long 0"}\nnot json\n'
                     '{"path": "still.png", "text": "an image"}\n')  # fmt: skip
    table = prepare_dataset.load_caption_table(str(jsonl))
    assert table == {"clip0.mp4": ("p0", "long 0"), "still.png": ("an image", "an image")}
    csv_path = tmp_path / "caps.csv"
    csv_path.write_bytes(b"path,caption\nclip1.mp4,hello world\nclip0.mp4,bad \xff\n")
    table = prepare_dataset.load_caption_table(str(csv_path))
    assert table["clip1.mp4"] == ("hello world", "hello world")
    assert table["clip0.mp4"] == "caption is not UTF-8"
    report = prepare_dataset.prepare(raw_folder, str(tmp_path / "out"), captions=str(jsonl),
                                     progress=False)  # fmt: skip
    assert report["records"] == 2 and report["bad"]["missing caption"] == 13


def test_tfds_builder_builds_the_same_records_from_a_raw_folder(raw_folder, tmp_path):
    pytest.importorskip("importlib_resources")  # tfds' download_and_prepare imports it
    import tensorflow_datasets as tfds

    builder = tfds_builder.SoraVideos(data_dir=str(tmp_path), file_format="array_record")
    config = tfds.download.DownloadConfig(manual_dir=raw_folder)
    builder.download_and_prepare(download_config=config)
    ds = tfds.data_source("sora_videos", data_dir=str(tmp_path), split="train")
    ids = {sources.decode_record(ds[i])["source_id"] for i in range(len(ds))}
    # no scene splitting here; the same bad files are left out
    assert ids == {"clip0.mp4", "clip1.mp4", "sub/clip2.mp4", "two_scenes.mp4", "still.png",
                   "still.jpg"}  # fmt: skip
    assert "tensorflow" not in sys.modules

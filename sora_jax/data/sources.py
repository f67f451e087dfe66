"""Clip sources (ArrayRecord shards, TFDS, the synthetic world) and the record schema.

Record schema: one ArrayRecord record is one serialized `tf.train.Example` (written and read
without TensorFlow through tfds' numpy codec), so the same shards are read by
`ArrayRecordSource` and by `tfds.data_source("sora_videos", data_dir=...)`:

  video       bytes    compressed clip (mp4 / webm / mov / mkv container), b"" for an image
  image       bytes    encoded still (png / jpg), b"" for a video
  format      str      file extension of the payload ("mp4", "png", ...)
  prompt      str      short caption (what a user would type)
  caption     str      long descriptive caption (= prompt when only one is known)
  fps         float32  source frame rate (0 for images)
  num_frames  int32    decodable frames (1 for images)
  width       int32    stored frame width in pixels
  height      int32    stored frame height in pixels
  duration_s  float32  num_frames / fps (0 for images)
  source_id   str      file path relative to the prepared folder, "#k" for its k-th scene

Next to the shards, `sora_meta.npz` holds the metadata columns of every record (shard order), so
the pipeline assigns clips to buckets without reading any video bytes.

Every source offers `__len__`, `meta() -> {num_frames, fps, height, width: [N]} | None` (None:
any clip fits any bucket) and `clip(index, height, width, num_frames) -> {"video": uint8
[F, H, W, 3], "prompt", "caption", "index", "fps", "source_id"}`, which decodes with PyAV,
resizes to cover and centre-crops to the bucket, and samples frames at `target_fps`. A record
that cannot be decoded raises `ClipError`; the pipeline skips it and counts it.
"""

from __future__ import annotations

import functools
import glob
import io
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from sora_jax.data import buckets as buckets_lib
from sora_jax.data import transforms, video_io
from sora_jax.data import world as world_lib

FIELDS: dict[str, Any] = {
    "video": np.object_,
    "image": np.object_,
    "format": np.object_,
    "prompt": np.object_,
    "caption": np.object_,
    "fps": np.float32,
    "num_frames": np.int32,
    "width": np.int32,
    "height": np.int32,
    "duration_s": np.float32,
    "source_id": np.object_,
}
TEXT_FIELDS = ("format", "prompt", "caption", "source_id")
META_FIELDS = ("num_frames", "fps", "height", "width")
META_FILE = "sora_meta.npz"
VIDEO_FORMATS = ("mp4", "webm", "mov", "mkv", "avi", "m4v", "gif")
IMAGE_FORMATS = ("png", "jpg", "jpeg", "bmp", "webp")


class ClipError(ValueError):
    """A record that cannot be turned into a clip of the requested shape."""


@functools.cache
def features():
    """The record schema as a tfds `FeaturesDict` of scalar `Tensor`s (no TensorFlow needed)."""
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict(
        {k: tfds.features.Tensor(shape=(), dtype=dt) for k, dt in FIELDS.items()}
    )


@functools.cache
def _serializer():
    from tensorflow_datasets.core import example_serializer

    return example_serializer.ExampleSerializer(features().get_serialized_info())


def encode_record(record: Mapping[str, Any]) -> bytes:
    """A record dict (every FIELDS key; str or bytes for text) -> serialized tf.train.Example."""
    missing = set(FIELDS) - set(record)
    if missing:
        raise ValueError(f"record lacks fields {sorted(missing)}; see the schema in sources.py.")
    row = {k: (v.encode() if isinstance(v, str) else v) for k, v in record.items() if k in FIELDS}
    return _serializer().serialize_example(features().encode_example(row))


def decode_record(data: bytes | Mapping[str, Any]) -> dict[str, Any]:
    """Serialized record (or a tfds-decoded dict) -> dict with str text and python numbers."""
    row = features().deserialize_example_np(data) if isinstance(data, bytes) else dict(data)
    out = {}
    for k in FIELDS:
        v = row[k]
        v = v.item() if isinstance(v, np.ndarray) else v
        if k in TEXT_FIELDS:
            v = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        out[k] = v
    return out


def _decode_video(data: bytes, height: int, width: int, indices: np.ndarray) -> np.ndarray:
    """PyAV decode of the frames at `indices` (sorted), resized by swscale to cover, cropped."""
    wanted = {int(i): n for n, i in enumerate(indices)}
    out: list[np.ndarray | None] = [None] * len(indices)
    last = int(indices[-1])
    with video_io.require_av().open(io.BytesIO(data), "r") as container:
        if not container.streams.video:
            raise ClipError("the record has no video stream.")
        stream = container.streams.video[0]
        # One decode thread per clip: parallelism comes from the pipeline's threads/workers,
        # and codec threads on top would oversubscribe the cores.
        stream.codec_context.thread_count = 1
        size = None
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                size = size or transforms.cover_size(frame.height, frame.width, height, width)
                rgb = frame.reformat(width=size[1], height=size[0], format="rgb24",
                                     interpolation="AREA").to_ndarray()  # fmt: skip
                for n, idx in enumerate(indices):  # a frame may repeat when upsampling fps
                    if idx == i:
                        out[n] = rgb
            if i >= last:
                break
    if any(f is None for f in out):
        got = sum(f is not None for f in out)
        raise ClipError(f"the video holds fewer frames than its metadata ({got}/{len(out)}).")
    return transforms.center_crop(np.stack(out), height, width)


def _decode_image(data: bytes, height: int, width: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        frame = np.asarray(im.convert("RGB"))
    return transforms.resize_crop(frame[None], height, width)


def decode_clip(
    record: Mapping[str, Any],
    height: int,
    width: int,
    num_frames: int,
    *,
    target_fps: float = 0.0,
    offset: float = 0.5,
) -> np.ndarray:
    """uint8 [num_frames, height, width, 3] from a decoded record (see the schema).

    Raises ClipError when the payload is unreadable or too short for `num_frames` frames.
    """
    try:
        if record["image"]:
            if num_frames != 1:
                raise ClipError(f"an image cannot fill a {num_frames}-frame bucket.")
            return _decode_image(record["image"], height, width)
        if not record["video"]:
            raise ClipError("the record has neither video nor image bytes.")
        n_src = int(record["num_frames"])
        indices = transforms.temporal_indices(
            n_src, float(record["fps"]), target_fps, num_frames, offset
        )
        return _decode_video(record["video"], height, width, indices)
    except ClipError:
        raise
    except (*video_io.AV_ERRORS, OSError, ValueError, EOFError) as e:
        raise ClipError(f"cannot decode {record.get('source_id', '?')!r}: {e}") from e


def resolve_paths(paths: str | Sequence[str]) -> list[str]:
    """Shard paths from a comma-separated string / list of files, globs or folders (sorted)."""
    items = [p for p in paths.split(",") if p] if isinstance(paths, str) else list(paths)
    out: list[str] = []
    for p in items:
        p = os.path.expanduser(str(p).strip())
        if os.path.isdir(p):
            out += sorted(glob.glob(os.path.join(p, "*.array_record*")))
        else:
            out += sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
    missing = [p for p in out if not os.path.exists(p)]
    if not out or missing:
        raise FileNotFoundError(f"no ArrayRecord shards found at {paths!r} (missing: {missing}).")
    return out


def load_meta(
    shards: Sequence[str], ranges: Sequence[tuple[int, int]] | None = None
) -> dict[str, np.ndarray] | None:
    """The metadata columns of `shards` (in order) from the sora_meta.npz beside them, if any.

    ranges: optional (skip, take) per shard, for tfds sub-splits like "train[:10%]".
    """
    path = os.path.join(os.path.dirname(shards[0]), META_FILE)
    if not os.path.exists(path):
        return None
    with np.load(path) as z:
        names = [str(s) for s in z["shards"]]
        ends = np.cumsum(z["shard_lengths"])
        starts = ends - z["shard_lengths"]
        cols = {k: z[k] for k in META_FIELDS}
    rows = []
    for n, s in enumerate(shards):
        if os.path.basename(s) not in names:
            return None
        i = names.index(os.path.basename(s))
        skip, take = ranges[n] if ranges else (0, ends[i] - starts[i])
        rows.append(np.arange(starts[i] + skip, starts[i] + skip + take))
    sel = np.concatenate(rows)
    return {k: v[sel] for k, v in cols.items()}


class RecordSource:
    """Clips from a random-access sequence of records (bytes or tfds-decoded dicts)."""

    def __init__(self, records: Sequence, meta=None, *, target_fps: float = 0.0, seed: int = 0):
        self.records = records
        self.target_fps = float(target_fps)
        self.seed = int(seed)
        self._meta = meta

    def __len__(self) -> int:
        return len(self.records)

    def record(self, index: int) -> dict[str, Any]:
        return decode_record(self.records[int(index)])

    def meta(self) -> dict[str, np.ndarray]:
        if self._meta is None:  # no sidecar: read every record once (slow for large sets)
            logging.warning("no %s next to the data: scanning %d records", META_FILE, len(self))
            rows = [self.record(i) for i in range(len(self))]
            self._meta = {k: np.array([r[k] for r in rows]) for k in META_FIELDS}
        return self._meta

    def clip(self, index: int, height: int, width: int, num_frames: int) -> dict[str, Any]:
        try:
            rec = self.record(index)
        except Exception as e:  # noqa: BLE001 - a corrupt record is a bad clip, not a crash.
            raise ClipError(f"record {index} is unreadable: {e}") from e
        # The window start is a pure function of (seed, index, frames): cached latents and
        # on-the-fly clips agree, and each bucket sees a different part of a long clip.
        offset = float(buckets_lib.hash_uniform(self.seed + num_frames, [index], stream=3)[0])
        video = decode_clip(rec, height, width, num_frames, target_fps=self.target_fps,
                            offset=offset)  # fmt: skip
        return {"video": video, "prompt": rec["prompt"], "caption": rec["caption"],
                "index": int(index), "fps": self.target_fps or rec["fps"],
                "source_id": rec["source_id"]}  # fmt: skip


class ArrayRecordSource(RecordSource):
    """Records of prepared ArrayRecord shards (`paths`: files, globs or a folder)."""

    def __init__(self, paths: str | Sequence[str], *, target_fps: float = 0.0, seed: int = 0):
        import grain

        self.paths = resolve_paths(paths)
        data = grain.sources.ArrayRecordDataSource(self.paths)
        super().__init__(data, load_meta(self.paths), target_fps=target_fps, seed=seed)


class TfdsSource(RecordSource):
    """Any `tfds.data_source` (ArrayRecord) dataset with the record schema's fields."""

    def __init__(self, name: str, *, data_dir: str | None = None, split: str = "train",
                 target_fps: float = 0.0, seed: int = 0):  # fmt: skip
        import tensorflow_datasets as tfds

        from sora_jax.data import tfds_builder  # noqa: F401 - registers "sora_videos"

        data = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
        instructions = data.dataset_info.splits[split].file_instructions
        shards = [str(f.filename) for f in instructions]
        meta = load_meta(shards, [(f.skip, f.take) for f in instructions]) if shards else None
        super().__init__(data, meta, target_fps=target_fps, seed=seed)


class WorldSource:
    """The synthetic world: renders any clip at any size, so every clip fits every bucket."""

    def __init__(self, world):
        self.world = world

    def __len__(self) -> int:
        return len(self.world)

    def meta(self) -> None:
        return None

    def clip(self, index: int, height: int, width: int, num_frames: int) -> dict[str, Any]:
        item = self.world.clip(index, height, width, num_frames)
        return {**item, "source_id": f"world:{item['index']}"}


def make_world(config, **overrides) -> world_lib.World:
    """The synthetic world of the config's `world` section, with fields replaced by `overrides`
    (e.g. another seed for held-out clips)."""
    fields = config.world.to_dict()
    fields.update(overrides)
    fields = {k: tuple(map(tuple, v)) if k == "resolutions" else v for k, v in fields.items()}
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return world_lib.World(world_lib.WorldConfig(**fields))


def make_source(config, world_factory=None):
    """The source the config's `data` section names (world | array_record | tfds).

    world_factory: () -> World for the world source; by default `make_world(config)`.
    """
    data = dict(config.get("data", None) or {})
    kind = data.get("source", "world")
    fps, seed = float(data.get("target_fps", 0.0)), int(config.get("seed", 0))
    if kind == "world":
        return WorldSource(world_factory() if world_factory else make_world(config))
    if kind == "array_record":
        if not data.get("paths"):
            raise ValueError("data.source='array_record' needs data.paths (shards, glob, folder).")
        return ArrayRecordSource(data["paths"], target_fps=fps, seed=seed)
    if kind == "tfds":
        return TfdsSource(data.get("tfds_name", "sora_videos"), data_dir=data.get("data_dir"),
                          split=data.get("split", "train"), target_fps=fps, seed=seed)  # fmt: skip
    raise ValueError(f"data.source={kind!r}; expected 'world', 'array_record' or 'tfds'.")

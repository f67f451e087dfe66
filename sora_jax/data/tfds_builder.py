"""The `sora_videos` TFDS dataset: records from media files, the builder, its dataset info.

`tools/prepare_dataset.py` writes a folder in TFDS layout
(`<data_dir>/sora_videos/1.0.0/{dataset_info.json, features.json, sora_videos-train.array_record-
0000k-of-0000n, sora_meta.npz}`), so it can be read back with

    tfds.data_source("sora_videos", data_dir=data_dir, split="train")

without TensorFlow (scalar `Tensor` features and ArrayRecord only). Importing this module
registers `SoraVideos`; tfds can also open the folder from its files alone. `SoraVideos` also
builds the dataset itself from a folder of media (`manual_dir`), single-process, through tfds.

`file_records` turns one media file into records (see the schema in `sources.py`): it decodes
the whole file to count frames (container headers often lie), optionally splits scenes where
consecutive frames differ by more than a threshold (re-encoding each scene as H.264), and raises
`BadFile` with a one-line reason for anything unusable.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import av
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from sora_jax.data import sources, transforms, video_io

NAME = "sora_videos"
VERSION = "1.0.0"
SPLIT = "train"
MEDIA = sources.VIDEO_FORMATS + sources.IMAGE_FORMATS
_THUMB = (32, 32)  # (h, w) of the grey thumbnails scene detection compares


class BadFile(ValueError):
    """A media file that cannot become a record; the message says why."""


def _check_size(h: int, w: int, min_side: int, max_aspect: float) -> None:
    if min(h, w) < min_side:
        raise BadFile(f"frames of {w}x{h} are smaller than min_side={min_side}.")
    if max(h, w) / min(h, w) > max_aspect:
        raise BadFile(f"aspect ratio {w}x{h} exceeds max_aspect={max_aspect:g}.")


def _image_record(data: bytes, fmt: str, min_side: int, max_aspect: float) -> dict:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            w, h = im.size
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad files.
        raise BadFile(f"unreadable image: {e}") from e
    _check_size(h, w, min_side, max_aspect)
    return {"video": b"", "image": data, "format": fmt, "fps": 0.0, "num_frames": 1,
            "width": w, "height": h, "duration_s": 0.0}  # fmt: skip


def probe_video(data: bytes, with_diffs: bool) -> tuple[int, float, int, int, np.ndarray]:
    """(frames, fps, height, width, diffs float [F]) of a video, decoding every frame."""
    diffs, prev, n, h, w = [], None, 0, 0, 0
    try:
        with av.open(io.BytesIO(data), "r") as container:
            if not container.streams.video:
                raise BadFile("no video stream.")
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                h, w, n = frame.height, frame.width, n + 1
                if with_diffs:
                    small = frame.reformat(width=_THUMB[1], height=_THUMB[0], format="gray")
                    grey = small.to_ndarray()
                    diffs.append(transforms.frame_difference(prev, grey))
                    prev = grey
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    except BadFile:
        raise
    except Exception as e:  # noqa: BLE001 - truncated/corrupt containers raise many types.
        if n == 0:
            raise BadFile(f"unreadable video: {e}") from e
        rate = None  # keep the frames decoded before the damage
    if n == 0:
        raise BadFile("the video has no decodable frames.")
    return n, float(rate) if rate else 0.0, h, w, np.asarray(diffs, np.float64)


def _scene_bytes(data: bytes, scenes: Sequence[tuple[int, int]], fps: float, crf: int):
    """H.264 mp4 bytes of each [start, end) frame range, decoding the source once."""
    frames, out = [], []
    it = iter(scenes)
    start, end = next(it)
    with av.open(io.BytesIO(data), "r") as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if start <= i < end:
                frames.append(frame.to_ndarray(format="rgb24"))
            if i + 1 == end:
                out.append((start, end, video_io.encode_mp4(np.stack(frames), fps or 24, crf=crf)))
                frames = []
                nxt = next(it, None)
                if nxt is None:
                    break
                start, end = nxt
    return out


def file_records(
    path: str,
    source_id: str,
    prompt: str,
    caption: str,
    *,
    scene_threshold: float = 0.0,
    min_scene_frames: int = 8,
    min_side: int = 16,
    max_aspect: float = 4.0,
    crf: int = 18,
) -> list[dict]:
    """Records (sources.FIELDS) of one media file; raises BadFile when it is unusable.

    scene_threshold: mean absolute grey difference in [0, 1] between consecutive frames that
    marks a cut (0 disables splitting; 0.3 catches hard cuts of natural video).
    """
    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise BadFile("the file is empty.")
    base = {"prompt": prompt, "caption": caption or prompt, "source_id": source_id}
    if fmt in sources.IMAGE_FORMATS:
        return [{**base, **_image_record(data, fmt, min_side, max_aspect)}]
    if fmt not in sources.VIDEO_FORMATS:
        raise BadFile(f"unknown extension {fmt!r}.")
    n, fps, h, w, diffs = probe_video(data, scene_threshold > 0)
    _check_size(h, w, min_side, max_aspect)
    scenes = [(0, n)]
    if scene_threshold > 0:
        scenes = transforms.scene_cuts(diffs, scene_threshold, min_scene_frames) or [(0, n)]
    if scenes == [(0, n)]:
        payloads = [(0, n, data)]
    else:
        payloads, fmt = _scene_bytes(data, scenes, fps, crf), "mp4"
    records = []
    for k, (a, b, payload) in enumerate(payloads):
        sid = source_id if len(payloads) == 1 else f"{source_id}#{k}"
        records.append({**base, "source_id": sid, "video": payload, "image": b"", "format": fmt,
                        "fps": fps, "num_frames": b - a, "width": w, "height": h,
                        "duration_s": (b - a) / fps if fps else 0.0})  # fmt: skip
    return records


def sidecar_caption(path: str) -> tuple[str, str] | str:
    """(prompt, caption) from `<name>.txt`, or the reason it cannot be used."""
    txt = os.path.splitext(path)[0] + ".txt"
    if not os.path.exists(txt):
        return "missing caption"
    with open(txt, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "caption is not UTF-8"
    lines = [" ".join(ln.split()) for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "missing caption"
    return lines[0], " ".join(lines[1:]) or lines[0]


class SoraVideos(tfds.core.GeneratorBasedBuilder):
    """Captioned videos and images (schema in sora_jax/data/sources.py), ArrayRecord only."""

    VERSION = tfds.core.Version(VERSION)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put videos/images with sidecar .txt captions in manual_dir, or (faster, multi-process) "
        "run tools/prepare_dataset.py --input=<folder> --data_dir=<data_dir>."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Captioned video clips and images prepared for sora_jax.",
            features=sources.features(),
        )

    def _split_generators(self, dl_manager):
        return {SPLIT: self._generate_examples(str(dl_manager.manual_dir))}

    def _generate_examples(self, folder: str):
        """Files with a usable sidecar caption; bad files are skipped (the tool counts them)."""
        for root, _, names in sorted(os.walk(folder)):
            for name in sorted(names):
                path = os.path.join(root, name)
                ext = os.path.splitext(name)[1].lower().lstrip(".")
                captions = sidecar_caption(path)
                if ext not in MEDIA or isinstance(captions, str):
                    continue
                try:
                    recs = file_records(path, os.path.relpath(path, folder), *captions)
                except BadFile:
                    continue
                for rec in recs:
                    yield rec["source_id"], rec


def version_dir(data_dir: str) -> str:
    return os.path.join(data_dir, NAME, VERSION)


def shard_path(data_dir: str, shard: int, num_shards: int) -> str:
    """tfds' file name template: `sora_videos-train.array_record-00000-of-00004`."""
    name = f"{NAME}-{SPLIT}.array_record-{shard:05d}-of-{num_shards:05d}"
    return os.path.join(version_dir(data_dir), name)


def write_dataset_info(data_dir: str, shard_lengths: Sequence[int], num_bytes: int) -> None:
    """dataset_info.json + features.json for shards already written at `shard_path(...)`."""
    builder = SoraVideos(data_dir=data_dir, file_format="array_record")
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir,
        template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        dataset_name=NAME,
        split=SPLIT,
        filetype_suffix="array_record",
    )
    split = tfds.core.SplitInfo(
        name=SPLIT,
        shard_lengths=[int(n) for n in shard_lengths],
        num_bytes=int(num_bytes),
        filename_template=template,
    )
    builder.info.set_splits(tfds.core.SplitDict([split]))
    builder.info.set_file_format("array_record")
    builder.info.write_to_directory(builder.data_dir)

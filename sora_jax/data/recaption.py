"""Recaptioning: add descriptive captions to a prepared dataset (the library behind
tools/recaption.py).

The Sora report (after DALL·E 3) trains on highly descriptive captions written by a captioner
and expands short user prompts into the same style at sampling time. Here a *backend* writes
captions for each record and they are stored side by side with the existing ones:

  world   the synthetic world's describer: from each record's ground-truth scene `spec` it
          writes captions in several styles (short / medium / long), so recaptioning can be
          studied against the truth;
  vlm     a local vision-language model (any `transformers` image-text-to-text checkpoint
          folder, e.g. LLaVA / Qwen2-VL): `num_frames` frames sampled evenly from each clip,
          a prompt template, batched greedy generation.

Datasets (`open_dataset`):

  JSONL manifest   one `{"path": video or image file (relative to the manifest), "captions":
                   {style: text}, "spec": {...} (optional)}` per line; the output is the same
                   manifest with the new captions merged into `captions`.
  ArrayRecord      prepared shards (sora_jax.data.sources record schema: `prompt`, `caption`,
                   ...); the output folder holds the same shards with `caption` replaced by the
                   `write_style` caption (`prompt` kept), every other file copied, and all new
                   captions side by side in captions.jsonl ({"index", "source_id", "captions"}).

Runs are resumable: finished records are appended to `<output>.progress.jsonl` after every
batch (flushed to disk), and a restarted run skips them; a torn last line from a kill is ignored.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tqdm

from sora_jax.data import video_io, world

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = (
    "Describe this video in detail: every object with its colour, shape and size, how each one "
    "moves, the background, and any camera motion."
)


@dataclasses.dataclass(frozen=True)
class RecaptionConfig:
    """Settings of one recaptioning run (the `recaption` section of a config)."""

    backend: str = "world"  # "world" | "vlm"
    styles: tuple[str, ...] = world.STYLES  # world backend: describer styles to write
    model_dir: str = ""  # vlm backend: local transformers checkpoint folder
    prompt: str = DEFAULT_PROMPT  # vlm: instruction; "{images}" (if present) = image tokens
    num_frames: int = 4  # vlm: frames sampled evenly from each clip
    max_new_tokens: int = 96  # vlm: caption length limit
    caption_key: str = "vlm"  # vlm: name of the caption it writes
    dtype: str = "float32"  # vlm: torch dtype of the model ("bfloat16" on GPU)
    batch_size: int = 8
    write_style: str = ""  # ArrayRecord output: style stored in `caption`; "" = the longest


# ----------------------------------------------------------------------------- datasets


class Dataset(Protocol):
    """What recaptioning needs from a dataset: read captions, spec and frames; write results."""

    def __len__(self) -> int: ...
    def captions(self, index: int) -> dict[str, str]: ...
    def spec(self, index: int) -> dict | None: ...
    def frames(self, index: int) -> np.ndarray: ...  # uint8 [F, H, W, 3], all frames
    def write(self, output: str, new: Sequence[dict[str, str]], write_style: str) -> None: ...


def _image_frames(data: bytes | str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
        return np.asarray(im.convert("RGB"))[None]


class JsonlManifest:
    """Records of a JSONL manifest (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        lines = self.path.read_text(encoding="utf-8").splitlines()
        self.rows = [json.loads(line) for line in lines if line.strip()]
        for i, row in enumerate(self.rows):
            if not isinstance(row.get("captions", {}), dict):
                raise ValueError(f"{self.path} line {i + 1}: 'captions' must be an object.")

    def __len__(self) -> int:
        return len(self.rows)

    def captions(self, index: int) -> dict[str, str]:
        return dict(self.rows[index].get("captions", {}))

    def spec(self, index: int) -> dict | None:
        return self.rows[index].get("spec")

    def frames(self, index: int) -> np.ndarray:
        file = self.path.parent / self.rows[index]["path"]
        if file.suffix.lower().lstrip(".") in ("png", "jpg", "jpeg", "bmp", "webp"):
            return _image_frames(str(file))
        return video_io.read_video(file)[0]

    def write(self, output: str, new: Sequence[dict[str, str]], write_style: str) -> None:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        base = os.path.relpath(self.path.parent, out.parent)
        tmp = out.with_name(out.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for row, caps in zip(self.rows, new):
                path = (
                    row["path"] if os.path.isabs(row["path"]) else os.path.join(base, row["path"])
                )
                merged = {**row, "path": os.path.normpath(path)}
                merged["captions"] = {**row.get("captions", {}), **caps}
                f.write(json.dumps(merged, ensure_ascii=False) + "\n")
        os.replace(tmp, out)


class ArrayRecordDataset:
    """Records of prepared ArrayRecord shards (a folder, glob or comma-separated files)."""

    def __init__(self, paths: str):
        from array_record.python.array_record_module import ArrayRecordReader

        from sora_jax.data import sources

        self._sources = sources
        self.paths = sources.resolve_paths(paths)
        self.readers = [ArrayRecordReader(p) for p in self.paths]
        self.ends = np.cumsum([r.num_records() for r in self.readers])

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def _locate(self, index: int) -> tuple[int, int]:
        shard = int(np.searchsorted(self.ends, index, side="right"))
        return shard, index - (int(self.ends[shard - 1]) if shard else 0)

    def record(self, index: int) -> dict[str, Any]:
        shard, row = self._locate(index)
        return self._sources.decode_record(self.readers[shard].read([row])[0])

    def captions(self, index: int) -> dict[str, str]:
        rec = self.record(index)
        return {"prompt": rec["prompt"], "caption": rec["caption"]}

    def spec(self, index: int) -> dict | None:
        return None  # the record schema carries no scene spec

    def frames(self, index: int) -> np.ndarray:
        rec = self.record(index)
        return _image_frames(rec["image"]) if rec["image"] else video_io.read_video(rec["video"])[0]

    def write(self, output: str, new: Sequence[dict[str, str]], write_style: str) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        src_dir = Path(self.paths[0]).parent
        for f in src_dir.iterdir():  # dataset_info.json, features.json, sora_meta.npz, ...
            if f.is_file() and str(f) not in self.paths:
                shutil.copy2(f, out / f.name)
        index, sidecar = 0, []
        for path, reader in zip(self.paths, self.readers):
            writer = ArrayRecordWriter(str(out / Path(path).name), "group_size:1")
            for row in range(reader.num_records()):
                rec = self._sources.decode_record(reader.read([row])[0])
                caps = new[index]
                rec["caption"] = caps.get(write_style, rec["caption"])
                writer.write(self._sources.encode_record(rec))
                sidecar.append({"index": index, "source_id": rec["source_id"], "captions": caps})
                index += 1
            writer.close()
        with open(out / "captions.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in sidecar)


def open_dataset(path: str) -> Dataset:
    """A .jsonl manifest, or ArrayRecord shards (folder / glob / files)."""
    if str(path).endswith(".jsonl"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"manifest {path!r} does not exist.")
        return JsonlManifest(path)
    return ArrayRecordDataset(path)


def export_world(folder: str | os.PathLike, cfg: world.WorldConfig, num_clips: int) -> Path:
    """Renders `num_clips` world clips to mp4 + manifest.jsonl with short captions and specs.

    The prepared-dataset starting point of a recaptioning study; returns the manifest path.
    """
    folder = Path(folder)
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    w = world.World(cfg)
    with open(folder / "manifest.jsonl", "w", encoding="utf-8") as f:
        for i in range(num_clips):
            item = w[i]
            name = f"clips/{i:06d}.mp4"
            video_io.write_mp4(folder / name, item["video"], item["fps"])
            row = {"path": name, "captions": {"short": item["prompt"]}, "spec": item["spec"]}
            f.write(json.dumps(row) + "\n")
    return folder / "manifest.jsonl"


# ----------------------------------------------------------------------------- backends


class WorldBackend:
    """Captions from each record's ground-truth spec by the world describer, in `styles`."""

    def __init__(self, styles: Sequence[str] = world.STYLES):
        bad = [s for s in styles if s not in world.STYLES]
        if bad or not styles:
            raise ValueError(f"world styles {list(styles)}; expected some of {world.STYLES}.")
        self.styles = tuple(styles)

    def __call__(self, dataset: Dataset, indices: Sequence[int]) -> list[dict[str, str]]:
        out = []
        for i in indices:
            spec = dataset.spec(i)
            if spec is None:
                raise ValueError(
                    f"record {i} has no scene spec; the world backend needs records carrying "
                    f"'spec' (e.g. a manifest written by recaption.export_world)."
                )
            out.append({s: world.describe(spec, s) for s in self.styles})
        return out


def sample_frames(frames: np.ndarray, n: int) -> np.ndarray:
    """n frames spread evenly from first to last: uint8 [F, H, W, 3] -> [min(n, F), H, W, 3]."""
    idx = np.unique(np.round(np.linspace(0, len(frames) - 1, n)).astype(int))
    return frames[idx]


class VLMBackend:
    """Captions from a local transformers vision-language model (greedy, batched)."""

    def __init__(self, cfg: RecaptionConfig):
        import torch
        import transformers

        if not cfg.model_dir or not os.path.isdir(cfg.model_dir):
            raise FileNotFoundError(
                f"recaption.model_dir={cfg.model_dir!r} is not a folder; expected a local "
                f"transformers image-text-to-text checkpoint (config.json, weights, processor)."
            )
        self.cfg, self._torch = cfg, torch
        self.processor = transformers.AutoProcessor.from_pretrained(cfg.model_dir)
        dtype = getattr(torch, cfg.dtype)
        self.model = transformers.AutoModelForImageTextToText.from_pretrained(
            cfg.model_dir, dtype=dtype
        ).eval()
        tok = getattr(self.processor, "tokenizer", None)
        if tok is not None:
            tok.padding_side = "left"  # decoder-only generation continues from the right end

    def prompt(self, num_images: int) -> str:
        """The model input text for one clip of `num_images` frames."""
        p = self.processor
        if "{images}" in self.cfg.prompt or not getattr(p, "chat_template", None):
            token = getattr(p, "image_token", "<image>")
            return self.cfg.prompt.replace("{images}", token * num_images)
        content = [{"type": "image"}] * num_images + [{"type": "text", "text": self.cfg.prompt}]
        messages = [{"role": "user", "content": content}]
        return p.apply_chat_template(messages, add_generation_prompt=True)

    def __call__(self, dataset: Dataset, indices: Sequence[int]) -> list[dict[str, str]]:
        from PIL import Image

        clips = [sample_frames(dataset.frames(i), self.cfg.num_frames) for i in indices]
        images = [[Image.fromarray(f) for f in clip] for clip in clips]
        texts = [self.prompt(len(clip)) for clip in clips]
        inputs = self.processor(text=texts, images=images, return_tensors="pt", padding=True)
        with self._torch.no_grad():
            out = self.model.generate(
                **inputs, max_new_tokens=self.cfg.max_new_tokens, do_sample=False
            )
        new = out[:, inputs["input_ids"].shape[1] :]
        captions = self.processor.batch_decode(new, skip_special_tokens=True)
        return [{self.cfg.caption_key: " ".join(c.split())} for c in captions]


def make_backend(cfg: RecaptionConfig):
    if cfg.backend == "world":
        return WorldBackend(cfg.styles)
    if cfg.backend == "vlm":
        return VLMBackend(cfg)
    raise ValueError(f"recaption.backend={cfg.backend!r}; expected 'world' or 'vlm'.")


# ----------------------------------------------------------------------------- driver


_VLM_SETTINGS = ("model_dir", "prompt", "num_frames", "max_new_tokens", "caption_key", "dtype")


def _progress_path(output: str) -> Path:
    return Path(str(output).rstrip("/") + ".progress.jsonl")


def _load_progress(path: Path, settings: dict) -> dict[int, dict[str, str]]:
    """Finished records of an earlier run with the same settings (a torn last line is dropped)."""
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").split("\n")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:  # killed while writing the header: nothing was finished
        path.unlink()
        return {}
    if header.get("settings") != settings:
        raise ValueError(
            f"progress file {str(path)!r} was written with other settings "
            f"({header.get('settings')}); delete it or choose another output."
        )
    done = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
            done[int(row["index"])] = row["captions"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # empty or torn line (killed mid-write)
    return done


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def recaption(
    dataset: Dataset, backend, output: str, cfg: RecaptionConfig, *, show_progress: bool = True
) -> dict[str, Any]:
    """Captions every record of `dataset` with `backend` and writes the result to `output`.

    Returns {"records", "captioned" (this run), "resumed" (from the progress file), "output"}.
    """
    # Only what changes the captions: resuming with another batch size or write_style is fine.
    keys = ("styles",) if cfg.backend == "world" else _VLM_SETTINGS
    settings = {"backend": cfg.backend, "num_records": len(dataset)}
    settings |= {k: list(v) if isinstance(v, tuple) else v
                 for k, v in dataclasses.asdict(cfg).items() if k in keys}  # fmt: skip
    progress = _progress_path(output)
    progress.parent.mkdir(parents=True, exist_ok=True)
    done = _load_progress(progress, settings)
    resumed = len(done)
    if not progress.is_file():
        progress.write_text(json.dumps({"settings": settings}) + "\n", encoding="utf-8")
    pending = [i for i in range(len(dataset)) if i not in done]
    bar = tqdm.tqdm(total=len(dataset), initial=resumed, disable=not show_progress, unit="clip")
    with open(progress, "a", encoding="utf-8") as log:
        if not _ends_with_newline(progress):
            log.write("\n")  # end a torn last line, or the next record would join it
        for start in range(0, len(pending), max(1, cfg.batch_size)):
            batch = pending[start : start + max(1, cfg.batch_size)]
            for i, caps in zip(batch, backend(dataset, batch)):
                done[i] = caps
                log.write(json.dumps({"index": i, "captions": caps}, ensure_ascii=False) + "\n")
            log.flush()
            os.fsync(log.fileno())  # a kill after this point never redoes the batch
            bar.update(len(batch))
    bar.close()
    new = [done[i] for i in range(len(dataset))]
    longest = max(new[0], key=lambda k: len(new[0][k])) if new else ""
    write_style = cfg.write_style or longest
    dataset.write(output, new, write_style)
    logger.info("recaptioned %d records (%d resumed) -> %s", len(new), resumed, output)
    return {"records": len(new), "captioned": len(pending), "resumed": resumed, "output": output}

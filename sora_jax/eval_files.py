"""The evaluation suite's files (sora_jax/eval_suite.py): per set `<set>.json` (metrics,
settings, per-sample records), the `<set>.png` contact sheet, GIFs, and the occlusion set's
failures' sheet."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import ml_collections
import numpy as np

from sora_jax import eval_cases
from sora_jax.data import video_io
from sora_jax.data import world as world_lib


def contact_sheet(videos: Sequence[np.ndarray], given: Sequence[np.ndarray | None],
                  cols: int) -> np.ndarray:  # fmt: skip
    """uint8 [H', W', 3]: a row per video, up to `cols` evenly spaced frames (first and last
    kept), each cell padded to the largest frame; given frames framed in green."""
    hmax = max(v.shape[1] for v in videos)
    wmax = max(v.shape[2] for v in videos)
    pad = 2
    ch, cw = hmax + 2 * pad, wmax + 2 * pad
    ncols = min(cols, max(v.shape[0] for v in videos))
    sheet = np.full((len(videos) * ch, ncols * cw, 3), 16, np.uint8)
    for r, (v, g) in enumerate(zip(videos, given)):
        frames = np.unique(np.linspace(0, len(v) - 1, min(cols, len(v))).round().astype(int))
        for col, fi in enumerate(frames):
            y, x = r * ch, col * cw
            if g is not None and g[fi]:
                sheet[y : y + v.shape[1] + 2 * pad, x : x + v.shape[2] + 2 * pad] = (40, 200, 60)
            sheet[y + pad : y + pad + v.shape[1], x + pad : x + pad + v.shape[2]] = v[fi]
    return sheet


def write_json(out_dir: str, name: str, metrics: dict, settings: dict, records: list) -> None:
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(json_safe({"set": name, "metrics": metrics, "settings": settings,
                              "samples": records}), f, indent=1)  # fmt: skip


def write_set(out_dir: str, name: str, metrics: dict, settings: dict, records: list[dict], cases,
              videos, config: ml_collections.ConfigDict, tf: int) -> None:  # fmt: skip
    """`<set>.json`, the `<set>.png` contact sheet and the first `eval.gifs` GIFs (and for the
    occlusion set the failures' sheet)."""
    ec = config.eval
    write_json(out_dir, name, metrics, settings, records)
    rows = int(ec.sheet_rows)
    given = [
        eval_cases.given_frames(c.plan, tf) if c.truth is not None else None for c in cases[:rows]
    ]
    sheet = contact_sheet(list(videos[:rows]), given, int(ec.sheet_cols))
    video_io.write_png(os.path.join(out_dir, f"{name}.png"), sheet)
    for i, v in enumerate(videos[: int(ec.gifs)]):
        video_io.write_gif(os.path.join(out_dir, f"{name}_{i}.gif"), v, config.world.fps)
    if name in tuple(ec.get("save_videos", ())):
        save_videos(os.path.join(out_dir, f"{name}_videos.npz"), videos, [c.seed for c in cases])
    if name == "t2v_occlusion":
        failures = [i for i, r in enumerate(records) if not r["permanence"]["permanent"]]
        if failures:
            shown = failures[: max(rows // 2, 1)]
            sheet = failure_sheet([videos[i] for i in shown], [records[i]["spec"] for i in shown],
                                  int(ec.sheet_cols))  # fmt: skip
            video_io.write_png(os.path.join(out_dir, f"{name}_failures.png"), sheet)


def save_videos(path: str, videos: Sequence[np.ndarray], seeds: Sequence[int]) -> None:
    """Every video of a set in one compressed npz: `video_<i>` uint8 [F, H, W, 3] (sizes may
    differ) and `seeds` (the cases' sampling seeds, to match them with the set's JSON records)."""
    arrays = {f"video_{i}": np.asarray(v, np.uint8) for i, v in enumerate(videos)}
    np.savez_compressed(path, seeds=np.asarray(seeds, np.int64), **arrays)


def load_videos(path: str) -> tuple[list[np.ndarray], np.ndarray]:
    """(videos, seeds) saved by `save_videos`, in their order."""
    with np.load(path) as z:
        n = sum(k.startswith("video_") for k in z.files)
        return [z[f"video_{i}"] for i in range(n)], z["seeds"]


def failure_sheet(videos: Sequence[np.ndarray], specs: Sequence[dict], cols: int) -> np.ndarray:
    """Contact sheet of generated videos each followed by the real clip of its spec (rendered
    at the same size, framed in green): where a permanence failure parts from the truth."""
    rows, marks = [], []
    for v, spec in zip(videos, specs):
        rows += [v, world_lib.render(spec, v.shape[1], v.shape[2], v.shape[0])]
        marks += [None, np.ones(len(v), bool)]
    return contact_sheet(rows, marks, cols)


def json_safe(x):
    """NaN (a metric with nothing to measure, e.g. motion of images) -> null: strict JSON."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x

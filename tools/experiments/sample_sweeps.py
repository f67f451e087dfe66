"""How much of a run's flicker ratio comes from bars the prompts did not ask for?

    python tools/experiments/sample_sweeps.py WORKDIR/dit/samples [--out=sweeps.json]

Reads every step_<N>/ folder of the DiT's graded training samples (each sample's .gif and its
.json sidecar with the spec) and splits the samples by `evaluate.sweeps` (a whole column or row
of the frame changes between two frames: an occluding bar passing). A short prompt names only
the subject, and the flicker ratio compares each sample with its prompt's bare scene, so a
sample that draws one of the world's bars changes far more per frame than its reference. Each
group also counts the samples that keep their object (`evaluate.object_permanence` against the
prompt's spec: seen first and last, at the size, of one shape; through their bar if any). For
scale it also counts the bars in as many clips of the training world (configs/world.py at
--size). Prints one row per step and writes the rows as JSON with --out.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from PIL import Image, ImageSequence  # noqa: E402

from sora_jax import evaluate  # noqa: E402


def read_gif(path: str) -> np.ndarray:
    """uint8 [F, H, W, 3] frames of a gif (sora_jax.data.video_io.write_gif's)."""
    with Image.open(path) as im:
        return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])


def load_samples(folder: str) -> tuple[list[np.ndarray], list[dict]]:
    """The uint8 videos and specs of one step's samples (occlusion scenes left out)."""
    videos, specs = [], []
    for path in sorted(glob.glob(os.path.join(folder, "[0-9]*.json"))):
        gif = path[: -len(".json")] + ".gif"
        if not os.path.exists(gif):  # a run's results packed without its videos
            continue
        with open(path) as f:
            meta = json.load(f)
        videos.append(read_gif(gif))
        specs.append(meta["spec"])
    return videos, specs


def split(videos: list[np.ndarray], specs: list[dict]) -> dict:
    """The flicker ratio of all samples, of those with a sweeping bar and of those without."""
    bar = [evaluate.sweeps(v) for v in videos]
    row = {"samples": len(videos), "with_bar": int(sum(bar)),
           "flicker_ratio": evaluate.flicker_ratio(videos, specs)}  # fmt: skip
    # `evaluate.object_permanence` of each sample against its prompt's spec: the subject seen in
    # the first and the last frames at the size and of the same shape (through the bar if any).
    kept = [evaluate.object_permanence(v, s)["permanent"] for v, s in zip(videos, specs)]
    for name, keep in (("with_bar", True), ("without_bar", False)):
        pick = [i for i, b in enumerate(bar) if b == keep]
        row[f"flicker_ratio_{name}"] = (
            evaluate.flicker_ratio([videos[i] for i in pick], [specs[i] for i in pick])
            if pick
            else float("nan")
        )
        row[f"kept_{name}"] = int(sum(kept[i] for i in pick))
    return row


def world_bar_rate(n: int, size: tuple[int, int, int]) -> float:
    """The share of n training clips of configs/world.py's world (F, H, W) with a bar."""
    import aot_compile  # tools/aot_compile.py: a config file by path

    from sora_jax.data import sources

    config = aot_compile.load_config(os.path.join(ROOT, "configs", "world.py"), [])
    source = sources.make_world(config)
    f, h, w = size
    return float(np.mean([evaluate.sweeps(source.clip(i, h, w, f)["video"]) for i in range(n)]))


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("samples", help="a DiT stage's samples/ folder (step_<N>/ inside)")
    p.add_argument("--world_clips", type=int, default=200, help="world clips for scale; 0 = none")
    p.add_argument("--size", default="17x128x128", help="FRAMESxHEIGHTxWIDTH of those clips")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    steps = sorted(glob.glob(os.path.join(args.samples, "step_*")),
                   key=lambda d: int(d.rsplit("_", 1)[1]))  # fmt: skip
    if not steps:
        raise SystemExit(f"no step_<N> folders in {args.samples}")
    rows = []
    for folder in steps:
        videos, specs = load_samples(folder)
        if not videos:
            print(f"{folder}: no sample videos")
            continue
        row = {"step": int(folder.rsplit("_", 1)[1]), **split(videos, specs)}
        rows.append(row)
        with_bar, without = row["flicker_ratio_with_bar"], row["flicker_ratio_without_bar"]
        print(f"step {row['step']}: {row['with_bar']} of {row['samples']} samples draw a bar; "
              f"flicker ratio {row['flicker_ratio']:.2f} (with a bar {with_bar:.2f}, "
              f"without {without:.2f}); the object kept through the clip by "
              f"{row['kept_with_bar']} with a bar, {row['kept_without_bar']} without")  # fmt: skip
    result = {"samples": os.path.abspath(args.samples), "steps": rows}
    if args.world_clips:
        size = tuple(int(x) for x in args.size.split("x"))
        result["world_bar_rate"] = world_bar_rate(args.world_clips, size)
        print(f"training world: a bar in {result['world_bar_rate']:.2f} of "
              f"{args.world_clips} clips of {args.size}")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return rows


if __name__ == "__main__":
    main()

"""How sharp must a VAE be for object permanence? The occlusion scenes blurred, then graded.

    python tools/experiments/blur_permanence.py [--config=configs/world.py] [--sigmas=1,1.5,2]
        [--out=blur_permanence.json]

The real clips of the evaluation suite's occlusion scenes (`world.occlusion_suite`, at
`eval.shape`) are blurred frame by frame with a Gaussian of each sigma (pixels, over height and
width), and graded by `evaluate.object_permanence` as the suite grades the VAE's round trips.
Blur is not a VAE's only error, so the permanence at a PSNR is an upper bound on what a VAE of
that PSNR keeps; it says roughly how many dB the round trips need before the ceiling of the
DiT's permanence clears issue 9's 0.75. Prints one row per sigma (PSNR, permanence overall and
per subject size) and writes them as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from scipy.ndimage import gaussian_filter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import aot_compile  # noqa: E402  (tools/aot_compile.py: a config file by path)

from sora_jax import eval_cases, evaluate  # noqa: E402
from sora_jax.data import sources, world  # noqa: E402


def blur(video: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 [F, H, W, 3] blurred over height and width (sigma 0: unchanged)."""
    if sigma <= 0:
        return video
    frames = [gaussian_filter(f.astype(np.float64), (sigma, sigma, 0)) for f in video]
    return np.clip(np.round(np.stack(frames)), 0, 255).astype(np.uint8)


def grade(clips: list[np.ndarray], specs: list[dict], sigma: float) -> dict:
    """Mean PSNR of the blurred clips and their permanence, overall and per subject size."""
    psnrs, kept, by_size = [], [], {}
    for video, spec in zip(clips, specs, strict=True):
        b = blur(video, sigma)
        mse = np.mean(np.square(b.astype(np.float64) - video))
        psnrs.append(10 * np.log10(255.0**2 / max(mse, 1e-10)))
        ok = evaluate.object_permanence(b, spec)["permanent"]
        kept.append(ok)
        by_size.setdefault(spec["objects"][0]["size"], []).append(ok)
    sizes = {k: round(float(np.mean(v)), 3) for k, v in sorted(by_size.items())}
    return {"sigma": sigma, "psnr_db": round(float(np.mean(psnrs)), 2),
            "permanence": round(float(np.mean(kept)), 3), "by_size": sizes}  # fmt: skip


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "world.py"))
    p.add_argument("--sigmas", default="0,1,1.5,2,2.5,3,4")
    p.add_argument("--scenes", type=int, default=0, help="0 = eval.occlusion_prompts")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    config = aot_compile.load_config(args.config, [])
    n = args.scenes or eval_cases.occlusion_count(config.eval)
    f, h, w = eval_cases.parse_shape(config.eval.shape)
    specs = world.occlusion_suite(sources.make_world(config).cfg, n, seed=int(config.eval.seed))
    clips = [world.render(s, h, w, f) for s in specs]
    rows = []
    for sigma in (float(x) for x in args.sigmas.split(",")):
        row = grade(clips, specs, sigma)
        rows.append(row)
        sizes = ", ".join(f"{k} {v:.2f}" for k, v in row["by_size"].items())
        print(f"sigma {sigma:g}: {row['psnr_db']:.1f} dB, permanence {row['permanence']:.2f} "
              f"({sizes})")  # fmt: skip
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"config": args.config, "scenes": n, "shape": config.eval.shape,
                       "rows": rows}, fh, indent=1)  # fmt: skip
    return rows


if __name__ == "__main__":
    main()

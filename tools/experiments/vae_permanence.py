"""Object permanence of a trained VAE's round trips of the eval suite's occlusion scenes.

    python tools/experiments/vae_permanence.py --config=configs/world.py --workdir=/tmp/world \
        --out=/tmp/vae_permanence.json [text.path=/tmp/minilm ...]

The real clips of the `t2v_occlusion` set (rendered at `eval.shape`) go through the VAE of
WORKDIR (encode, decode; no DiT: `eval_metrics.round_trip_grades`, as the suite's
permanence_vae_round_trip) and are graded by `evaluate.object_permanence`: the ceiling a DiT
drawing in these latents can reach, per motion and size, with each failing criterion. The
reconstructions are kept beside the JSON (<out>_videos.npz).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))


def grade_round_trips(config, gen) -> tuple[dict, list[np.ndarray]]:
    """(permanence of `gen`'s VAE round trips of the occlusion set's real clips: overall, per
    motion, per criterion and per scene; the reconstructions). `gen` has encode and decode."""
    from sora_jax import eval_cases, eval_metrics

    cases = eval_cases.build_suite(config)["t2v_occlusion"]
    size = eval_cases.parse_shape(config.eval.shape)
    graded = eval_metrics.round_trip_grades(gen, cases, [size] * len(cases))
    recons = [recon for recon, _ in graded]
    records = []
    for case, (_, grade) in zip(cases, graded, strict=True):
        subject = case.spec["objects"][0]
        records.append({"seed": case.seed, "motion": subject["motion"], "shape": subject["shape"],
                        "size": subject["size"], "diameter": subject["diameter"],
                        **grade})  # fmt: skip
    criteria = ("seen_before", "seen_after", "same_size", "same_shape")
    m = eval_metrics.permanence_metrics([c.spec for c in cases], [g for _, g in graded],
                                      ("permanent", *criteria))  # fmt: skip
    out = {
        "permanence": m["permanence"],
        "by_motion": m["permanence_by_motion"],
        "by_size": m["permanence_by_size"],
        "criteria": {k: m[f"permanence_{k}"] for k in criteria},
        "n": len(records),
        "samples": records,
    }
    return out, recons


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", required=True, help="the recipe's config (path.py[:arg])")
    p.add_argument("--workdir", required=True, help="the recipe's workdir (holds vae/)")
    p.add_argument("--out", required=True, help="JSON path")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    a = p.parse_args(argv)
    from aot_compile import load_config  # tools/aot_compile.py: path.py[:arg] -> config

    from sora_jax import eval_files, sample

    config = load_config(a.config, a.overrides)
    out, recons = grade_round_trips(config, sample.Generator(config, a.workdir, fresh_dit=True))
    records = out["samples"]
    for r in records:
        if not r["permanent"]:
            shapes = f"{r['shape_before']}->{r['shape_after']}"
            areas = f"{r['area_first']}->{r['area_last']}"
            print(f"  {r['motion']:>10} {r['shape']:>8} d={r['diameter']:.2f}: "
                  f"size x{r['size_ratio']} shape {shapes} area {areas}")  # fmt: skip
    groups = "; ".join(
        f"by {attr} " + ", ".join(f"{k} {v:.2f}" for k, v in out[f"by_{attr}"].items())
        for attr in ("motion", "size")
    )
    print(f"VAE round-trip permanence {out['permanence']:.3f} over {len(records)}; {groups}")
    with open(a.out, "w") as fh:
        json.dump(out, fh, indent=1)
    eval_files.save_videos(os.path.splitext(a.out)[0] + "_videos.npz", recons,
                           [r["seed"] for r in records])  # fmt: skip
    return out


if __name__ == "__main__":
    main()

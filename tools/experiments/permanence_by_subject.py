"""Where the occlusion scenes are lost, run by run: kept by subject size, steady or scaled.

    python tools/experiments/permanence_by_subject.py tools/bench/results/world_h100_run19.json \
        [more run JSONs ...] [--config=configs/world.py] [--out=by_subject.json]

Joins each run JSON's `occlusion_scenes` (seed -> object kept by the DiT, and by the VAE's
round trip of the real clip where the run graded it) to the scenes the evaluation suite of
--config draws for those seeds (`eval_cases.build_suite`: the same seeds give the same specs in
every run of that suite), and counts the kept scenes per group: the subject's size (small,
medium, large) and whether it keeps its size (steady) or grows / shrinks to half (scaled).
Prints one row per run and writes them as JSON with --out. A run whose seeds are not the
suite's fails in one sentence (its suite was another).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from sora_jax import eval_cases  # noqa: E402

SIZES = ("small", "medium", "large")


def group(spec: dict) -> str:
    """'small steady', 'large scaled', ...: the subject's size and whether it changes."""
    subject = spec["objects"][0]
    kind = "steady" if list(subject["scale"]) == [1.0, 1.0] else "scaled"
    return f"{subject['size']} {kind}"


GROUPS = tuple(f"{s} {k}" for k in ("steady", "scaled") for s in SIZES)


def by_subject(scenes: dict, specs: dict[int, dict]) -> dict[str, dict]:
    """{group: {"scenes", "kept", "vae_kept" (None if not graded)}} of one run's scenes."""
    missing = [s for s in scenes["seed"] if s not in specs]
    if missing:
        raise ValueError(
            f"{len(missing)} scene seeds (e.g. {missing[0]}) are not among the suite's "
            "occlusion scenes; pass the config the run was evaluated with."
        )
    vae = scenes.get("vae_kept")  # None: the run did not grade round trips
    out = {g: {"scenes": 0, "kept": 0, "vae_kept": None if vae is None else 0} for g in GROUPS}
    for i, (seed, kept) in enumerate(zip(scenes["seed"], scenes["kept"], strict=True)):
        row = out[group(specs[seed])]
        row["scenes"] += 1
        row["kept"] += bool(kept)
        if vae is not None:
            row["vae_kept"] += bool(vae[i])
    return {g: r for g, r in out.items() if r["scenes"]}


def suite_specs(config) -> dict[int, dict]:
    """seed -> spec of the suite's occlusion scenes."""
    return {c.seed: c.spec for c in eval_cases.build_suite(config)["t2v_occlusion"]}


def table(rows: list[dict]) -> str:
    groups = [g for g in GROUPS if any(g in r["groups"] for r in rows)]
    lines = ["| run | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for r in rows:
        cells = []
        for g in groups:
            c = r["groups"].get(g)
            vae = "" if c is None or c["vae_kept"] is None else f" (VAE {c['vae_kept']})"
            cells.append("" if c is None else f"{c['kept']}/{c['scenes']}{vae}")
        lines.append(f"| {r['run']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run JSONs with occlusion_scenes (world_report.py's)")
    p.add_argument("--config", default="configs/world.py", help="the suite's config[:arg]")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    from aot_compile import load_config  # tools/aot_compile.py: path.py[:arg] -> config

    specs = suite_specs(load_config(args.config, []))
    rows = []
    for path in args.runs:
        with open(path) as f:
            scenes = json.load(f).get("occlusion_scenes")
        if scenes:  # runs before world_report kept scenes have none
            rows.append({"run": os.path.basename(path), "groups": by_subject(scenes, specs)})
    print(table(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": args.config, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()

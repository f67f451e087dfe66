"""How did a run's occluding bars move, and what did that do to object permanence?

    python tools/experiments/occluder_motion.py WORKDIR [WORKDIR ...] [--out=occluders.json]

Re-grades the occlusion scenes a world run kept: the evaluation suite's (WORKDIR/eval/
t2v_occlusion_videos.npz with t2v_occlusion.json's specs and permanence grades) and the DiT's
training samples (WORKDIR/dit/samples/step_<N>/occlusion_<i>.gif and .json, their sidecars'
grades) with `evaluate.occluder_motion`, keeping each scene's object permanence as the run
graded it: whether the bar moves the way the scene's caption says and at what
speed against the world's. Each set is summarised by `eval_metrics.occluder_metrics` (the
permanence of the scenes whose bar went the captioned way at the world's speed, at another
speed, the other way, or was not drawn), over all its scenes and over those whose subject
neither grows nor shrinks (`steady`); and the drawn bars' speeds against the world's speed of
each scene (`by_world_speed`), and the permanence of the scenes by how fast the bar went
(`by_drawn_speed`). Runs from before the suite graded bars (the eighteenth and earlier) get the
same numbers the suite now writes. Prints a row per set and writes them as JSON with --out; given
several workdirs, also the steady scenes of their evaluation suites pooled (the last row).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "experiments"))

from sample_sweeps import read_gif  # noqa: E402

from sora_jax import eval_files, eval_metrics, evaluate  # noqa: E402

SCALING = ("grow", "shrink")  # subjects at half size at one end: the VAE's round trips lose most


def bars(videos, specs) -> list[dict]:
    """`evaluate.occluder_motion` of each video against its spec."""
    return [evaluate.occluder_motion(v, s) for v, s in zip(videos, specs, strict=True)]


def by_world_speed(specs, bars, kept) -> dict:
    """How the drawn bars' speeds follow the scenes' own: the world's bar speed |end - start|
    (frame lengths a clip; set by the subject's velocity and size) against |speed_ratio| of the
    bars drawn (`speed_correlation`, Pearson: 0 = no relation, < 0 = the drawn speeds pull toward
    one typical speed; None where either side is constant or fewer than 3 bars were drawn), and
    by thirds of the world's speed (slowest first) the median |ratio| (None: no bar drawn) and the
    permanence of the scenes."""
    world_speed = np.array([abs(s["occluder"]["end"] - s["occluder"]["start"]) for s in specs])
    ratio = np.array([abs(b["speed_ratio"]) if b["found"] else np.nan for b in bars])
    drawn = np.isfinite(ratio)
    x, y = world_speed[drawn], ratio[drawn]
    defined = len(x) >= 3 and x.std() > 0 and y.std() > 0
    out = {"speed_correlation": float(np.corrcoef(x, y)[0, 1]) if defined else None, "thirds": []}
    third = np.searchsorted(np.quantile(world_speed, [1 / 3, 2 / 3]), world_speed)  # 0, 1, 2
    for t in range(3):
        sel = third == t
        if sel.any():
            seen = ratio[sel & drawn]
            out["thirds"].append({
                "world_speed_max": float(world_speed[sel].max()), "scenes": int(sel.sum()),
                "median_ratio": float(np.median(seen)) if len(seen) else None,
                "permanence": float(np.mean(np.asarray(kept)[sel]))})  # fmt: skip
    return out


# The captioned way at |drawn speed / world's| below each edge (the last: any faster).
DRAWN_SPEED_BINS = ((0.4, "< 0.4x"), (0.8, "0.4-0.8x"), (1.25, "0.8-1.25x"), (np.inf, "> 1.25x"))


def by_drawn_speed(bars, kept) -> dict[str, list]:
    """Permanence [fraction, scenes] of the scenes whose bar went the captioned way, by its speed
    against the world's (`DRAWN_SPEED_BINS`), then of those it went the other way ("reversed")
    and of those with no bar found ("not found"); empty bins are left out."""
    groups = eval_metrics.kept_by_bar(
        bars, kept, lambda r: next(n for edge, n in DRAWN_SPEED_BINS if r < edge)
    )
    order = [n for _, n in DRAWN_SPEED_BINS] + ["reversed", "not found"]
    return {n: [float(np.mean(groups[n])), len(groups[n])] for n in order if n in groups}


def _nan_to_none(bar: dict) -> dict:
    """A bar's grade with NaN (no speed: no bar found) as None, which JSON reads back equal."""
    return {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in bar.items()}


def summarise(name: str, specs, bars, kept) -> dict:
    """`eval_metrics.occluder_metrics` and `by_world_speed` of a set, and of its scenes whose
    subject neither grows nor shrinks (`steady`: their permanence is the DiT's, the VAE's round
    trips keep ~0.96 of them)."""
    steady = [i for i, s in enumerate(specs) if s["objects"][0]["motion"] not in SCALING]
    pick = lambda xs: [xs[i] for i in steady]  # noqa: E731

    def one(sp, bs, ks) -> dict:
        return {"scenes": len(sp), "permanence": float(np.mean(ks)),
                **eval_metrics.occluder_metrics(bs, ks),
                "by_world_speed": by_world_speed(sp, bs, ks),
                "by_drawn_speed": by_drawn_speed(bs, ks)}  # fmt: skip

    return {
        "set": name,
        **one(specs, bars, kept),
        "steady": one(pick(specs), pick(bars), pick(kept)),
        # What the rows above summarise, for pooling runs (main): each steady scene's bar and grade.
        "steady_scenes": {
            "bars": [_nan_to_none(b) for b in pick(bars)],
            "kept": [bool(k) for k in pick(kept)],
        },
    }


def eval_set(workdir: str) -> dict | None:
    """The suite's occlusion scenes of a run, graded (None if the run kept no videos)."""
    path = os.path.join(workdir, "eval", "t2v_occlusion_videos.npz")
    if not os.path.exists(path):
        return None
    videos, seeds = eval_files.load_videos(path)
    with open(os.path.join(workdir, "eval", "t2v_occlusion.json")) as f:
        records = {r["seed"]: r for r in json.load(f)["samples"]}
    specs = [records[int(s)]["spec"] for s in seeds]
    kept = [records[int(s)]["permanence"]["permanent"] for s in seeds]  # as the suite graded
    return summarise("eval t2v_occlusion", specs, bars(videos, specs), kept)


def sample_sets(workdir: str) -> list[dict]:
    """The training samples' occlusion scenes of each sample round, graded."""
    out = []
    folders = glob.glob(os.path.join(workdir, "dit", "samples", "step_*"))
    for folder in sorted(folders, key=lambda p: int(re.findall(r"\d+", p)[-1])):
        videos, specs, kept = [], [], []
        for meta_path in sorted(glob.glob(os.path.join(folder, "occlusion_*.json"))):
            with open(meta_path) as f:
                meta = json.load(f)
            videos.append(read_gif(meta_path[: -len(".json")] + ".gif"))
            specs.append(meta["spec"])
            kept.append(meta["grade"]["permanent"])  # graded on the round's own frames
        if specs:
            name = f"samples {os.path.basename(folder)}"
            out.append(summarise(name, specs, bars(videos, specs), kept))
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", help="world runs' workdirs (eval/, dit/samples/)")
    parser.add_argument("--out", default="", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    rows, pooled = [], {"bars": [], "kept": []}
    for workdir in args.workdirs:
        found = [r for r in [eval_set(workdir)] if r] + sample_sets(workdir)
        if not found:
            raise SystemExit(f"{workdir} holds no occlusion scenes' videos.")
        for r in found:
            if r["set"] == "eval t2v_occlusion":  # the suite's scenes (not a sample round's)
                for key in pooled:
                    pooled[key] += r["steady_scenes"][key]
            if len(args.workdirs) > 1:
                r["set"] = f"{os.path.basename(os.path.normpath(workdir))} {r['set']}"
        rows += found
    print("| set | scenes | permanence | bar shown | captioned way | speed | permanence by bar |")
    print("|---|---|---|---|---|---|---|")
    for r in [x for row in rows for x in (row, {**row["steady"], "set": "  steady subjects"})]:
        by = ", ".join(f"{k} {p:.2f} ({n})" for k, (p, n) in r["permanence_by_occluder"].items())
        fractions = [f"{r[k]:.2f}" for k in ("permanence", "occluder_found",
                                              "occluder_direction_acc")]  # fmt: skip
        cells = (r["set"], r["scenes"], *fractions, f"{r['occluder_speed_ratio']:.2f}x", by)
        print("| " + " | ".join(map(str, cells)) + " |")
    for r in rows:  # the drawn bars' speeds against the world's, steady scenes
        w = r["steady"]["by_world_speed"]
        cell = lambda v, f="{:.2f}": "-" if v is None else f.format(v)  # noqa: E731
        thirds = "; ".join(
            f"<= {t['world_speed_max']:.2f}: {cell(t['median_ratio'], '{:.2f}x')}, kept "
            f"{t['permanence']:.2f} ({t['scenes']})"
            for t in w["thirds"]
        )
        print(
            f"{r['set']}, steady scenes: drawn / world bar speed against the world's, r = "
            f"{cell(w['speed_correlation'])}; by thirds of the world's speed: {thirds}"
        )
    for r in rows:
        by = ", ".join(f"{k} {p:.2f} ({n})" for k, (p, n) in r["steady"]["by_drawn_speed"].items())
        print(f"{r['set']}, steady scenes, permanence by the bar's speed: {by}")
    if len(args.workdirs) > 1 and pooled["kept"]:
        by_drawn = by_drawn_speed(pooled["bars"], pooled["kept"])
        rows.append({"set": "pooled eval t2v_occlusion, steady", "runs": args.workdirs,
                     "scenes": len(pooled["kept"]), "permanence": float(np.mean(pooled["kept"])),
                     "by_drawn_speed": by_drawn})  # fmt: skip
        by = ", ".join(f"{k} {p:.2f} ({n})" for k, (p, n) in by_drawn.items())
        print(f"pooled, {len(pooled['kept'])} steady scenes of {len(args.workdirs)} runs' "
              f"suites, permanence by the bar's speed: {by}")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()

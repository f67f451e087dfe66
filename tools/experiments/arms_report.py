"""Side-by-side DiT arms (tools/experiments/world_arms.sh) -> WORKDIR/arms.json and a table.

    python tools/experiments/arms_report.py WORKDIR ARM [ARM...] [--last=3]

Each arm is a DiT stage in WORKDIR/ARM/dit. Reads its metrics.jsonl (loss, steps/s, the graded
training samples' accuracies) and its samples' sidecar JSONs (one grade per sample), and pools
the shape accuracy of the last `--last` sample rounds, with its standard error, so that arms can
be compared on more than one round of 48 prompts. Where an arm was also evaluated
(WORKDIR/ARM/eval/summary.json, world_arms.sh with EVAL_SETS), its sets' grades and object
permanence are reported, and every pair of arms is compared scene by scene on the occlusion set
(kept by both / by one only / by neither, with the exact two-sided binomial p of the discordant
scenes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/
import world_report  # noqa: E402  (tools/world_report.py: each scene's outcome)
from bench import report  # noqa: E402  (tools/bench/report.py: its JSON reader)

from sora_jax import evaluate  # noqa: E402


def _rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def sample_rounds(dit_dir: str) -> dict[int, list[dict]]:
    """step -> the sidecar JSONs of that round's training samples (each holds spec and grade)."""
    root = os.path.join(dit_dir, "samples")
    rounds: dict[int, list[dict]] = {}
    for folder in os.listdir(root) if os.path.isdir(root) else []:
        step = int(folder.split("_")[1])
        names = sorted(n for n in os.listdir(os.path.join(root, folder)) if n.endswith(".json"))
        rounds[step] = [json.load(open(os.path.join(root, folder, n))) for n in names]
    return dict(sorted(rounds.items()))


def _by_shape(metas: list[dict]) -> dict[str, float]:
    """Per-shape accuracy of sidecars (sora_jax.evaluate.accuracy_by_shape), to 3 decimals."""
    specs, right = [m["spec"] for m in metas], [m["grade"]["shape"] for m in metas]
    return {k: round(v, 3) for k, v in evaluate.accuracy_by_shape(specs, right).items()}


def arm_summary(dit_dir: str, last: int) -> dict:
    rows = _rows(os.path.join(dit_dir, "metrics.jsonl"))
    train = [r for r in rows if "loss" in r]
    rounds = sample_rounds(dit_dir)
    pooled = [m for step in list(rounds)[-last:] for m in rounds[step]]
    acc = sum(bool(m["grade"]["shape"]) for m in pooled) / len(pooled) if pooled else None
    return {
        "steps": train[-1]["step"] if train else 0,
        "final_loss": train[-1]["loss"] if train else None,
        "steps_per_s": round(statistics.median(r["steps_per_s"] for r in train), 1)
        if train
        else None,  # fmt: skip
        "samples": [
            {k: r[k] for k in r if k == "step" or k.startswith("sample_")}
            for r in rows
            if "sample_shape_acc" in r
        ],  # fmt: skip
        "shape_acc_by_shape": {str(s): _by_shape(m) for s, m in rounds.items()},
        "pooled": {
            "rounds": list(rounds)[-last:],
            "n": len(pooled),
            "shape_acc": None if acc is None else round(acc, 3),
            "shape_acc_se": None
            if acc is None
            else round(math.sqrt(acc * (1 - acc) / len(pooled)), 3),
            "by_shape": _by_shape(pooled),
        },
    }


def eval_summary(arm_dir: str) -> dict | None:
    """The arm's evaluation sets (colour / shape / motion, permanence where graded), or None."""
    summary = report.read_json(os.path.join(arm_dir, "eval", "summary.json"))
    if not summary or not summary.get("sets"):
        return None
    keys = ("color_acc", "shape_acc", "motion_acc", "n", "permanence", "permanence_se",
            "permanence_by_size", "permanence_misses", "permanence_vae_round_trip")  # fmt: skip
    return {name: {k: m[k] for k in keys if k in m} for name, m in summary["sets"].items()}


def kept_scenes(arm_dir: str) -> dict[int, bool] | None:
    """seed -> whether the arm's sample kept the object through the bar (occlusion set)."""
    scenes = world_report.occlusion_scenes(arm_dir)
    return world_report.kept_by_seed(scenes) if scenes else None


def table(out: dict) -> str:
    lines = ["| arm | steps | steps/s | final loss | shape acc. per round (step: acc) | "
             "pooled shape acc. (± s.e., n) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for arm, r in out.items():
        rounds = ", ".join(f"{s['step']}: {s['sample_shape_acc']:.2f}" for s in r["samples"])
        loss = "-" if r["final_loss"] is None else f"{r['final_loss']:.4f}"
        p = r["pooled"]
        pooled = "-" if p["shape_acc"] is None else (
            f"{p['shape_acc']:.2f} ± {p['shape_acc_se']:.2f} ({p['n']})")  # fmt: skip
        lines.append(
            f"| {arm} | {r['steps']} | {r['steps_per_s']} | {loss} | {rounds} | {pooled} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir")
    p.add_argument("arms", nargs="+")
    p.add_argument("--last", type=int, default=3, help="sample rounds pooled at the end")
    args = p.parse_args(argv)
    out = {arm: arm_summary(os.path.join(args.workdir, arm, "dit"), args.last) for arm in args.arms}
    kept = {}
    for arm in args.arms:
        evaluated = eval_summary(os.path.join(args.workdir, arm))
        if evaluated:
            out[arm]["eval"] = evaluated
        scenes = kept_scenes(os.path.join(args.workdir, arm))
        if scenes:
            kept[arm] = scenes
    pairs = {f"{a} vs {b}": evaluate.paired_outcomes(kept[a], kept[b])
             for i, a in enumerate(kept) for b in list(kept)[i + 1 :]}  # fmt: skip
    result = {**out, "occlusion_pairs": pairs} if pairs else out
    with open(os.path.join(args.workdir, "arms.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(table(out))
    for arm, r in out.items():
        if r["pooled"]["by_shape"]:
            shapes = ", ".join(f"{k} {v:.2f}" for k, v in r["pooled"]["by_shape"].items())
            print(f"{arm}, pooled rounds {r['pooled']['rounds']}: {shapes}")
    for arm, r in out.items():
        for name, m in r.get("eval", {}).items():
            grades = " / ".join("-" if m.get(k) is None else f"{m[k]:.2f}"
                                for k in ("color_acc", "shape_acc", "motion_acc"))  # fmt: skip
            extra = ""
            if "permanence" in m:
                extra = f", object permanence {m['permanence']:.2f} ± {m['permanence_se']:.2f}"
            print(f"{arm} eval {name} ({m.get('n')}): colour / shape / motion {grades}{extra}")
    for label, pair in pairs.items():
        print(
            f"occlusion scenes, {label}: both {pair['both']}, first only {pair['only_first']}, "
            f"second only {pair['only_second']}, neither {pair['neither']} "
            f"(p = {pair['p_two_sided']})"
        )
    return result


if __name__ == "__main__":
    main()

"""Issue 9's reproducibility check: two runs of the world recipe, metric by metric.

    python tools/experiments/compare_runs.py RUN_A RUN_B [--points=3] [--out=compare.json]

RUN is a workdir of the recipe (its eval/summary.json is read), the path of such a summary
JSON, or a tools/world_report.py JSON (as committed under tools/bench/results/). Compared: every
target of the evaluation suite (sora_jax/eval_metrics.py TARGETS), the colour, shape and motion
accuracy and object permanence of every set and of every sampler variant (`eval.t2v_variants`),
the validation losses, and the training losses the stages logged (a workdir's metrics.jsonl, or
a world_report JSON's loss_curve): equal at how many steps. A set is matched by its name, its
sampling settings and its size: two runs whose suites sample at other settings compare where
one's variant is the other's setting (e.g. t2v at guidance 5: one run's suite, the other's
t2v@guidance=5.0). Accuracies and permanence are fractions, compared in points (100 x the
difference) against --points; the others (given-frame PSNR in dB, continuity ratios, losses)
are printed with their difference and no bound. Where both runs have their occlusion scenes'
outcomes (a workdir's eval/t2v_occlusion.json, or a world_report JSON's `occlusion_scenes`), the
scenes are also compared one by one (kept by both / by one run only / by neither, with the exact
McNemar p): a difference of a few points in permanence may hide many scenes that changed. They
are paired under every setting both runs sampled them with (the suites' and the variants',
e.g. one run's suite against the other's variant of the same settings); runs of other
`eval.seed`s share no scene, fraction or validation loss. The table goes to stdout; --out writes
the rows, the loss-curve comparison, the scene pairs (`occlusion_scene_pairs`: the suites' own,
where they sampled alike; `occlusion_scene_pairs_by_setting`: all) and `all_within` (every
fraction within --points) as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/

FRACTIONS = ("color_acc", "shape_acc", "motion_acc", "permanence", "last_color_acc")
STAGES = ("vae", "dit")  # training stages whose logged losses are compared


def load_summary(run: str) -> dict:
    """The eval suite's summary of a recipe workdir (with its stages' logged losses and its
    occlusion scenes' outcomes), or the summary JSON at `run`."""
    path = os.path.join(run, "eval", "summary.json") if os.path.isdir(run) else run
    if not os.path.exists(path):
        raise SystemExit(f"compare_runs: no evaluation summary at {path}.")
    with open(path) as f:
        summary = json.load(f)
    if os.path.isdir(run):  # as tools/world_report.py reports them
        import world_report  # tools/world_report.py

        for name in STAGES:
            numbers = world_report.stage(run, name)
            if numbers is not None:
                summary.setdefault(name, {})["loss_curve"] = numbers["loss_curve"]
        scenes = world_report.occlusion_scenes(run)
        if scenes:
            summary["occlusion_scenes"] = scenes
        variant_scenes = world_report.occlusion_variant_scenes(run)
        if variant_scenes:
            summary["occlusion_variant_scenes"] = variant_scenes
    return summary


def _seed(summary: dict) -> int:
    return int(summary.get("seed") or (summary.get("eval") or {}).get("seed") or 0)


def _suite_settings(summary: dict) -> dict | None:
    """The suite's sampler settings: a suite summary's, or a world_report JSON's `eval`."""
    return summary.get("settings") or (summary.get("eval") or {}).get("settings")


def _variants(summary: dict) -> dict:
    """{variant label: metrics with settings} of a suite summary or a world_report JSON."""
    return summary.get("t2v_variants") or summary.get("eval_t2v_variants") or {}


def scene_outcomes(summary: dict) -> dict[str, dict[int, bool]]:
    """{settings label: {scene seed: object kept}}: the run's occlusion scenes under the suite's
    settings and under each variant's that re-sampled them (labelled as `settings_label` does,
    so two runs' outcomes meet where they sampled alike, whichever was a suite or a variant)."""
    import world_report  # tools/world_report.py

    variants, seed = _variants(summary), _seed(summary)
    out = {}
    if summary.get("occlusion_scenes"):
        out[settings_label(_suite_settings(summary), None, seed)] = world_report.kept_by_seed(
            summary["occlusion_scenes"])  # fmt: skip
    for label, scenes in (summary.get("occlusion_variant_scenes") or {}).items():
        settings = (variants.get(label) or {}).get("settings")
        if settings is not None:
            out.setdefault(settings_label(settings, None, seed), world_report.kept_by_seed(scenes))
    return out


def scene_pairs(a: dict, b: dict) -> dict[str, dict] | None:
    """{settings label: pairs}: the occlusion scenes both runs sampled alike (the same settings
    and eval seed), compared scene by scene (object kept or not; `evaluate.paired_outcomes`), or
    None when a run has no per-scene outcomes."""
    oa, ob = scene_outcomes(a), scene_outcomes(b)
    if not oa or not ob:
        return None
    from sora_jax import evaluate

    return {label: evaluate.paired_outcomes(oa[label], ob[label]) for label in oa if label in ob}


def loss_curves(a: dict, b: dict) -> dict[str, dict]:
    """Per stage both runs logged losses for: the logged steps they share, at how many of them
    the losses are equal (bit for bit), and the largest difference."""
    out = {}
    for stage in STAGES:
        ca = dict(map(tuple, (a.get(stage) or {}).get("loss_curve", [])))
        cb = dict(map(tuple, (b.get(stage) or {}).get("loss_curve", [])))
        steps = sorted(set(ca) & set(cb))
        if steps:
            diffs = [abs(ca[s] - cb[s]) for s in steps]
            out[stage] = {"steps": len(steps), "identical": sum(d == 0 for d in diffs),
                          "max_abs_diff": max(diffs)}  # fmt: skip
    return out


def settings_label(settings: dict | None, n, seed: int = 0) -> str:
    """A set's sampling settings and size, e.g. '60 euler steps, guidance 3, 96 samples': a
    set is compared only with the same set sampled alike in the other run, and from the same
    `eval.seed` (named when not 0: other seeds are other prompts, scenes and noise)."""
    parts = []
    if settings:
        parts.append(f"{settings.get('steps')} {settings.get('sampler')} steps")
        parts.append(f"guidance {settings.get('guidance'):g}")
        if settings.get("shift"):
            parts.append(f"shift {settings['shift']:g}")
        interval = settings.get("guidance_interval")
        if interval and list(interval) != [0.0, 1.0]:
            parts.append(f"guidance interval {interval[0]:g}-{interval[1]:g}")
        if settings.get("autoguidance"):
            parts.append(f"autoguidance {settings['autoguidance']:g} by step "
                         f"{settings.get('autoguide_step')}")  # fmt: skip
        if settings.get("factorized"):
            parts.append("factorized")
    if n is not None:
        parts.append(f"{n} samples")
    if seed:
        parts.append(f"eval seed {seed}")
    return ", ".join(parts)


def metrics(summary: dict) -> dict[str, float]:
    """'set/metric [settings]' -> value: the suite's targets first, then every set's and every
    variant's fractions (a variant, e.g. t2v@guidance=5.0, under its set's name and its own
    settings), then the validation losses."""
    sets = summary.get("sets") or summary.get("eval_sets") or {}  # suite summary / world_report
    variants, suite, seed = _variants(summary), _suite_settings(summary), _seed(summary)

    def key(name: str, metric: str, settings, n) -> str:
        label = settings_label(settings, n, seed)
        return f"{name}/{metric}" + (f" [{label}]" if label else "")

    out = {
        key(t["set"], t["metric"], suite, sets.get(t["set"], {}).get("n")): t["value"]
        for t in summary.get("targets", [])
    }
    entries = [(name, v, suite) for name, v in sets.items()]
    entries += [(label.split("@")[0], v, v.get("settings")) for label, v in variants.items()]
    for name, values, settings in entries:
        for metric in FRACTIONS:
            if isinstance(values.get(metric), (int, float)):
                out.setdefault(key(name, metric, settings, values.get("n")), values[metric])
    val = summary.get("val_loss") or (summary.get("eval") or {}).get("val_loss") or {}
    tag = f" [eval seed {seed}]" if seed else ""  # its noise is drawn from the seed too
    out.update({f"val_loss/{t}{tag}": v for t, v in val.items()})
    return {k: float(v) for k, v in out.items()}


def compare(a: dict, b: dict, points: float) -> list[dict]:
    """One row per metric of both runs; fractions carry `points` and `within`."""
    ma, mb = metrics(a), metrics(b)
    rows = []
    for key in [k for k in ma if k in mb]:
        row = {"metric": key, "a": ma[key], "b": mb[key], "diff": mb[key] - ma[key]}
        if key.split("/")[1].split(" ")[0] in FRACTIONS:
            diff_points = 100.0 * row["diff"]
            row["points"] = diff_points
            row["within"] = math.isfinite(diff_points) and abs(diff_points) <= points
        rows.append(row)
    return rows


def table(rows: list[dict], points: float) -> str:
    lines = [
        f"| metric | run A | run B | difference | within ±{points:g} points |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        diff = f"{r['points']:+.1f} pt" if "points" in r else f"{r['diff']:+.3g}"
        within = ("yes" if r["within"] else "**no**") if "within" in r else "—"
        lines.append(f"| {r['metric']} | {r['a']:.3g} | {r['b']:.3g} | {diff} | {within} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--points", type=float, default=3.0, help="allowed difference of fractions")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    a, b = load_summary(args.run_a), load_summary(args.run_b)
    rows = compare(a, b, args.points)
    bounded = [r for r in rows if "within" in r]
    result = {"run_a": args.run_a, "run_b": args.run_b, "points": args.points, "rows": rows,
              "all_within": bool(bounded) and all(r["within"] for r in bounded),
              "max_abs_points": max((abs(r["points"]) for r in bounded), default=None),
              "loss_curves": loss_curves(a, b)}  # fmt: skip
    by_setting = scene_pairs(a, b)
    if by_setting is not None:
        result["occlusion_scene_pairs_by_setting"] = by_setting
        # The suites' own scenes, where both suites sampled them alike.
        suite_a, suite_b = (settings_label(_suite_settings(r), None, _seed(r)) for r in (a, b))
        if suite_a == suite_b and suite_a in by_setting:
            result["occlusion_scene_pairs"] = by_setting[suite_a]
    print(table(rows, args.points))
    for stage, c in result["loss_curves"].items():
        print(f"{stage} training loss: equal at {c['identical']} of the {c['steps']} logged steps "
              f"both runs have; largest difference {c['max_abs_diff']:.3g}")  # fmt: skip
    print(f"fractions within ±{args.points:g} points: {sum(r['within'] for r in bounded)} of "
          f"{len(bounded)}; largest difference {result['max_abs_points']} points")  # fmt: skip
    if by_setting is not None and not any(p["cases"] for p in by_setting.values()):
        print("occlusion scenes: none sampled alike by both runs (other settings or eval seeds)")
    for label, pairs in (by_setting or {}).items():
        if pairs["cases"]:
            print(f"occlusion scenes{f' [{label}]' if label else ''} ({pairs['cases']} in both): "
                  f"the object kept by both {pairs['both']}, by run A only "
                  f"{pairs['only_first']}, by run B only {pairs['only_second']}, by neither "
                  f"{pairs['neither']} (exact McNemar p = {pairs['p_two_sided']})")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()

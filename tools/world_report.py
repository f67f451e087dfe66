"""The results of a world-model run (configs/world.py) as one JSON and a Markdown table.

Reads what the recipe wrote in its workdir (summary.json, vae/ and dit/ metrics.jsonl, the
VAE's footage_eval.json if tools/eval_vae.py ran, eval/summary.json) and collects the numbers
issue 9 reports: VAE held-out PSNR/SSIM and its curve, the DiT's steps, loss and speed (and
where a step's time went: compute or waiting for data), its graded training samples, every
evaluation set's grades, the issue's targets checked, the stages' timeline.log and where the
time went outside the steps (`fixed_costs`: start-up to the first step, latent caches, compiles
beside the steps, hooks, checkpoints and slow log intervals, from the stages' logs and metrics).

  python tools/world_report.py --workdir=/tmp/world --out=tools/bench/results/world_h200.json

A results file of a GPU run also says what ran and what it cost (written first in the JSON):
  --run="configs/world.py, eighth run: ..." --commit=abc1234 --gpu_seconds=1562 \
  --command="tools/experiments/world_gpu.sh ..." --command="..."
(the XLA flags are read from the timeline's "vae start (XLA_FLAGS=...)" line).

Prints the Markdown table of the evaluation sets (README's layout) last.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import report  # noqa: E402
from world_costs import costs_text, fixed_costs  # noqa: E402  (tools/world_costs.py)

from sora_jax.train import metrics as metrics_lib  # noqa: E402

SETS = (  # (name in eval/summary.json, row label)
    ("t2v", "t2v, in distribution"),
    ("t2v_holdout", "t2v, held-out colour×shape pairs"),
    ("t2v_occlusion", "t2v, occlusion scenes"),
    ("t2v_multi", "t2v, 2–3 objects"),
    ("t2v_sweep", "t2v, other sizes and durations"),
    ("t2i", "t2i"),
    ("i2v", "i2v"),
    ("extend_forward", "extend forward"),
    ("extend_backward", "extend backward"),
    ("infill", "infill"),
    ("connect", "connect"),
    ("edit", "v2v edit"),
)
MISSES = {  # eval_metrics.permanence_metrics' miss labels, in words
    "unseen_before": "not seen before the bar",
    "unseen_after": "not seen after it",
    "other_size": "back at another size",
    "other_shape": "back as another shape",
}


def stage(workdir: str, name: str) -> dict | None:
    """Steps, first/last training loss, median steps/s (the first interval holds the compile)
    and, for the VAE, its held-out evaluations during training, from <stage>/metrics.jsonl."""
    rows = metrics_lib.read_jsonl(os.path.join(workdir, name, "metrics.jsonl"))
    train = [r for r in rows if "loss" in r]
    if not train:
        return None
    rates = [r["steps_per_s"] for r in train[1:] if "steps_per_s" in r]
    out = {
        "steps": int(train[-1]["step"]),
        "first_loss": round(train[0]["loss"], 4),
        "final_loss": round(train[-1]["loss"], 4),
        "steps_per_s_median": round(statistics.median(rates), 1) if rates else None,
        # Every logged loss at full precision: two runs of the recipe compare step by step
        # (tools/experiments/compare_runs.py), bit for bit when they are.
        "loss_curve": [[int(r["step"]), r["loss"]] for r in train],
    }
    # Where a step's time went, steady state: the logged intervals after the first tenth of the
    # steps (the compiles, and the DiT's latent caches built before its first step).
    steady = [r for r in train if r["step"] > train[-1]["step"] / 10 and "time_data_s" in r]
    if steady:
        out["time_split_ms_per_step"] = {
            part: round(1e3 * statistics.mean(r[f"time_{part}_s"] for r in steady), 1)
            for part in ("compute", "data")
        }
    samples = [r for r in rows if "sample_shape_acc" in r]  # the DiT's graded training samples
    if samples:
        out["training_samples"] = [
            {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in samples
        ]
    evals = [r for r in rows if "eval_psnr" in r]
    if evals:
        out["eval_during_training"] = [
            {"step": r["step"], "psnr": round(r["eval_psnr"], 2), "ssim": round(r["eval_ssim"], 4),
             # the round trips' grades and object permanence (the DiT's ceilings), where logged
             **{k[len("eval_") :]: round(r[k], 3) for k in _RECON_KEYS if k in r}}
            for r in evals
        ]  # fmt: skip
    return out


_RECON_KEYS = ("eval_psnr_first", "eval_recon_color_acc", "eval_recon_shape_acc",
               "eval_recon_motion_acc", "eval_recon_permanence",
               "eval_recon_permanence_noisy")  # fmt: skip


def timeline_events(path: str) -> list[list[str]]:
    """[[HH:MM:SS, event], ...] of a recipe's timeline.log (tools/experiments/world_gpu.sh
    writes "[HH:MM:SS] event" lines); [] when there is none."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [line.strip() for line in f if line.startswith("[") and "] " in line]
    return [[line[1 : line.index("]")], line[line.index("]") + 2 :]] for line in lines]


def collect(workdir: str) -> dict:
    """Everything the run left in `workdir`, in one dict (missing stages are left out)."""
    summary = report.read_json(os.path.join(workdir, "summary.json")) or {}
    result: dict = {"workdir": os.path.abspath(workdir)}
    for name in ("vae", "dit"):
        numbers = stage(workdir, name)
        if numbers is not None:
            wall = (summary.get(name) or {}).get("wall_s")
            result[name] = {**numbers, "stage_wall_s": wall}
            # Kernel time of the steps the stage traced (`profile_steps`; train/metrics.py).
            profile = report.read_json(os.path.join(workdir, name, "profile", "summary.json"))
            if profile:
                result[name]["profile"] = profile
    vae = summary.get("vae") or {}
    if "psnr" in vae and "vae" in result:
        result["vae"].update(heldout_psnr_db=round(vae["psnr"], 2),
                             heldout_ssim=round(vae["ssim"], 4))  # fmt: skip
        if "psnr_first" in vae:  # frame 0 alone: the image path image->video's given frame takes
            result["vae"]["heldout_psnr_first_frame_db"] = round(vae["psnr_first"], 2)
        # The grader on the VAE's round trips: a ceiling for what the DiT's samples can score.
        grades = {k: round(vae[f"recon_{k}_acc"], 3) for k in ("color", "shape", "motion")
                  if f"recon_{k}_acc" in vae}  # fmt: skip
        if grades:
            result["vae"]["heldout_recon_grades"] = grades
        if "recon_mad_ratio" in vae:  # flicker of the round trip: the continuity ratio's floor
            result["vae"]["heldout_recon_mad_ratio"] = round(vae["recon_mad_ratio"], 3)
        if "recon_permanence" in vae:  # occlusion scenes kept by the round trip: its ceiling
            result["vae"]["occlusion_recon_permanence"] = round(vae["recon_permanence"], 3)
        if "recon_permanence_noisy" in vae:  # the same from latents with noise (eval_latent_noise)
            result["vae"]["occlusion_recon_permanence_noisy"] = round(
                vae["recon_permanence_noisy"], 3
            )
    footage = report.read_json(os.path.join(workdir, "vae", "footage_eval.json"))
    if footage:
        scores = {k.split(":")[-1]: {"psnr": round(v["psnr"], 2), "ssim": round(v["ssim"], 3)}
                  for k, v in footage.items() if isinstance(v, dict) and "psnr" in v}  # fmt: skip
        result["vae_real_footage"] = {
            **scores,
            "mean_psnr": round(statistics.mean(s["psnr"] for s in scores.values()), 2),
        }
    timeline = timeline_events(os.path.join(workdir, "timeline.log"))
    if timeline:
        result["timeline"] = timeline
    costs = fixed_costs(workdir)
    if costs:
        result["fixed_costs"] = costs
    ev = report.read_json(os.path.join(workdir, "eval", "summary.json")) or partial_eval(workdir)
    if ev:
        result["eval"] = {k: ev[k] for k in ("settings", "seed", "checkpoint_steps", "val_loss",
                                             "targets", "wall_s") if k in ev}  # fmt: skip
        result["eval_sets"] = ev["sets"]
        if ev.get("t2v_variants"):
            result["eval_t2v_variants"] = ev["t2v_variants"]
        if ev.get("partial"):
            result["eval_partial_sets"] = ev["partial"]
        result["targets_met"] = sum(bool(t["ok"]) for t in ev.get("targets", []))
        result["targets_total"] = len(ev.get("targets", []))
    scenes = occlusion_scenes(workdir)
    if scenes:
        result["occlusion_scenes"] = scenes
    variant_scenes = occlusion_variant_scenes(workdir)
    if variant_scenes:
        result["occlusion_variant_scenes"] = variant_scenes
    return result


def partial_eval(workdir: str) -> dict | None:
    """The sets of an evaluation that stopped before its summary.json (a lost machine, a call
    that ran out): the suite writes each set's <set>.json as it finishes, so the targets of the
    sets that did finish are checked here (`partial` lists the sets; variants are left out)."""
    folder = os.path.join(workdir, "eval")
    if not os.path.isdir(folder):
        return None
    sets = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json") and "@" not in name and name != "summary.json":
            data = report.read_json(os.path.join(folder, name)) or {}
            if "set" in data and "metrics" in data:
                sets[data["set"]] = data["metrics"]
    if not sets:
        return None
    from sora_jax import eval_metrics

    return {"sets": sets, "targets": eval_metrics.check_targets(sets), "partial": sorted(sets)}


def occlusion_scenes(workdir: str) -> dict | None:
    """Each occlusion scene's outcome, by its seed: whether the sample kept the object through
    the bar and whether the VAE's round trip of its real clip did (eval/t2v_occlusion.json), so
    that two runs compare scene by scene from their committed reports
    (tools/experiments/compare_runs.py); with the subject's motion and size, and how the bar
    moved (`evaluate.occluder_motion`: direction_ok None where none was drawn) where the
    suite graded it."""
    data = report.read_json(os.path.join(workdir, "eval", "t2v_occlusion.json"))
    if not data:
        return None
    samples = data["samples"]
    out = _seeds_kept(samples)
    if all("permanence_vae_round_trip" in r for r in samples):
        out["vae_kept"] = [bool(r["permanence_vae_round_trip"]["permanent"]) for r in samples]
    if all("spec" in r for r in samples):
        for key in ("motion", "size"):
            out[key] = [r["spec"]["objects"][0][key] for r in samples]
    if all("occluder" in r for r in samples):
        out["bar_direction_ok"] = [r["occluder"]["direction_ok"] for r in samples]
        out["bar_speed_ratio"] = [r["occluder"]["speed_ratio"] for r in samples]
    return out


def occlusion_variant_scenes(workdir: str) -> dict[str, dict]:
    """{variant label: {"seed": [...], "kept": [...]}} of every sampler variant that re-sampled
    the occlusion scenes (eval/t2v_occlusion@<settings>.json): the same scenes and seeds as the
    suite's, so each compares with it scene by scene (`paired_variants`)."""
    out = {}
    folder = os.path.join(workdir, "eval")
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    for name in names:
        if name.startswith("t2v_occlusion@") and name.endswith(".json"):
            samples = (report.read_json(os.path.join(folder, name)) or {}).get("samples", [])
            if samples:
                out[name[: -len(".json")]] = _seeds_kept(samples)
    return out


def _seeds_kept(samples: list[dict]) -> dict:
    """{"seed": [...], "kept": [...]}: each graded occlusion sample's seed and whether it kept
    the object through the bar."""
    return {"seed": [int(r["seed"]) for r in samples],
            "kept": [bool(r["permanence"]["permanent"]) for r in samples]}  # fmt: skip


def paired_variants(scenes: dict | None, variant_scenes: dict) -> str:
    """Each occlusion variant against the suite's settings, scene by scene (the same scenes and
    noise): kept by both, by the variant only, by the suite's only, by neither, and McNemar's
    exact p ("" without the suite's scenes or any variant's)."""
    if not scenes or not variant_scenes:
        return ""
    from sora_jax import evaluate

    suite = kept_by_seed(scenes)
    lines = ["| t2v_occlusion, scene by scene against the suite's settings | both | variant only "
             "| suite only | neither | McNemar p |", "|---|---|---|---|---|---|"]  # fmt: skip
    for label, v in variant_scenes.items():
        p = evaluate.paired_outcomes(kept_by_seed(v), suite)
        lines.append(f"| {label.split('@', 1)[1]} | {p['both']} | {p['only_first']} | "
                     f"{p['only_second']} | {p['neither']} | {p['p_two_sided']:.3f} |")  # fmt: skip
    return "\n".join(lines)


def _setting(value) -> str:
    """A sampler setting as the report prints it: numbers short, pairs as lo-hi, None as -."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return "-".join(_setting(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def kept_by_seed(scenes: dict) -> dict[int, bool]:
    """seed -> whether the sample kept the object, from `occlusion_scenes`' lists."""
    return dict(zip(scenes["seed"], scenes["kept"], strict=True))


def run_metadata(args: argparse.Namespace) -> dict:
    """The flags that say what ran (--run, --commit, --command, --gpu_seconds) and today's
    date, in the order a results file lists them; {} when none was given."""
    meta = {"run": args.run, "commit": args.commit, "commands": args.command,
            "gpu_seconds_lease_held": args.gpu_seconds}  # fmt: skip
    meta = {k: v for k, v in meta.items() if v not in ("", [], None)}
    return {"date": datetime.date.today().isoformat(), **meta} if meta else {}


def xla_flags(timeline: list[list[str]]) -> str | None:
    """The XLA_FLAGS of the timeline's "vae start (XLA_FLAGS=...)" event, stripped."""
    for _, event in timeline:
        if event.startswith("vae start (XLA_FLAGS=") and event.endswith(")"):
            return event[len("vae start (XLA_FLAGS=") : -1].strip()
    return None


def _cell(value, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(sets: dict) -> str:
    """README's table of the evaluation sets: colour, shape, motion and each set's extra grades."""
    lines = ["| set (prompts) | colour | shape | motion | other |", "|---|---|---|---|---|"]
    for key, label in SETS:
        s = sets.get(key)
        if s is None:
            continue
        other = []
        if "permanence" in s:
            other.append(f"object permanence {s['permanence']:.2f}")
        if s.get("permanence_vae_round_trip") is not None:
            other.append(f"VAE round trips' {s['permanence_vae_round_trip']:.2f}")
        if s.get("permanence_where_vae_keeps") is not None:  # the DiT where the VAE keeps it
            other.append(f"where those keep it {s['permanence_where_vae_keeps']:.2f}")
        if "given_psnr" in s:
            other.append(f"given frames {s['given_psnr']:.1f} dB")
        if "last_color_acc" in s:
            other.append(f"last-frame colour {s['last_color_acc']:.2f}")
        if "continuity_ratio" in s:
            other.append(f"continuity {s['continuity_ratio']:.2f}×")
        lines.append(
            f"| {label} ({s['n']}) | {_cell(s['color_acc'])} | {_cell(s['shape_acc'])} | "
            f"{_cell(s.get('motion_acc'))} | {', '.join(other)} |"
        )
    return "\n".join(lines)


def _t2v_rows(t2v: dict | None, variants: dict) -> list[tuple[str, dict]]:
    """(row label, metrics) of the t2v set under the suite's settings, then of each variant."""
    return _set_rows("t2v", t2v, variants)


def _set_rows(name: str, metrics: dict | None, variants: dict) -> list[tuple[str, dict]]:
    """(row label, metrics) of set `name` under the suite's settings, then under each variant."""
    return ([("the suite's settings", metrics)] if metrics else []) + [
        (label.removeprefix(name + "@"), m)
        for label, m in variants.items()
        if label.startswith(name + "@")
    ]


def occlusion_markdown(occlusion: dict | None, variants: dict) -> str:
    """The occlusion set's shape accuracy and object permanence per sampler setting ("" when
    no variant re-sampled it: `eval.variant_sets`)."""
    rows = _set_rows("t2v_occlusion", occlusion, variants)
    if len(rows) < 2:
        return ""
    lines = ["| t2v_occlusion sampled with | shape | object permanence |", "|---|---|---|"]
    for label, m in rows:
        lines.append(f"| {label} | {_cell(m['shape_acc'])} | {_cell(m.get('permanence'))} |")
    return "\n".join(lines)


def conditioned_markdown(sets: dict, variants: dict) -> str:
    """Each conditioned mode's set (those graded for continuity) that a variant re-sampled,
    under the suite's settings and the variants': given frames' PSNR, last-frame colour and
    continuity ("" when none)."""
    lines = ["| set, sampled with | motion | given dB | last-frame colour | continuity |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, _ in SETS:
        if "continuity_ratio" not in (sets.get(name) or {}):
            continue
        rows = _set_rows(name, sets[name], variants)
        if len(rows) < 2:
            continue
        for label, m in rows:
            lines.append(f"| {name}, {label} | {_cell(m.get('motion_acc'))} | "
                         f"{_cell(m.get('given_psnr'), 1)} | {_cell(m.get('last_color_acc'))} | "
                         f"{_cell(m.get('continuity_ratio'))} |")  # fmt: skip
    return "\n".join(lines) if len(lines) > 2 else ""


def variants_markdown(t2v: dict | None, variants: dict) -> str:
    """The in-distribution t2v set under the suite's settings and under each variant's."""
    lines = ["| t2v sampled with | colour | shape | motion |", "|---|---|---|---|"]
    for label, m in _t2v_rows(t2v, variants):
        lines.append(f"| {label} | {_cell(m['color_acc'])} | {_cell(m['shape_acc'])} | "
                     f"{_cell(m.get('motion_acc'))} |")  # fmt: skip
    return "\n".join(lines)


def shapes_markdown(t2v: dict | None, variants: dict) -> str:
    """Shape accuracy of the in-distribution t2v set per subject shape (and per variant)."""
    rows = [(label, m["shape_acc_by_shape"]) for label, m in _t2v_rows(t2v, variants)
            if "shape_acc_by_shape" in m]  # fmt: skip
    if not rows:
        return ""
    shapes = sorted({k for _, by in rows for k in by})
    lines = ["| t2v shape accuracy | " + " | ".join(shapes) + " |",
             "|---|" + "---|" * len(shapes)]  # fmt: skip
    for label, by in rows:
        lines.append(f"| {label} | " + " | ".join(_cell(by.get(k)) for k in shapes) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the world run's workdir")
    parser.add_argument("--out", default="", help="also write the JSON here")
    parser.add_argument("--device", default="", help="the device it ran on, for the JSON")
    parser.add_argument("--run", default="", help="what the run was, for the JSON")
    parser.add_argument("--commit", default="", help="the commit it ran")
    parser.add_argument("--gpu_seconds", type=float, default=None,
                        help="device time the run's lease held")  # fmt: skip
    parser.add_argument("--command", action="append", default=[],
                        help="a command of the run (repeat for each)")  # fmt: skip
    args = parser.parse_args(argv)
    if not os.path.isdir(args.workdir):
        parser.error(f"--workdir {args.workdir} is not a folder.")
    # The versions are the machine's that ran the recipe: a report.json that world_gpu.sh wrote
    # there holds them (and the device); read elsewhere, this machine's would be wrong.
    ran_path = os.path.abspath(os.path.join(args.workdir, "report.json"))
    same = args.out and os.path.abspath(args.out) == ran_path  # world_gpu.sh writing it
    ran = {} if same else (report.read_json(ran_path) or {})
    # world_gpu.sh also writes versions.json at its start, for runs cut short before report.json.
    started = report.read_json(os.path.join(args.workdir, "versions.json")) or {}
    versions = ran.get("versions") or started or report.versions("jax", "flax")
    result = {**run_metadata(args), "device": args.device or ran.get("device") or None,
              "versions": versions, **collect(args.workdir)}  # fmt: skip
    flags = xla_flags(result.get("timeline", []))
    if flags is not None:
        result["xla_flags"] = flags
    if args.out:
        report.write_json(args.out, result)
    grades = result.get("vae", {}).get("heldout_recon_grades")
    if grades:
        print("VAE round trips of held-out clips, graded (the ceiling of generated videos): "
              + ", ".join(f"{k} {v:.2f}" for k, v in grades.items()))  # fmt: skip
    mad = result.get("vae", {}).get("heldout_recon_mad_ratio")
    if mad is not None:
        print(f"VAE round trips' frame differences over the clips' (continuity floor): {mad:.2f}")
    kept = result.get("vae", {}).get("occlusion_recon_permanence")
    if kept is not None:
        print(
            f"VAE round trips of the occlusion scenes, object permanence (the ceiling): {kept:.2f}"
        )
    noisy = result.get("vae", {}).get("occlusion_recon_permanence_noisy")
    if noisy is not None:
        print(f"... decoded from latents with noise (vae_train.eval_latent_noise): {noisy:.2f}")
    for row in result.get("dit", {}).get("training_samples", []):
        print(
            f"DiT training samples at step {row['step']}: "
            + ", ".join(
                f"{k[len('sample_') :]} {v:.2f}" for k, v in row.items() if k.startswith("sample_")
            )
        )
    for name, costs in (result.get("fixed_costs") or {}).items():
        print(f"fixed costs, {name}: " + costs_text(costs))
    if "eval_sets" in result:
        t2v, variants = result["eval_sets"].get("t2v"), result.get("eval_t2v_variants", {})
        ev = result.get("eval") or {}
        if ev.get("settings"):
            shown = ", ".join(f"{k} {_setting(v)}" for k, v in ev["settings"].items())
            print(f"the suite sampled with {shown}; eval seed {ev.get('seed', 0)}")
        print(markdown(result["eval_sets"]))
        if variants:
            print(variants_markdown(t2v, variants))
        occlusion = result["eval_sets"].get("t2v_occlusion") or {}
        for table in (
            shapes_markdown(t2v, variants),
            occlusion_markdown(occlusion or None, variants),
            conditioned_markdown(result["eval_sets"], variants),
            paired_variants(
                result.get("occlusion_scenes"), result.get("occlusion_variant_scenes", {})
            ),
        ):
            if table:
                print(table)
        for attr in ("motion", "size"):
            groups = occlusion.get(f"permanence_by_{attr}")
            if groups:
                print(f"object permanence by the subject's {attr}: "
                      + ", ".join(f"{k} {_cell(v)}" for k, v in groups.items()))  # fmt: skip
        reads = occlusion.get("prompted_shape_by_size")
        if reads:
            print(
                "the prompted shape before / after the bar by the subject's size: "
                + ", ".join(
                    f"{k} {_cell(v['before'])} / {_cell(v['after'])}" for k, v in reads.items()
                )
            )
        misses = occlusion.get("permanence_misses")
        if misses:
            print(f"object permanence misses ({sum(misses.values())}): "
                  + ", ".join(f"{MISSES.get(k, k)} {v}" for k, v in misses.items()))  # fmt: skip
        by_bar = occlusion.get("permanence_by_occluder")
        if by_bar:
            print(
                f"the bar: shown in {_cell(occlusion['occluder_found'])} of the scenes, the "
                f"captioned way in {_cell(occlusion['occluder_direction_acc'])} of those (median "
                f"speed {_cell(occlusion['occluder_speed_ratio'])}x the world's); object "
                "permanence where it went "
                + ", ".join(f"{k} {_cell(p)} ({n})" for k, (p, n) in by_bar.items())
            )
        if occlusion.get("permanence_se") is not None:
            print(
                f"object permanence {_cell(occlusion['permanence'])} ± "
                f"{_cell(occlusion['permanence_se'])} (binomial standard error, "
                f"{occlusion.get('n', '?')} scenes)"
            )
    return result


if __name__ == "__main__":
    main()

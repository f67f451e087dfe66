"""A trained run's world prompt suite graded under several sampler settings, one model load.

    python tools/experiments/guide_sweep.py --config=configs/tiny.py --workdir=/tmp/sora_tiny \
        --setting guidance=8 --setting guidance=8,autoguidance=2,autoguide_step=1000 \
        [--num_prompts=64] [--out=sweep.json]

Each --setting overrides `config.sample` (steps, guidance, sampler, shift, autoguidance,
autoguide_step, factorized, ...) for one pass over the same prompts and seeds as the "sample" stage
(`recipe.generate_batched`: `world.prompt_suite` of `sample.num_prompts`, short captions). Every
pass is graded (`evaluate.grade`: colour, shape, motion; `flicker_ratio`), and each pass after
the first is compared with it prompt by prompt (`evaluate.paired_outcomes` on the shape grades:
how many prompts each setting alone drew right, exact McNemar p). Prints a row per setting and
writes them as JSON with --out (device, versions, date). Autoguidance needs the run's DiT
checkpoint of autoguide_step, kept with --config.dit_train.keep_every_steps when training.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "tools", "bench"))

import jax  # noqa: E402

from sora_jax import evaluate, recipe  # noqa: E402
from sora_jax import sample as sample_lib  # noqa: E402


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"expected true or false, got {text!r}.")
    return text.lower() in ("true", "1")


# Each key's parser; any other key's is float.
KINDS = {"steps": int, "autoguide_step": int, "seed": int, "sampler": str, "factorized": _bool}


def parse_setting(text: str) -> dict:
    """'guidance=8,autoguidance=2,autoguide_step=1000' -> {'guidance': 8.0, ...};
    'factorized=true' -> {'factorized': True} (text -> image -> video)."""
    out = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep or not value:
            raise ValueError(f"--setting {text!r}: expected key=value pairs separated by commas.")
        out[key.strip()] = KINDS.get(key.strip(), float)(value.strip())
    return out


def sweep(config, workdir: str, settings: list[dict], num_prompts: int | None = None) -> dict:
    """The rows of `settings` (each `config.sample` overrides) on one generator."""
    scfg = config.sample
    bad = [k for s in settings for k in s if k not in scfg]
    if bad:
        raise ValueError(f"--setting keys {sorted(set(bad))} are not in config.sample.")
    specs, prompts = recipe.sample_prompts(config, num_prompts)
    for s in settings:  # every setting checked before the weights load
        sample_lib.check_settings(guidance_interval=(0.0, 1.0), **{**scfg.to_dict(), **s})
    gen = sample_lib.Generator(config, workdir)
    rows, first = [], None
    for s in settings:
        run_cfg = scfg.copy_and_resolve_references()
        run_cfg.update(s)
        start = time.time()
        videos = list(recipe.generate_batched(gen, run_cfg, prompts))
        graded = [evaluate.grade(v, spec) for v, spec in zip(videos, specs, strict=True)]
        row = {"setting": s, **evaluate.accuracies(graded),
               "flicker_ratio": evaluate.flicker_ratio(videos, specs),
               "shape_right": [bool(g["shape"]) for g in graded],
               "wall_s": round(time.time() - start, 1)}  # fmt: skip
        if first is None:
            first = row
        else:
            a = dict(enumerate(first["shape_right"]))
            b = dict(enumerate(row["shape_right"]))
            row["shape_vs_first"] = evaluate.paired_outcomes(a, b)
        rows.append(row)
    return {"prompts": len(prompts), "checkpoint_steps": gen.checkpoint_steps, "rows": rows}


def table(rows: list[dict]) -> str:
    lines = ["| setting | colour | shape | motion | flicker | shape vs first (only first / only"
             " this, p) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        label = ", ".join(f"{k}={v}" for k, v in r["setting"].items()) or "config.sample"
        vs = r.get("shape_vs_first")
        pair = f"{vs['only_first']} / {vs['only_second']}, {vs['p_two_sided']}" if vs else ""
        lines.append(f"| {label} | {r['color_acc']:.2f} | {r['shape_acc']:.2f} | "
                     f"{r['motion_acc']:.2f} | {r['flicker_ratio']:.2f} | {pair} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="path.py[:arg], as the run was trained")
    p.add_argument("--workdir", required=True)
    p.add_argument("--setting", action="append", required=True, help="key=value,... (repeat)")
    p.add_argument("--override", action="append", default=[], help="a.b=value, as trained")
    p.add_argument("--num_prompts", type=int, default=0, help="0 = config.sample.num_prompts")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    from aot_compile import load_config  # tools/aot_compile.py: path.py[:arg] -> config
    from report import versions, write_json  # tools/bench/report.py

    config = load_config(args.config, args.override)
    result = sweep(config, args.workdir, [parse_setting(s) for s in args.setting],
                   args.num_prompts or None)  # fmt: skip
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    result.update(config=args.config, workdir=os.path.abspath(args.workdir), date=now,
                  device=str(jax.devices()[0].device_kind),
                  versions=versions("jax", "flax"))  # fmt: skip
    print(table(result["rows"]))
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()

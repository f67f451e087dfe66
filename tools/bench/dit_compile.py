r"""Compile time of the DiT train step, one row per bucket, serial or all buckets at once.

    python tools/bench/dit_compile.py --config=configs/world.py [--buckets=0,4] [--parallel]
        [--set dit.attention=xla] [--label=NAME] [--out=tools/bench/results/dit_compile.json]

Every DiT bucket is its own compile of the train step, and on a GPU a small model's stage can
spend more time compiling than training (issue 9). This lowers and compiles the step of each
bucket on the default backend from abstract inputs (the latent-cache batch form, as
tools/aot_compile.py; nothing is allocated) and prints lower and compile seconds. `--parallel`
compiles all the chosen buckets in threads at once (XLA compiles outside the GIL) and also
reports the wall time of the whole set. Set XLA_FLAGS before running to compare compiler
options (the JSON records them). No persistent compile cache is used.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(_HERE)))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)
import aot_compile  # noqa: E402
import report  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/world.py")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--buckets", default="", help="indices into dit_train.buckets (default all)")
    p.add_argument("--parallel", action="store_true", help="compile the buckets concurrently")
    p.add_argument("--label", default="", help="name of this variant in the table and JSON")
    p.add_argument("--out", default="", help="JSON path (appends this run to a list)")
    return p.parse_args(argv)


def bucket_configs(config, indices: list[int]) -> list:
    """One copy of `config` per chosen bucket, that bucket first (aot_compile's convention)."""
    buckets = list(config.dit_train.buckets)
    out = []
    for i in indices:
        if not 0 <= i < len(buckets):
            raise ValueError(f"bucket index {i} is out of range: the config has {len(buckets)}.")
        c = config.copy_and_resolve_references()
        c.dit_train.buckets = (buckets[i],)
        out.append(c)
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax

    from sora_jax import parallel

    config = aot_compile.load_config(args.config, args.set)
    n = len(config.dit_train.buckets)
    indices = [int(i) for i in args.buckets.split(",")] if args.buckets else list(range(n))
    configs = bucket_configs(config, indices)
    mesh = parallel.make_mesh(dict(config.mesh), devices=jax.devices())

    def one(c) -> dict:
        r = aot_compile.compile_step(c, mesh, 0)
        return dict(bucket=str(c.dit_train.buckets[0][0]), batch=int(c.dit_train.buckets[0][1]),
                    lower_s=r["lower_s"], compile_s=r["compile_s"])  # fmt: skip

    t0 = time.perf_counter()
    if args.parallel:
        with concurrent.futures.ThreadPoolExecutor(len(configs)) as pool:
            rows = list(pool.map(one, configs))
    else:
        rows = [one(c) for c in configs]
    wall = time.perf_counter() - t0

    label = args.label or ("parallel" if args.parallel else "serial")
    print(f"{label}: {jax.devices()[0].device_kind}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"  {'bucket':<12}{'batch':>6}{'lower s':>10}{'compile s':>11}")
    for r in rows:
        print(f"  {r['bucket']:<12}{r['batch']:>6}{r['lower_s']:>10.1f}{r['compile_s']:>11.1f}")
    total = sum(r["compile_s"] for r in rows)
    print(f"  wall for all: {wall:.1f} s (sum of compiles {total:.1f} s)")
    result = dict(
        label=label,
        config=args.config,
        overrides=args.set,
        parallel=args.parallel,
        rows=rows,
        wall_s=wall,
        device=jax.devices()[0].device_kind,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        versions=report.versions("jax", "jaxlib", "flax"),
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    if args.out:
        import json

        runs = []
        if os.path.exists(args.out):
            with open(args.out) as f:
                runs = json.load(f)
        report.write_json(args.out, [*runs, result])
    return result


if __name__ == "__main__":
    main()

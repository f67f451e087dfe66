"""Profile: which kernels one DiT block's time is spent in, read from a jax.profiler trace.

    python tools/bench/dit_profile.py --out tools/bench/results/dit_profile_h200.json
    python tools/bench/dit_profile.py --tiny --out /tmp/dit_profile.json   # CPU check of the script

The block and shape are dit_block.py's (one Wan 1.3B block, D 1536, FFN 8960, 12 heads; one
480x832x81 video = 32,760 tokens, 512 text tokens, bf16). Each pass (the jitted forward, and the
forward+backward: gradients of the block's parameters and input) is warmed up and timed untraced
(`wall_ms`), then run `--iters` times under `jax.profiler.trace(..., create_perfetto_trace=True)`.
The trace's device-side events are summed per kernel (sora_jax/train/trace_summary.py); times are
per iteration. The traces stay in --trace_dir for ui.perfetto.dev.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import dit  # noqa: E402  (tools/bench/dit.py: the timing helper)
import dit_block  # noqa: E402  (tools/bench/dit_block.py: the block, its shape and JSON header)
import report  # noqa: E402  (tools/bench/report.py)

from sora_jax.train.trace_summary import summarize_dir  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="toy sizes (script check on CPU)")
    p.add_argument("--attention", default="auto", help="attention implementation of the block")
    p.add_argument("--iters", type=int, default=5, help="traced calls per pass")
    p.add_argument("--trace_dir", default="/tmp/dit_profile", help="where the traces are kept")
    p.add_argument(
        "--whole",
        action="store_true",
        help="also the whole model's sampling forward (dit.py's shape, random weights)",
    )
    return p.parse_args(argv)


def profile_pass(fn, args, iters: int, trace_dir: str) -> dict:
    import jax

    wall_s, _ = dit.time_calls(lambda: fn(*args), jax.block_until_ready, iters)  # warms up too
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(iters):
            jax.block_until_ready(fn(*args))
    out = summarize_dir(trace_dir, iters)
    return {"wall_ms": wall_s * 1e3, **out, "trace_dir": trace_dir}


def print_pass(name: str, p: dict) -> None:
    print(f"\n{name}: {p['total_ms']:.3f} ms of kernels per iteration ({p['kernels']} kernels), "
          f"{p['wall_ms']:.3f} ms wall")  # fmt: skip
    print(f"{'kernel':<60} {'category':>9} {'calls':>6} {'ms':>9} {'%':>6}")
    for r in p["rows"]:
        short = r["kernel"] if len(r["kernel"]) <= 60 else r["kernel"][:57] + "..."
        print(f"{short:<60} {r['category']:>9} {r['calls_per_iter']:6.1f} "
              f"{r['ms_per_iter']:9.3f} {r['pct']:6.1f}")  # fmt: skip
    print(f"{'total':<60} {'':>9} {'':>6} {p['total_ms']:9.3f} {100.0:6.1f}")
    cats = sorted(p["categories"].items(), key=lambda kv: -kv[1]["ms_per_iter"])
    print("  by category: " + ", ".join(f"{c} {v['ms_per_iter']:.3f} ms ({v['pct']:.1f}%)"
                                        for c, v in cats))  # fmt: skip


def whole_forward(args):
    """(jitted forward, its arguments) of the whole DiT at dit.py's shape (configs/l.py at
    480x832x81 frames, random weights): the pass tools/bench/dit.py times against diffusers,
    whose time outside the blocks (embeddings, head, the layer scan) the block profile cannot
    show."""
    ns = argparse.Namespace(tiny=args.tiny, attention=args.attention, cross_attention="")
    _, fwd, fwd_args = dit.build_forward(ns)
    return fwd, fwd_args


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg, n, text_len = dit_block.block_shape(args.tiny, args.attention)
    out = {**dit_block.header("dit_profile", cfg, n, text_len), "iters": args.iters,
           "passes": {}}  # fmt: skip
    fns, fn_args = dit_block.build(cfg, "block", n, text_len)
    for name, fn in fns.items():
        p = profile_pass(fn, fn_args, args.iters, os.path.join(args.trace_dir, name))
        out["passes"][name] = p
        print_pass(name, p)
    if args.whole:
        fn, fn_args = whole_forward(args)
        p = profile_pass(fn, fn_args, args.iters, os.path.join(args.trace_dir, "model_forward"))
        out["passes"]["model_forward"] = p
        print_pass("model_forward (whole DiT)", p)
    report.write_json(args.out, out)


if __name__ == "__main__":
    main()

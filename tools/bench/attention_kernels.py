"""Benchmark: self-attention kernels at the DiT's shape on one Hopper GPU (issue 4).

    python tools/bench/attention_kernels.py --out=results/attention_kernels_bf16_h200.json
    python tools/bench/attention_kernels.py --dtype=float16 --out=attention_kernels_fp16_h200.json
    python tools/bench/attention_kernels.py --tiny --impls=xla     # CPU check of the script
    python tools/bench/attention_kernels.py --tokens=32760 --kv_tokens=512 --kv_len=100 \
        --impls=cudnn,xla --out=results/cross_attention_h200.json  # the block's text attention

The issue's MFU target needs the self-attention of a Wan-1.3B block (12 heads x 128, one
480x832x81 video = 32,760 tokens; here 32,768, a multiple of every kernel's tile) to run faster
than cuDNN's flash attention, which holds ~72% of the block's forward+backward time on the H200
(tools/bench/results/dit_profile_h200.json). This times, in one process and on the same inputs:

  cudnn   jax.nn.dot_product_attention(implementation='cudnn')
  xla     jax.nn.dot_product_attention(implementation='xla')
  cudnn_pad, xla_pad   sora_jax's `cudnn_pad` kernel (and its XLA twin): q, k, v right-padded to
          a multiple of 128 tokens, given as sequence lengths (e.g. --tokens=32760 --impls=
          cudnn,cudnn_pad: is cuDNN faster on 32,768 tokens of which 8 are padding?)
  mgpu:*  the Pallas Mosaic GPU (Hopper, warp-specialised) kernel that ships with JAX
          (jax.experimental.pallas.ops.gpu.attention_mgpu) at a few tile sizes

forward and forward+backward (gradients of q, k, v), and checks every kernel's output and
gradients against cuDNN's. TFLOP/s use the model-FLOPs formula of sora_jax/flops.py: 4 N M d
per forward (N queries, M keys), x3 for forward+backward (the backward's recomputation is not
counted). `--kv_tokens` gives the keys their own length (the cross-attention to 512 text tokens),
`--kv_len` masks the keys past it as padding (key_value_seq_lengths; the mgpu kernel takes no
mask and is skipped with one).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import dit  # noqa: E402  (tools/bench/dit.py: timing helper, device name)
import report  # noqa: E402  (tools/bench/report.py)

# (block_q, block_kv, max_concurrent_steps, compute_wgs_bwd, backward tile)
MGPU_TILES = {
    "mgpu:64x128": (64, 128, 2, 1, 64),
    "mgpu:64x256": (64, 256, 2, 1, 64),
    "mgpu:64x128_bwd128": (64, 128, 2, 1, 128),
    "mgpu:64x128_wgs2": (64, 128, 2, 2, 64),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv_tokens", type=int, default=0, help="key/value length (0: --tokens)")
    p.add_argument("--kv_len", type=int, default=0, help="valid keys, the rest padding (0: all)")
    p.add_argument("--head_dim", type=int, default=128)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--impls", default="cudnn,xla," + ",".join(MGPU_TILES))
    p.add_argument("--tiny", action="store_true", help="256 tokens, 2 heads x 64 (any backend)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    p.add_argument("--out", default="")
    return p.parse_args(argv)


def attention_fn(name: str, kv_len: int = 0):
    """name -> f(q, k, v) over [B, T, H, D] with q already scaled by 1/sqrt(D); keys from
    `kv_len` on are padding when it is > 0."""
    import jax
    import jax.numpy as jnp

    if name in ("cudnn", "xla"):
        lengths = jnp.array([kv_len], jnp.int32) if kv_len else None
        return functools.partial(jax.nn.dot_product_attention, scale=1.0, implementation=name,
                                 key_value_seq_lengths=lengths)  # fmt: skip
    if name in ("cudnn_pad", "xla_pad"):  # the library's padded kernel (models/attention.py)
        from sora_jax.models import attention

        def padded(q, k, v):
            kv_mask = jnp.arange(k.shape[1])[None, :] < (kv_len or k.shape[1])
            return attention.padded_seq_len_attention(
                q, k, v, kv_mask=jnp.broadcast_to(kv_mask, k.shape[:2]), scale=1.0,
                implementation=name.removesuffix("_pad"),
            )  # fmt: skip

        return padded
    if kv_len:
        raise ValueError(f"{name} takes no padding mask (--kv_len)")
    from jax.experimental.pallas.ops.gpu import attention_mgpu as mg

    bq, bkv, steps, wgs, bt = MGPU_TILES[name]
    cfg = mg.TuningConfig(block_q=bq, block_kv=bkv, max_concurrent_steps=steps,
                          compute_wgs_bwd=wgs, block_q_dkv=bt, block_kv_dkv=bt,
                          block_q_dq=bt, block_kv_dq=bt)  # fmt: skip
    return functools.partial(mg.attention, config=cfg)  # softmax(q k^T): no scale of its own


def measure(name: str, q, k, v, do, ref, iters: int, kv_len: int = 0) -> dict:
    import jax
    import jax.numpy as jnp

    attn = attention_fn(name, kv_len)
    fwd = jax.jit(attn)
    grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v).astype(jnp.float32) * do),
                             argnums=(0, 1, 2)))  # fmt: skip
    fwd_s, out = dit.time_calls(lambda: fwd(q, k, v), jax.block_until_ready, iters)
    bwd_s, g = dit.time_calls(lambda: grads(q, k, v), jax.block_until_ready, iters)
    row = {"impl": name, "forward_ms": fwd_s * 1e3, "fwd_bwd_ms": bwd_s * 1e3}
    if ref is not None:
        row["max_abs_diff_out"] = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref[0])))
        row["max_rel_diff_grads"] = max(
            float(jnp.max(jnp.abs(a.astype(jnp.float32) - b)) / (jnp.max(jnp.abs(b)) + 1e-12))
            for a, b in zip(g, ref[1])
        )
    return row, (out.astype(jnp.float32), [x.astype(jnp.float32) for x in g])


def main(argv=None) -> None:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp

    if args.tiny:
        args.tokens, args.heads, args.head_dim = 256, 2, 64
    kv_tokens = args.kv_tokens or args.tokens
    shape = (1, args.tokens, args.heads, args.head_dim)
    kv_shape = (1, kv_tokens, args.heads, args.head_dim)
    kq, kk, kv, kd = jax.random.split(jax.random.key(0), 4)
    q = (jax.random.normal(kq, shape) * args.head_dim**-0.5).astype(args.dtype)
    k, v = (jax.random.normal(x, kv_shape).astype(args.dtype) for x in (kk, kv))
    do = jax.random.normal(kd, shape, jnp.float32)
    flops = 4 * args.tokens * kv_tokens * args.heads * args.head_dim
    rows, ref = [], None
    for name in args.impls.split(","):
        try:
            row, res = measure(name, q, k, v, do, ref, args.iters, args.kv_len)
            ref = ref or res  # the first kernel that runs is the reference (cudnn by default)
            row["forward_tflops"] = flops / row["forward_ms"] * 1e-9
            row["fwd_bwd_tflops"] = 3 * flops / row["fwd_bwd_ms"] * 1e-9
        except Exception as e:  # noqa: BLE001  (a kernel that does not build is a result too)
            row = {"impl": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        rows.append(row)
        print(row, flush=True)
    base = next((r for r in rows if "fwd_bwd_ms" in r), None)
    print(f"{'impl':<22}{'fwd ms':>9}{'TF/s':>7}{'f+b ms':>9}{'TF/s':>7}{'vs first':>9}")
    for r in rows:
        if "fwd_bwd_ms" not in r:
            print(f"{r['impl']:<22} {r['error'][:70]}")
            continue
        ratio = r["fwd_bwd_ms"] / base["fwd_bwd_ms"]
        print(f"{r['impl']:<22}{r['forward_ms']:9.2f}{r['forward_tflops']:7.0f}"
              f"{r['fwd_bwd_ms']:9.2f}{r['fwd_bwd_tflops']:7.0f}{ratio:9.2f}")  # fmt: skip
    if args.out:
        report.write_json(args.out, {
            "benchmark": "attention_kernels",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "device": dit._device(), "versions": report.versions("jax", "jaxlib"),
            "shape": {"batch": 1, "tokens": args.tokens, "kv_tokens": kv_tokens,
                      "kv_len": args.kv_len or kv_tokens, "heads": args.heads,
                      "head_dim": args.head_dim, "dtype": args.dtype},
            "flops_forward": flops, "rows": rows,
        })  # fmt: skip


if __name__ == "__main__":
    main()

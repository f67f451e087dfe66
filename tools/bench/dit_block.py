"""Benchmark: where one DiT block's time goes (issue 4), by leaving parts out.

    python tools/bench/dit_block.py --out tools/bench/results/dit_block_h200.json
    python tools/bench/dit_block.py --tiny --out /tmp/dit_block.json    # CPU check of the script

There are no hardware counters to read inside a lease, so this times variants of one block of
configs/l.py's DiT (Wan 1.3B: D 1536, FFN 8960, 12 heads) at the issue's shape (one 480x832x81
video = 32,760 tokens, 512 text tokens, bf16) and takes differences: the block as it is; without
RoPE; without the QK RMSNorm; without adaLN modulation and gates (plain residuals); and the two
attention kernels alone (self-attention over the video tokens, cross-attention to the text).
Each row is the forward and the forward+backward (gradients of the block's parameters and input)
of one jitted block, timed after warm-up; the table's last column is the forward time a variant
saves against the whole block. Times the FLOPs cannot explain are where fusion work pays.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import dit  # noqa: E402  (tools/bench/dit.py: the issue's shape and its timing helper)
import report  # noqa: E402  (tools/bench/report.py)

VARIANTS = ("block", "no_rope", "no_qk_norm", "no_modulation", "self_attn", "cross_attn")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="toy sizes (script check on CPU)")
    p.add_argument("--attention", default="auto", help="attention implementation of the block")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--iters", type=int, default=20, help="timed calls per measurement")
    return p.parse_args(argv)


@contextlib.contextmanager
def _patched(variant: str):
    """Replace the layer functions a variant leaves out with identities, then restore them."""
    from sora_jax.models import layers

    saved = (layers.apply_rope, layers.RMSNorm.__call__, layers.modulate, layers.gate)
    try:
        if variant == "no_rope":
            layers.apply_rope = lambda x, cos, sin: x
        elif variant == "no_qk_norm":
            layers.RMSNorm.__call__ = lambda self, x: x
        elif variant == "no_modulation":
            layers.modulate = lambda x, shift, scale, nf: x.astype("float32")
            layers.gate = lambda x, g, nf: x.astype("float32")
        yield  # dit.py looks them up through `layers.` while the block is traced
    finally:
        layers.apply_rope, layers.RMSNorm.__call__, layers.modulate, layers.gate = saved


def block_shape(tiny: bool, attention: str):
    """(DiTConfig, video tokens, text tokens): the issue's shape, or toy sizes for a CPU check."""
    from sora_jax.models.dit import DiTConfig

    if tiny:
        cfg = DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=1, text_dim=64,
                        dtype="float32", attention="xla")  # fmt: skip
        return cfg, 256, 16
    cfg = DiTConfig(**dit.FULL["model"], attention=attention)
    n = dit.FULL["grid"][0] * (dit.FULL["grid"][1] // 2) * (dit.FULL["grid"][2] // 2)
    return cfg, n, dit.FULL["text_len"]  # 480x832x81 -> 21x60x104 latents, 1x2x2 patches


def header(benchmark: str, cfg, n: int, text_len: int) -> dict:
    """The JSON's date, device, versions and shape."""
    import jax

    return {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
        "versions": report.versions("jax", "jaxlib", "flax"),
        "shape": {"tokens": n, "text_len": text_len, "dim": cfg.dim, "ffn_dim": cfg.ffn_dim,
                  "heads": cfg.num_heads, "dtype": cfg.dtype, "attention": cfg.attention},
    }  # fmt: skip


def build(cfg, variant: str, n: int, text_len: int):
    """({"forward": jitted fn, "fwd_bwd": jitted grad}, their arguments) of one variant."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from sora_jax.models import layers
    from sora_jax.models.attention import attention
    from sora_jax.models.dit import DiTBlock

    rng = np.random.default_rng(0)
    d, k = cfg.dim, cfg.num_heads
    dt = jnp.dtype(cfg.dtype)
    h = jnp.asarray(rng.normal(size=(1, n, d)), jnp.float32)
    ctx = jnp.asarray(rng.normal(size=(1, text_len, d)), dt)
    mod = jnp.asarray(rng.normal(size=(1, 1, 6, d)) * 0.1, jnp.float32)
    grid = (1, 1, n)  # one frame: modulation per frame broadcasts over all n tokens
    rope = layers.rope_3d(grid, cfg.head_dim, cfg.rope_theta)

    if variant in ("self_attn", "cross_attn"):
        m = n if variant == "self_attn" else text_len
        q = jnp.asarray(rng.normal(size=(1, n, k, d // k)), dt)
        kv = jnp.asarray(rng.normal(size=(1, m, k, d // k)), dt)

        def fwd(q, kv):
            return attention(q, kv, kv, implementation=cfg.attention)

        def loss(q, kv):
            return jnp.sum(fwd(q, kv).astype(jnp.float32))

        args = (q, kv)
    else:
        block = DiTBlock(cfg, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(block)

        def fwd(state, h):
            with _patched(variant):
                return nnx.merge(graphdef, state)(h, ctx, None, mod, rope)

        def loss(state, h):
            return jnp.sum(fwd(state, h))

        args = (state, h)
    return {"forward": jax.jit(fwd), "fwd_bwd": jax.jit(jax.grad(loss, argnums=(0, 1)))}, args


def measure(cfg, variant: str, n: int, text_len: int, iters: int) -> dict:
    import jax

    fns, args = build(cfg, variant, n, text_len)
    fwd_s, _ = dit.time_calls(lambda: fns["forward"](*args), jax.block_until_ready, iters)
    train_s, _ = dit.time_calls(lambda: fns["fwd_bwd"](*args), jax.block_until_ready, iters)
    return {"variant": variant, "forward_ms": fwd_s * 1e3, "fwd_bwd_ms": train_s * 1e3}


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg, n, text_len = block_shape(args.tiny, args.attention)
    out = {**header("dit_block", cfg, n, text_len), "rows": []}
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"--variants: {variant!r} is not one of {VARIANTS}.")
        try:
            row = measure(cfg, variant, n, text_len, args.iters)
        except Exception as e:  # one failing row keeps the others
            row = {"variant": variant, "error": f"{type(e).__name__}: {e}"[:300]}
        out["rows"].append(row)
        report.write_json(args.out, out)
    base = next((r for r in out["rows"] if r["variant"] == "block" and "error" not in r), None)
    print(f"{'variant':>14} {'forward_ms':>11} {'fwd_bwd_ms':>11} {'saves_fwd_ms':>13}")
    for r in out["rows"]:
        if "error" in r:
            print(f"{r['variant']:>14} error: {r['error'][:90]}")
            continue
        part = r["variant"].endswith("_attn")  # a kernel alone: its time, not a saving
        saves = "" if base is None or part else f"{base['forward_ms'] - r['forward_ms']:13.2f}"
        print(f"{r['variant']:>14} {r['forward_ms']:11.2f} {r['fwd_bwd_ms']:11.2f} {saves}")


if __name__ == "__main__":
    main()

"""Benchmark: the world VAE's train step (configs/world.py) against its training bucket.

    python tools/bench/world_vae.py --buckets=17x64x64@32,17x128x128@8 \
        --out tools/bench/results/world_vae_res128_h200.json
    python tools/bench/world_vae.py --tiny --out /tmp/world_vae.json     # CPU check of the script

Run 10 of issue 9 renders the world at 128x128 and trains the VAE on 8 clips of 17x128x128 per
step, the pixels per step of runs 1-9 (32 clips of 17x64x64). Whether that keeps the time per
step (the VAE stage is ~a quarter of the session's device time) is measured here: the real train
step (`state_lib.build_step` over `VAETask`: encode, reparameterised sample, decode, the
recipe's MSE + SSIM + KL loss, AdamW, clipping, EMA, non-finite guard; state donated) on random
uint8 clips of each BUCKET@BATCH, in one process. The first row is the reference the others'
ratios are taken against. Rows: seconds per step, steps/s, pixels/s and the compile time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import aot_compile  # noqa: E402  (tools/aot_compile.py: a config file by path)
import report  # noqa: E402  (tools/bench/report.py)


def parse_args(argv=None) -> argparse.Namespace:
    p = report.rows_parser("world.py:micro sizes (script check)")
    p.add_argument(
        "--buckets",
        default="17x64x64@32,17x128x128@8",
        help="FRAMESxHEIGHTxWIDTH@BATCH[,...], one row each; the first is the reference",
    )
    return p.parse_args(argv)


def parse_rows(text: str) -> list[tuple[str, int]]:
    rows = []
    for item in text.split(","):
        shape, sep, batch = item.partition("@")
        if not sep or not batch.isdigit():
            raise SystemExit(f"--buckets {item!r}: expected FRAMESxHEIGHTxWIDTH@BATCH.")
        rows.append((shape, int(batch)))
    return rows


def measure(config, shape: str, batch_size: int, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sora_jax import parallel
    from sora_jax.train import state as state_lib
    from sora_jax.train import vae_task

    config = config.copy_and_resolve_references()
    config.vae_train.buckets = ((shape, batch_size, 1.0),)
    task = vae_task.VAETask(config)
    b = task.buckets[0]
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (batch_size, b.num_frames, b.height, b.width, 3), np.uint8)
    batch = {"video": jnp.asarray(video), "step": jnp.asarray(0, jnp.int32)}
    mesh = parallel.make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    graphdef, state, rest, tx, _ = state_lib.init_state(task, config.vae_train, mesh, seed=0)
    ema = float(config.vae_train.ema_decay)
    step = jax.jit(state_lib.build_step(task, graphdef, rest, tx, ema), donate_argnums=(0,))
    frozen = task.frozen() or {}
    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        compiled = step.lower(state, frozen, batch).compile()
        compile_s = time.perf_counter() - t0
        for _ in range(3):  # warm-up (conv autotuning)
            state, out, _ = compiled(state, frozen, batch)
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        for _ in range(steps):
            state, out, _ = compiled(state, frozen, batch)
        jax.block_until_ready(state)
        sec = (time.perf_counter() - t0) / steps
    pixels = batch_size * b.num_frames * b.height * b.width
    return {
        "batch": batch_size,
        "step_s": sec,
        "steps_per_s": 1 / sec,
        "pixels_per_s": pixels / sec,
        "compile_s": compile_s,
        "loss": float(out["loss"]),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    # By path: `import world` could find tools/bench/world.py (the renderer's benchmark).
    path = os.path.join(ROOT, "configs", "world.py") + ":micro" * args.tiny
    config = aot_compile.load_config(path, [])
    rows = parse_rows(args.buckets)
    out = report.jax_header("world_vae", config="configs/world.py" + (":micro" * args.tiny))

    def row(shape: str, batch: int):
        return {"bucket": shape, "batch": batch}, lambda: measure(config, shape, batch, args.steps)

    report.measure_rows(out, args.out, (row(*r) for r in rows), args.budget_s)
    report.ratios_to_first(out["rows"], "step_s", "step_s_vs_first")
    report.write_json(args.out, out)
    cols = ["bucket", "batch", "step_s", "steps_per_s", "pixels_per_s", "step_s_vs_first",
            "compile_s"]  # fmt: skip
    report.print_table(out["rows"], cols, 15)
    return out


if __name__ == "__main__":
    main()

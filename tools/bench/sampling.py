"""Benchmark: one batch of text -> video from the world recipe's models, per sampler setting.

    python tools/bench/sampling.py --out tools/bench/results/sampling_h100.json
    python tools/bench/sampling.py --tiny --out /tmp/sampling.json     # CPU check of the script

What a user waits for: `Generator.sample` end to end (noise, the jitted sampler's scan of DiT
forwards, the VAE decode, the videos back on the host) for a batch of prompts at the eval
suite's settings (configs/world.py: 17x64x64 clips, 60 Euler steps, batch 16), under the
settings the suite compares. The reference row is classifier-free guidance (two DiT forwards a
step, batched into one call); the others are guidance off (one forward), autoguidance (a third
forward, by a second DiT of the same shapes), text -> image -> video (`factorized`: a 1-frame
sample first, then the video with that frame given), and both. Rows: seconds per batch (median
of --steps calls after one that compiles), videos/s, the first call's seconds (compile) and the
ratio of each row's time to the reference's. Two more rows time a batch of forward extensions
(the first half of each clip given, the suite's setting), each clip with its own given frames:
sampled one clip per call (the evaluation suite until its twenty-fourth run) and all in one
call (a list of plans, `Generator.sample`); `time_vs_one_per_call` compares them. The weights
are freshly initialised (time does not depend on them) and the prompts are embedded by a
stand-in of the text encoder's output shape, so the rows time the sampler and the VAE, not
MiniLM.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import aot_compile  # noqa: E402  (tools/aot_compile.py: a config file by path)
import report  # noqa: E402  (tools/bench/report.py)

# (row name, Generator.sample settings beside the suite's steps, sampler and guidance).
SETTINGS = (
    ("cfg", {}),
    ("no guidance", {"guidance": 1.0}),
    ("autoguidance", {"autoguidance": 2.0, "autoguide_step": 1}),
    ("factorized", {"factorized": True}),
    ("factorized + autoguidance", {"factorized": True, "autoguidance": 2.0, "autoguide_step": 1}),
)


def parse_args(argv=None):
    p = report.rows_parser("configs/world.py:micro sizes, 2 prompts, 2 sampler steps")
    p.set_defaults(steps=3)
    p.add_argument("--batch", type=int, default=0, help="prompts per call (0: eval.batch_size)")
    p.add_argument("--sampler_steps", type=int, default=0, help="0: eval.steps")
    p.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    return p.parse_args(argv)


def build(config):
    """A Generator of fresh recipe-shaped models (and a second DiT as autoguidance's guide),
    the text embedded by a stand-in: [B, text.max_length, dit.text_dim] of fixed noise."""
    import jax
    import numpy as np
    from flax import nnx

    from sora_jax import sample as sample_lib
    from sora_jax.models import dit as dit_lib
    from sora_jax.models import vae as vae_lib

    def made(create):  # under one jit: eager init would compile every op on its own
        graphdef = nnx.graphdef(nnx.eval_shape(create))
        return nnx.merge(graphdef, jax.jit(lambda: nnx.state(create()))())

    vae_cfg = vae_lib.VAEConfig(**config.vae.to_dict())
    vae = made(lambda: vae_lib.CausalVAE(vae_cfg, rngs=nnx.Rngs(0)))
    dit_cfg = dit_lib.DiTConfig(**config.dit.to_dict())
    dit = made(lambda: dit_lib.DiT(dit_cfg, rngs=nnx.Rngs(1)))
    guide = made(lambda: dit_lib.DiT(dit_cfg, rngs=nnx.Rngs(2)))
    length, width = int(config.text.max_length), int(config.dit.text_dim)

    def embed(texts):
        rng = np.random.default_rng(0)
        return (rng.normal(size=(len(texts), length, width)).astype(np.float32),
                np.ones((len(texts), length), bool))  # fmt: skip

    z = config.vae.z_channels
    gen = sample_lib.Generator.from_models(config, vae, dit, np.zeros(z), np.ones(z), embed)
    gen.add_guide(1, guide)
    return gen


def _timed(once, calls: int, videos: int, stride: int = 1) -> dict:
    """Times `once(seed)`: a first call at seed 0 (compiles; the videos are on the host after
    each), then the median of `calls` more at seeds stride, 2 stride, ..."""
    t0 = time.perf_counter()
    once(0)
    first_s = time.perf_counter() - t0
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        once(stride * (i + 1))
        times.append(time.perf_counter() - t0)
    batch_s = statistics.median(times)
    return {"batch_s": batch_s, "videos_per_s": videos / batch_s, "first_call_s": first_s}


def measure(gen, plan, prompts: list[str], settings: dict, calls: int) -> dict:
    return _timed(lambda seed: gen.sample(prompts, plan, seed=seed, **settings), calls,
                  len(prompts))  # fmt: skip


# Rows of forward extensions: (row name, clips per call; 0 = the batch).
CONDITIONED_ROWS = (("extend fwd 1 a call", 1), ("extend fwd batched", 0))


def measure_clips(gen, plans, prompts: list[str], settings: dict, calls: int, per_call: int):
    """`measure` for a batch of conditioned clips sampled `per_call` at a time (a list of plans
    per call): batch_s is the time of the whole batch (all its calls)."""

    def once(seed: int) -> None:
        for k in range(0, len(plans), per_call):
            gen.sample(prompts[k : k + per_call], plans[k : k + per_call], seed=seed + k,
                       **settings)  # fmt: skip

    return _timed(once, calls, len(prompts), stride=1000)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import numpy as np

    from sora_jax import eval_cases, modes

    config = aot_compile.load_config(
        os.path.join(ROOT, "configs", "world.py" + (":micro" if args.tiny else "")), []
    )
    ec = config.eval
    frames, height, width = eval_cases.parse_shape(ec.shape)
    batch = args.batch or (2 if args.tiny else int(ec.batch_size))
    base = {"steps": args.sampler_steps or (2 if args.tiny else int(ec.steps)),
            "sampler": str(ec.sampler), "guidance": float(ec.guidance)}  # fmt: skip
    names = [n for n, _ in SETTINGS] + [n for n, _ in CONDITIONED_ROWS]
    chosen = args.rows.split(",") if args.rows else names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise SystemExit(f"--rows: {unknown} are not rows; expected some of {names}.")
    gen = build(config)
    plan = modes.text_to_video(frames, height, width, tf=gen.temporal_factor)
    prompts = [f"prompt {i}" for i in range(batch)]
    out = report.jax_header(
        "sampling",
        config="configs/world.py" + (":micro" * args.tiny),
        shape=ec.shape,
        batch=batch,
        **base,
        command=" ".join(sys.argv),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
    )
    rows = [({"setting": name}, lambda s=s: measure(gen, plan, prompts, {**base, **s}, args.steps))
            for name, s in SETTINGS if name in chosen]  # fmt: skip
    clips = np.random.default_rng(0).integers(0, 256, (batch, frames, height, width, 3), np.uint8)
    extend = [modes.extend(c[: (frames + 1) // 2], frames - (frames + 1) // 2,
                           direction="forward", tf=gen.temporal_factor) for c in clips]  # fmt: skip
    rows += [({"setting": name}, lambda k=k: measure_clips(gen, extend, prompts, base, args.steps,
                                                           k or batch))
             for name, k in CONDITIONED_ROWS if name in chosen]  # fmt: skip
    report.measure_rows(out, args.out, rows, args.budget_s)
    report.ratios_to_first(out["rows"], "batch_s", "time_vs_first")
    one = next((r for r in out["rows"] if r["setting"] == CONDITIONED_ROWS[0][0]), None)
    for r in out["rows"]:
        if (
            one
            and "error" not in one
            and "error" not in r
            and r["setting"] in dict(CONDITIONED_ROWS)
        ):
            r["time_vs_one_per_call"] = r["batch_s"] / one["batch_s"]
    report.write_json(args.out, out)
    report.print_table(out["rows"], ["setting", "batch_s", "videos_per_s", "first_call_s",
                                     "time_vs_first", "time_vs_one_per_call"],
                       width=14)  # fmt: skip
    return out


if __name__ == "__main__":
    main()

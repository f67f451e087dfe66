"""Benchmark: DiT train step and one sampling forward on one GPU, against diffusers'
WanTransformer3DModel (PyTorch eager, SDPA, bf16) with the same weights, in the same run.

    python tools/bench/dit.py --out tools/bench/results/dit_h100.json
    python tools/bench/dit.py --tiny --out /tmp/dit_tiny.json          # CPU check of the script

Shape: configs/l.py (Wan 2.1 T2V-1.3B) at 480x832, 81 frames -> latents 21x60x104 (Wan VAE
4x8x8) -> 32,760 tokens (1x2x2 patches), batch 1, 512 text tokens x 4096, bf16 compute.
MFU = model FLOPs (sora_jax/flops.py: matmuls + 4 N^2 D attention per layer, x3 for training,
recomputation not counted) / step time / 989 TFLOP/s (H100 SXM dense bf16 datasheet).

Ours: the real train step (`sora_jax.train.state.build_step`: AdamW, clipping, EMA, non-finite
guard; state donated) on the flow-matching loss, one remat policy per subprocess. diffusers:
forward + backward with gradient checkpointing and no optimizer (as the issue's baseline).
"Largest tokens" per remat policy is estimated from XLA's compile-time memory analysis at two
sizes (activation memory is linear in tokens with flash attention), not run.

On the lent GPU machine use its own jax/flax (a flax 0.12.8 wheel does not import under its
jax 0.11.2); carry diffusers, ml_collections and importlib_metadata as wheels.

Each part runs in its own subprocess (JAX and PyTorch each keep what they allocate); a part
that fails or runs out of memory is recorded and the rest continue.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import report  # noqa: E402  (tools/bench/report.py: this script's folder is on sys.path)

PEAK = 989e12  # H100 / H200 SXM dense bf16 datasheet
L_DIT = dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)  # configs/common.py "l"
FULL = dict(grid=(21, 60, 104), text_len=512, model=dict(L_DIT, in_channels=16, text_dim=4096))
TINY = dict(
    grid=(3, 8, 8),
    text_len=8,
    model=dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_channels=4, text_dim=32),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", action="store_true", help="toy sizes on any backend (script check)")
    p.add_argument("--remats", default="save_attn,save_dots_attn,full")
    p.add_argument("--memory_search", default="", help="remat policies to size (comma list)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    p.add_argument("--budget_s", type=float, default=500.0, help="skip parts after this")
    p.add_argument("--attention", default="auto", help="DiTConfig.attention of our model")
    p.add_argument("--cross_attention", default="", help="DiTConfig.cross_attention ('' = same)")
    p.add_argument("--skip_torch", action="store_true")
    p.add_argument("--skip_forward", action="store_true", help="no sampling-forward timing")
    p.add_argument("--diffusers_from", default="",
                   help="with --skip_torch: take 'diffusers' from an earlier JSON of this "
                        "script on the same machine (its weights stay in --workdir)")  # fmt: skip
    p.add_argument("--workdir", default="/tmp/dit_bench")
    p.add_argument("--out", default=os.path.join(ROOT, "tools/bench/results/dit_h100.json"))
    p.add_argument("--part", default="", help=argparse.SUPPRESS)  # internal: run one part
    p.add_argument("--remat", default="", help=argparse.SUPPRESS)
    p.add_argument("--frames", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _shape(args) -> dict:
    return TINY if args.tiny else FULL


def _inputs(args, grid=None):
    """Deterministic numpy inputs shared by both frameworks (channels-last latents)."""
    import numpy as np

    shape = _shape(args)
    grid = grid or shape["grid"]
    m = shape["model"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, *grid, 16 if not args.tiny else m["in_channels"]), np.float32)
    ctx = rng.standard_normal((1, shape["text_len"], m["text_dim"]), np.float32)
    return x, ctx, np.array([0.5], np.float32)


# ----------------------------------------------------------------------------- diffusers


def part_torch(args) -> dict:
    import numpy as np
    import torch
    from diffusers import WanTransformer3DModel
    from safetensors.torch import save_file

    m, dev = _shape(args)["model"], "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(dev):
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=m["num_heads"],
            attention_head_dim=m["dim"] // m["num_heads"], in_channels=m["in_channels"],
            out_channels=m["in_channels"], text_dim=m["text_dim"], freq_dim=256,
            ffn_dim=m["ffn_dim"], num_layers=m["num_layers"],
        )  # fmt: skip
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, _weights(args))
    model = model.to(torch.bfloat16).eval()
    x, ctx, t = _inputs(args)
    hs = torch.from_numpy(x).permute(0, 4, 1, 2, 3).to(dev, torch.bfloat16)
    enc = torch.from_numpy(ctx).to(dev, torch.bfloat16)
    ts = torch.from_numpy(t * 1000.0).to(dev)
    sync = (lambda _: torch.cuda.synchronize()) if dev == "cuda" else (lambda _: None)

    def forward():
        return model(hs, ts, enc, return_dict=False)[0]

    with torch.no_grad():
        fwd_s, out = time_calls(forward, sync, args.steps)
    np.save(_ref_out(args), out.float().permute(0, 2, 3, 4, 1).cpu().numpy())
    model.train()
    model.enable_gradient_checkpointing()
    target = torch.randn_like(hs)

    def train():
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(forward().float(), target.float())
        loss.backward()
        return loss

    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_s, _ = time_calls(train, sync, max(args.steps - 2, 1))
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None
    return {"forward_s": fwd_s, "train_step_s": train_s, "train_peak_gib": peak,
            "torch": torch.__version__, "sdpa": "torch.nn.functional.scaled_dot_product_attention",
            "gradient_checkpointing": True}  # fmt: skip


def time_calls(fn, sync, n: int):
    """Mean seconds of `n` back-to-back calls after two warm-ups, synchronised with
    `sync(last result)` (device work is asynchronous); returns (seconds, last result)."""
    for _ in range(2):
        out = fn()
    sync(out)
    t0 = time.perf_counter()
    for _ in range(n):
        out = fn()
    sync(out)
    return (time.perf_counter() - t0) / n, out


def _weights(args) -> str:
    return os.path.join(args.workdir, "wan_weights.safetensors")


def _ref_out(args) -> str:
    return os.path.join(args.workdir, "diffusers_forward.npy")


# ----------------------------------------------------------------------------- ours (JAX)


def _dit_config(args, **kw):
    from sora_jax.models.dit import DiTConfig

    dtype = "float32" if args.tiny else "bfloat16"
    m = _shape(args)["model"]
    return DiTConfig(**m, out_channels=m["in_channels"], dtype=dtype, attention=args.attention,
                     cross_attention=args.cross_attention, **kw)  # fmt: skip


def build_forward(args, weights: str = ""):
    """(config, jitted sampling forward, its arguments (state, x, t, context, mask)) of our DiT
    at this script's shape; `weights`: a Wan state dict (safetensors) to load, if it exists."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from safetensors.numpy import load_file

    from sora_jax.interop.wan_names import load_wan_dit_state_dict
    from sora_jax.models.dit import DiT

    cfg = _dit_config(args)
    model = DiT(cfg, rngs=nnx.Rngs(0))
    if weights and os.path.exists(weights):
        load_wan_dit_state_dict(model, load_file(weights))
    graphdef, state = nnx.split(model)
    x, ctx, t = (jnp.asarray(a) for a in _inputs(args))
    mask = jnp.ones(ctx.shape[:2], bool)

    @jax.jit
    def fwd(state, x, t, ctx, mask):
        return nnx.merge(graphdef, state)(x, t, ctx, mask)

    return cfg, fwd, (state, x, t, ctx, mask)


def part_forward(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sora_jax import flops
    from sora_jax.models.attention import resolve_implementation

    cfg, fwd, fwd_args = build_forward(args, _weights(args))
    t0 = time.perf_counter()
    fwd.lower(*fwd_args).compile()
    compile_s = time.perf_counter() - t0
    sec, out = time_calls(lambda: fwd(*fwd_args), jax.block_until_ready, args.steps)
    out = np.asarray(out)
    fl = flops.dit_forward_flops(cfg, _shape(args)["grid"], _shape(args)["text_len"])
    kernel = lambda name: resolve_implementation(name, jnp.dtype(cfg.dtype))  # noqa: E731
    attention = kernel(cfg.attention)
    if cfg.cross_attention and kernel(cfg.cross_attention) != attention:
        attention += f", text: {kernel(cfg.cross_attention)}"
    res = {"forward_s": sec, "forward_tflops": fl / sec / 1e12, "compile_s": compile_s,
           "attention": attention}  # fmt: skip
    if os.path.exists(_ref_out(args)):
        ref = np.load(_ref_out(args))
        res["rel_err_vs_diffusers"] = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    return res


class _BenchTask:
    """The DiT stage's flow-matching loss on latent batches (t2v), for the real train step."""

    name = "dit_bench"

    def __init__(self, cfg):
        self.cfg = cfg

    def create_model(self, rngs):
        from sora_jax.models.dit import DiT

        return DiT(self.cfg, rngs=rngs)

    def frozen(self):
        return {}

    def loss(self, model, frozen, batch, rng):
        import jax
        import jax.numpy as jnp

        from sora_jax.diffusion import flow

        x0 = batch["latents"]
        rng_t, rng_eps = jax.random.split(rng)
        t = flow.shift_t(flow.sample_t(rng_t, (x0.shape[0],)), 5.0)
        t = jnp.broadcast_to(t[:, None], x0.shape[:2])
        eps = jax.random.normal(rng_eps, x0.shape, jnp.float32)
        pred = model(flow.add_noise(x0, eps, t), t, batch["text"], batch["text_mask"])
        return flow.flow_loss(pred, flow.velocity_target(x0, eps)), {}


def _train_setup(args, remat: str, frames: int = 0):
    import jax
    import jax.numpy as jnp
    import ml_collections

    from sora_jax import parallel

    cfg = _dit_config(args, remat=remat)
    grid = _shape(args)["grid"]
    grid = (frames or grid[0], *grid[1:])
    x, ctx, _ = _inputs(args, grid)
    task = _BenchTask(cfg)
    train_cfg = ml_collections.ConfigDict(dict(steps=1000, lr=1e-4, lr_warmup_steps=10,
                                               weight_decay=0.01, grad_clip_norm=1.0))  # fmt: skip
    mesh = parallel.make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    batch = {"latents": jnp.asarray(x), "text": jnp.asarray(ctx),
             "text_mask": jnp.ones(ctx.shape[:2], bool)}  # fmt: skip
    return cfg, grid, task, train_cfg, mesh, batch


def part_train(args) -> dict:
    import jax

    from sora_jax import flops
    from sora_jax.train import state as state_lib

    cfg, grid, task, train_cfg, mesh, batch = _train_setup(args, args.remat, args.frames)
    graphdef, state, rest, tx, _ = state_lib.init_state(task, train_cfg, mesh, seed=0)
    step = jax.jit(state_lib.build_step(task, graphdef, rest, tx, 0.999), donate_argnums=(0,))
    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        compiled = step.lower(state, {}, batch).compile()
        compile_s = time.perf_counter() - t0
        mem = _memory(compiled)
        limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit", 0) / 2**30
        if limit and mem.get("xla_live_gib", 0) > limit:
            return {"error": f"predicted OOM: needs {mem['xla_live_gib']:.1f} of {limit:.1f} GiB",
                    "compile_s": compile_s, "limit_gib": limit,
                    "tokens": flops.dit_tokens(cfg, grid), **mem}  # fmt: skip
        holder = {"state": state}
        del state

        def run():
            holder["state"], metrics, _ = compiled(holder["state"], {}, batch)
            return metrics

        sec, metrics = time_calls(run, lambda _: jax.block_until_ready(holder["state"]), args.steps)
        loss = float(metrics["loss"])
    fl = flops.dit_train_flops(cfg, grid, _shape(args)["text_len"])
    stats = jax.devices()[0].memory_stats() or {}
    return {"train_step_s": sec, "mfu": fl / sec / PEAK, "model_tflops": fl / sec / 1e12,
            "compile_s": compile_s, "loss": loss, "tokens": flops.dit_tokens(cfg, grid),
            "peak_gib": stats.get("peak_bytes_in_use", 0) / 2**30, "limit_gib": limit,
            **mem}  # fmt: skip


def part_memory(args) -> dict:
    """Compile only (nothing runs): XLA's memory estimate at `--frames` latent frames."""
    import jax

    from sora_jax import flops
    from sora_jax.train import state as state_lib

    cfg, grid, task, train_cfg, mesh, batch = _train_setup(args, args.remat, args.frames)
    graphdef, abstract, _, tx, shardings, _ = state_lib.abstract_train_state(
        task, train_cfg, mesh, 0
    )
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         abstract, shardings[0])  # fmt: skip
    step = jax.jit(state_lib.build_step(task, graphdef, {}, tx, 0.999), donate_argnums=(0,))
    with jax.set_mesh(mesh):
        compiled = step.lower(state, {}, batch).compile()
    limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit", 0) / 2**30
    return {"tokens": flops.dit_tokens(cfg, grid), "limit_gib": limit, **_memory(compiled)}


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    gib = 2**30
    live = m.argument_size_in_bytes + m.temp_size_in_bytes
    live += m.output_size_in_bytes - m.alias_size_in_bytes
    return {"xla_args_gib": m.argument_size_in_bytes / gib, "xla_temp_gib":
            m.temp_size_in_bytes / gib, "xla_live_gib": live / gib}  # fmt: skip


# ----------------------------------------------------------------------------- orchestration


def _spawn(args, part: str, timeout: float, **extra) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), f"--part={part}", f"--steps={args.steps}",
           f"--workdir={args.workdir}", f"--attention={args.attention}",
           f"--cross_attention={args.cross_attention}"]  # fmt: skip
    cmd += ["--tiny"] if args.tiny else []
    cmd += [f"--{k}={v}" for k, v in extra.items()]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 10))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout)[-1500:]
        oom = "RESOURCE_EXHAUSTED" in proc.stderr or "out of memory" in proc.stderr.lower()
        return {"error": "out of memory" if oom else tail, "wall_s": time.perf_counter() - t0}
    return json.loads(lines[-1][7:]) | {"wall_s": time.perf_counter() - t0}


def _device() -> str:
    try:
        q = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        return subprocess.run(q, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "cpu"


def orchestrate(args) -> dict:
    os.makedirs(args.workdir, exist_ok=True)
    start = time.perf_counter()
    left = lambda: args.budget_s - (time.perf_counter() - start)  # noqa: E731
    res = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "device": _device(), "shape": _shape(args),
           "versions": report.versions("jax", "jaxlib", "flax", "torch", "diffusers"),
           "peak_flops": PEAK, "train": {}, "memory": {}}  # fmt: skip
    if not args.skip_torch:
        res["diffusers"] = _spawn(args, "torch", left())
    elif args.diffusers_from:
        with open(args.diffusers_from) as f:
            res["diffusers"] = json.load(f)["diffusers"] | {"from": args.diffusers_from}
    if not args.skip_forward:
        res["forward"] = _spawn(args, "forward", left())
    _save(args, res)
    for remat in filter(None, args.remats.split(",")):
        if left() < 60:
            res["train"][remat] = {"error": "skipped: time budget"}
            continue
        res["train"][remat] = _spawn(args, "train", left(), remat=remat)
        _save(args, res)
    frames = max(_shape(args)["grid"][0] // 2, 1)
    for remat in filter(None, args.memory_search.split(",")):
        # The full-size point comes from the train run when it compiled; one more compile.
        points = [res["train"][remat]] if "xla_live_gib" in res["train"].get(remat, {}) else []
        while len(points) < 2 and left() > 45:
            f = frames if points else _shape(args)["grid"][0]
            points.append(_spawn(args, "memory", left(), remat=remat, frames=f))
        res["memory"][remat] = _max_tokens(points)
        _save(args, res)
    return res


def _max_tokens(points: list[dict]) -> dict:
    """Linear fit of XLA's live bytes in tokens -> tokens at the device's memory limit."""
    ok = [p for p in points if "xla_live_gib" in p]
    out = {"points": points}
    if len(ok) == 2 and ok[0]["tokens"] != ok[1]["tokens"]:
        (a, b) = ok
        slope = (a["xla_live_gib"] - b["xla_live_gib"]) / (a["tokens"] - b["tokens"])
        if slope > 0 and a.get("limit_gib"):
            out["max_tokens_estimate"] = int(
                a["tokens"] + (a["limit_gib"] - a["xla_live_gib"]) / slope
            )
            out["gib_per_1k_tokens"] = slope * 1000
    return out


def _save(args, res: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


def _row(what: str, sec: float | None, rate: str = "", gib: float | None = None) -> str:
    sec_s = "" if sec is None else f"{sec:.3f}"
    gib_s = "" if gib is None else f"{gib:.1f}"
    return f"{what:<36}{sec_s:>9}{rate:>12}{gib_s:>8}"


def _table(res: dict) -> str:
    d, fwd = res.get("diffusers", {}), res.get("forward", {})
    rows = [f"device: {res['device']}", f"versions: {res['versions']}",
            f"{'what':<36}{'sec':>9}{'MFU|TF/s':>12}{'GiB':>8}"]  # fmt: skip
    if "forward_s" in fwd:
        rows.append(_row(f"forward, ours ({fwd['attention']})", fwd["forward_s"],
                         f"{fwd['forward_tflops']:.0f} TF"))  # fmt: skip
    if "forward_s" in d:
        rows.append(_row("forward, diffusers", d["forward_s"]))
        if "forward_s" in fwd:
            rows.append(f"forward ours / diffusers: {fwd['forward_s'] / d['forward_s']:.2f}x")
        mfu = res.get("train_flops_diffusers_mfu", 0.0)
        rows.append(_row("train, diffusers (grad ckpt)", d["train_step_s"], f"{mfu:.1%}",
                         d["train_peak_gib"]))  # fmt: skip
    for remat, r in res["train"].items():
        if "train_step_s" in r:
            rows.append(_row(f"train, ours remat={remat}", r["train_step_s"], f"{r['mfu']:.1%}",
                             r["peak_gib"]))  # fmt: skip
        else:
            rows.append(f"train, ours remat={remat}: {str(r.get('error'))[-200:]}")
    for remat, m in res["memory"].items():
        rows.append(f"max tokens (estimate) remat={remat}: {m.get('max_tokens_estimate')}")
    return "\n".join(rows)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.part:
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
        fn = {"torch": part_torch, "forward": part_forward, "train": part_train,
              "memory": part_memory}[args.part]  # fmt: skip
        print("RESULT " + json.dumps(fn(args)), flush=True)
        return
    res = orchestrate(args)
    from sora_jax import flops
    from sora_jax.models.dit import DiTConfig

    m = _shape(args)["model"]
    fl = flops.dit_train_flops(DiTConfig(**m, out_channels=m["in_channels"]),
                               _shape(args)["grid"], _shape(args)["text_len"])  # fmt: skip
    res["train_flops_per_step"] = fl
    if "train_step_s" in res.get("diffusers", {}):
        res["train_flops_diffusers_mfu"] = fl / res["diffusers"]["train_step_s"] / PEAK
    _save(args, res)
    print(_table(res))


if __name__ == "__main__":
    main()

"""Benchmark: Wan 2.1 VAE encode/decode, ours (JAX, bf16) against diffusers (PyTorch, bf16).

    PYTHONPATH=. python tools/bench/vae.py --out tools/bench/results/vae_h100.json   # on a GPU
    PYTHONPATH=. python tools/bench/vae.py --tiny --out /tmp/vae_tiny.json           # CPU check

Same GPU, same run, random weights (speed does not depend on them), batch 1: encode of 81
frames at 480x832, decode of its 21x60x104x16 latents, and decode of 321 frames (81 latents).
Ours is `StreamingVAE` with bf16 parameters: the first frame, then one compiled chunk step
reused (4 frames per encode chunk, 1 latent frame per decode chunk), decoded frames copied to
the host as they come, which the timing includes (diffusers' output stays on the GPU).
Diffusers is `AutoencoderKLWan().to("cuda", torch.bfloat16)` as its docs use it.

On the lent H100 only the diffusers wheel needs to travel (`pip download diffusers --no-deps`;
its dependencies are there); the machine's own flax matches its jax (a carried flax did not).

Every measurement runs in its own process so that its peak device memory is its own (JAX has
no peak reset): first a warm-up process compiles every program into the persistent compilation
cache (conv autotuning included), then each measurement loads them from there. Times are the
median of the repeats after one warm-up call; peaks include the weights and the input.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np
import report  # noqa: E402  (tools/bench/report.py: this script's folder is on sys.path)

GIB = 2**30
WAN = dict(
    base_channels=96,
    channel_mults=(1, 2, 4, 4),
    num_res_blocks=2,
    temporal_downsample=(False, True, True),
    z_channels=16,
    mid_attention=True,
)
TINY = dict(
    base_channels=8,
    channel_mults=(1, 2, 2),
    num_res_blocks=1,
    temporal_downsample=(True, True),
    z_channels=4,
    mid_attention=True,
)
# (name, op, frames, repeats)
CASES = (("encode_81", "encode", 81, 3), ("decode_81", "decode", 81, 3),
         ("decode_321", "decode", 321, 2))  # fmt: skip


def _setup(args) -> dict:
    """Sizes of this run: the Wan 2.1 config at 480x832, or a tiny one for a CPU check."""
    if args.tiny:
        return dict(model=TINY, height=32, width=32, frames={81: 9, 321: 17})
    return dict(model=WAN, height=480, width=832, frames={81: 81, 321: 321})


def _timed(fn, repeats: int) -> tuple[list[float], object]:
    out = fn()  # warm-up (and, in the warm-up process, compile)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


# ---------------------------------------------------------------- JAX side (one process each)


def _jax_env(cache_dir: str) -> None:
    import jax

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _jax_stream(setup: dict, dtype: str):
    """A StreamingVAE whose (bf16) parameters were drawn on the host, then put on the device."""
    import jax
    from flax import nnx

    from sora_jax.models.vae import CausalVAE, VAEConfig
    from sora_jax.models.vae_stream import StreamingVAE

    with jax.default_device(jax.devices("cpu")[0]):
        vae = CausalVAE(VAEConfig(**setup["model"], dtype=dtype), rngs=nnx.Rngs(0))
        stream = StreamingVAE(vae, param_dtype=dtype)
    stream.state = jax.device_put(stream.state, jax.devices()[0])
    return stream


def _jax_inputs(stream, setup: dict, op: str, frames: int, dtype: str):
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    h, w = setup["height"], setup["width"]
    if op == "encode":
        x = rng.uniform(-1, 1, (1, frames, h, w, 3)).astype(np.float32)
    else:
        x = rng.standard_normal((1, *stream.vae.latent_shape(frames, h, w))).astype(np.float32)
    return jax.device_put(jnp.asarray(x, dtype), jax.devices()[0])


def _jax_call(stream, op: str, x):
    import jax

    if op == "encode":
        return lambda: jax.block_until_ready(stream.encode(x))
    return lambda: stream.decode(x)  # numpy on the host: complete when it returns


def _peak_bytes() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def part_jax(args) -> dict:
    """One measurement (op, frames) in this process: times and this process's device peak."""
    import jax

    _jax_env(args.cache_dir)
    setup = _setup(args)
    stream = _jax_stream(setup, args.dtype)
    x = _jax_inputs(stream, setup, args.op, setup["frames"][args.frames], args.dtype)
    times, _ = _timed(_jax_call(stream, args.op, x), args.repeats)
    out = {"times_s": times, "median_s": statistics.median(times), "peak_bytes": _peak_bytes()}
    if args.op == "decode":  # same programs, output kept on the device (after the peak read)
        dev, _ = _timed(lambda: jax.block_until_ready(stream.decode(x, to_host=False)), 2)
        out["on_device_median_s"] = statistics.median(dev)
    return out


def part_warm(args) -> dict:
    """Compiles every program into the cache; records compile times, FLOPs and a conv A/B."""
    import jax

    _jax_env(args.cache_dir)
    setup = _setup(args)
    stream = _jax_stream(setup, args.dtype)
    out: dict = {"compile_s": {}, "flops": {}}
    for op in ("encode", "decode"):
        x = _jax_inputs(stream, setup, op, setup["frames"][81], args.dtype)
        t0 = time.perf_counter()
        _jax_call(stream, op, x)()
        out["compile_s"][op] = time.perf_counter() - t0
        out["flops"][op] = _flops(stream, op, x)
    out["conv_ab"] = _conv_ab(setup, args.dtype)
    out["single_conv"] = _single_conv(setup, args.dtype)
    out["copy_gb_s"] = _copy_bandwidth()
    out["backend"] = jax.default_backend()
    return out


def _flops(stream, op: str, x) -> float | None:
    """FLOPs of one pass (first chunk + steps) from XLA's cost analysis of the programs."""
    import jax

    chunk = stream.frames_per_chunk if op == "encode" else stream.latents_per_chunk
    first, step = (stream._enc_first, stream._enc_step) if op == "encode" else (
        stream._dec_first, stream._dec_step)  # fmt: skip
    extra = () if op == "encode" else (True,)
    x0 = jax.ShapeDtypeStruct((x.shape[0], 1, *x.shape[2:]), x.dtype)
    xc = jax.ShapeDtypeStruct((x.shape[0], chunk, *x.shape[2:]), x.dtype)
    try:
        cache = jax.eval_shape(first, stream.state, x0, *extra)[1]
        costs = [first.lower(stream.state, x0, *extra).cost_analysis(),
                 step.lower(stream.state, cache, xc, *extra).cost_analysis()]  # fmt: skip
        f0, f1 = (c[0]["flops"] if isinstance(c, list | tuple) else c["flops"] for c in costs)
    except Exception:  # noqa: BLE001 - cost analysis is informative only
        return None
    return float(f0 + f1 * ((x.shape[1] - 1) // chunk))


def _conv_ab(setup: dict, dtype: str) -> dict:
    """One full-resolution ResBlock chunk (4 frames + 2 cached) as folded 2D convs vs 3D convs."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from sora_jax.models import vae_blocks

    c = setup["model"]["base_channels"]
    x = jnp.asarray(np.random.default_rng(0).standard_normal(
        (1, 4, setup["height"], setup["width"], c)), dtype)  # fmt: skip
    block = vae_blocks.ResBlock(c, c, dropout=0.0, dtype=dtype, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(block)
    past = [jnp.zeros((1, 2, *x.shape[2:]), dtype)] * 2
    out, previous = {}, os.environ.get(vae_blocks.CONV_ENV)
    for impl in ("fold", "native"):
        os.environ[vae_blocks.CONV_ENV] = impl  # read when the function is traced

        @jax.jit
        def run(state, x, past):
            cache = vae_blocks.TimeCache(first=False, incoming=list(past))
            return nnx.merge(graphdef, state)(x, cache)

        try:
            times, _ = _timed(lambda: jax.block_until_ready(run(state, x, past)), 5)
            out[impl + "_ms"] = 1e3 * statistics.median(times)
        except Exception as e:  # noqa: BLE001 - report, keep benchmarking
            out[impl + "_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    os.environ.pop(vae_blocks.CONV_ENV, None)
    if previous is not None:
        os.environ[vae_blocks.CONV_ENV] = previous
    return out


def _single_conv(setup: dict, dtype: str) -> dict:
    """TFLOP/s of one full-resolution 3x3x3 conv (4 frames out, 2 cached) done four ways."""
    import jax
    import jax.numpy as jnp

    c = setup["model"]["base_channels"]
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((1, 6, setup["height"], setup["width"], c)), dtype)
    w = jnp.asarray(rng.standard_normal((3, 3, 3, c, c)) / (27 * c) ** 0.5, dtype)
    pad = ((1, 1), (1, 1))

    def conv2d(x5, w2):  # [B, F, H, W, Ci] x [3, 3, Ci, Co] per frame
        y = jax.lax.conv_general_dilated(x5.reshape(-1, *x5.shape[2:]), w2, (1, 1), pad,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
        return y.reshape(*x5.shape[:2], *y.shape[1:])

    variants = {
        "plain_2d_one_tap": lambda x, w: conv2d(x[:, 2:], w[2]),
        "fold_taps_to_channels": lambda x, w: conv2d(
            jnp.concatenate([x[:, i : i + 4] for i in range(3)], -1),
            jnp.transpose(w, (1, 2, 0, 3, 4)).reshape(3, 3, 3 * c, c),
        ),
        "native_3d": lambda x, w: jax.lax.conv_general_dilated(
            x, w, (1, 1, 1), ((0, 0), *pad), dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
        ),
        "three_2d_summed": lambda x, w: sum(
            conv2d(x[:, i : i + 4], w[i]).astype(jnp.float32) for i in range(3)
        ).astype(x.dtype),
    }
    out = {}
    for name, fn in variants.items():
        run = jax.jit(fn)
        try:
            times, _ = _timed(lambda run=run: jax.block_until_ready(run(x, w)), 5)
        except Exception as e:  # noqa: BLE001
            out[name] = f"{type(e).__name__}: {str(e)[:200]}"
            continue
        taps = 1 if name == "plain_2d_one_tap" else 3
        flops = 2 * 4 * setup["height"] * setup["width"] * 9 * taps * c * c
        t = statistics.median(times)
        out[name] = {"ms": 1e3 * t, "tflop_s": flops / t / 1e12}
    return out


def _copy_bandwidth() -> float:
    """GB/s (read + write) of a 1 GiB elementwise pass."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((GIB // 4,), jnp.float32)
    run = jax.jit(lambda x: x * 1.0001)
    times, _ = _timed(lambda: jax.block_until_ready(run(x)), 5)
    return 2 * GIB / statistics.median(times) / 1e9


# ---------------------------------------------------------------- PyTorch / diffusers side


def part_torch(args) -> dict:
    import diffusers
    import torch

    setup = _setup(args)
    m = setup["model"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    vae = (
        diffusers.AutoencoderKLWan(
            base_dim=m["base_channels"],
            z_dim=m["z_channels"],
            dim_mult=list(m["channel_mults"]),
            num_res_blocks=m["num_res_blocks"],
            temperal_downsample=list(m["temporal_downsample"]),
        )
        .to(device, dtype)
        .eval()
    )
    sf = 2 ** (len(m["channel_mults"]) - 1)
    tf = 2 ** sum(m["temporal_downsample"])
    h, w = setup["height"], setup["width"]
    out = {"device": device, "dtype": str(dtype)}

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for name, op, frames, repeats in CASES:
        f = setup["frames"][frames]
        gen = torch.Generator(device).manual_seed(0)
        if op == "encode":
            x = torch.rand((1, 3, f, h, w), generator=gen, device=device).mul(2).sub(1).to(dtype)
            fn = lambda x=x: vae.encode(x).latent_dist.mode()  # noqa: E731
        else:
            shape = (1, m["z_channels"], 1 + (f - 1) // tf, h // sf, w // sf)
            x = torch.randn(shape, generator=gen, device=device).to(dtype)
            fn = lambda x=x: vae.decode(x).sample  # noqa: E731
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

        def call(fn=fn):
            with torch.no_grad():
                y = fn()
            sync()
            return y

        times, _ = _timed(call, repeats)
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
        out[name] = {"times_s": times, "median_s": statistics.median(times), "peak_bytes": peak}
        del x, fn
    return out


# ---------------------------------------------------------------- orchestration


def _run_part(argv: list[str], env: dict) -> dict:
    """Runs one part in a fresh process; its result JSON, or the error it died with."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--result", path]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(f"[{' '.join(argv)}] {wall:.1f} s, exit {proc.returncode}", flush=True)
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, json.JSONDecodeError):
        result = {"error": proc.stderr[-4000:] or proc.stdout[-2000:]}
        print(result["error"][-2000:], flush=True)
    result["wall_s"] = wall
    return result


def _versions() -> dict:
    out: dict = report.versions("jax", "jaxlib", "flax", "torch", "diffusers", "numpy")
    try:
        import torch

        out["cuda"] = torch.version.cuda
        out["cudnn_torch"] = torch.backends.cudnn.version()
        out["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001
        out["device"] = platform.processor() or "cpu"
    return out


def _gib(b) -> float | None:
    return None if b is None else b / GIB


def summarize(results: dict) -> dict:
    ours, theirs = results["ours"], results["diffusers"]
    ratio = lambda a, b: None if a is None or b is None else a / b  # noqa: E731
    med = lambda r, k: (r.get(k) or {}).get("median_s")  # noqa: E731
    peak = lambda r, k: (r.get(k) or {}).get("peak_bytes")  # noqa: E731
    s = {
        "time_ratio_encode_81": ratio(med(ours, "encode_81"), med(theirs, "encode_81")),
        "time_ratio_decode_81": ratio(med(ours, "decode_81"), med(theirs, "decode_81")),
        "time_ratio_decode_321": ratio(med(ours, "decode_321"), med(theirs, "decode_321")),
        "peak_ratio_ours_321_over_81": ratio(peak(ours, "decode_321"), peak(ours, "decode_81")),
        "peak_ratio_ours_321_over_diffusers_321": ratio(
            peak(ours, "decode_321"), peak(theirs, "decode_321")
        ),
    }
    s["targets_met"] = {
        "encode_time_le_0.8x": (s["time_ratio_encode_81"] or 9) <= 0.8,
        "decode_time_le_0.8x": (s["time_ratio_decode_81"] or 9) <= 0.8,
        "decode321_peak_le_1.1x_ours81": (s["peak_ratio_ours_321_over_81"] or 9) <= 1.1,
        "decode321_peak_below_diffusers": (s["peak_ratio_ours_321_over_diffusers_321"] or 9) < 1,
    }
    return s


def table(results: dict) -> str:
    rows = ["case         | ours s  | ours GiB | diffusers s | diffusers GiB | time ratio"]
    for name, *_ in CASES:
        o, t = results["ours"].get(name) or {}, results["diffusers"].get(name) or {}
        om, tm = o.get("median_s"), t.get("median_s")
        cell = lambda v, f: "   -   " if v is None else format(v, f)  # noqa: E731
        rows.append(
            f"{name:12s} | {cell(om, '7.3f')} | {cell(_gib(o.get('peak_bytes')), '8.2f')} | "
            f"{cell(tm, '11.3f')} | {cell(_gib(t.get('peak_bytes')), '13.2f')} | "
            f"{cell(om / tm if om and tm else None, '10.2f')}"
        )
    return "\n".join(rows)


def main(args) -> None:
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    common = ["--dtype", args.dtype, "--cache_dir", args.cache_dir]
    common += ["--tiny"] if args.tiny else []
    results: dict = {"ours": {}, "diffusers": {}}
    results["warm"] = _run_part(["--part", "warm", *common], env)
    for name, op, frames, repeats in CASES:
        argv = ["--part", "jax", "--op", op, "--frames", str(frames), "--repeats", str(repeats)]
        results["ours"][name] = _run_part([*argv, *common], env)
    ab = results["warm"].get("conv_ab", {})
    if ab.get("native_ms", float("inf")) < 0.9 * ab.get("fold_ms", 0.0):
        # 3D convs won the block-level A/B: measure the whole codec that way too.
        native_env = dict(env, SORA_VAE_CONV="native")
        results["ours_native"] = {"warm": _run_part(["--part", "warm", *common], native_env)}
        for name, op, frames, repeats in CASES[:2]:
            argv = ["--part", "jax", "--op", op, "--frames", str(frames), "--repeats", str(repeats)]
            results["ours_native"][name] = _run_part([*argv, *common], native_env)
    if not args.skip_torch:
        torch_out = _run_part(["--part", "torch", *common], env)
        results["diffusers"] = {k: v for k, v in torch_out.items() if k in dict.fromkeys(
            n for n, *_ in CASES) or k == "error"}  # fmt: skip
        results["diffusers_device"] = torch_out.get("device")
    report = {
        "benchmark": "Wan 2.1 VAE encode/decode, bf16, batch 1",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "setup": {**_setup(args), "dtype": args.dtype, "tiny": args.tiny},
        "ours_path": "StreamingVAE: first frame + one jitted chunk step reused; folded 2D convs",
        "results": results,
        "summary": summarize(results),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(json.dumps({"warm": results["warm"], "summary": report["summary"]}, indent=1))
    print(table(results))


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="tools/bench/results/vae_h100.json")
    p.add_argument("--tiny", action="store_true", help="tiny config and sizes (CPU check)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--skip_torch", action="store_true")
    p.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "sora_vae_bench"))
    p.add_argument("--part", choices=("warm", "jax", "torch"), default=None)
    p.add_argument("--op", choices=("encode", "decode"), default="decode")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--result", default=None, help="(internal) where a part writes its JSON")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse()
    if args.part is None:
        main(args)
    else:
        fn = {"warm": part_warm, "jax": part_jax, "torch": part_torch}[args.part]
        try:
            result = fn(args)
        except Exception as e:  # noqa: BLE001 - the orchestrator records it and goes on
            result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        with open(args.result, "w") as f:
            json.dump(result, f, default=str)

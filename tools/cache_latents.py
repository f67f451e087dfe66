r"""Encode clips with a trained VAE and captions with the text encoder into a latent cache.

    python tools/cache_latents.py --config=configs/tiny.py --workdir=/tmp/sora_tiny \
        --cache_dir=/tmp/sora_tiny/latents [--clips_per_bucket=4096] [--batch_size=16]

Then train the DiT from it with `--config.dit_train.latent_cache_dir=/tmp/sora_tiny/latents`.
For each bucket of `config.dit_train.buckets`, the first `clips_per_bucket` clips of the
bucket's epoch order (all clips that fit it when 0) of the configured source (`config.data`,
the world by default) are decoded, encoded to unit-scale latents (the VAE stage's
latent_stats.json) and stored with the embeddings of every caption length (layout:
sora_jax/data/latent_cache.py). A clip that fits several buckets is cached in each of them.
Undecodable clips are replaced by the pipeline's deterministic fallbacks and counted.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sora_jax import config_check  # noqa: E402
from sora_jax.data import latent_cache, pipeline  # noqa: E402
from sora_jax.train import dit_task, vae_task  # noqa: E402
from sora_jax.train import state as state_lib

CAPTION_KEYS = pipeline.CAPTION_KEYS


def _encode_items(task: dit_task.DiTTask, encode, frozen, items: list[dict], batch_size: int):
    """(latents [n,T,h,w,z], {key: (emb [n,L,D], mask [n,L])}) of n <= batch_size items."""
    video = np.stack([it["video"] for it in items])
    n = len(items)
    if n < batch_size:  # pad with the last clip: one compiled encode per bucket
        video = np.concatenate([video, np.repeat(video[-1:], batch_size - n, 0)])
    latents = np.asarray(encode(frozen, video))[:n]
    embs = {}
    for k in CAPTION_KEYS:  # padded to batch_size too: the text encoder compiles per batch size
        emb, mask = task.embedder([it[k] for it in items] + [""] * (batch_size - n))
        embs[k] = (emb[:n], mask[:n])
    return latents, embs


def write_cache(
    task: dit_task.DiTTask,
    cache_dir: str,
    *,
    clips_per_bucket: int = 0,
    batch_size: int = 8,
    num_shards: int = 1,
    latent_dtype: str = "float32",
    emb_dtype: str = "float32",
) -> dict:
    """Fills `cache_dir` from the task's source, VAE and text encoder; returns meta.json."""
    stream = task._stream()
    if stream.eligible is None and clips_per_bucket <= 0:
        raise ValueError(
            "the source renders unboundedly many clips (the world); set clips_per_bucket > 0."
        )
    encode, frozen = jax.jit(task.encode_latents), task.frozen()
    writer = latent_cache.LatentCacheWriter(
        cache_dir, num_shards=num_shards, latent_dtype=latent_dtype, emb_dtype=emb_dtype
    )
    skipped = 0
    for b_idx, bucket in enumerate(task.buckets):
        n = stream.num_clips(b_idx)
        n = min(n, clips_per_bucket) if clips_per_bucket > 0 else n
        for start in range(0, n, batch_size):
            items = [stream.element(b_idx, p) for p in range(start, min(n, start + batch_size))]
            skipped += sum(it["skipped"] for it in items)
            latents, embs = _encode_items(task, encode, frozen, items, batch_size)
            for i, it in enumerate(items):
                fields = {"prompt": it["prompt"], "caption": it["caption"],
                          "index": int(it.get("index", -1)),
                          "source_id": str(it.get("source_id", ""))}  # fmt: skip
                item_embs = {k: (e[i], m[i]) for k, (e, m) in embs.items()}
                writer.write(bucket.name, latents[i], item_embs, fields)
        logging.info("cached %d clips of bucket %s", n, bucket.name)
    stream.close()
    return writer.close(
        latent_mean=np.asarray(task.latent_mean).tolist(),
        latent_std=np.asarray(task.latent_std).tolist(),
        text_dim=int(task.embedder.encoder.dim),
        max_length=int(task.config.text.max_length),
        caption_keys=list(CAPTION_KEYS),
        skipped=int(skipped),
    )


def cache_latents(config, workdir: str, cache_dir: str, **kwargs) -> dict:
    """Loads the trained VAE of `workdir` (or dit_train.vae_workdir), then `write_cache`."""
    vae_dir = dit_task.vae_workdir(config, workdir)
    vae = state_lib.load_model(vae_task.VAETask(config), config.vae_train, vae_dir)
    task = dit_task.DiTTask(config, workdir, vae)
    return write_cache(task, cache_dir, **kwargs)


config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/tiny.py[:args].")
flags.DEFINE_string("workdir", None, "Workdir of the run whose vae/ stage to use.")
flags.DEFINE_string("cache_dir", None, "Output folder (default <workdir>/latent_cache).")
flags.DEFINE_integer("clips_per_bucket", 0, "Clips per bucket (0 = every clip that fits).")
flags.DEFINE_integer("batch_size", 8, "Clips per VAE encode call.")
flags.DEFINE_integer("num_shards", 1, "ArrayRecord files per bucket.")
flags.DEFINE_enum("latent_dtype", "float32", ["float32", "bfloat16", "float16"], "Storage.")
flags.DEFINE_enum("emb_dtype", "float32", ["float32", "bfloat16", "float16"], "Storage.")


def main(_) -> None:
    f = flags.FLAGS
    try:
        config_check.check(f.config)  # a bad setting fails before any encode
    except ValueError as e:
        sys.exit(f"error: {e}")
    cache_dir = f.cache_dir or os.path.join(f.workdir, "latent_cache")
    meta = cache_latents(
        f.config, f.workdir, cache_dir, clips_per_bucket=f.clips_per_bucket,
        batch_size=f.batch_size, num_shards=f.num_shards, latent_dtype=f.latent_dtype,
        emb_dtype=f.emb_dtype,
    )  # fmt: skip
    counts = {k: sum(v["shard_lengths"]) for k, v in meta["buckets"].items()}
    print(json.dumps({"cache_dir": cache_dir, "clips": counts, "skipped": meta["skipped"]}))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)

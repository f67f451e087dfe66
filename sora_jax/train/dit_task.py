"""Stage "dit": rectified-flow training of the DiT on frozen VAE latents and text embeddings.

Per step: clips -> frozen causal VAE encode (inside the jitted step) -> latents normalised by
the VAE stage's per-channel statistics -> per-sample t (logit-normal, shifted) broadcast to every
latent frame -> x_t = (1 - t) x0 + t eps -> DiT predicts eps - x0. Captions are encoded by the
frozen text encoder on the host (cached per caption); a configured fraction is replaced by the
empty caption so the model also learns the unconditional velocity for classifier-free guidance.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sora_jax.data import buckets as buckets_lib
from sora_jax.data import pipeline
from sora_jax.diffusion import conditioning, flow
from sora_jax.models import dit as dit_lib
from sora_jax.models import text as text_lib
from sora_jax.models import vae as vae_lib
from sora_jax.train import vae_task


class CaptionEmbedder:
    """Text encoder with a per-caption cache of (embedding, mask)."""

    def __init__(self, cfg: ml_collections.ConfigDict, max_cache: int = 200_000):
        self.encoder = text_lib.TextEncoder(text_lib.TextConfig(**cfg.to_dict()))
        self.cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.max_cache = max_cache

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        missing = sorted({t for t in texts if t not in self.cache})
        if missing:
            emb, mask = self.encoder.encode(missing)
            emb, mask = np.asarray(emb), np.asarray(mask)
            if len(self.cache) + len(missing) > self.max_cache:
                self.cache.clear()
            for i, t in enumerate(missing):
                self.cache[t] = (emb[i], mask[i])
        return (
            np.stack([self.cache[t][0] for t in texts]),
            np.stack([self.cache[t][1] for t in texts]),
        )


def vae_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
    return config.dit_train.get("vae_workdir", "") or os.path.join(workdir, "vae")


class DiTTask:
    name = "dit"

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str,
        vae: vae_lib.CausalVAE,
        embedder: CaptionEmbedder | None = None,
    ):
        self.config = config
        self.train_cfg = config.dit_train
        self.model_cfg = dit_lib.DiTConfig(**config.dit.to_dict())
        self.buckets = buckets_lib.parse_buckets(self.train_cfg.buckets)
        self.vae_graphdef, self.vae_state = nnx.split(vae)
        mean, std = vae_task.load_latent_stats(vae_workdir(config, workdir))
        self.latent_mean, self.latent_std = jnp.asarray(mean), jnp.asarray(std)
        self.embedder = embedder or CaptionEmbedder(config.text)
        if self.embedder.encoder.dim != self.model_cfg.text_dim:
            raise ValueError(
                f"dit.text_dim={self.model_cfg.text_dim} but the text encoder "
                f"{config.text.encoder!r} produces {self.embedder.encoder.dim}-dim embeddings."
            )

    def create_model(self, rngs: nnx.Rngs) -> dit_lib.DiT:
        return dit_lib.DiT(self.model_cfg, rngs=rngs)

    def frozen(self):
        return {"vae": self.vae_state, "mean": self.latent_mean, "std": self.latent_std}

    def encode_latents(self, frozen, video: jax.Array) -> jax.Array:
        """uint8 [B,F,H,W,3] -> unit-scale latents [B,T,h,w,z] (frozen VAE, posterior mean)."""
        vae = nnx.merge(self.vae_graphdef, frozen["vae"])
        mean, _ = vae.encode(vae_task.to_pixels(video))
        return jax.lax.stop_gradient((mean - frozen["mean"]) / frozen["std"])

    def loss(self, model: dit_lib.DiT, frozen, batch: dict, rng: jax.Array):
        if "latents" in batch:  # from the latent cache
            x0 = batch["latents"].astype(jnp.float32)
        else:
            x0 = self.encode_latents(frozen, batch["video"])
        b, t_frames = x0.shape[:2]
        rng_t, rng_eps = jax.random.split(rng)
        fcfg = self.config.flow
        t = flow.sample_t(rng_t, (b,), logit_mean=fcfg.logit_mean, logit_std=fcfg.logit_std)
        t = flow.shift_t(t, fcfg.shift)
        t = jnp.broadcast_to(t[:, None], (b, t_frames))
        eps = jax.random.normal(rng_eps, x0.shape, jnp.float32)
        xt = flow.add_noise(x0, eps, t)
        weight = None
        mixture = dict(fcfg.get("cond_mixture", {}) or {"t2v": 1.0})
        if set(mixture) != {"t2v"}:
            # Given frames are clean (t = 0) and excluded from the loss: one mechanism for
            # image->video, extension, infill and connect (conditioning.py).
            given = conditioning.sample_training_masks(
                jax.random.fold_in(rng, 1), b, t_frames, mixture
            )
            xt, t = conditioning.apply_condition(xt, t, x0, given)
            weight = (~given).astype(jnp.float32)
        pred = model(xt, t, batch["text"], batch["text_mask"])
        loss = flow.flow_loss(pred, flow.velocity_target(x0, eps), weight)
        return loss, {}

    def _stream(self) -> pipeline.BucketedBatches:
        return pipeline.BucketedBatches(
            vae_task.make_world(self.config),
            self.buckets,
            seed=self.config.seed + 1,
            caption_probs=self.train_cfg.get("caption_probs", {"prompt": 1.0}),
        )

    def _with_text(self, step: int, video_or_latents: dict, texts: list[str]) -> dict:
        drop = float(self.train_cfg.get("caption_dropout", 0.0))
        u = buckets_lib.hash_uniform(self.config.seed, step * 4096 + np.arange(len(texts)), 7)
        texts = ["" if ui < drop else t for ui, t in zip(u, texts)]
        emb, mask = self.embedder(texts)
        return {**video_or_latents, "text": emb, "text_mask": mask}

    def batches(self, start_step: int) -> Iterator[dict]:
        if int(self.train_cfg.get("latent_cache_clips", 0)) > 0:
            yield from self._cached_batches(start_step)
            return
        for step, batch in enumerate(self._stream().iterate(start_step), start=start_step):
            yield self._with_text(step, {"video": batch["video"]}, list(batch["text"]))

    def build_latent_cache(self) -> list[tuple[np.ndarray, list[str]]]:
        """Encodes `latent_cache_clips` clips per bucket once: (latents [N,T,h,w,z], texts).

        For small datasets (the CPU-sized world run) this takes the frozen VAE out of every
        step; the k-th cached batch of a bucket is the stream's k-th batch of that bucket.
        """
        stream, frozen = self._stream(), self.frozen()
        encode = jax.jit(self.encode_latents)
        cache = []
        for b_idx, bucket in enumerate(self.buckets):
            n_batches = -(-int(self.train_cfg.latent_cache_clips) // bucket.batch_size)
            latents, texts = [], []
            for k in range(n_batches):
                batch = stream.batch(b_idx, k)
                latents.append(np.asarray(encode(frozen, batch["video"])))
                texts.extend(batch["text"])
            cache.append((np.concatenate(latents), texts))
        stream.close()
        return cache

    def _cached_batches(self, start_step: int) -> Iterator[dict]:
        cache = self.build_latent_cache()
        for step in itertools.count(start_step):
            b_idx = int(buckets_lib.bucket_of_steps(self.buckets, self.config.seed, [step])[0])
            latents, texts = cache[b_idx]
            n = self.buckets[b_idx].batch_size
            u = buckets_lib.hash_uniform(self.config.seed, step * 4096 + np.arange(n), 11)
            idx = (u * len(texts)).astype(np.int64)
            yield self._with_text(step, {"latents": latents[idx]}, [texts[i] for i in idx])

"""Stage "dit": rectified-flow training of the DiT on frozen VAE latents and text embeddings.

Per step: clips -> frozen causal VAE encode (inside the jitted step) -> latents normalised by
the VAE stage's per-channel statistics -> per-sample t (logit-normal, shifted) broadcast to every
latent frame -> x_t = (1 - t) x0 + t eps -> DiT predicts eps - x0. Captions are encoded by the
frozen text encoder (cached per caption, caption_embedder.py; with the latent cache, each step's
new captions start encoding steps before the step); a configured fraction is replaced by the
empty caption so the model also learns the unconditional velocity for classifier-free guidance.

Every `dit_train.sample_every_steps` steps (`periodic`), the current EMA weights sample a fixed
set of world prompts through the frozen VAE (`TrainingSamples`): videos in
`<stage_dir>/samples/step_<N>/`, the grader's accuracies in metrics.jsonl as `sample_*_acc`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sora_jax import evaluate
from sora_jax import flops as flops_lib
from sora_jax.data import buckets as buckets_lib
from sora_jax.data import latent_cache, pipeline, sources
from sora_jax.data import world as world_lib
from sora_jax.diffusion import conditioning, flow
from sora_jax.models import dit as dit_lib
from sora_jax.models import vae as vae_lib
from sora_jax.train import device_gate, dit_latent_cache, precompile, vae_task
from sora_jax.train import metrics as metrics_lib
from sora_jax.train.caption_embedder import CaptionEmbedder


def vae_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
    return config.dit_train.get("vae_workdir", "") or os.path.join(workdir, "vae")


def text_dtype(model_cfg: dit_lib.DiTConfig) -> np.dtype:
    """The dtype of a batch's text: the DiT's compute dtype when the model's first use of it is
    that cast (no pooled text): the same numbers, half the bytes to stack and copy per step."""
    bf16 = jnp.dtype(model_cfg.dtype) == jnp.bfloat16 and not model_cfg.pooled_text
    return np.dtype(jnp.bfloat16 if bf16 else np.float32)


class DiTTask:
    name = "dit"

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str,
        vae: vae_lib.CausalVAE,
        embedder: CaptionEmbedder | None = None,
        latent_stats: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        self.config = config
        self.train_cfg = config.dit_train
        self.model_cfg = dit_lib.DiTConfig(**config.dit.to_dict())
        self.buckets = buckets_lib.buckets_from_config(
            self.train_cfg.buckets, config.get("data", None), batch_multiple=jax.process_count()
        )
        self.vae_graphdef, self.vae_state = nnx.split(vae)
        # (mean, std) per latent channel: the VAE stage's, or given (`latent_stats`).
        mean, std = latent_stats or vae_task.load_latent_stats(vae_workdir(config, workdir))
        self.latent_mean, self.latent_std = jnp.asarray(mean), jnp.asarray(std)
        self._text_settings()
        self.embedder = embedder or CaptionEmbedder(config.text, store_dtype=self.text_dtype)
        if self.embedder.dim != self.model_cfg.text_dim:
            raise ValueError(
                f"dit.text_dim={self.model_cfg.text_dim} but the text encoder "
                f"{config.text.encoder!r} produces {self.embedder.dim}-dim embeddings."
            )
        self.samples: TrainingSamples | None = None  # built at the first sampling step
        dit_latent_cache.check_refresh(self.train_cfg)

    @classmethod
    def for_latents(cls, config: ml_collections.ConfigDict) -> DiTTask:
        """A task without VAE or text encoder, for batches that already hold `latents`, `text`
        and `text_mask` (ahead-of-time compiles, sharding tests, benchmarks)."""
        task = cls.__new__(cls)
        task.config, task.train_cfg = config, config.dit_train
        task.model_cfg = dit_lib.DiTConfig(**config.dit.to_dict())
        task._text_settings()
        task.vae_graphdef = task.vae_state = task.embedder = task.samples = None
        return task

    def _text_settings(self) -> None:
        """The dtype and (image) length of a batch's text, from the model and train configs."""
        self.text_dtype = text_dtype(self.model_cfg)
        self.image_text_length = int(self.train_cfg.get("image_text_length", 0))
        self.text_truncated = 0  # image captions cut at image_text_length so far

    def create_model(self, rngs: nnx.Rngs) -> dit_lib.DiT:
        return dit_lib.DiT(self.model_cfg, rngs=rngs)

    def frozen(self):
        if self.vae_state is None:  # latents-only task
            return {}
        return {"vae": self.vae_state, "mean": self.latent_mean, "std": self.latent_std}

    def _latent_grid(self, shapes: dict[str, tuple[int, ...]]) -> tuple[int, int, int, int]:
        """(B, T, H, W) of the latents a batch of these shapes trains on."""
        if "latents" in shapes:
            return tuple(shapes["latents"][:4])
        video = jax.ShapeDtypeStruct(shapes["video"], jnp.uint8)
        return tuple(jax.eval_shape(self.encode_latents, self.frozen(), video).shape[:4])

    def flops_per_step(self, shapes: dict[str, tuple[int, ...]]) -> float:
        """Model FLOPs of one train step on a batch of these shapes (sora_jax/flops.py)."""
        b, *grid = self._latent_grid(shapes)
        return flops_lib.dit_train_flops(self.model_cfg, grid, shapes["text"][1], batch=b)

    def tokens_per_step(self, shapes: dict[str, tuple[int, ...]]) -> int:
        b, *grid = self._latent_grid(shapes)
        return flops_lib.dit_tokens(self.model_cfg, grid, batch=b)

    def encode_latents(self, frozen, video: jax.Array) -> jax.Array:
        """uint8 [B,F,H,W,3] -> unit-scale latents [B,T,h,w,z] (frozen VAE, posterior mean)."""
        vae = nnx.merge(self.vae_graphdef, frozen["vae"])
        pixels = vae_lib.to_pixels(video)
        # vae_encode_chunk_frames > 0: first frame, then chunks of that many frames under one
        # scan (encode_chunked: equal to the full pass to rounding, memory flat in length).
        chunk = int(self.train_cfg.get("vae_encode_chunk_frames", 0) or 0)
        if chunk and pixels.shape[1] > 1 and (pixels.shape[1] - 1) % chunk == 0:
            mean, _ = vae.encode_chunked(pixels, frames_per_chunk=chunk)
        else:
            mean, _ = vae.encode(pixels)
        return jax.lax.stop_gradient((mean - frozen["mean"]) / frozen["std"])

    def sample_times(self, rng: jax.Array, n: int) -> jax.Array:
        """`n` training times: logit-normal (`flow.logit_mean`, `flow.logit_std`), then moved
        towards noise by `flow.shift` (SD3's resolution shift; 1 leaves them)."""
        fcfg = self.config.flow
        t = flow.sample_t(rng, (n,), logit_mean=fcfg.logit_mean, logit_std=fcfg.logit_std)
        return flow.shift_t(t, fcfg.shift)

    def loss(self, model: dit_lib.DiT, frozen, batch: dict, rng: jax.Array):
        if "latents" in batch:  # from the latent cache
            x0 = batch["latents"].astype(jnp.float32)
        else:
            x0 = self.encode_latents(frozen, batch["video"])
        b, t_frames = x0.shape[:2]
        rng_t, rng_eps = jax.random.split(rng)
        fcfg = self.config.flow
        t = t_sample = self.sample_times(rng_t, b)
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
        target = flow.velocity_target(x0, eps)
        loss = flow.flow_loss(pred, target, weight)
        # Loss per timestep bin: which noise levels the model has (not) learned yet.
        per_frame = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=(2, 3, 4))
        w = jnp.ones_like(per_frame) if weight is None else weight
        per_sample = jnp.sum(per_frame * w, 1) / jnp.maximum(jnp.sum(w, 1), 1e-6)
        aux = metrics_lib.timestep_binned(per_sample, t_sample)
        if "data_skipped" in batch:  # undecodable clips replaced in this batch (pipeline.py)
            aux["data_skipped"] = jnp.sum(batch["data_skipped"]).astype(jnp.float32)
        return loss, aux

    def periodic(self, step: int, ctx) -> dict | None:
        """After step `step` (1-based): sample videos when `dit_train.sample_every_steps` says so.

        Every process samples (the weights may be sharded over all of them); only process 0
        writes. Returns the grader's accuracies, or None when no sampling was due.
        """
        every = int(self.train_cfg.get("sample_every_steps", 0))
        if not sample_due(step, every) or self.vae_state is None:  # latents-only: no decoder
            return None
        # GPUs: alone on the devices (device_gate.py); the first round runs the sampler's
        # programs for the first time.
        with device_gate.alone(precompile.overlap_setting(self.train_cfg)):
            return self._samples()(step, ctx)

    def precompile_periodic(self, ctx) -> bool:
        """Stage dit_compile: one training-sample round on `ctx`'s untrained weights, neither
        graded nor written, so that the DiT stage's rounds load their programs from the compile
        cache (on the H200 the first round compiled for 38 s between two training steps).
        Returns whether it sampled (sampling is on and there is a decoder)."""
        if int(self.train_cfg.get("sample_every_steps", 0)) <= 0 or self.vae_state is None:
            return False
        self._samples().videos(ctx)
        return True

    def _samples(self) -> TrainingSamples:
        if self.samples is None:
            self.samples = TrainingSamples(self)
        return self.samples

    def source(self):
        """The clip source of `config.data` (the synthetic world by default)."""
        return sources.make_source(self.config, lambda: sources.make_world(self.config))

    def _stream(self, source=None) -> pipeline.BucketedBatches:
        return pipeline.from_config(
            self.config,
            self.source() if source is None else source,
            self.buckets,
            seed=self.config.seed + 1,
            caption_probs=self.train_cfg.get("caption_probs", {"prompt": 1.0}),
        )

    def _with_text(self, step: int, video_or_latents: dict, texts: list[str],
                   embedded: tuple[np.ndarray, np.ndarray] | None = None) -> dict:  # fmt: skip
        """Adds text embeddings; a hashed `caption_dropout` fraction gets the empty caption.

        embedded: precomputed (emb [B, L, D], mask [B, L]) of `texts` (the latent cache).
        """
        if embedded is None:
            return self.with_captions(video_or_latents, self.captions(step, texts))
        dropped = self._dropped(step, len(texts))
        emb, mask = np.array(embedded[0]), np.array(embedded[1])
        if dropped.any():
            empty_emb, empty_mask = self.embedder([""])
            emb[dropped], mask[dropped] = empty_emb[0], empty_mask[0]
        emb = emb.astype(self.text_dtype, copy=False)
        return self._fit_text({**video_or_latents, "text": emb, "text_mask": mask})

    def with_captions(self, video_or_latents: dict, captions: list[str]) -> dict:
        """Adds the embeddings of `captions`: a step's captions with its dropout applied
        (`captions`)."""
        emb, mask = self.embedder(captions)
        emb = emb.astype(self.text_dtype, copy=False)  # a no-op for the embedder's own
        return self._fit_text({**video_or_latents, "text": emb, "text_mask": mask})

    def text_length(self, latent_frames: int) -> int | None:
        """The text tokens a batch of clips of `latent_frames` latent frames carries, where
        fewer than the encoder's: `image_text_length` for one latent frame (images, and clips
        no longer than the VAE's temporal factor); None: all of them."""
        n = self.image_text_length
        return n if n and latent_frames == 1 else None

    def _latent_frames(self, batch: dict) -> int:
        if "latents" in batch:
            return batch["latents"].shape[1]
        _, t, h, w, _ = batch["video"].shape
        return vae_lib.VAEConfig(**self.config.vae.to_dict()).latent_shape(t, h, w)[0]

    def _fit_text(self, batch: dict) -> dict:
        """The batch's text cut to `text_length` tokens. Padded tokens are masked out of the
        cross-attention and the text encoder's tokens do not see them, so where every caption
        fits this changes no number, and a step of images projects fewer text tokens per
        block. A caption that does not fit loses its end; they are counted (`text_truncated`)
        and logged (the world's 1-frame bucket draws video frames with video captions, up to 92
        MiniLM tokens, so configs/world.py keeps all 96)."""
        if not self.image_text_length:
            return batch
        n = self.text_length(self._latent_frames(batch))
        if n is None or batch["text"].shape[1] <= n:
            return batch
        cut = int(np.asarray(batch["text_mask"])[:, n:].any(axis=1).sum())
        before, self.text_truncated = self.text_truncated, self.text_truncated + cut
        if cut and before.bit_length() < self.text_truncated.bit_length():  # 1, 2, 4, 8, ...
            logging.warning("dit: %d image captions cut at image_text_length=%d tokens so far",
                            self.text_truncated, n)  # fmt: skip
        text, mask = (np.ascontiguousarray(np.asarray(batch[k])[:, :n])
                      for k in ("text", "text_mask"))  # fmt: skip
        return {**batch, "text": text, "text_mask": mask}

    def _dropped(self, step: int, n: int) -> np.ndarray:
        """bool [n]: the hashed `caption_dropout` fraction of step `step`'s captions."""
        drop = float(self.train_cfg.get("caption_dropout", 0.0))
        return buckets_lib.hash_uniform(self.config.seed, step * 4096 + np.arange(n), 7) < drop

    def captions(self, step: int, texts: list[str]) -> list[str]:
        """The captions step `step` embeds: `texts` with the dropped ones empty."""
        return ["" if d else t for d, t in zip(self._dropped(step, len(texts)), texts)]

    def batches(self, start_step: int) -> Iterator[dict]:
        if self.train_cfg.get("latent_cache_dir", ""):
            yield from self._latent_cache_batches(start_step)
            return
        if int(self.train_cfg.get("latent_cache_clips", 0)) > 0:
            yield from self._cached_batches(start_step)
            return
        for batch in self._stream().iterate(start_step):
            arrays = {"video": batch["video"], "data_skipped": batch["skipped"]}
            yield self._with_text(batch["step"], arrays, list(batch["text"]))

    def latent_cache_stream(self) -> pipeline.BucketedBatches:
        """Bucketed batches of `dit_train.latent_cache_dir` (tools/cache_latents.py)."""
        source = latent_cache.LatentCacheSource(self.train_cfg.latent_cache_dir)
        info = source.info
        if int(info["text_dim"]) != self.model_cfg.text_dim:
            raise ValueError(
                f"the latent cache holds {info['text_dim']}-dim text embeddings but "
                f"dit.text_dim={self.model_cfg.text_dim}; rebuild it with this text encoder."
            )
        if not np.allclose(info["latent_mean"], self.latent_mean, atol=1e-5) or not np.allclose(
            info["latent_std"], self.latent_std, atol=1e-5
        ):
            raise ValueError(
                "the latent cache was normalised with other latent statistics than this VAE "
                "stage's latent_stats.json; rebuild it with tools/cache_latents.py."
            )
        return self._stream(source)

    def _latent_cache_batches(self, start_step: int) -> Iterator[dict]:
        for batch in self.latent_cache_stream().iterate(start_step):
            arrays = {"latents": batch["latents"], "data_skipped": batch["skipped"]}
            embedded = (batch["text_emb"], batch["text_mask"])
            yield self._with_text(batch["step"], arrays, list(batch["text"]), embedded)

    def build_latent_cache(self) -> list[tuple[np.ndarray, list[str]]]:
        """Encodes `latent_cache_clips` clips per bucket once: (latents [N,T,h,w,z], texts).

        For small datasets (the CPU-sized world run) this takes the frozen VAE out of every
        step; the k-th cached batch of a bucket is the stream's k-th batch of that bucket. These
        are the caches of step 0 (`latent_cache_refresh_steps` replaces parts of them later).
        """
        builder = dit_latent_cache.Builder(self)
        try:
            return [builder.bucket(b_idx) for b_idx in range(len(self.buckets))]
        finally:
            builder.close()

    def batch_specs(self, start_step: int, end_step: int) -> list[dict[str, jax.ShapeDtypeStruct]]:
        """Global shapes of the batches `batches` yields in steps [start_step, end_step), one dict
        per bucket drawn there, in the order the steps first draw them (the loop compiles the
        step for all of them before the first step). Only the in-memory latent cache (the world
        recipe) is covered; other paths return [] and compile at each bucket's first step.
        """
        cached = int(self.train_cfg.get("latent_cache_clips", 0)) > 0
        if not cached or self.train_cfg.get("latent_cache_dir", "") or self.vae_state is None:
            return []
        order = self.first_use_order(start_step, max(end_step - start_step, 0), rest=False)
        emb, mask = self.embedder([""])  # the text encoder's exact length
        emb = emb.astype(self.text_dtype)  # as `_with_text` returns it
        frozen, specs = self.frozen(), []
        for bucket in (self.buckets[i] for i in order):  # first needed, first compiled
            b = bucket.batch_size
            video = jax.ShapeDtypeStruct(
                (b, bucket.num_frames, bucket.height, bucket.width, 3), jnp.uint8
            )
            latents = jax.eval_shape(self.encode_latents, frozen, video)
            length = self.text_length(latents.shape[1]) or emb.shape[1]
            specs.append({
                "latents": jax.ShapeDtypeStruct(latents.shape, latents.dtype),
                "text": jax.ShapeDtypeStruct((b, length, emb.shape[2]), emb.dtype),
                "text_mask": jax.ShapeDtypeStruct((b, length), mask.dtype),
            })  # fmt: skip
        return specs

    def first_use_order(self, start_step: int, horizon: int = 100_000, rest: bool = True):
        """Bucket indices in the order steps [start_step, start_step + horizon) first draw them,
        then (`rest`) the buckets those steps never draw."""
        steps = np.arange(start_step, start_step + min(horizon, 1_000_000))
        drawn = buckets_lib.bucket_of_steps(self.buckets, self.config.seed, steps)
        _, first = np.unique(drawn, return_index=True)
        order = [int(drawn[i]) for i in sorted(first)]
        return order + [b for b in range(len(self.buckets)) if rest and b not in order]

    def _cached_batches(self, start_step: int) -> Iterator[dict]:
        yield from dit_latent_cache.batches(self, start_step)


# ----------------------------------------------------------------------------- training samples


def sample_due(step: int, every_steps: int) -> bool:
    """Whether samples are due after (1-based) step `step`; `every_steps` 0 = never."""
    return every_steps > 0 and step % every_steps == 0


class TrainingSamples:
    """Videos of fixed world prompts from the weights being trained, graded against the prompts.

    The prompts are `dit_train.sample_num_prompts` specs of `world.prompt_suite` (the suite the
    sample stage grades), sampled at `config.sample`'s size and sampler with
    `dit_train.sample_steps` steps, guidance `dit_train.sample_guidance` and the same noise
    (`config.sample.seed`) every time, so successive steps show what training changed. Sampling
    goes through one `sora_jax.sample.Generator` that gets the new weights each time, so it
    compiles once. Process 0 writes `<stage_dir>/samples/step_<N>/<i>.gif/.mp4/.json` and a
    metrics.jsonl row with `sample_color_acc`, `sample_shape_acc` (and `sample_motion_acc`) and
    `sample_flicker_ratio` (`evaluate.flicker_ratio`: frame-to-frame change over the real clips'),
    `sample_bar_rate` and `sample_flicker_ratio_without_bar` (`evaluate.bar_metrics`: how often
    the model drew a bar the short prompt did not ask for, and the flicker of the others).

    `dit_train.sample_num_occlusion` > 0 adds that many occlusion scenes (`world.occlusion_suite`,
    the evaluation suite's t2v_occlusion scenes at `eval.seed` 0, prompted by their long
    captions), sampled with the rest and graded by `evaluate.object_permanence` into
    `sample_permanence`, and by `evaluate.occluder_motion` into `sample_occluder_direction_acc`
    (the bar moves the captioned way); they are written as occlusion_<i>.* and left out of the
    accuracies.
    """

    def __init__(self, task: DiTTask):
        self.task = task
        cfg, scfg = task.train_cfg, task.config.sample
        world_cfg = sources.make_world(task.config).cfg
        n = int(cfg.get("sample_num_prompts", 4))
        self.specs = world_lib.prompt_suite(world_cfg, n, seed=int(scfg.seed))
        self.prompts = [world_lib.describe(s, "short") for s in self.specs]
        n_occlusion = int(cfg.get("sample_num_occlusion", 0))
        self.occlusion_specs = world_lib.occlusion_suite(world_cfg, n_occlusion)
        self.occlusion_prompts = [world_lib.describe(s, "long") for s in self.occlusion_specs]
        self.fps = float(world_cfg.fps)
        self.use_ema = bool(cfg.get("sample_use_ema", True))
        self.settings = dict(
            num_frames=int(scfg.num_frames),
            height=int(scfg.height),
            width=int(scfg.width),
            steps=int(cfg.get("sample_steps", scfg.steps)),
            guidance=float(cfg.get("sample_guidance", scfg.guidance)),
            sampler=str(scfg.sampler),
            seed=int(scfg.seed),
        )
        self.generator = None

    def _generator(self, dit: dit_lib.DiT, mesh):
        if self.generator is None:
            from sora_jax import sample as sample_lib  # sample.py builds on this module

            t = self.task
            vae = nnx.merge(t.vae_graphdef, t.vae_state)
            # Its own caption cache: the training captions' encoder calls, which the data
            # thread makes steps ahead, then do not depend on when the samples' prompts come.
            share = getattr(t.embedder, "sharing_encoder", None)
            embedder = share() if share is not None else t.embedder
            self.generator = sample_lib.Generator.from_models(
                t.config, vae, dit, t.latent_mean, t.latent_std, embedder, mesh=mesh
            )
        else:
            self.generator.set_dit(dit)
        return self.generator

    def videos(self, ctx) -> np.ndarray:
        """The prompts' videos, then the occlusion scenes', from `ctx`'s (EMA) weights, uint8
        [N, F, H, W, 3]."""
        gen = self._generator(ctx.model(use_ema=self.use_ema), ctx.mesh)
        return gen.generate(self.prompts + self.occlusion_prompts, **self.settings)

    def __call__(self, step: int, ctx) -> dict:
        all_videos = self.videos(ctx)
        videos, occluded = all_videos[: len(self.specs)], all_videos[len(self.specs) :]
        per_sample = [evaluate.grade(v, s) for v, s in zip(videos, self.specs, strict=True)]
        grades = evaluate.accuracies(per_sample)
        grades["flicker_ratio"] = evaluate.flicker_ratio(videos, self.specs)
        grades.update(evaluate.bar_metrics(videos, self.specs))  # bars the prompts left open
        kept = [evaluate.object_permanence(v, s) for v, s in zip(occluded, self.occlusion_specs)]
        if kept:
            grades["permanence"] = float(np.mean([k["permanent"] for k in kept]))
            bars = [evaluate.occluder_motion(v, s) for v, s in zip(occluded, self.occlusion_specs)]
            grades["occluder_direction_acc"] = float(
                np.mean([b["direction_ok"] for b in bars if b["found"]] or [np.nan])
            )
        if ctx.is_main_process:
            folder = os.path.join(ctx.workdir, "samples", f"step_{step}")
            self.write(folder, all_videos, step, per_sample + kept)
            scalars = {f"sample_{k}": v for k, v in grades.items()
                       if k.endswith("_acc") or k.startswith("flicker_ratio")
                       or k in ("bar_rate", "permanence")}  # fmt: skip
            writer = metrics_lib.create_writer(ctx.workdir, prefix="dit samples ")
            writer.write_scalars(step, {k: v for k, v in scalars.items() if np.isfinite(v)})
            writer.close()
        return grades

    def write(self, folder: str, videos: np.ndarray, step: int, grades: list[dict]) -> None:
        """Each sample's video and a sidecar with its prompt, spec, settings and grade."""
        from sora_jax import sample_run  # sample.py builds on this module

        weights = "ema" if self.use_ema else "params"
        n = len(self.specs)
        names = [f"{i:03d}" for i in range(n)]
        names += [f"occlusion_{i:03d}" for i in range(len(self.occlusion_specs))]
        prompts, specs = self.prompts + self.occlusion_prompts, self.specs + self.occlusion_specs
        rows = zip(names, prompts, specs, videos, grades, strict=True)
        for name, prompt, spec, video, grade in rows:
            meta = {"prompt": prompt, "spec": spec, "step": step, "weights": weights,
                    **self.settings, "grade": grade}  # fmt: skip
            sample_run.save_video(os.path.join(folder, name), video, self.fps, meta)
        logging.info("dit: %d training samples of step %d in %s", len(videos), step, folder)

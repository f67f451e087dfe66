"""Stage "vae": train the causal video VAE on bucketed clips and images; evaluate it.

Loss (weights in `config.vae_train`, see configs/vae.py): `l1_weight` * L1 + `l2_weight` * MSE
(L1 alone behaves like a median and drops small objects; `first_frame_weight` scales frame 0's
share, the image path: 4 lifted frame-0 PSNR by 1.1 dB at 800 tiny steps, with the all-frame
PSNR unchanged, tools/experiments/vae_learning_sweep.py) + `grad_loss_weight` * L1 of spatial
gradients + `ssim_weight` * (1 - SSIM) + `perceptual_weight` * LPIPS-style distance with a
VGG-style network from the local file `perceptual_path` (off by default: nothing is downloaded)
+ `kl_weight` * KL, and, with `disc_weight` > 0, a 3D patch discriminator trained in the same
step from `disc_start_step` on, its loss scaled by VQGAN's adaptive weight (how both players
share one step and one optimizer: `sora_jax.train.vae_losses`). Batches carry their step, so
the switch-on is exact.

Evaluation (sora_jax.train.vae_eval): PSNR, SSIM and grader accuracies of the EMA model's round
trips of held-out clips, logged every `eval_every_steps` to `metrics.jsonl` as `eval_*`;
`evaluate_vae(config, workdir)` does the same for a finished run (`--mode=eval`). After
training, `evaluate_and_stats` writes `latent_stats.json` (per-channel mean/std of the latent
means), which the DiT stage normalises latents with.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sora_jax import quality
from sora_jax.data import buckets as buckets_lib
from sora_jax.data import pipeline, sources
from sora_jax.models import vae as vae_lib
from sora_jax.models.perceptual import FeatureNet
from sora_jax.train import checkpoint as ckpt_lib
from sora_jax.train import loop, vae_eval
from sora_jax.train import metrics as metrics_lib
from sora_jax.train import state as state_lib
from sora_jax.train import vae_losses as losses

LATENT_STATS = "latent_stats.json"
EVAL_FILE = "eval.json"


class VAETask:
    name = "vae"
    model_sections = ("vae",)

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.train_cfg = tc = config.vae_train
        self.model_cfg = vae_lib.VAEConfig(**config.vae.to_dict())
        self.buckets = buckets_lib.parse_buckets(tc.buckets)
        for b in self.buckets:  # one sentence now, not a trace-time error inside the first step
            try:
                self.model_cfg.latent_shape(b.num_frames, b.height, b.width)
            except ValueError as e:
                raise ValueError(f"vae_train.buckets entry {b.name!r}: {e}") from None
        self.gan = float(tc.get("disc_weight", 0.0)) > 0  # the model carries a discriminator
        self.gan_kind = str(tc.get("disc_loss", "hinge"))
        if self.gan_kind not in losses.GAN_LOSSES:
            raise ValueError(
                f"vae_train.disc_loss={self.gan_kind!r} is unknown; expected one of "
                f"{losses.GAN_LOSSES}."
            )
        self.perceptual = None
        if float(tc.get("perceptual_weight", 0.0)) > 0:
            path = str(tc.get("perceptual_path", ""))
            if not path:
                raise ValueError(
                    "vae_train.perceptual_weight > 0 needs vae_train.perceptual_path, a local "
                    ".safetensors VGG-style feature network (nothing is downloaded)."
                )
            self.perceptual = nnx.split(FeatureNet.from_safetensors(path))
        self._heldout: dict[str, tuple[np.ndarray, list[dict]]] = {}
        self._writer = None

    def create_model(self, rngs: nnx.Rngs) -> vae_lib.CausalVAE:
        if not self.gan:
            return vae_lib.CausalVAE(self.model_cfg, rngs=rngs)
        return losses.VAEWithDiscriminator(
            self.model_cfg,
            disc_channels=int(self.train_cfg.get("disc_channels", 64)),
            disc_layers=int(self.train_cfg.get("disc_layers", 3)),
            rngs=rngs,
        )

    def frozen(self):
        return None if self.perceptual is None else {"perceptual": self.perceptual[1]}

    # ---- the loss ----

    def reconstruction(self, recon: jax.Array, x: jax.Array, frozen) -> tuple[jax.Array, dict]:
        """Weighted reconstruction terms of fp32 videos in [-1, 1]; (total, per-term metrics)."""
        tc = self.train_cfg
        err = recon - x
        terms = {"l1": jnp.mean(jnp.abs(err)), "l2": jnp.mean(jnp.square(err))}
        # first_frame_weight: frame 0 is encoded alone (the image path that image->video keeps),
        # so its L1/L2 can count more; the logged l1/l2 stay unweighted means.
        fw = float(tc.get("first_frame_weight", 1.0))
        weighted = {}
        if fw != 1.0 and x.shape[1] > 1:
            w = jnp.ones((x.shape[1],), jnp.float32).at[0].set(fw)[None, :, None, None, None]
            weighted = {"l1": jnp.mean(w * jnp.abs(err)), "l2": jnp.mean(w * jnp.square(err))}
        if tc.get("grad_loss_weight", 0.0):
            terms["grad"] = losses.gradient_l1(recon, x)
        if tc.get("ssim_weight", 0.0):
            terms["one_minus_ssim"] = 1.0 - quality.ssim(recon, x)
        if self.perceptual is not None:
            net = nnx.merge(self.perceptual[0], frozen["perceptual"])
            flat = lambda v: v.reshape(-1, *v.shape[2:])  # noqa: E731 - frames as images
            terms["perceptual"] = jnp.mean(net.distance(flat(recon), flat(x)))
        weights = {
            "l1": tc.get("l1_weight", 1.0),
            "l2": tc.get("l2_weight", 0.0),
            "grad": tc.get("grad_loss_weight", 0.0),
            "one_minus_ssim": tc.get("ssim_weight", 0.0),
            "perceptual": tc.get("perceptual_weight", 0.0),
        }
        total = sum(float(weights[k]) * weighted.get(k, v) for k, v in terms.items())
        return total, terms

    def loss(self, model: vae_lib.CausalVAE, frozen, batch: dict, rng: jax.Array):
        x = vae_lib.to_pixels(batch["video"])
        mean, logvar = model.encode(x)  # bad shapes fail here, at trace time, in one sentence
        noise = float(self.train_cfg.get("latent_noise", 0.0))
        # Off, the posterior sample takes the whole key, as before the option existed.
        rng, noise_rng = jax.random.split(rng) if noise > 0 else (rng, None)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
        z = losses.add_latent_noise(z, mean, noise, noise_rng)
        feats = model.decoder.features(model.post_quant_conv(z))
        recon = model.decoder.to_pixels(feats).astype(jnp.float32)  # unclipped: keeps gradients
        rec, metrics = self.reconstruction(recon, x, frozen)
        kl = losses.kl_divergence(mean, logvar)
        total = rec + float(self.train_cfg.get("kl_weight", 1e-6)) * kl
        metrics.update(kl=kl, rec=rec, psnr=quality.psnr(recon, x))
        if self.gan:
            tc = self.train_cfg
            on = (batch["step"] >= int(tc.get("disc_start_step", 0))).astype(jnp.float32)
            adv, adv_metrics = losses.adversarial(
                model,
                feats,
                recon,
                x,
                lambda r: self.reconstruction(r, x, frozen)[0],
                kind=self.gan_kind,
                on=on,
                disc_weight=float(tc.disc_weight),
                max_weight=float(tc.get("adaptive_weight_max", 1e4)),
            )
            total = total + adv
            metrics.update(adv_metrics)
        return total, metrics

    def batches(self, start_step: int) -> Iterator[dict]:
        # The clips of `config.data` (the synthetic world by default, or a prepared dataset).
        source = sources.make_source(self.config)
        data = pipeline.from_config(self.config, source, self.buckets, seed=self.config.seed)
        for step, batch in enumerate(data.iterate(start_step), start=start_step):
            # The step the loop is about to take (its state's step): the GAN switch reads it.
            yield {"video": batch["video"], "step": np.asarray(step, np.int32)}

    # ---- evaluation during training ----

    def periodic_programs(self, ctx: loop.PeriodicContext) -> list:
        """Compiles of the held-out evaluation's programs (`eval_every_steps`) for the loop to
        run beside the steps (loop._Trainer.compile_periodic)."""
        if not int(self.train_cfg.get("eval_every_steps", 0) or 0):
            return []
        return vae_eval.eval_programs(ctx.model(), self.config)

    def periodic(self, step: int, ctx: loop.PeriodicContext) -> None:
        every = int(self.train_cfg.get("eval_every_steps", 0) or 0)
        if not every or step % every:
            return
        ctx.programs_compiled()  # compiled beside the steps (periodic_programs)
        scalars = vae_eval.evaluate_model(ctx.model(), self.config, cache=self._heldout)
        if self._writer is None:
            self._writer = metrics_lib.create_writer(ctx.workdir, prefix="vae eval ")
        self._writer.write_scalars(step, {f"eval_{k}": v for k, v in scalars.items()})
        self._writer.flush()


# ---- loading and evaluation ----

# vae_train fields that shape the checkpoint: the discriminator, and whether the optimizer state
# has a clipping stage in front of AdamW.
_CHECKPOINT_FIELDS = ("disc_weight", "disc_channels", "disc_layers", "grad_clip_norm")


# A causal VAE encodes frame 0 alone and each later latent frame from its frames and the cached
# ones before them; clips of 2 latent frames never train the later frames' steady state. On a
# 64x64 analog of the world VAE, 5-frame clips (2 latent frames) reconstructed 17-frame clips at
# 17.8 dB, 9- and 17-frame clips at 20.6-20.7 dB, and those reconstructed 33-frame clips as well
# (tools/bench/results/vae16_clip_length_cpu.json).
MIN_TRAIN_LATENT_FRAMES = 3


def clip_length_warning(config: ml_collections.ConfigDict) -> str | None:
    """One sentence when the VAE trains on clips of fewer than `MIN_TRAIN_LATENT_FRAMES` latent
    frames while the DiT or the sampler uses longer clips; None when its clips are long enough."""
    tf = vae_lib.VAEConfig(**config.vae.to_dict()).temporal_factor
    latents = lambda frames: 1 + (frames - 1) // tf  # noqa: E731
    trained = max(b.num_frames for b in buckets_lib.parse_buckets(config.vae_train.buckets))
    used = [trained]
    if "dit_train" in config:
        used += [b.num_frames for b in buckets_lib.parse_buckets(config.dit_train.buckets)]
    if "sample" in config:
        used.append(int(config.sample.num_frames))
    longest = max(used)
    if latents(trained) >= MIN_TRAIN_LATENT_FRAMES or latents(longest) <= latents(trained):
        return None
    return (
        f"vae_train.buckets trains the VAE on clips of at most {trained} frames "
        f"({latents(trained)} latent frames) while the DiT or the sampler uses {longest}-frame "
        f"clips: a causal VAE trained on so few latent frames reconstructs longer clips worse "
        f"(~3 dB in tools/bench/results/vae16_clip_length_cpu.json); train it on clips of "
        f">= {1 + (MIN_TRAIN_LATENT_FRAMES - 1) * tf} frames."
    )


def evaluate_and_stats(
    model: vae_lib.CausalVAE, config: ml_collections.ConfigDict, workdir: str
) -> dict:
    """Held-out PSNR/SSIM per bucket and the latent statistics the DiT stage normalises with."""
    result, latents = vae_eval.evaluate_model(model, config, with_latents=True)
    flat = np.concatenate([m.reshape(-1, m.shape[-1]) for m in latents])
    stats = {"mean": flat.mean(0).tolist(), "std": np.maximum(flat.std(0), 1e-3).tolist()}
    with open(os.path.join(workdir, LATENT_STATS), "w") as f:
        json.dump(stats, f)
    logging.info("vae eval: %s", result)
    return result


def load_vae(config: ml_collections.ConfigDict, workdir: str, *, mesh=None) -> vae_lib.CausalVAE:
    """The EMA VAE of the run in `workdir` (trained, or imported by tools/import_weights.py).

    Whether the checkpoint also holds a discriminator (and its size) is read from the run's
    saved config, so a VAE trained with a GAN loads under any config whose `vae` matches.
    """
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    if checkpointer.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; train this stage first.")
    saved = checkpointer.read_config().get("vae_train", {})
    checkpointer.close()
    config = ml_collections.ConfigDict(config.to_dict())  # a copy we may add fields to
    config.vae_train.perceptual_weight = 0.0  # a loss-only network
    config.vae_train.disc_weight = float(saved.get("disc_weight", 0.0) or 0.0)
    for key in _CHECKPOINT_FIELDS[1:]:
        if key in saved:
            config.vae_train[key] = saved[key]
    return state_lib.load_model(VAETask(config), config.vae_train, workdir, mesh=mesh)


def evaluate_vae(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """`--mode=eval`: held-out PSNR/SSIM of the VAE in `workdir` (a stage dir with
    checkpoints/); also written to `<workdir>/eval.json`."""
    model = load_vae(config, workdir)
    result = vae_eval.evaluate_model(model, config)
    result["clips_per_bucket"] = int(config.vae_train.get("eval_clips", 16))
    with open(os.path.join(workdir, EVAL_FILE), "w") as f:
        json.dump(result, f, indent=1)
    logging.info("vae eval of %s: %s", workdir, result)
    return result


def load_latent_stats(workdir: str) -> tuple[np.ndarray, np.ndarray]:
    path = os.path.join(workdir, LATENT_STATS)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing; run the 'vae' stage in {workdir} first.")
    with open(path) as f:
        stats = json.load(f)
    return np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)

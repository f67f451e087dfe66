"""The video VAE alone (stage "vae") with Wan 2.1's shape: 4x8x8 compression, 16 channels.

  python -m sora_jax.main --config=configs/vae.py --workdir=/tmp/vae
  python -m sora_jax.main --config=configs/vae.py:runlocal --workdir=/tmp/vae_local   # CPU
  python -m sora_jax.main --config=configs/vae.py --workdir=/tmp/vae --mode=eval      # PSNR/SSIM

Joint image + video batches (the first frame is encoded alone, so an image is a 1-frame video).
Loss: L1 + L2 + (1 - SSIM) + KL, then from `disc_start_step` a 3D patch GAN whose weight VQGAN's
adaptive rule sets (sora_jax/train/vae_losses.py); an LPIPS-style perceptual term needs a local
VGG-style safetensors file (`--config.vae_train.perceptual_weight=1.0
--config.vae_train.perceptual_path=/path/vgg16_features.safetensors`). A DiT config uses the
result with `--config.dit_train.vae_workdir=/tmp/vae`.
Arguments: runlocal, res=HEIGHTxWIDTH, frames=N (1+4k).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import ml_collections  # noqa: E402


def loss_config(**overrides) -> dict:
    """Loss weights and the GAN / perceptual / evaluation settings of a VAE stage."""
    cfg = dict(
        l1_weight=1.0,
        l2_weight=1.0,  # L1 alone acts like a median and drops small objects
        first_frame_weight=1.0,  # >1: frame 0 (the image path image->video keeps) counts more
        grad_loss_weight=0.0,  # L1 of spatial gradients (an alternative to SSIM)
        ssim_weight=0.2,  # weight of (1 - SSIM)
        kl_weight=1e-6,
        latent_noise=0.0,  # > 0: the decoder also trains on latents + noise (that many stds)
        perceptual_weight=0.0,  # > 0 needs perceptual_path (nothing is downloaded)
        perceptual_path="",  # local .safetensors, torchvision-style 'features.<i>.weight' keys
        disc_weight=0.1,  # 0 = no discriminator; scales VQGAN's adaptive weight
        disc_start_step=10_000,  # the GAN joins once reconstructions are good (VQGAN)
        disc_loss="hinge",  # hinge | non_saturating
        disc_channels=64,
        disc_layers=3,  # stride-2 layers: patches of ~2**disc_layers pixels per logit
        adaptive_weight_max=1e4,
        eval_every_steps=1000,  # held-out PSNR/SSIM of the EMA weights; 0 = off
        eval_clips=16,  # per bucket
    )
    cfg.update(overrides)
    return cfg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, runlocal=False, res="256x256", frames=17)
    height, width = (int(v) for v in args.res.split("x"))
    c = common.dit_stage_config(
        "s", height=height, width=width, frames=args.frames, batch=8, runlocal=args.runlocal
    )
    c.stages = "vae"
    c.vae.dtype = "float32" if args.runlocal else "bfloat16"  # convs in bf16 on accelerators
    c.vae_train = common.train_config(
        steps=20_000,
        lr=1e-4,
        lr_warmup_steps=500,
        weight_decay=0.0,
        buckets=((f"{args.frames}x{height}x{width}", 8, 0.8), (f"1x{height}x{width}", 16, 0.2)),
        **loss_config(),
    )
    c.world.resolutions = ((height, width),)
    if args.runlocal:
        c.vae_train.update(
            steps=4,
            # 9 frames: 3 latent frames, the fewest that train a causal VAE for longer clips
            # (sora_jax/train/vae_task.py MIN_TRAIN_LATENT_FRAMES).
            buckets=(("9x32x32", 2, 0.7), ("1x32x32", 2, 0.3)),
            log_every_steps=2,
            checkpoint_every_steps=2,
            disc_start_step=2,
            disc_channels=8,
            disc_layers=2,
            eval_every_steps=2,
            eval_clips=2,
        )
        c.world.resolutions = ((32, 32),)
    return c

"""The video VAE alone (stage "vae") with Wan 2.1's shape: 4x8x8 compression, 16 channels.

  python -m sora_jax.main --config=configs/vae.py --workdir=/tmp/vae
  python -m sora_jax.main --config=configs/vae.py:runlocal --workdir=/tmp/vae_local   # CPU

Joint image + video batches (the first frame is encoded alone, so an image is a 1-frame video).
Arguments: runlocal, res=HEIGHTxWIDTH, frames=N (1+4k).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import ml_collections  # noqa: E402


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, runlocal=False, res="256x256", frames=17)
    height, width = (int(v) for v in args.res.split("x"))
    c = common.dit_stage_config(
        "s", height=height, width=width, frames=args.frames, batch=8, runlocal=args.runlocal
    )
    c.stages = "vae"
    c.vae.dtype = "float32"
    c.vae_train = common.train_config(
        steps=20_000,
        lr=1e-4,
        lr_warmup_steps=500,
        weight_decay=0.0,
        buckets=((f"{args.frames}x{height}x{width}", 8, 0.8), (f"1x{height}x{width}", 16, 0.2)),
        kl_weight=1e-6,
        grad_loss_weight=0.5,
        eval_clips=16,
    )
    c.world.resolutions = ((height, width),)
    if args.runlocal:
        c.vae_train.update(
            steps=4,
            buckets=(("5x32x32", 2, 0.7), ("1x32x32", 2, 0.3)),
            log_every_steps=2,
            eval_clips=2,
        )
        c.world.resolutions = ((32, 32),)
    return c

"""~110M-parameter DiT (12 layers, dim 768) at 256x256, 33 frames.

  python -m sora_jax.main --config=configs/s.py --workdir=gs://BUCKET/s \
      --config.dit_train.vae_workdir=gs://BUCKET/vae --config.text.path=/path/to/umt5-xxl
  python -m sora_jax.main --config=configs/s.py:runlocal --workdir=/tmp/s_local   # CPU

Arguments: runlocal, res=HEIGHTxWIDTH, frames=N (1+4k), batch=N (global).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import ml_collections  # noqa: E402


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, runlocal=False, res="256x256", frames=33, batch=32)
    height, width = (int(v) for v in args.res.split("x"))
    return common.dit_stage_config(
        "s",
        height=height,
        width=width,
        frames=args.frames,
        batch=args.batch,
        runlocal=args.runlocal,
    )

"""1.3B-parameter DiT with Wan 2.1 T2V-1.3B's shape at 480x832, 81 frames.

  python -m sora_jax.main --config=configs/l.py --workdir=gs://BUCKET/l \
      --config.dit_train.vae_workdir=gs://BUCKET/vae --config.text.path=/path/to/umt5-xxl
  python -m sora_jax.main --config=configs/l.py:runlocal --workdir=/tmp/l_local   # CPU

Arguments: runlocal, res=HEIGHTxWIDTH, frames=N (1+4k), batch=N (global).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import ml_collections  # noqa: E402


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, runlocal=False, res="480x832", frames=81, batch=8)
    height, width = (int(v) for v in args.res.split("x"))
    return common.dit_stage_config(
        "l",
        height=height,
        width=width,
        frames=args.frames,
        batch=args.batch,
        runlocal=args.runlocal,
    )

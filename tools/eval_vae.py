r"""PSNR / SSIM of a trained VAE on videos it never saw (real footage, any folder of clips).

    python tools/eval_vae.py --config=configs/world.py --workdir=/tmp/world/vae \
        --videos=clips/a.mp4,clips/b.mp4 [--frames=33 --size=256] [--out=vae_footage.json]

Each video (mp4/webm/mov through PyAV, or a .npz of uint8 [F, H, W, 3] arrays, one per key)
gives its first `--frames` frames (1 + 4k), centre-cropped to at most `--size` x `--size` and to
multiples of the VAE's spatial factor, without resizing: the round trip (encode -> posterior
mean -> decode) is compared with those frames. `--workdir` is a VAE stage directory (with
checkpoints/, as `<workdir>/vae` of a recipe run); the EMA weights are used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def centre_crop(video: np.ndarray, frames: int, size: int, factor: int) -> np.ndarray:
    """The first `frames` frames, centre-cropped to <= size and a multiple of `factor`."""
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected a video [F, H, W, 3], got shape {video.shape}.")
    if video.shape[0] < frames:
        raise ValueError(f"the video has {video.shape[0]} frames; --frames={frames} needs more.")
    h = min(video.shape[1], size) // factor * factor
    w = min(video.shape[2], size) // factor * factor
    top, left = (video.shape[1] - h) // 2, (video.shape[2] - w) // 2
    return video[:frames, top : top + h, left : left + w]


def load_videos(paths: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for path in paths:
        name = os.path.basename(path)
        if path.endswith(".npz"):
            with np.load(path) as z:
                out.update({f"{name}:{k}": z[k] for k in z.files})
        else:
            from sora_jax.data import video_io

            out[name] = video_io.read_video(path)[0]
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", required=True, help="the config the VAE was trained with")
    p.add_argument("--workdir", required=True, help="VAE stage dir (holds checkpoints/)")
    p.add_argument("--videos", required=True, help="comma-separated video or .npz paths")
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--out", default="", help="JSON path (default: <workdir>/footage_eval.json)")
    a = p.parse_args(argv)
    from aot_compile import load_config  # tools/aot_compile.py: path.py[:arg] -> config

    from sora_jax.train import vae_eval, vae_task

    config = load_config(a.config, [])
    model = vae_task.load_vae(config, a.workdir)
    factor = model.cfg.spatial_factor
    videos = {k: centre_crop(v, a.frames, a.size, factor)
              for k, v in load_videos(a.videos.split(",")).items()}  # fmt: skip
    result = vae_eval.evaluate_videos(model, videos)
    result["mean_psnr"] = float(np.mean([r["psnr"] for r in result.values()]))
    for name, r in result.items():
        if isinstance(r, dict):
            print(f"{name:40s} {r['psnr']:7.2f} dB  SSIM {r['ssim']:.4f}  {r['shape']}")
    print(f"{'mean':40s} {result['mean_psnr']:7.2f} dB")
    out = a.out or os.path.join(a.workdir, "footage_eval.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()

"""Held-out evaluation of a VAE: how well its round trip keeps what the DiT is graded on.

`evaluate_model` reconstructs clips the VAE never trained on (the world with another seed) at
every training bucket and reports PSNR and SSIM (all frames, and frame 0 alone: the image path),
the grader's colour/shape/motion accuracies of the reconstructions, their frame-to-frame flicker
against the clips', and, on the evaluation suite's occlusion scenes, the share whose object
survives the round trip (object permanence), also from latents with added noise. The VAE stage
logs it every `vae_train.eval_every_steps` (its programs compile beside the steps:
`eval_video_shapes`, `compile_eval`); `evaluate_videos` grades given videos, e.g. real footage.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sora_jax import evaluate, quality
from sora_jax.data import buckets as buckets_lib
from sora_jax.data import sources
from sora_jax.data import world as world_lib
from sora_jax.models import vae as vae_lib
from sora_jax.train import vae_losses


def heldout_clips(
    config: ml_collections.ConfigDict, n: int, bucket: buckets_lib.Bucket
) -> tuple[np.ndarray, list[dict]]:
    """Clips the VAE never trained on (the world with another seed) and their specs."""
    world = sources.make_world(config, seed=sources.make_world(config).cfg.seed + 10_007)
    clips = [world.clip(i, bucket.height, bucket.width, bucket.num_frames) for i in range(n)]
    return np.stack([c["video"] for c in clips]), [c["spec"] for c in clips]


def occlusion_clips(
    config: ml_collections.ConfigDict, n: int, bucket: buckets_lib.Bucket
) -> tuple[np.ndarray, list[dict]]:
    """The first n occlusion scenes of the evaluation suite (at `eval.seed` 0) rendered at the
    bucket's size, and their specs."""
    specs = world_lib.occlusion_suite(sources.make_world(config).cfg, n)
    f, h, w = bucket.num_frames, bucket.height, bucket.width
    return np.stack([world_lib.render(s, h, w, f) for s in specs]), specs


_EVAL_FNS: dict = {}


def _eval_fn(graphdef):
    """Jitted (state, uint8 video) -> (per-clip PSNR, per-clip SSIM, latent means, uint8
    reconstructions, per-clip PSNR of frame 0)."""
    if graphdef not in _EVAL_FNS:

        @jax.jit
        def run(state, video):
            vae = nnx.merge(graphdef, state)
            x = vae_lib.to_pixels(video)
            mean, _ = vae.encode(x)
            recon = vae.decode(mean)
            return (quality.psnr(recon, x, per_item=True),
                    quality.ssim(recon, x, per_item=True), mean, vae_lib.to_uint8(recon),
                    quality.psnr(recon[:, :1], x[:, :1], per_item=True))  # fmt: skip

        _EVAL_FNS[graphdef] = run
    return _EVAL_FNS[graphdef]


_NOISY_FNS: dict = {}


def _compile(fn, *args) -> None:
    fn.lower(*args).compile()


def eval_programs(model: vae_lib.CausalVAE, config: ml_collections.ConfigDict) -> list:
    """Compiles of `evaluate_model`'s program at each of its clip shapes (no clips rendered):
    callables for a thread beside the training steps (the loop's `periodic_programs`)."""
    graphdef, state = nnx.split(model)
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state
    )
    run = _eval_fn(graphdef)
    return [
        functools.partial(_compile, run, abstract, jax.ShapeDtypeStruct(shape, jnp.uint8))
        for shape in eval_video_shapes(config)
    ]


def eval_video_shapes(config: ml_collections.ConfigDict) -> list[tuple[int, ...]]:
    """The uint8 clip batch shapes [B, F, H, W, 3] `evaluate_model` runs its program at."""
    n = int(config.vae_train.get("eval_clips", 16))
    n_occlusion = int(config.vae_train.get("eval_occlusion_clips", 0))
    shapes = {}
    for b in buckets_lib.parse_buckets(config.vae_train.buckets):
        counts = [n]
        if n_occlusion and b.num_frames >= evaluate.PERMANENCE_FRAMES:
            counts.append(n_occlusion)
        for count in counts:
            for i in range(0, count, b.batch_size):
                size = min(b.batch_size, count - i)
                shapes[(size, b.num_frames, b.height, b.width, 3)] = None
    return list(shapes)


def _noisy_decode_fn(graphdef, level: float):
    """Jitted (state, latent means) -> uint8 decodes of the means plus noise at `level` x each
    channel's standard deviation (`add_latent_noise`, fixed key: every call and every VAE draws
    the same noise)."""
    if (graphdef, level) not in _NOISY_FNS:

        @jax.jit
        def run(state, mean):
            z = vae_losses.add_latent_noise(mean, mean, level, jax.random.PRNGKey(0), uniform=False)
            return vae_lib.to_uint8(nnx.merge(graphdef, state).decode(z))

        _NOISY_FNS[graphdef, level] = run
    return _NOISY_FNS[graphdef, level]


def _permanence(recons, specs: list[dict]) -> float:
    """The share of `specs`' occlusion scenes whose object the videos (batches of uint8) keep."""
    videos = np.concatenate([np.asarray(r) for r in recons])
    return float(np.mean([evaluate.object_permanence(v, s)["permanent"]
                          for v, s in zip(videos, specs)]))  # fmt: skip


def evaluate_model(
    model: vae_lib.CausalVAE,
    config: ml_collections.ConfigDict,
    *,
    cache: dict | None = None,
    with_latents: bool = False,
):
    """Held-out PSNR and SSIM per bucket (`psnr_<bucket>`, `ssim_<bucket>`, and `psnr_first_`
    of frame 0 alone, the image path) and their means over buckets (`psnr`, `ssim`,
    `psnr_first`); with `with_latents`, also the latent means per bucket.

    The reconstructions are also graded against their specs (`recon_{color,shape,motion}_acc`
    per bucket and averaged; sora_jax.evaluate.grade): what survives the round trip bounds what
    a DiT drawing in this VAE's latents can score on the same grader. `recon_mad_ratio` (buckets
    of several frames) is the mean |frame f - frame f-1| of the reconstructions over that of the
    clips: flicker the round trip adds to every decoded video, so roughly a floor under the eval
    suite's continuity ratio (boundaries of generated videos against real clips).

    With `vae_train.eval_occlusion_clips` > 0, that many occlusion scenes
    (`world.occlusion_suite`, the evaluation suite's t2v_occlusion scenes at `eval.seed` 0) are
    rendered at each bucket of >= `evaluate.PERMANENCE_FRAMES` frames and their round trips
    graded by `evaluate.object_permanence` (`recon_permanence_<bucket>`, `recon_permanence`):
    the share of scenes whose object this VAE keeps through the bar, the ceiling of the DiT's
    permanence. With `vae_train.eval_latent_noise` > 0 also `recon_permanence_noisy[_<bucket>]`:
    the same scenes decoded from their latent means plus Gaussian noise at that many standard
    deviations of each channel (one fixed draw): how well the decoder keeps a small object's
    shape from latents that are near the encoder's, as a DiT's samples are.
    """
    buckets = buckets_lib.parse_buckets(config.vae_train.buckets)
    n = int(config.vae_train.get("eval_clips", 16))
    n_occlusion = int(config.vae_train.get("eval_occlusion_clips", 0))
    noisy_level = float(config.vae_train.get("eval_latent_noise", 0.0))
    graphdef, state = nnx.split(model)
    run = _eval_fn(graphdef)
    cache = {} if cache is None else cache  # rendered clips by name, kept for the next call

    def clips(key: str, make, count: int, bucket) -> tuple[np.ndarray, list[dict]]:
        if key not in cache:
            cache[key] = make(config, count, bucket)
        return cache[key]

    result, latents = {}, []
    for b in buckets:
        videos, specs = clips(b.name, heldout_clips, n, b)
        outs = [run(state, videos[i : i + b.batch_size]) for i in range(0, n, b.batch_size)]
        psnr, ssim, means, recon, first = (np.concatenate([np.asarray(x) for x in z])
                                           for z in zip(*outs))  # fmt: skip
        result[f"psnr_{b.name}"] = float(np.mean(psnr))
        result[f"ssim_{b.name}"] = float(np.mean(ssim))
        # Frame 0 is encoded alone: the image path that image->video's given frame takes.
        result[f"psnr_first_{b.name}"] = float(np.mean(first))
        result.update(_recon_grades(recon, specs, b.name))
        if b.num_frames > 1:
            mad, real = (evaluate.mean_frame_difference(v) for v in (recon, videos))
            result[f"recon_mad_ratio_{b.name}"] = mad / max(real, 1e-6)
        if with_latents:
            latents.append(means)
        if n_occlusion and b.num_frames >= evaluate.PERMANENCE_FRAMES:
            videos, specs = clips(f"occlusion_{b.name}", occlusion_clips, n_occlusion, b)
            outs = [run(state, videos[i : i + b.batch_size])
                    for i in range(0, n_occlusion, b.batch_size)]  # fmt: skip
            result[f"recon_permanence_{b.name}"] = _permanence([o[3] for o in outs], specs)
            if noisy_level > 0:  # the same scenes decoded from their latent means plus noise
                decode = _noisy_decode_fn(graphdef, noisy_level)
                result[f"recon_permanence_noisy_{b.name}"] = _permanence(
                    [decode(state, o[2]) for o in outs], specs
                )
    metrics = ("psnr", "ssim", "psnr_first", "recon_color_acc", "recon_shape_acc",
               "recon_motion_acc", "recon_mad_ratio", "recon_permanence",
               "recon_permanence_noisy")  # fmt: skip
    for metric in metrics:
        values = [result[k] for k in (f"{metric}_{b.name}" for b in buckets) if k in result]
        if values:
            result[metric] = float(np.mean(values))
    return (result, latents) if with_latents else result


def _recon_grades(recon: np.ndarray, specs: list[dict], bucket: str) -> dict[str, float]:
    """Grader accuracies of reconstructions; motion only where a bucket's clips have any."""
    acc = evaluate.grade_many(list(recon), specs)
    out = {f"recon_{k}_acc_{bucket}": acc[f"{k}_acc"] for k in ("color", "shape")}
    if acc["n_motion"]:
        out[f"recon_motion_acc_{bucket}"] = acc["motion_acc"]
    return out


def evaluate_videos(model: vae_lib.CausalVAE, videos: dict[str, np.ndarray]) -> dict:
    """PSNR and SSIM of the round trip (posterior mean) of each uint8 video [F, H, W, 3] (F =
    1 + 4k, H and W multiples of the spatial factor), e.g. real footage the VAE never saw."""
    graphdef, state = nnx.split(model)
    run = _eval_fn(graphdef)
    out = {}
    for name, video in videos.items():
        p, s, *_ = run(state, np.asarray(video, np.uint8)[None])
        out[name] = {"psnr": float(np.asarray(p)[0]), "ssim": float(np.asarray(s)[0]),
                     "shape": list(np.shape(video))}  # fmt: skip
    return out

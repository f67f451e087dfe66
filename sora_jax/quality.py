"""Jittable quality measures: PSNR and SSIM of reconstructions (videos in [-1, 1]) and a
rectified-flow model's validation loss at fixed timesteps (any denoise function).

N items, H W height/width, C channels; videos [N, F, H, W, C] or images [N, H, W, C]. The world
grader of generated videos (numpy, uint8 pixels) is ``sora_jax.evaluate``.
"""

from __future__ import annotations

from collections.abc import Sequence


def psnr(a, b, *, data_range: float = 2.0, per_item: bool = False):
    """PSNR in dB of two arrays [N, ...] (pixels in [-1, 1]: peak-to-peak `data_range` 2).

    One number from the mean squared error over everything, or with `per_item` one per
    leading item ([N]); an MSE below 1e-12 counts as 1e-12 (identical inputs give ~126 dB).
    """
    import jax.numpy as jnp

    err = jnp.square(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))
    mse = err.reshape(err.shape[0], -1).mean(-1) if per_item else err.mean()
    return 10.0 * jnp.log10(data_range**2 / jnp.maximum(mse, 1e-12))


def _gaussian_blur(x, size: int, sigma: float):
    """Separable 'valid' Gaussian filter of [N, H, W, C] per channel -> [N, H-size+1, ...]."""
    import jax
    import jax.numpy as jnp

    t = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
    g = jnp.exp(-0.5 * jnp.square(t / sigma))
    g = g / g.sum()
    c = x.shape[-1]
    for kernel in (g.reshape(size, 1, 1, 1), g.reshape(1, size, 1, 1)):
        x = jax.lax.conv_general_dilated(
            x,
            jnp.tile(kernel, (1, 1, 1, c)),
            (1, 1),
            "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=c,
        )
    return x


def ssim(a, b, *, data_range: float = 2.0, window: int = 11, sigma: float = 1.5, per_item=False):
    """Mean SSIM (Wang et al. 2004) of images or videos [..., H, W, C], frame by frame.

    Gaussian window 11 / sigma 1.5 with K1 = 0.01, K2 = 0.03 over `data_range` (2 for [-1, 1]),
    'valid' filtering; frames smaller than the window use the largest odd window that fits.
    With `per_item`, one value per leading item ([N]); identical inputs give exactly 1.
    """
    import jax.numpy as jnp

    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    lead, (h, w, c) = a.shape[:-3], a.shape[-3:]
    size = min(window, h - (1 - h % 2), w - (1 - w % 2))
    x, y = a.reshape(-1, h, w, c), b.reshape(-1, h, w, c)
    blur = lambda v: _gaussian_blur(v, size, sigma)  # noqa: E731
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    per_frame = smap.reshape(*lead, -1).mean(-1) if lead else smap.mean()
    if not per_item:
        return jnp.mean(per_frame)
    return per_frame.reshape(per_frame.shape[0], -1).mean(-1)


# ---- validation loss of a rectified-flow model at fixed timesteps ----


def flow_validation_loss(denoise, x0, noise, timesteps: Sequence[float]):
    """Rectified-flow loss at each fixed t: mean (denoise(x_t, t) - (eps - x0))^2 -> [len(t)].

    ``denoise(x_t [B, T, h, w, z], t [B, T]) -> velocity``; x0 and noise [B, T, h, w, z]. The same
    noise at every t, so the curve over t compares noise levels, not draws. Jittable (timesteps
    are static).
    """
    import jax.numpy as jnp

    from sora_jax.diffusion import flow

    x0 = jnp.asarray(x0, jnp.float32)
    target = flow.velocity_target(x0, noise)
    losses = []
    for t in timesteps:
        tt = jnp.full(x0.shape[:2], t, jnp.float32)
        pred = denoise(flow.add_noise(x0, noise, tt), tt)
        losses.append(jnp.mean(jnp.square(pred.astype(jnp.float32) - target)))
    return jnp.stack(losses)

"""Rectified flow: noising path, time sampling and shift, velocity target and loss.

Legend: B batch, T latent frames, H W latent height/width, C latent channels.
Latents ``x`` are [B, T, H, W, C]; times ``t`` are per latent frame, [B, T] float in [0, 1]
(t = 0 clean data, t = 1 pure noise) and broadcast to ``x`` as ``t[:, :, None, None, None]``.
Every function here also accepts a scalar ``t`` or any ``t`` whose shape is a prefix of ``x``'s.

Derivation (Liu et al. 2022 "Flow straight and fast"; Esser et al. 2024, SD3 §2-3):

    x_t = (1 - t) x0 + t eps,           eps ~ N(0, I)
    dx_t/dt = eps - x0 =: v             (the velocity the model regresses)

Given x_t and a velocity v, the two endpoints follow from the two linear equations above:

    x0  = x_t - t v
    eps = x_t + (1 - t) v

and conversely v = (x_t - x0) / t = (eps - x_t) / (1 - t). Sampling integrates
dx/dt = v_theta(x, t) from t = 1 (noise) down to t = 0 (data).

Time sampling. SD3 found a logit-normal density on t (t = sigmoid(n), n ~ N(m, s)) best:
it spends training on intermediate times where the velocity is hardest to predict.

Time shift. Larger images / longer videos keep more signal at a given t (more redundant
tokens average the noise away), so both training and sampling move t towards 1 with

    shift_t(t, s) = s t / (1 + (s - 1) t),

which maps 0 -> 0, 1 -> 1 and, for s > 1, spends more steps at high noise. In SD3's terms it
keeps the signal-to-noise ratio of a reference resolution: SNR_shifted(t) = SNR(t) / s^2.
Flux and SD3 pick s from the token count N: mu is linear in N through
(base_tokens, base_shift) and (max_tokens, max_shift), and s = exp(mu) (Flux's
``time_shift(mu, 1, t) = e^mu / (e^mu + 1/t - 1)`` is exactly ``shift_t(t, e^mu)``).
Wan 2.1 uses a fixed s instead (5.0 by default; 3.0 suggested for 480p).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _bcast(t: Array | float, x: Array) -> Array:
    """Reshape t ([B, T], [B] or scalar) so it broadcasts against x [B, T, H, W, C]."""
    t = jnp.asarray(t, jnp.float32)
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def sample_t(
    rng: Array, shape: tuple[int, ...], *, logit_mean: float = 0.0, logit_std: float = 1.0
) -> Array:
    """Logit-normal times t = sigmoid(logit_mean + logit_std * n), n ~ N(0, 1) (SD3 §3.1).

    Args:
      rng: PRNG key.
      shape: output shape, e.g. (B, T) for independent per-frame times or (B, 1) for one
        time per clip (broadcast it to [B, T] yourself).
      logit_mean: location of the logit; > 0 biases training towards noise.
      logit_std: spread of the logit.

    Returns:
      t of ``shape``, float32 in (0, 1).
    """
    n = jax.random.normal(rng, shape, jnp.float32)
    return jax.nn.sigmoid(logit_mean + logit_std * n)


def shift_t(t: Array | float, shift: Array | float) -> Array:
    """SD3 / Wan time shift ``shift * t / (1 + (shift - 1) * t)``; shift = 1 is the identity."""
    t = jnp.asarray(t, jnp.float32)
    return shift * t / (1.0 + (shift - 1.0) * t)


def inverse_shift_t(t: Array | float, shift: Array | float) -> Array:
    """Inverse of :func:`shift_t`: ``u = t / (shift - (shift - 1) * t)``."""
    t = jnp.asarray(t, jnp.float32)
    return t / (shift - (shift - 1.0) * t)


def resolution_shift(
    num_tokens: int | Array,
    *,
    base_tokens: int = 256,
    max_tokens: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> Array:
    """Shift factor s = exp(mu) with mu linear in the token count (SD3 §5.3.2, Flux).

    mu(N) = base_shift + (max_shift - base_shift) * (N - base_tokens) / (max_tokens - base_tokens),
    the line through (base_tokens, base_shift) and (max_tokens, max_shift), extrapolated
    linearly outside that range exactly as diffusers' ``calculate_shift`` does. The defaults are
    Flux's (256 tokens = 256² image, 4096 tokens = 1024² image, both with 2x2 patches of an
    8x VAE). For video set ``max_tokens`` to the largest bucket you train, or the
    extrapolated shift grows exponentially with length.

    Args:
      num_tokens: tokens per sample (T * H * W / patch area), int or array.

    Returns:
      float32 shift factor(s), same shape as ``num_tokens``.
    """
    if max_tokens == base_tokens:
        raise ValueError(f"max_tokens must differ from base_tokens, got both = {base_tokens}.")
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    mu = base_shift + slope * (jnp.asarray(num_tokens, jnp.float32) - base_tokens)
    return jnp.exp(mu)


def add_noise(x0: Array, eps: Array, t: Array | float) -> Array:
    """x_t = (1 - t) x0 + t eps.  x0, eps: [B, T, H, W, C]; t: [B, T] -> x_t like x0."""
    tb = _bcast(t, x0)
    return (1.0 - tb) * x0 + tb * eps


def velocity_target(x0: Array, eps: Array) -> Array:
    """The regression target v = eps - x0 (independent of t on the straight path)."""
    return eps - x0


def x0_from_velocity(xt: Array, v: Array, t: Array | float) -> Array:
    """x0 = x_t - t v."""
    return xt - _bcast(t, xt) * v


def eps_from_velocity(xt: Array, v: Array, t: Array | float) -> Array:
    """eps = x_t + (1 - t) v."""
    return xt + (1.0 - _bcast(t, xt)) * v


def velocity_from_x0(xt: Array, x0: Array, t: Array | float) -> Array:
    """v = (x_t - x0) / t; undefined at t = 0, where an x0-predictor carries no velocity."""
    return (xt - x0) / _bcast(t, xt)


def velocity_from_eps(xt: Array, eps: Array, t: Array | float) -> Array:
    """v = (eps - x_t) / (1 - t); undefined at t = 1."""
    return (eps - xt) / (1.0 - _bcast(t, xt))


def flow_loss(pred: Array, target: Array, frame_weight: Array | None = None) -> Array:
    """Mean squared error in fp32, optionally weighted per latent frame.

    Args:
      pred: model velocity [B, T, H, W, C] (any float dtype; upcast to fp32).
      target: ``velocity_target(x0, eps)``, same shape.
      frame_weight: optional [B, T] weights; 0 excludes a frame (e.g. given / conditioning
        frames, which are clean and need not be predicted). The loss is normalised by the
        weight sum times the elements per frame, so it is the mean over the weighted frames
        and does not shrink as more frames are given. All-zero weights give loss 0.

    Returns:
      scalar float32 loss.
    """
    err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
    if frame_weight is None:
        return jnp.mean(err)
    if frame_weight.shape != pred.shape[:2]:
        raise ValueError(
            f"frame_weight must have shape [B, T] = {pred.shape[:2]}, got {frame_weight.shape}."
        )
    w = _bcast(frame_weight.astype(jnp.float32), err)
    per_frame = err[0, 0].size
    return jnp.sum(w * err) / jnp.maximum(jnp.sum(frame_weight) * per_frame, 1e-12)

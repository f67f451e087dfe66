"""DDPM noise schedules and the eps / v / x0 parameterisations (the alternative to flow).

Legend: B batch, T latent frames, H W latent height/width, C latent channels, N train steps.

Derivation (Ho et al. 2020; Salimans & Ho 2022 "Progressive distillation" for v):
a discrete chain of N steps with variances beta_k has the closed-form marginal

    x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps,    abar_k = prod_{j<=k} (1 - beta_j).

Write a = sqrt(abar), s = sqrt(1 - abar) (a^2 + s^2 = 1). The three common model targets are

    eps                 x0 = (x - s eps) / a
    x0                  eps = (x - a x0) / s
    v = a eps - s x0    x0 = a x - s v,   eps = s x + a v

(the v identities follow from a^2 + s^2 = 1). DDIM (Song et al. 2021) needs (x0, eps) from
any of them.

Times: models here see t in [0, 1] per latent frame, like the flow models, with t = k / N for
train step k; :func:`alpha_bar_at` maps t back to abar_k. Per-frame ``alpha_bar`` arrays are
[B, T] and broadcast to x [B, T, H, W, C]; scalars work too.

Schedules (matching diffusers' ``beta_schedule`` names so checkpoints carry over):
``linear`` (DDPM: 1e-4 .. 0.02), ``scaled_linear`` (Stable Diffusion: linear in sqrt(beta),
0.00085 .. 0.012) and ``cosine`` (Nichol & Dhariwal 2021, ``squaredcos_cap_v2``:
abar(u) = cos²((u + 0.008) / 1.008 · π/2), betas capped at 0.999).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def beta_schedule(
    name: str,
    num_train_steps: int = 1000,
    *,
    beta_start: float | None = None,
    beta_end: float | None = None,
) -> np.ndarray:
    """Betas [N] as float32 numpy (a host constant, static under jit).

    Args:
      name: 'linear', 'scaled_linear' or 'cosine'.
      num_train_steps: N.
      beta_start, beta_end: endpoints for the linear schedules; defaults 1e-4 / 0.02 for
        'linear' (DDPM) and 0.00085 / 0.012 for 'scaled_linear' (Stable Diffusion).
    """
    if num_train_steps < 1:
        raise ValueError(f"num_train_steps must be >= 1, got {num_train_steps}.")
    if name == "linear":
        lo, hi = _or(beta_start, 1e-4), _or(beta_end, 0.02)
        betas = np.linspace(lo, hi, num_train_steps, dtype=np.float64)
    elif name == "scaled_linear":
        lo, hi = _or(beta_start, 0.00085), _or(beta_end, 0.012)
        betas = np.linspace(lo**0.5, hi**0.5, num_train_steps, dtype=np.float64) ** 2
    elif name == "cosine":

        def abar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        n = num_train_steps
        betas = np.array([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)])
    else:
        raise ValueError(f"beta schedule must be one of {BETA_SCHEDULES}, got {name!r}.")
    return betas.astype(np.float32)


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """abar_k = prod_{j<=k} (1 - beta_j), [N] float32 (cumprod in float64 for accuracy)."""
    return np.cumprod(1.0 - np.asarray(betas, np.float64)).astype(np.float32)


def alpha_bar_at(alphas_cumprod: Array | np.ndarray, t: Array | float) -> Array:
    """abar at continuous time t = k / N (rounded to the nearest train step, clipped to [0, N-1]).

    Args:
      alphas_cumprod: [N].
      t: [B, T] (or any shape) in [0, 1].

    Returns:
      abar, same shape as t, float32.
    """
    ac = jnp.asarray(alphas_cumprod, jnp.float32)
    n = ac.shape[0]
    k = jnp.clip(jnp.round(jnp.asarray(t, jnp.float32) * n), 0, n - 1).astype(jnp.int32)
    return ac[k]


def _a_s(alpha_bar: Array | float, x: Array) -> tuple[Array, Array]:
    """(sqrt(abar), sqrt(1 - abar)) broadcast against x."""
    ab = jnp.asarray(alpha_bar, jnp.float32)
    ab = ab.reshape(ab.shape + (1,) * (x.ndim - ab.ndim))
    return jnp.sqrt(ab), jnp.sqrt(1.0 - ab)


def add_noise(x0: Array, eps: Array, alpha_bar: Array | float) -> Array:
    """x = sqrt(abar) x0 + sqrt(1 - abar) eps.  x0, eps [B, T, H, W, C]; abar [B, T]."""
    a, s = _a_s(alpha_bar, x0)
    return a * x0 + s * eps


def v_target(x0: Array, eps: Array, alpha_bar: Array | float) -> Array:
    """v = sqrt(abar) eps - sqrt(1 - abar) x0."""
    a, s = _a_s(alpha_bar, x0)
    return a * eps - s * x0


def x0_from_eps(x: Array, eps: Array, alpha_bar: Array | float) -> Array:
    """x0 = (x - sqrt(1 - abar) eps) / sqrt(abar)."""
    a, s = _a_s(alpha_bar, x)
    return (x - s * eps) / a


def eps_from_x0(x: Array, x0: Array, alpha_bar: Array | float) -> Array:
    """eps = (x - sqrt(abar) x0) / sqrt(1 - abar)."""
    a, s = _a_s(alpha_bar, x)
    return (x - a * x0) / s


def x0_from_v(x: Array, v: Array, alpha_bar: Array | float) -> Array:
    """x0 = sqrt(abar) x - sqrt(1 - abar) v."""
    a, s = _a_s(alpha_bar, x)
    return a * x - s * v


def eps_from_v(x: Array, v: Array, alpha_bar: Array | float) -> Array:
    """eps = sqrt(1 - abar) x + sqrt(abar) v."""
    a, s = _a_s(alpha_bar, x)
    return s * x + a * v


def v_from_eps(x: Array, eps: Array, alpha_bar: Array | float) -> Array:
    """v = (eps - sqrt(1 - abar) x) / sqrt(abar)  (substitute x0 = (x - s eps) / a)."""
    a, s = _a_s(alpha_bar, x)
    return (eps - s * x) / a


def to_x0_eps(
    pred: Array, x: Array, alpha_bar: Array | float, prediction: str
) -> tuple[Array, Array]:
    """(x0, eps) from a model output in parameterisation 'eps', 'v' or 'x0'."""
    if prediction == "eps":
        return x0_from_eps(x, pred, alpha_bar), pred
    if prediction == "v":
        return x0_from_v(x, pred, alpha_bar), eps_from_v(x, pred, alpha_bar)
    if prediction == "x0":
        return pred, eps_from_x0(x, pred, alpha_bar)
    raise ValueError(f"DDPM prediction must be 'eps', 'v' or 'x0', got {prediction!r}.")

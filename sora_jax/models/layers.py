"""Building blocks of the DiT: linear/MLP, fp32 norms, adaLN modulation, timestep features,
3D RoPE, and the spacetime patch embedding / unpatchify.

Einsum legend: B batch, T latent frames, H W latent height/width, N tokens, D model dim,
K heads, Dh head dim, L text tokens, C channels, F hidden (MLP) dim.

Parameters carry their logical axis names in the variable metadata key ``logical_axes``
(vocabulary: embed, mlp, heads, kv, layers, norm); ``sora_jax.parallel`` maps them to mesh axes.
The metadata key is not flax's ``out_sharding`` because that one is sharded eagerly at creation
and needs a mesh, while models here must also be built on a laptop without one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array
LOGICAL = "logical_axes"  # metadata key holding a parameter's logical axis names


def _meta(*axes: str | None) -> dict:
    return {LOGICAL: tuple(axes)}


def dense(
    in_features: int,
    out_features: int,
    *,
    axes: tuple[str | None, str | None],
    dtype: jnp.dtype,
    rngs: nnx.Rngs,
    zero_init: bool = False,
) -> nnx.Linear:
    """A biased linear layer `[..., in] -> [..., out]` computing in `dtype` with fp32 params."""
    kernel_init = nnx.initializers.zeros if zero_init else nnx.initializers.xavier_uniform()
    return nnx.Linear(
        in_features,
        out_features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_init,
        bias_init=nnx.initializers.zeros,
        kernel_metadata=_meta(*axes),
        bias_metadata=_meta(axes[1]),
        rngs=rngs,
    )


def gelu_tanh(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=True)


class MLP(nnx.Module):
    """Linear -> activation -> Linear (Wan FFN, text embedder and time embedder shapes)."""

    def __init__(
        self,
        in_features: int,
        hidden: int,
        out_features: int,
        *,
        act: Callable[[Array], Array],
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
        axes: tuple[str, str, str] = ("embed", "mlp", "embed"),
        zero_init_out: bool = False,
    ):
        self.act = act
        self.linear_1 = dense(in_features, hidden, axes=axes[:2], dtype=dtype, rngs=rngs)
        self.linear_2 = dense(
            hidden, out_features, axes=axes[1:], dtype=dtype, rngs=rngs, zero_init=zero_init_out
        )

    def __call__(self, x: Array) -> Array:
        """`[..., in] -> [..., out]` in the compute dtype."""
        return self.linear_2(self.act(self.linear_1(x)))


def layer_norm(x: Array, eps: float) -> Array:
    """LayerNorm without affine over the last axis, computed and returned in fp32."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)  # two-pass, as torch does
    return (x - mean) * jax.lax.rsqrt(var + eps)


class LayerNorm(nnx.Module):
    """fp32 LayerNorm over the last axis; `affine` adds a learned scale and bias."""

    def __init__(self, dim: int, *, eps: float, affine: bool):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,)), **_meta("norm")) if affine else None
        self.bias = nnx.Param(jnp.zeros((dim,)), **_meta("norm")) if affine else None

    def __call__(self, x: Array) -> Array:
        y = layer_norm(x, self.eps)
        if self.scale is not None:
            y = y * self.scale[...] + self.bias[...]
        return y


class RMSNorm(nnx.Module):
    """fp32 RMSNorm with a learned scale over the last axis; returns the input dtype."""

    def __init__(self, dim: int, *, eps: float):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,)), **_meta("norm"))

    def __call__(self, x: Array) -> Array:
        xf = x.astype(jnp.float32)
        ms = jnp.mean(jnp.square(xf), axis=-1, keepdims=True)
        return (xf * jax.lax.rsqrt(ms + self.eps) * self.scale[...]).astype(x.dtype)


def modulate(x: Array, shift: Array, scale: Array, num_frames: int) -> Array:
    """adaLN: `x * (1 + scale) + shift` with per-frame modulation broadcast to its tokens.

    x: [B, N, D] with N = num_frames * S (tokens frame-major); shift, scale: [B, T', D] fp32.
    Returns fp32 [B, N, D]. Broadcasting over S (instead of materialising [B, N, D]
    modulation tensors) keeps the per-frame conditioning free in memory.
    """
    b, n, d = x.shape
    xs = x.astype(jnp.float32).reshape(b, num_frames, n // num_frames, d)
    y = xs * (1.0 + scale[:, :, None, :]) + shift[:, :, None, :]
    return y.reshape(b, n, d)


def gate(x: Array, g: Array, num_frames: int) -> Array:
    """Per-frame gate `x * g`: x [B, N, D], g [B, T', D] -> fp32 [B, N, D]."""
    b, n, d = x.shape
    xs = x.astype(jnp.float32).reshape(b, num_frames, n // num_frames, d)
    return (xs * g[:, :, None, :]).reshape(b, n, d)


def timestep_features(t: Array, dim: int, max_period: float = 10000.0) -> Array:
    """Sinusoidal timestep features `[...] -> [..., dim]` fp32, ordered (cos, sin).

    Matches diffusers `get_timestep_embedding(flip_sin_to_cos=True, downscale_freq_shift=0)`,
    which Wan uses on timesteps in 0..1000.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[..., None] * freqs
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, 1)])
    return emb


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Wan's split of a head's dims into (t, h, w) RoPE parts: h = w = 2*(Dh//6), t the rest."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _rope_angles_1d(length: int, dim: int, theta: float) -> np.ndarray:
    """[length, dim/2] angles pos * theta^(-2i/dim), in float64 as diffusers computes them."""
    inv = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    return np.outer(np.arange(length, dtype=np.float64), inv)


def rope_3d(grid: tuple[int, int, int], head_dim: int, theta: float) -> tuple[Array, Array]:
    """cos, sin tables [N, Dh/2] fp32 for tokens of a (T', H', W') grid, frame-major.

    Pair i of a head (dims 2i, 2i+1) rotates by the angle of its axis: the first t/2 pairs by
    frame index, the next h/2 by row, the last w/2 by column (Wan / diffusers WanRotaryPosEmbed).
    Per-axis tables are computed on the host in float64 (shapes are static) and broadcast here,
    so no N-sized constant is baked into the program.
    """
    nt, nh, nw = grid
    dims = rope_axis_dims(head_dim)
    at, ah, aw = (
        jnp.asarray(np.stack([np.cos(a), np.sin(a)]).astype(np.float32))
        for a in (_rope_angles_1d(n, d, theta) for n, d in zip(grid, dims, strict=True))
    )  # each [2, n, d/2]
    full = jnp.concatenate(
        [
            jnp.broadcast_to(at[:, :, None, None, :], (2, nt, nh, nw, at.shape[-1])),
            jnp.broadcast_to(ah[:, None, :, None, :], (2, nt, nh, nw, ah.shape[-1])),
            jnp.broadcast_to(aw[:, None, None, :, :], (2, nt, nh, nw, aw.shape[-1])),
        ],
        axis=-1,
    ).reshape(2, nt * nh * nw, head_dim // 2)
    return full[0], full[1]


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x [B, N, K, Dh] by cos/sin [N, Dh/2].

    Computed in fp32, returned in x's dtype.
    """
    b, n, k, dh = x.shape
    xp = x.astype(jnp.float32).reshape(b, n, k, dh // 2, 2)
    x1, x2 = xp[..., 0], xp[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = jnp.stack([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)
    return out.reshape(b, n, k, dh).astype(x.dtype)


def patchify(x: Array, patch: tuple[int, int, int]) -> Array:
    """[B, T, H, W, C] -> [B, N, pt*ph*pw*C] tokens, frame-major, patch features (pt, ph, pw, C)."""
    b, t, h, w, c = x.shape
    pt, ph, pw = patch
    x = x.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)  # B T' H' W' pt ph pw C
    return x.reshape(b, (t // pt) * (h // ph) * (w // pw), pt * ph * pw * c)


def unpatchify(tokens: Array, grid: tuple[int, int, int], patch: tuple[int, int, int]) -> Array:
    """Inverse of `patchify`: [B, N, pt*ph*pw*C] -> [B, T'*pt, H'*ph, W'*pw, C]."""
    b = tokens.shape[0]
    (nt, nh, nw), (pt, ph, pw) = grid, patch
    c = tokens.shape[-1] // (pt * ph * pw)
    x = tokens.reshape(b, nt, nh, nw, pt, ph, pw, c)
    x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)  # B T' pt H' ph W' pw C
    return x.reshape(b, nt * pt, nh * ph, nw * pw, c)


def mean_pool(hidden: jax.Array, mask: jax.Array, normalize: bool = True) -> jax.Array:
    """Masked mean over tokens, L2-normalised with `normalize` (sentence-transformers' embedding).

    hidden: [B, N, D], mask: [B, N] bool -> [B, D] fp32.
    """
    w = mask.astype(jnp.float32)[..., None]
    pooled = (hidden.astype(jnp.float32) * w).sum(1) / jnp.maximum(w.sum(1), 1e-9)
    if normalize:
        pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return pooled

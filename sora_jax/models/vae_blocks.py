"""Building blocks of the causal 3D VAE (Wan 2.1 layout), with an optional per-conv time cache.

Legend: B batch, F frames (of the tensor at hand), H W height/width, C channels. Videos are
channels-last `[B, F, H, W, C]`.

Time is causal everywhere: a conv with `kt` taps sees the current frame and `kt - 1` frames of
the past, zeros before the first frame. The first frame of a sequence is special in the time
resamplers (as in Wan 2.1): the downsampler passes it through untouched and the upsampler emits
it once, so an image is a 1-frame video sharing the latent space of videos.

Chunked time: every module takes an optional `TimeCache`. `None` means "the whole sequence,
starting at frame 0, in one pass". With a cache the module processes one chunk: each causal conv
reads the past frames the previous chunk left (`take`) and records its own (`put`), in call
order, so chunked and full passes compute the same numbers.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array


class TimeCache:
    """State carried across time chunks: incoming past frames (read in call order) and outgoing.

    `first=True` marks the chunk that starts at frame 0 (its incoming state is all zeros, and the
    time resamplers treat its first frame specially); then `incoming` must be None.
    """

    def __init__(self, first: bool, incoming: list[Array] | None = None):
        if first != (incoming is None):
            raise ValueError("TimeCache expects incoming state exactly when first is False.")
        self.first = first
        self._incoming = incoming
        self._pos = 0
        self.outgoing: list[Array] = []

    def take(self) -> Array | None:
        """The next conv's past frames, or None (meaning zeros) in the first chunk."""
        if self._incoming is None:
            return None
        past = self._incoming[self._pos]
        self._pos += 1
        return past

    def put(self, past: Array) -> None:
        self.outgoing.append(past)


def is_first(cache: TimeCache | None) -> bool:
    return cache is None or cache.first


@functools.partial(jax.jit, static_argnums=(1, 2))
def fan_in_normal(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
    """N(0, 1/fan_in) kernel init (fan_in = all but the last axis).

    Drawn flat and reshaped: eager init compiles one program per distinct shape, and a 1-D draw
    compiles ~5x faster than a 5-D truncated normal on CPU (the tiny VAE builds in seconds).
    """
    fan_in = int(np.prod(shape[:-1]))
    flat = jax.random.normal(key, (int(np.prod(shape)),), jnp.float32)
    return (flat * fan_in**-0.5).reshape(shape).astype(dtype)


CONV_ENV = "SORA_VAE_CONV"  # 'fold' | 'native': overrides the per-backend choice (benchmarks)


def fold_time_taps() -> bool:
    """Whether 3D convs run as one 2D conv over time-stacked taps (the CPU and GPU path).

    XLA:CPU runs 3D convs ~4x slower than 2D ones. XLA:GPU lays 5-D convs out channels-first
    (NCDHW) even in bf16, which costs transposes around every conv and misses cuDNN's fast
    channels-last kernels; as 2D convs they stay NHWC. TPUs run 3D convs natively.
    """
    choice = os.environ.get(CONV_ENV, "")
    if choice in ("fold", "native"):
        return choice == "fold"
    return jax.default_backend() in ("cpu", "gpu", "cuda", "rocm")


def silu(x: Array) -> Array:
    return x * jax.nn.sigmoid(x)


NORMS = ("rms", "none")


class RMSNorm(nnx.Module):
    """Wan's RMS norm: x / max(||x||_2, 1e-12) * sqrt(C) * gamma over channels, in fp32.

    kind="none" keeps only the learned per-channel scale gamma (same parameters, so checkpoints
    keep their layout). Measured on the 32x32 world (tools/bench/results/vae_sweep_h200.json):
    the tiny VAE without normalisation keeps the object's colour in 94% of reconstructions
    after 1,200 steps, against 70% with it. Wan's weights need "rms".
    """

    def __init__(self, dim: int, kind: str = "rms"):
        if kind not in NORMS:
            raise ValueError(f"vae norm={kind!r} must be one of {NORMS}.")
        self.scale = float(dim) ** 0.5
        self.normalize = kind == "rms"
        self.gamma = nnx.Param(jnp.ones((dim,), jnp.float32))

    def __call__(self, x: Array) -> Array:
        x = x.astype(jnp.float32)
        if not self.normalize:
            return x * self.gamma[...]
        # F.normalize semantics (clamped norm), not rsqrt(mean + eps): matters for parity at 0.
        norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
        return x / jnp.maximum(norm, 1e-12) * self.scale * self.gamma[...]


class CausalConv3d(nnx.Module):
    """3D conv, causal in time (kt - 1 past frames), 'same' zero padding in space, stride 1."""

    def __init__(
        self, cin: int, cout: int, kernel: tuple[int, int, int], *, dtype: str, rngs: nnx.Rngs
    ):
        kt, kh, kw = kernel
        self.kernel = nnx.Param(fan_in_normal(rngs.params(), (kt, kh, kw, cin, cout)))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))
        self.kt, self.ph, self.pw = kt, kh // 2, kw // 2
        self.cout = cout
        self.dtype = jnp.dtype(dtype)

    def conv(self, x: Array, time_pad: tuple[int, int] = (0, 0), time_stride: int = 1) -> Array:
        """Plain conv with the given time padding/stride: [B, F, H, W, Ci] -> [B, F', H, W, Co]."""
        x, w = x.astype(self.dtype), self.kernel[...].astype(self.dtype)
        if w.shape[:3] == (1, 1, 1) and time_stride == 1 and time_pad == (0, 0):
            y = jnp.einsum("bfhwi,io->bfhwo", x, w[0, 0, 0])  # 1x1x1: a matmul
        elif self.kt == 1 and time_stride == 1 and time_pad == (0, 0):
            y = self._conv_2d(x, w[0])
        elif fold_time_taps():
            y = self._conv_folded(x, w, time_pad, time_stride)
        else:
            y = jax.lax.conv_general_dilated(
                x,
                w,
                window_strides=(time_stride, 1, 1),
                padding=(time_pad, (self.ph, self.ph), (self.pw, self.pw)),
                dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
            )
        return y + self.bias[...].astype(self.dtype)

    def _conv_folded(self, x: Array, w: Array, time_pad, time_stride: int) -> Array:
        # Fold the kt taps into channels: frames (t, t+1, .., t+kt-1) stacked on C, one 2D conv
        # with a [kh, kw, kt*Ci, Co] kernel (see fold_time_taps for why).
        x = jnp.pad(x, ((0, 0), time_pad, (0, 0), (0, 0), (0, 0)))
        kt, f, c = self.kt, x.shape[1], x.shape[-1]
        t_out = (f - kt) // time_stride + 1
        span = time_stride * (t_out - 1) + 1
        taps = [x[:, i : i + span : time_stride] for i in range(kt)]
        xf = jnp.concatenate(taps, axis=-1) if kt > 1 else taps[0]
        wf = jnp.transpose(w, (1, 2, 0, 3, 4)).reshape(w.shape[1], w.shape[2], kt * c, -1)
        return self._conv_2d(xf, wf)

    def _conv_2d(self, x: Array, w: Array) -> Array:
        """Per-frame 2D conv: [B, F, H, W, Ci] x [kh, kw, Ci, Co] -> [B, F, H, W, Co]."""
        b, f = x.shape[:2]
        y = jax.lax.conv_general_dilated(
            x.reshape(b * f, *x.shape[2:]),
            w,
            window_strides=(1, 1),
            padding=((self.ph, self.ph), (self.pw, self.pw)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y.reshape(b, f, *y.shape[1:])

    def __call__(self, x: Array, cache: TimeCache | None = None) -> Array:
        x = x.astype(self.dtype)  # the cache of past frames is kept in the compute dtype
        pt = self.kt - 1
        if pt == 0:
            return self.conv(x)
        if cache is None:
            if x.shape[1] == 0:
                return jnp.zeros((*x.shape[:-1], self.cout), self.dtype)
            return self.conv(x, time_pad=(pt, 0))
        past = cache.take()
        if past is None:
            past = jnp.zeros((x.shape[0], pt, *x.shape[2:]), x.dtype)
        xp = jnp.concatenate([past.astype(x.dtype), x], axis=1)
        cache.put(xp[:, -pt:])
        if x.shape[1] == 0:
            return jnp.zeros((*x.shape[:-1], self.cout), self.dtype)
        return self.conv(xp)


class Conv2d(nnx.Module):
    """Per-frame 2D conv, kernel [kh, kw, Ci, Co]; `padding` as ((top, bottom), (left, right))."""

    def __init__(self, cin: int, cout: int, *, stride: int, padding, dtype: str, rngs: nnx.Rngs):
        self.kernel = nnx.Param(fan_in_normal(rngs.params(), (3, 3, cin, cout)))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))
        self.stride, self.padding = stride, padding
        self.dtype = jnp.dtype(dtype)

    def __call__(self, x: Array) -> Array:
        b, f = x.shape[:2]
        y = jax.lax.conv_general_dilated(
            x.reshape(b * f, *x.shape[2:]).astype(self.dtype),
            self.kernel[...].astype(self.dtype),
            window_strides=(self.stride, self.stride),
            padding=self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        y = y + self.bias[...].astype(self.dtype)
        return y.reshape(b, f, *y.shape[1:])


class ResBlock(nnx.Module):
    """norm-SiLU-conv twice plus a (1x1x1 conv if channels change) shortcut; adds in fp32."""

    def __init__(
        self, cin: int, cout: int, *, dropout: float, dtype: str, rngs: nnx.Rngs, norm: str = "rms"
    ):
        self.norm1 = RMSNorm(cin, norm)
        self.conv1 = CausalConv3d(cin, cout, (3, 3, 3), dtype=dtype, rngs=rngs)
        self.norm2 = RMSNorm(cout, norm)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.conv2 = CausalConv3d(cout, cout, (3, 3, 3), dtype=dtype, rngs=rngs)
        self.conv_shortcut = (
            CausalConv3d(cin, cout, (1, 1, 1), dtype=dtype, rngs=rngs) if cin != cout else None
        )

    def __call__(self, x: Array, cache: TimeCache | None = None) -> Array:
        h = x if self.conv_shortcut is None else self.conv_shortcut(x)
        x = self.conv1(silu(self.norm1(x)), cache)
        x = silu(self.norm2(x))
        if self.dropout is not None:
            x = self.dropout(x)
        x = self.conv2(x, cache)
        # Added in fp32, stored in the compute dtype: bf16 halves the activation traffic.
        return (x.astype(jnp.float32) + h.astype(jnp.float32)).astype(self.conv2.dtype)


class SpatialAttention(nnx.Module):
    """Single-head self-attention over the H*W positions of each frame (no mixing across time)."""

    def __init__(self, dim: int, *, dtype: str, rngs: nnx.Rngs, norm: str = "rms"):
        self.norm = RMSNorm(dim, norm)
        kw = dict(dtype=dtype, kernel_init=fan_in_normal, rngs=rngs)
        self.to_qkv = nnx.Linear(dim, 3 * dim, **kw)
        self.proj = nnx.Linear(dim, dim, **kw)
        self.dtype = jnp.dtype(dtype)

    def __call__(self, x: Array) -> Array:
        b, f, h, w, c = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b * f, h * w, 1, 3 * c)
        q, k, v = jnp.split(qkv.astype(self.dtype), 3, axis=-1)
        y = jax.nn.dot_product_attention(q, k, v).reshape(b, f, h, w, c)
        return (x.astype(jnp.float32) + self.proj(y).astype(jnp.float32)).astype(self.dtype)


class MidBlock(nnx.Module):
    """ResBlock, optional spatial attention, ResBlock (Wan's mid block)."""

    def __init__(
        self,
        dim: int,
        *,
        attention: bool,
        dropout: float,
        dtype: str,
        rngs: nnx.Rngs,
        norm: str = "rms",
    ):
        kw = dict(dtype=dtype, rngs=rngs, norm=norm)
        self.resnets = nnx.List([ResBlock(dim, dim, dropout=dropout, **kw) for _ in range(2)])
        self.attention = SpatialAttention(dim, **kw) if attention else None

    def __call__(self, x: Array, cache: TimeCache | None = None) -> Array:
        x = self.resnets[0](x, cache)
        if self.attention is not None:
            x = self.attention(x)
        return self.resnets[1](x, cache)


def patchify(x: Array, p: int) -> Array:
    """[B, F, H, W, C] -> [B, F, H/p, W/p, C*p*p] (each pixel's p x p block as channels)."""
    if p == 1:
        return x
    b, f, h, w, c = x.shape
    x = x.reshape(b, f, h // p, p, w // p, p, c)
    return jnp.moveaxis(x, 3, 4).reshape(b, f, h // p, w // p, p * p * c)


def unpatchify(x: Array, p: int) -> Array:
    """Inverse of `patchify`: [B, F, h, w, C*p*p] -> [B, F, h*p, w*p, C]."""
    if p == 1:
        return x
    b, f, h, w, cpp = x.shape
    x = jnp.moveaxis(x.reshape(b, f, h, w, p, p, cpp // (p * p)), 4, 3)
    return x.reshape(b, f, h * p, w * p, cpp // (p * p))


def add_f32(x: Array, skip: Array) -> Array:
    """x + skip computed in fp32, stored in x's dtype (residual adds of the bf16 VAE)."""
    return (x.astype(jnp.float32) + skip.astype(jnp.float32)).astype(x.dtype)


def pool_shortcut(x: Array, first: bool, time: bool) -> Array:
    """Parameter-free path of a `Downsample` with shortcuts: 2x2 (x2 in time) average pooling.

    Time pairs frames (1, 2), (3, 4), ... after passing frame 0 of the sequence through, the same
    frames the learned time conv of output j reads last; a later chunk pairs its own frames
    (chunks after the first have an even length), so chunked and full passes agree.
    """
    b, f, h, w, c = x.shape
    x = x.astype(jnp.float32).reshape(b, f, h // 2, 2, w // 2, 2, c).mean((3, 5))
    if not time:
        return x
    head = x[:, :1] if first else x[:, :0]
    body = x[:, 1:] if first else x
    body = body.reshape(b, body.shape[1] // 2, 2, h // 2, w // 2, c).mean(2)
    return jnp.concatenate([head, body], axis=1)


def unshuffle_shortcut(x: Array, cout: int, first: bool, time: bool) -> Array:
    """Parameter-free path of an `Upsample` with shortcuts (DC-AE's channel-to-space shortcut).

    Each frame is repeated twice in time (frame 0 of the sequence once), each pixel's channels
    spread over its 2x2 children (C -> C/4), then the channels are duplicated up to `cout`.
    """
    b, f, h, w, c = x.shape
    x = x.astype(jnp.float32)
    if time:
        head = x[:, :1] if first else x[:, :0]
        body = jnp.repeat(x[:, 1:] if first else x, 2, axis=1)
        x = jnp.concatenate([head, body], axis=1)
        f = x.shape[1]
    x = x.reshape(b, f, h, w, c // 4, 2, 2)
    x = jnp.moveaxis(x, 5, 3).reshape(b, f, 2 * h, w, c // 4, 2)
    x = jnp.moveaxis(x, 5, 4).reshape(b, f, 2 * h, 2 * w, c // 4)
    return jnp.repeat(x, cout // (c // 4), axis=-1)


class Downsample(nnx.Module):
    """Halves H and W (pad bottom/right by 1, 3x3 stride-2 conv); with `time`, also halves F.

    Time: a 3-tap stride-2 conv without padding over [x0, x1, ...] after passing x0 through, so
    1 + 2m frames become 1 + m and output j >= 1 sees input frames 2j-2 .. 2j (Wan's downsample3d).
    `shortcut` adds the average-pooled input (`pool_shortcut`; not in Wan 2.1).
    """

    def __init__(self, dim: int, *, time: bool, dtype: str, rngs: nnx.Rngs, shortcut=False):
        self.spatial = Conv2d(dim, dim, stride=2, padding=((0, 1), (0, 1)), dtype=dtype, rngs=rngs)
        self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), dtype=dtype, rngs=rngs) if time else None
        self.shortcut = shortcut

    def __call__(self, x: Array, cache: TimeCache | None = None) -> Array:
        y = self._learned(x, cache)
        if not self.shortcut:
            return y
        return add_f32(y, pool_shortcut(x, is_first(cache), self.time_conv is not None))

    def _learned(self, x: Array, cache: TimeCache | None) -> Array:
        x = self.spatial(x)
        if self.time_conv is None:
            return x
        if is_first(cache):
            head = x[:, :1]
            if x.shape[1] >= 3:
                body = self.time_conv.conv(x, time_stride=2)
                head = jnp.concatenate([head, body.astype(head.dtype)], axis=1)
            y = head
        else:
            past = cache.take()
            y = self.time_conv.conv(jnp.concatenate([past.astype(x.dtype), x], 1), time_stride=2)
        if cache is not None:
            cache.put(x[:, -1:])
        return y


class Upsample(nnx.Module):
    """Doubles H and W (nearest, then 3x3 conv to `cout`); with `time`, also doubles F but x0.

    Time: a causal 3-tap conv to 2*dim channels over frames 1.. (frame 0 excluded, zeros before
    frame 1, as Wan's 'Rep' cache does), each output frame split into two frames; 1 + m frames
    become 1 + 2m. `shortcut` adds `unshuffle_shortcut` of the input (not in Wan 2.1).
    """

    def __init__(
        self, dim: int, cout: int, *, time: bool, dtype: str, rngs: nnx.Rngs, shortcut=False
    ):
        if shortcut and (dim % 4 or cout % (dim // 4)):
            raise ValueError(
                f"an upsampler shortcut from {dim} to {cout} channels needs {dim} divisible by 4 "
                f"and {cout} by {dim} / 4."
            )
        self.time_conv = (
            CausalConv3d(dim, 2 * dim, (3, 1, 1), dtype=dtype, rngs=rngs) if time else None
        )
        self.spatial = Conv2d(dim, cout, stride=1, padding=((1, 1), (1, 1)), dtype=dtype, rngs=rngs)
        self.shortcut = shortcut
        self.cout = cout

    def _time(self, x: Array, cache: TimeCache | None) -> Array:
        head = None
        if is_first(cache):
            head, x = x[:, :1], x[:, 1:]
        b, f, h, w, c = x.shape
        y = self.time_conv(x, cache).reshape(b, f, h, w, 2, c)
        y = jnp.moveaxis(y, 4, 2).reshape(b, 2 * f, h, w, c).astype(x.dtype)
        return y if head is None else jnp.concatenate([head, y], axis=1)

    def __call__(self, x: Array, cache: TimeCache | None = None) -> Array:
        time = self.time_conv is not None
        skip = unshuffle_shortcut(x, self.cout, is_first(cache), time) if self.shortcut else None
        if time:
            x = self._time(x, cache)
        x = self.spatial(jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3))
        return x if skip is None else add_f32(x, skip)

"""Causal 3D VAE (video compression network), able to express the Wan 2.1 VAE exactly.

Legend: B batch, F frames, H W pixel height/width, T latent frames, h w latent height/width,
z latent channels. Videos are `[B, F, H, W, 3]` in [-1, 1]; latents are `[B, T, h, w, z]` with
T = 1 + (F - 1) / temporal_factor, h = H / spatial_factor, w = W / spatial_factor.

Layout (Wan 2.1, diffusers `AutoencoderKLWan`): encoder = causal conv_in, per level
`num_res_blocks` ResBlocks then a (spatial, optionally temporal) downsampler, mid block
(ResBlock, single-head spatial attention, ResBlock), RMS norm, SiLU, conv_out to 2z channels, then
a 1x1x1 `quant_conv`; decoder = 1x1x1 `post_quant_conv`, conv_in, mid block, per level
`num_res_blocks + 1` ResBlocks and an upsampler that halves channels, norm, SiLU, conv_out.

Options beyond Wan 2.1 (off by default): `patch_size` folds p x p pixels into channels before
conv_in and unfolds them after conv_out (every level runs at 1/p the resolution); `shortcuts`
adds parameter-free paths around every resampler and the latent bottleneck (average pooling /
channel-to-space with channel averaging / duplication, as DC-AE and the Wan 2.2 VAE do).

`encode`/`decode` run the whole sequence at once; `encode_chunked`/`decode_chunked` run the first
frame, then fixed-size chunks with a per-conv cache of past frames in one `lax.scan`, computing
the same numbers with memory that does not grow with length (this is how Wan runs, too).
`decode_tiled` also splits space into overlapping tiles blended with linear ramps.
`sora_jax.models.vae_stream.StreamingVAE` runs the same chunks with one compiled chunk step
reused for any length, outputs streamed to the host (measured on an H100 at 480x832, bf16:
0.36x diffusers' encode time and 0.38x its decode time, 321-frame decode in the memory of an
81-frame one; tools/bench/vae.py).

Under a mesh every activation is constrained to batch over ('data', 'fsdp') and height over
'context' (`shard_video`), so a clip too large for one device spreads its rows over several.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sora_jax import parallel  # the sharding vocabulary only
from sora_jax.models.vae_blocks import (
    NORMS,
    CausalConv3d,
    Downsample,
    MidBlock,
    ResBlock,
    RMSNorm,
    TimeCache,
    Upsample,
    add_f32,
    patchify,
    silu,
    unpatchify,
)

Array = jax.Array
LOGVAR_INIT = -8.0
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers DiagonalGaussianDistribution clamps logvar here


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    base_channels: int = 96
    channel_mults: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)  # per down level; Wan: F,T,T
    z_channels: int = 16
    mid_attention: bool = True
    dropout: float = 0.0
    dtype: str = "float32"
    norm: str = "rms"  # "rms" (Wan) | "none": learned channel scale only (vae_blocks.RMSNorm)
    # Parameter-free residual paths around every resampler and the latent bottleneck (as DC-AE
    # and the Wan 2.2 VAE have; Wan 2.1 has none, so its weights need False).
    shortcuts: bool = False
    # Pixels per side folded into channels before the first conv (and unfolded after the last):
    # 2 runs every level at half the resolution, so the VAE costs ~1/4 of the FLOPs per pixel
    # for the same total compression (spatial_factor = patch_size * 2^(levels - 1); as the Wan
    # 2.2 VAE does). 1 for Wan 2.1.
    patch_size: int = 1

    def __post_init__(self):
        if self.patch_size < 1:
            raise ValueError(f"vae.patch_size={self.patch_size} must be a positive integer.")
        if self.norm not in NORMS:
            raise ValueError(f"vae.norm={self.norm!r} must be one of {NORMS}.")
        if len(self.temporal_downsample) != len(self.channel_mults) - 1:
            raise ValueError(
                f"temporal_downsample={self.temporal_downsample} must have one entry per down "
                f"level, i.e. len(channel_mults) - 1 = {len(self.channel_mults) - 1} entries."
            )
        top = self.base_channels * self.channel_mults[-1]
        if self.shortcuts and top % self.z_channels:
            raise ValueError(
                f"vae.shortcuts needs the deepest width {top} to be a multiple of "
                f"z_channels={self.z_channels} (channels are averaged / repeated in groups)."
            )
        for m in self.channel_mults[1:]:
            if (self.base_channels * m) % 2:
                raise ValueError(
                    f"base_channels * channel_mults = {self.base_channels * m} must be even "
                    "(the decoder's upsamplers halve channels)."
                )

    @property
    def spatial_factor(self) -> int:
        return self.patch_size * 2 ** (len(self.channel_mults) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(bool(t) for t in self.temporal_downsample)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(T, h, w, z) of the latents of a `num_frames` x `height` x `width` video; raises a
        one-sentence ValueError for a size the VAE cannot take."""
        tf, sf = self.temporal_factor, self.spatial_factor
        if num_frames < 1 or (num_frames - 1) % tf:
            raise ValueError(
                f"num_frames={num_frames} is not supported; expected 1 + {tf}*k frames "
                f"(1, {1 + tf}, {1 + 2 * tf}, ...)."
            )
        if height % sf or width % sf or height < sf or width < sf:
            raise ValueError(
                f"frame size {height}x{width} is not supported; expected height and width "
                f"that are positive multiples of {sf}."
            )
        return (1 + (num_frames - 1) // tf, height // sf, width // sf, self.z_channels)


# Activation sharding under a mesh (no-op without one): batch over the data axes and, when the
# mesh has a 'context' axis > 1, frame height over it (XLA exchanges conv halos between
# neighbours), so a clip too large for one device spreads over several.
VIDEO_AXES = ("activation_batch", None, "activation_height", None, None)  # [B, F, H, W, C]
SHARDING_RULES = (("activation_batch", ("data", "fsdp")), ("activation_height", "context"))


def shard_video(x: Array) -> Array:
    """Constrains a [B, F, H, W, C] activation to the VAE's sharding (see VIDEO_AXES)."""
    return parallel.constrain(x, VIDEO_AXES, rules=SHARDING_RULES)


def to_pixels(video_uint8: Array) -> Array:
    """uint8 [..., 3] -> float32 in [-1, 1], the range the VAE encodes and decodes."""
    return video_uint8.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(x: Array) -> Array:
    """A decoded video in [-1, 1] -> uint8, rounded and clipped."""
    return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


class Encoder(nnx.Module):
    """[B, F, H, W, 3] -> [B, T, h, w, 2z] (pre-quant_conv moments)."""

    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.dtype, rngs=rngs)
        dims = [cfg.base_channels * m for m in (1, *cfg.channel_mults)]
        self.patch = cfg.patch_size
        self.conv_in = CausalConv3d(3 * self.patch**2, dims[0], (3, 3, 3), **kw)
        blocks = []
        last = len(cfg.channel_mults) - 1
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(cin, cout, dropout=cfg.dropout, norm=cfg.norm, **kw))
                cin = cout
            if i != last:
                blocks.append(
                    Downsample(cout, time=cfg.temporal_downsample[i], shortcut=cfg.shortcuts, **kw)
                )
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(
            dims[-1], attention=cfg.mid_attention, dropout=cfg.dropout, norm=cfg.norm, **kw
        )
        self.norm_out = RMSNorm(dims[-1], cfg.norm)
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_channels, (3, 3, 3), **kw)
        self.z_channels = cfg.z_channels
        self.shortcut = cfg.shortcuts

    def __call__(self, x: Array, cache: TimeCache | None = None) -> Array:
        x = shard_video(self.conv_in(shard_video(patchify(x, self.patch)), cache))
        for block in self.down_blocks:
            x = shard_video(block(x, cache))
        x = self.mid_block(x, cache)
        h = self.conv_out(silu(self.norm_out(x)), cache)
        if not self.shortcut:
            return h
        # Bottleneck shortcut: the means get the features averaged in groups of C / z channels.
        b, f, hh, ww, c = x.shape
        z = self.z_channels
        mean = x.astype(jnp.float32).reshape(b, f, hh, ww, z, c // z).mean(-1)
        return h.astype(jnp.float32).at[..., :z].add(mean).astype(h.dtype)


class UpBlock(nnx.Module):
    """`num_res_blocks + 1` ResBlocks, then an optional upsampler to cout // 2 channels."""

    def __init__(self, cin: int, cout: int, cfg: VAEConfig, up: str | None, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.dtype, rngs=rngs)
        self.resnets = nnx.List(
            [
                ResBlock(cin if j == 0 else cout, cout, dropout=cfg.dropout, norm=cfg.norm, **kw)
                for j in range(cfg.num_res_blocks + 1)
            ]
        )
        self.upsampler = (
            None
            if up is None
            else Upsample(cout, cout // 2, time=up == "3d", shortcut=cfg.shortcuts, **kw)
        )

    def __call__(self, x: Array, cache: TimeCache | None = None) -> Array:
        for block in self.resnets:
            x = block(x, cache)
        return x if self.upsampler is None else self.upsampler(x, cache)


class Decoder(nnx.Module):
    """[B, T, h, w, z] -> [B, F, H, W, 3] (after post_quant_conv, before clipping)."""

    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.dtype, rngs=rngs)
        mults = cfg.channel_mults
        dims = [cfg.base_channels * m for m in (mults[-1], *mults[::-1])]
        time_up = cfg.temporal_downsample[::-1]
        self.conv_in = CausalConv3d(cfg.z_channels, dims[0], (3, 3, 3), **kw)
        self.mid_block = MidBlock(
            dims[0], attention=cfg.mid_attention, dropout=cfg.dropout, norm=cfg.norm, **kw
        )
        blocks = []
        last = len(mults) - 1
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            # Every upsampler halves channels, so levels after the first get half their width in.
            cin = cin // 2 if i > 0 else cin
            up = None if i == last else ("3d" if time_up[i] else "2d")
            blocks.append(UpBlock(cin, cout, cfg, up, rngs=rngs))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = RMSNorm(dims[-1], cfg.norm)
        self.patch = cfg.patch_size
        self.conv_out = CausalConv3d(dims[-1], 3 * self.patch**2, (3, 3, 3), **kw)
        self.repeat = dims[0] // cfg.z_channels if cfg.shortcuts else 0

    def features(self, z: Array, cache: TimeCache | None = None) -> Array:
        """Everything but `conv_out`: [B, T, h, w, z] -> [B, F, H, W, base_channels]."""
        x = self.conv_in(shard_video(z), cache)
        if self.repeat:  # bottleneck shortcut: each latent channel repeated C / z times
            x = add_f32(x, jnp.repeat(z, self.repeat, axis=-1))
        x = shard_video(x)
        x = self.mid_block(x, cache)
        for block in self.up_blocks:
            x = shard_video(block(x, cache))
        return silu(self.norm_out(x))

    def to_pixels(self, feats: Array, cache: TimeCache | None = None) -> Array:
        """`conv_out` and the patch unfolding: features -> [B, F, H, W, 3]."""
        return unpatchify(self.conv_out(feats, cache), self.patch)

    def __call__(self, z: Array, cache: TimeCache | None = None) -> Array:
        return self.to_pixels(self.features(z, cache), cache)


def _is_concrete(x) -> bool:
    return not isinstance(x, (jax.core.Tracer, jax.ShapeDtypeStruct))


def _check_finite(x, what: str) -> None:
    # Only when the values exist (eager calls); under jit the check would cost a sync.
    if not _is_concrete(x):
        return
    try:
        finite = bool(np.isfinite(x).all() if isinstance(x, np.ndarray) else jnp.isfinite(x).all())
    except jax.errors.ConcretizationTypeError:  # a constant inside a trace: values unknown yet
        return
    if not finite:
        raise ValueError(f"{what} contains NaN or Inf values; expected finite numbers.")


class CausalVAE(nnx.Module):
    """Video VAE: `encode` -> (mean, logvar) latents, `decode` -> video; causal in time."""

    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        z = cfg.z_channels
        self.encoder = Encoder(cfg, rngs=rngs)
        self.quant_conv = CausalConv3d(2 * z, 2 * z, (1, 1, 1), dtype=cfg.dtype, rngs=rngs)
        # Start nearly deterministic (posterior std ~0.02): with logvar ~ 0 the sampling noise
        # swamps the young encoder's means and the decoder learns to ignore z (measured on the
        # world: stuck at 19 dB vs 23 dB after 1000 steps). Imported weights overwrite this.
        bias = self.quant_conv.bias[...]
        self.quant_conv.bias.set_value(bias.at[z:].set(LOGVAR_INIT))
        self.post_quant_conv = CausalConv3d(z, z, (1, 1, 1), dtype=cfg.dtype, rngs=rngs)
        self.decoder = Decoder(cfg, rngs=rngs)
        self.spatial_factor: int = cfg.spatial_factor
        self.temporal_factor: int = cfg.temporal_factor

    # ---- shapes and input checks (host side: shapes are static even under jit) ----

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(T, h, w, z) of the latents of a `num_frames` x `height` x `width` video."""
        return self.cfg.latent_shape(num_frames, height, width)

    def _check_video(self, x: Array) -> None:
        if x.ndim != 5 or x.shape[-1] != 3:
            raise ValueError(
                f"video of shape {tuple(x.shape)} is not supported; expected [B, F, H, W, 3]."
            )
        self.latent_shape(*x.shape[1:4])
        _check_finite(x, "the input video")

    def _check_latent(self, z: Array) -> None:
        if z.ndim != 5 or z.shape[-1] != self.cfg.z_channels or z.shape[1] < 1:
            raise ValueError(
                f"latent of shape {tuple(z.shape)} is not supported; expected "
                f"[B, T, h, w, {self.cfg.z_channels}] with T >= 1."
            )
        _check_finite(z, "the latent")

    # ---- full-sequence passes ----

    def _moments(self, h: Array) -> tuple[Array, Array]:
        mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def encode(self, x: Array) -> tuple[Array, Array]:
        """Video [B, F, H, W, 3] in [-1, 1] -> (mean, logvar), each [B, T, h, w, z] fp32."""
        self._check_video(x)
        return self._moments(self.quant_conv(self.encoder(x)))

    def decode(self, z: Array, *, clip: bool = True) -> Array:
        """Latents [B, T, h, w, z] -> video [B, 1 + (T-1)*tf, h*sf, w*sf, 3] fp32.

        `clip` clamps to [-1, 1] as Wan does at inference; training passes clip=False so that
        out-of-range pixels still get a gradient.
        """
        self._check_latent(z)
        x = self.decoder(self.post_quant_conv(z)).astype(jnp.float32)
        return jnp.clip(x, -1.0, 1.0) if clip else x

    def __call__(self, x: Array, *, rng: Array | None = None) -> tuple[Array, Array, Array]:
        """(recon, mean, logvar); z ~ N(mean, exp(logvar)) with `rng`, else z = mean.

        recon is not clipped (the training path); all three are fp32.
        """
        mean, logvar = self.encode(x)
        z = mean
        if rng is not None:
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
        return self.decode(z, clip=False), mean, logvar

    # ---- chunked passes: first frame alone, then equal chunks under one lax.scan ----
    # Inference paths: with dropout > 0 call `model.eval()` first (no RNG updates inside scan).

    def _run_chunked(self, net, x: Array, chunk: int) -> Array:
        first = TimeCache(first=True)
        y0 = net(x[:, :1], first)
        rest = x[:, 1:]
        n = rest.shape[1] // chunk
        if n == 0:
            return y0
        b = x.shape[0]
        xs = jnp.moveaxis(rest.reshape(b, n, chunk, *rest.shape[2:]), 1, 0)

        def step(state, xc):
            cache = TimeCache(first=False, incoming=state)
            y = net(xc, cache)
            return cache.outgoing, y

        _, ys = jax.lax.scan(step, first.outgoing, xs)
        ys = jnp.moveaxis(ys, 0, 1).reshape(b, -1, *ys.shape[3:])
        return jnp.concatenate([y0, ys.astype(y0.dtype)], axis=1)

    def encode_chunked(
        self, x: Array, *, frames_per_chunk: int | None = None
    ) -> tuple[Array, Array]:
        """Same as `encode` (to fp32 rounding), frame 0 then `frames_per_chunk` (default tf)."""
        self._check_video(x)
        chunk = frames_per_chunk or self.temporal_factor
        if chunk % self.temporal_factor or (x.shape[1] - 1) % chunk:
            raise ValueError(
                f"frames_per_chunk={chunk} is not supported for {x.shape[1]} frames; expected a "
                f"multiple of {self.temporal_factor} that divides num_frames - 1."
            )
        net = lambda xc, cache: self.quant_conv(self.encoder(xc, cache))
        return self._moments(self._run_chunked(net, x, chunk))

    def decode_chunked(self, z: Array, *, latents_per_chunk: int = 1, clip: bool = True) -> Array:
        """Same as `decode` (to fp32 rounding), latent frame 0 then `latents_per_chunk` each."""
        self._check_latent(z)
        if latents_per_chunk < 1 or (z.shape[1] - 1) % latents_per_chunk:
            raise ValueError(
                f"latents_per_chunk={latents_per_chunk} is not supported for {z.shape[1]} latent "
                "frames; expected a positive number that divides T - 1."
            )
        net = lambda zc, cache: self.decoder(self.post_quant_conv(zc), cache)
        x = self._run_chunked(net, z, latents_per_chunk).astype(jnp.float32)
        return jnp.clip(x, -1.0, 1.0) if clip else x

    def decode_tiled(
        self, z: Array, *, tile: int = 32, overlap: int = 8, clip: bool = True
    ) -> Array:
        """`decode_chunked` over overlapping spatial tiles of `tile` latent pixels, blended.

        Bounds peak memory by the tile size for large frames. Tiles overlap by `overlap` latent
        pixels; in the overlap, outputs are mixed with linear ramps, so seams fade instead of
        stepping (the result is close to, not equal to, `decode`: receptive fields are cut).
        """
        self._check_latent(z)
        if not 0 <= overlap < tile:
            raise ValueError(f"overlap={overlap} is not supported; expected 0 <= overlap < {tile}.")
        sf = self.spatial_factor
        b, t, h, w, _ = z.shape
        out = jnp.zeros((b, 1 + (t - 1) * self.temporal_factor, h * sf, w * sf, 3), jnp.float32)
        total = jnp.zeros((h * sf, w * sf, 1), jnp.float32)
        for i in _tile_starts(h, tile, overlap):
            for j in _tile_starts(w, tile, overlap):
                zt = z[:, :, i : i + tile, j : j + tile]
                dec = self.decode_chunked(zt, clip=False)
                wy = _ramp(zt.shape[2] * sf, overlap * sf, i > 0, i + tile < h)
                wx = _ramp(zt.shape[3] * sf, overlap * sf, j > 0, j + tile < w)
                weight = (wy[:, None] * wx[None, :])[:, :, None]
                rows = slice(i * sf, i * sf + dec.shape[2])
                cols = slice(j * sf, j * sf + dec.shape[3])
                out = out.at[:, :, rows, cols].add(dec * weight)
                total = total.at[rows, cols].add(weight)
        out = out / total
        return jnp.clip(out, -1.0, 1.0) if clip else out


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets covering [0, size): stride tile - overlap, the last one flush with the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    return starts + [size - tile]


def _ramp(length: int, width: int, lead: bool, trail: bool) -> Array:
    """Blend weights along one tile axis: rising over `width` px where a neighbour precedes it,
    falling where one follows; 1 elsewhere (image borders get full weight)."""
    pos = jnp.arange(length, dtype=jnp.float32)
    ramp = jnp.ones((length,), jnp.float32)
    if width > 0 and lead:
        ramp = jnp.minimum(ramp, (pos + 0.5) / width)
    if width > 0 and trail:
        ramp = jnp.minimum(ramp, (length - pos - 0.5) / width)
    return ramp

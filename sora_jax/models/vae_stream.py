"""Encode and decode videos of any length with two compiled programs, memory flat in length.

Legend: B batch, F frames, H W pixel height/width, T latent frames, h w latent height/width,
z latent channels.

`CausalVAE.encode_chunked` / `decode_chunked` run the chunks under one `lax.scan` inside a jit,
which suits jitted callers but compiles one program per length and holds the whole output on
the device. `StreamingVAE` instead jits one program for the first chunk and one *chunk step*
`(params, cache, chunk) -> (output, cache)` that is reused for every later chunk and every
length. Inputs are sliced chunk by chunk (from the host or the device); decoded frames can go to
the host as they are made, so device memory holds the parameters, the per-conv cache and one
chunk's activations, whatever the length (a 321-frame decode peaks where an 81-frame one does).

    stream = StreamingVAE(vae, param_dtype="bfloat16")
    mean, logvar = stream.encode(video)          # [B, F, H, W, 3] in [-1, 1] -> [B, T, h, w, z]
    frames = stream.decode(mean)                 # numpy [B, F, H, W, 3] in [-1, 1]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sora_jax.models.vae import CausalVAE
from sora_jax.models.vae_blocks import TimeCache

Array = jax.Array


def _cast_floats(state, dtype):
    return jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p,
                        state)  # fmt: skip


class StreamingVAE:
    """Chunked encode/decode with one compiled step reused along time (see module docstring)."""

    def __init__(
        self,
        vae: CausalVAE,
        *,
        param_dtype: str | None = None,
        frames_per_chunk: int | None = None,
        latents_per_chunk: int = 1,
    ):
        """`param_dtype` casts the parameters once (e.g. 'bfloat16' for inference: half the
        weight memory, no per-chunk casts); by default they stay as they are."""
        self.vae = vae
        self.graphdef, state = nnx.split(vae)
        self.state = state if param_dtype is None else _cast_floats(state, jnp.dtype(param_dtype))
        self.frames_per_chunk = int(frames_per_chunk or vae.temporal_factor)
        self.latents_per_chunk = int(latents_per_chunk)
        if self.frames_per_chunk % vae.temporal_factor or self.frames_per_chunk < 1:
            raise ValueError(
                f"frames_per_chunk={self.frames_per_chunk} is not supported; expected a positive "
                f"multiple of {vae.temporal_factor}."
            )
        if self.latents_per_chunk < 1:
            raise ValueError(f"latents_per_chunk={latents_per_chunk} must be positive.")
        enc, dec = self._encode_net, self._decode_net
        self._enc_first = jax.jit(lambda s, x: self._step(s, None, x, enc))
        self._enc_step = jax.jit(lambda s, c, x: self._step(s, c, x, enc), donate_argnums=(1,))
        # The decode programs clip (when asked) and cast to fp32 on the device, in the epilogue.
        self._dec_first = jax.jit(lambda s, z, clip: self._step(s, None, z, dec, clip),
                                  static_argnums=(2,))  # fmt: skip
        self._dec_step = jax.jit(lambda s, c, z, clip: self._step(s, c, z, dec, clip),
                                 static_argnums=(3,), donate_argnums=(1,))  # fmt: skip
        self._slice = jax.jit(
            lambda x, start, size: jax.lax.dynamic_slice_in_dim(x, start, size, axis=1),
            static_argnums=(2,),
        )

    # ---- the two programs ----

    @staticmethod
    def _encode_net(vae: CausalVAE, x: Array, cache: TimeCache) -> Array:
        return vae.quant_conv(vae.encoder(x, cache))

    @staticmethod
    def _decode_net(vae: CausalVAE, z: Array, cache: TimeCache) -> Array:
        return vae.decoder(vae.post_quant_conv(z), cache)

    def _step(self, state, past: list[Array] | None, x: Array, net, clip: bool | None = None):
        """One chunk: (output, cache for the next chunk); `past` None = the chunk at frame 0."""
        cache = TimeCache(first=past is None, incoming=past)
        y = net(nnx.merge(self.graphdef, state), x, cache)
        if clip is not None:
            y = y.astype(jnp.float32)
            y = jnp.clip(y, -1.0, 1.0) if clip else y
        return y, cache.outgoing

    # ---- driving them ----

    def _chunks(self, x, chunk: int):
        """Yields x[:, :1], then x[:, 1 + k*chunk : 1 + (k+1)*chunk] as device arrays."""
        if isinstance(x, np.ndarray):  # host input: only one chunk at a time on the device
            yield jnp.asarray(x[:, :1])
            for start in range(1, x.shape[1], chunk):
                yield jnp.asarray(x[:, start : start + chunk])
            return
        yield self._slice(x, 0, 1)
        for start in range(1, x.shape[1], chunk):
            yield self._slice(x, jnp.int32(start), chunk)

    def _run(self, x, chunk: int, first, step, sink, *static) -> None:
        chunks = self._chunks(x, chunk)
        y, cache = first(self.state, next(chunks), *static)
        sink(y)
        for xc in chunks:
            y, cache = step(self.state, cache, xc, *static)
            sink(y)

    def encode(self, video) -> tuple[Array, Array]:
        """Video [B, F, H, W, 3] in [-1, 1] (numpy or device) -> (mean, logvar) [B, T, h, w, z]
        fp32 on the device; equals `CausalVAE.encode` up to the compute dtype's rounding."""
        if isinstance(video, np.ndarray):  # checked on the host: never all of it on the device
            self.vae._check_video(jax.ShapeDtypeStruct(video.shape, jnp.float32))
            if not np.isfinite(video).all():
                raise ValueError("the input video contains NaN or Inf values; expected finite.")
        else:
            self.vae._check_video(video)
        if (video.shape[1] - 1) % self.frames_per_chunk:
            raise ValueError(
                f"{video.shape[1]} frames do not split into chunks of frames_per_chunk="
                f"{self.frames_per_chunk} after the first; expected 1 + k*{self.frames_per_chunk}."
            )
        parts: list[Array] = []
        self._run(video, self.frames_per_chunk, self._enc_first, self._enc_step, parts.append)
        moments = jnp.concatenate(parts, axis=1).astype(jnp.float32)
        return self.vae._moments(moments)

    def decode(self, z, *, to_host: bool = True, clip: bool = True):
        """Latents [B, T, h, w, z] -> video [B, F, H, W, 3] fp32: numpy when `to_host` (each
        chunk leaves the device as soon as it is made), else one device array."""
        self.vae._check_latent(jnp.asarray(z))  # latents are small
        if (z.shape[1] - 1) % self.latents_per_chunk:
            raise ValueError(
                f"{z.shape[1]} latent frames do not split into chunks of latents_per_chunk="
                f"{self.latents_per_chunk} after the first; expected 1 + k*latents_per_chunk."
            )
        b, t = z.shape[:2]
        sf, tf = self.vae.spatial_factor, self.vae.temporal_factor
        shape = (b, 1 + (t - 1) * tf, z.shape[2] * sf, z.shape[3] * sf, 3)
        if not to_host:
            parts: list[Array] = []
            self._run(
                z, self.latents_per_chunk, self._dec_first, self._dec_step, parts.append, clip
            )
            return jnp.concatenate(parts, axis=1)
        out = np.empty(shape, np.float32)
        pending: list[tuple[int, Array]] = []
        written = 0

        def sink(y: Array) -> None:
            nonlocal written
            y.copy_to_host_async()  # overlaps the copy with the next chunks' compute
            pending.append((written, y))
            written += y.shape[1]
            while len(pending) > 2:  # fetch the oldest; two chunks stay in flight
                _put(*pending.pop(0))

        def _put(start: int, y: Array) -> None:
            out[:, start : start + y.shape[1]] = np.asarray(y)

        self._run(z, self.latents_per_chunk, self._dec_first, self._dec_step, sink, clip)
        for item in pending:
            _put(*item)
        return out

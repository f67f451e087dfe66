"""3D patch discriminator for adversarial VAE training (PatchGAN, Isola et al. 2017, in 3D).

Legend: B batch, F frames, H W height/width, C channels. Input `[B, F, H, W, 3]` in [-1, 1];
output one logit per space-time patch, `[B, F, H / 2**L, W / 2**L]` for L strided layers.

Layout (taming-transformers' NLayerDiscriminator with 3D kernels): a (3, 4, 4) conv with stride
(1, 2, 2) and LeakyReLU(0.2); L - 1 more such convs, each with a LayerNorm over channels (batch
statistics would couple the samples of a batch); a (3, 3, 3) conv at stride 1, norm, LeakyReLU;
a (3, 3, 3) conv to one channel. Time is padded on both sides (the critic need not be causal) and
never strided, so a 1-frame image is scored like a video frame.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sora_jax.models.vae_blocks import fan_in_normal

Array = jax.Array


class Conv3d(nnx.Module):
    """Plain 3D conv, channels-last; time padded (1, 1), space padded 1 on each side."""

    def __init__(self, cin: int, cout: int, kernel, stride, *, dtype: str, rngs: nnx.Rngs):
        self.kernel = nnx.Param(fan_in_normal(rngs.params(), (*kernel, cin, cout)))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))
        self.stride = tuple(stride)
        self.dtype = jnp.dtype(dtype)

    def __call__(self, x: Array) -> Array:
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            self.kernel[...].astype(self.dtype),
            window_strides=self.stride,
            padding=((1, 1), (1, 1), (1, 1)),
            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        )
        return y + self.bias[...].astype(self.dtype)


class PatchDiscriminator3D(nnx.Module):
    """Video -> patch logits (see module docstring); parameters fp32, convs in `dtype`."""

    def __init__(
        self, channels: int = 64, num_layers: int = 3, *, dtype: str = "float32", rngs: nnx.Rngs
    ):
        if num_layers < 1 or channels < 1:
            raise ValueError(
                f"discriminator channels={channels}, num_layers={num_layers}; expected >= 1 each."
            )
        kw = dict(dtype=dtype, rngs=rngs)
        widths = [channels * min(2**i, 8) for i in range(num_layers + 1)]
        self.convs = nnx.List(
            [Conv3d(3, widths[0], (3, 4, 4), (1, 2, 2), **kw)]
            + [
                Conv3d(widths[i - 1], widths[i], (3, 4, 4), (1, 2, 2), **kw)
                for i in range(1, num_layers)
            ]  # fmt: skip
            + [Conv3d(widths[num_layers - 1], widths[num_layers], (3, 3, 3), (1, 1, 1), **kw)]
        )
        self.norms = nnx.List([nnx.LayerNorm(w, rngs=rngs) for w in widths[1:]])
        self.out = Conv3d(widths[num_layers], 1, (3, 3, 3), (1, 1, 1), **kw)

    def __call__(self, x: Array) -> Array:
        """[B, F, H, W, 3] -> logits [B, F, H / 2**num_layers, W / 2**num_layers] (fp32)."""
        h = jax.nn.leaky_relu(self.convs[0](x), 0.2)
        for conv, norm in zip(self.convs[1:], self.norms, strict=True):
            h = jax.nn.leaky_relu(norm(conv(h).astype(jnp.float32)), 0.2)
        return self.out(h)[..., 0].astype(jnp.float32)

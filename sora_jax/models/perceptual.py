"""Perceptual distance (LPIPS, Zhang et al. 2018) with a VGG-style network from a local file.

Legend: N images, H W height/width, C channels. Images are `[N, H, W, 3]` in [-1, 1].

Nothing is downloaded: the user supplies a safetensors file holding a torchvision-style
`features` stack (`features.<i>.weight` [Co, Ci, 3, 3] and `.bias`, e.g. `vgg16().features`
saved with `safetensors.torch.save_file`), optionally with LPIPS's per-channel weights
(`lin<k>.model.1.weight`, [1, C, 1, 1]). Layers are 3x3 convs with ReLU; a gap of more than
2 between consecutive conv indices means a 2x2 max-pool in between (torchvision's
conv, relu[, pool] numbering), and the features of a stage are taken after its last ReLU —
for VGG16 that is LPIPS's relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.

distance = sum over stages of mean over pixels of sum_c w_c (f̂_a - f̂_b)^2, where f̂ is the
feature divided by its channel norm and w_c are LPIPS's weights (1/C each without them).
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

Array = jax.Array
# LPIPS' ScalingLayer: inputs in [-1, 1] -> roughly ImageNet-normalised.
SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALE = np.array([0.458, 0.448, 0.450], np.float32)


def _read(path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"perceptual network file {path!r} does not exist; expected a local .safetensors "
            "file with torchvision-style 'features.<i>.weight' keys (nothing is downloaded)."
        )
    with safe_open(path, framework="flax") as f:
        return {k: np.asarray(f.get_tensor(k), np.float32) for k in f.keys()}


class FeatureNet(nnx.Module):
    """VGG-style stages of 3x3 conv + ReLU, 2x2 max-pool between stages; frozen features."""

    def __init__(self, stages: list[list[tuple[np.ndarray, np.ndarray]]], lins: list[np.ndarray]):
        # stages[s] = [(kernel HWIO, bias), ...]; lins[s] = per-channel weights of stage s.
        self.kernels = nnx.List(
            [nnx.List([nnx.Param(jnp.asarray(k)) for k, _ in st]) for st in stages]
        )
        self.biases = nnx.List(
            [nnx.List([nnx.Param(jnp.asarray(b)) for _, b in st]) for st in stages]
        )
        self.lins = nnx.List([nnx.Param(jnp.asarray(w)) for w in lins])

    @classmethod
    def from_safetensors(cls, path: str) -> FeatureNet:
        tensors = _read(path)
        index = sorted(
            int(m.group(1)) for k in tensors if (m := re.fullmatch(r"features\.(\d+)\.weight", k))
        )
        if not index:
            raise ValueError(
                f"{path!r} has no 'features.<i>.weight' tensors; expected a torchvision-style "
                "VGG feature stack."
            )
        stages: list[list[tuple[np.ndarray, np.ndarray]]] = [[]]
        for prev, i in zip([None, *index[:-1]], index, strict=True):
            if prev is not None and i - prev > 2:  # conv, relu, pool, conv: a new stage
                stages.append([])
            w = tensors[f"features.{i}.weight"].transpose(2, 3, 1, 0)  # OIHW -> HWIO
            stages[-1].append((w, tensors[f"features.{i}.bias"]))
        lins = []
        for s, stage in enumerate(stages):
            width = stage[-1][0].shape[-1]
            lin = tensors.get(f"lin{s}.model.1.weight")
            lins.append(lin.reshape(-1) if lin is not None else np.full(width, 1.0 / width))
            if lins[-1].shape != (width,):
                raise ValueError(f"lin{s} of {path!r} has {lins[-1].size} weights, not {width}.")
        return cls(stages, lins)

    def features(self, x: Array) -> list[Array]:
        """[N, H, W, 3] in [-1, 1] -> one [N, H/2^s, W/2^s, C_s] map per stage s."""
        h = (x.astype(jnp.float32) - SHIFT) / SCALE
        out = []
        for s, (ks, bs) in enumerate(zip(self.kernels, self.biases, strict=True)):
            if s > 0:
                h = nnx.max_pool(h, (2, 2), strides=(2, 2))
            for k, b in zip(ks, bs, strict=True):
                h = jax.lax.conv_general_dilated(
                    h, k[...], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
                )
                h = jax.nn.relu(h + b[...])
            out.append(h)
        return out

    def distance(self, a: Array, b: Array) -> Array:
        """LPIPS-style distance per image: [N, H, W, 3] x2 -> [N]."""
        total = 0.0
        for fa, fb, w in zip(self.features(a), self.features(b), self.lins, strict=True):
            na = fa / (jnp.sqrt(jnp.sum(jnp.square(fa), -1, keepdims=True)) + 1e-10)
            nb = fb / (jnp.sqrt(jnp.sum(jnp.square(fb), -1, keepdims=True)) + 1e-10)
            total = total + jnp.mean(jnp.sum(w[...] * jnp.square(na - nb), -1), axis=(1, 2))
        return total

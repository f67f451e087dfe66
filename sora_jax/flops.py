"""Model FLOPs of the DiT and MFU (model FLOPs utilisation) for the train loop's metrics.

Einsum legend: B batch, N video tokens per sample (T'H'W' patches), L text tokens, D model dim,
F FFN hidden dim, T' latent frames after temporal patching, P = pt*ph*pw*C patch features.

Counted (2 FLOPs per multiply-add, forward pass of one sample), exactly the DiT's matmuls:

    patch embedding     2 N P_in D
    text embedder       2 L (text_dim D + D D)
    time embedder       2 T' (freq_dim D + D D) + 2 T' D 6D          (adaLN-single)
    per block:
      self-attention    2 N 4D^2  (q, k, v, out)  +  4 N^2 D  (QK^T and PV, bidirectional)
      cross-attention   2 N 2D^2  (q, out) + 2 L 2D^2  (k, v on text)  +  4 N L D
      FFN               2 N 2 D F
    output projection   2 N D P_out

Training counts 3x the forward (backward = 2x forward). Rematerialised recomputation is not
counted: MFU measures useful model FLOPs per second against the hardware peak, so remat shows
up as lower MFU, as in PaLM's definition. Norms, RoPE, softmax and modulation are elementwise
and not counted. Padded text tokens are counted (they are computed).

`mfu = model FLOPs per step * steps/s / (peak FLOP/s per device * devices)`, with the datasheet
dense bf16 peak from `sora_jax.train.metrics.peak_flops()`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from sora_jax.models.dit import DiTConfig

TRAIN_FACTOR = 3.0  # forward + backward (2x forward); recomputation not counted


def dit_forward_flops(
    cfg: DiTConfig, latent_grid: Sequence[int], text_len: int, batch: int = 1
) -> float:
    """Forward model FLOPs of `batch` samples with latents [T, H, W] and `text_len` tokens."""
    if len(latent_grid) != 3 or any(int(g) % int(p) for g, p in zip(latent_grid, cfg.patch_size)):
        raise ValueError(
            f"latent grid {tuple(latent_grid)} must be (T, H, W) divisible by patch_size "
            f"{cfg.patch_size}."
        )
    frames = latent_grid[0] // cfg.patch_size[0]
    n = math.prod(g // p for g, p in zip(latent_grid, cfg.patch_size))
    d, f, lt = cfg.dim, cfg.ffn_dim, text_len
    patch = math.prod(cfg.patch_size)
    embed = 2 * n * cfg.in_channels * patch * d + 2 * n * d * cfg.out_channels * patch
    text = 2 * lt * (cfg.text_dim * d + d * d)
    time = 2 * frames * (cfg.freq_dim * d + d * d) + 2 * frames * d * 6 * d
    self_attn = 2 * n * 4 * d * d + 4 * n * n * d
    cross_attn = 2 * n * 2 * d * d + 2 * lt * 2 * d * d + 4 * n * lt * d
    ffn = 2 * n * 2 * d * f
    per_block = self_attn + cross_attn + ffn
    return float(batch * (embed + text + time + cfg.num_layers * per_block))


def dit_train_flops(
    cfg: DiTConfig, latent_grid: Sequence[int], text_len: int, batch: int = 1
) -> float:
    """Model FLOPs of one training step (forward + backward, no recomputation)."""
    return TRAIN_FACTOR * dit_forward_flops(cfg, latent_grid, text_len, batch)


def dit_tokens(cfg: DiTConfig, latent_grid: Sequence[int], batch: int = 1) -> int:
    """Video tokens (patches) of `batch` samples with latents [T, H, W]."""
    return batch * math.prod(g // p for g, p in zip(latent_grid, cfg.patch_size))


def mfu(flops_per_step: float, steps_per_s: float, peak_per_device: float, devices: int) -> float:
    """Fraction of the devices' peak spent on model FLOPs."""
    return flops_per_step * steps_per_s / (peak_per_device * devices)


class ThroughputMeter:
    """Adds `tokens_per_s` and `mfu` to the loop's logged metrics.

    `cost(batch_shapes) -> (model FLOPs, tokens)` of one step, for a dict of host batch shapes
    (a task's `step_cost`); the meter averages it over the steps of a log interval, since
    buckets change shapes from step to step. `mfu` is left out where the device's peak is
    unknown (e.g. CPU).
    """

    def __init__(
        self,
        cost: Callable[[Mapping[str, tuple[int, ...]]], tuple[float, int]] | None,
        peak_per_device: float | None,
        devices: int,
    ):
        self.cost, self.peak, self.devices = cost, peak_per_device, devices
        self._cache: dict[tuple, tuple[float, int]] = {}
        self._flops, self._tokens, self._steps = 0.0, 0, 0

    @classmethod
    def for_task(cls, task: object, peak_per_device: float | None, devices: int):
        """A meter over a task's `flops_per_step(shapes)` / `tokens_per_step(shapes)`; one that
        reports nothing for a task without them."""
        if not hasattr(task, "flops_per_step"):
            return cls(None, peak_per_device, devices)

        def cost(shapes):
            return task.flops_per_step(shapes), task.tokens_per_step(shapes)

        return cls(cost, peak_per_device, devices)

    def add(self, batch: Mapping[str, object]) -> None:
        """Record one step's host batch (numpy arrays or anything with `.shape`)."""
        if self.cost is None:
            return
        shapes = {k: tuple(getattr(v, "shape", ())) for k, v in batch.items()}
        key = tuple(sorted(shapes.items()))
        if key not in self._cache:
            self._cache[key] = self.cost(shapes)
        flops, tokens = self._cache[key]
        self._flops += flops
        self._tokens += tokens
        self._steps += 1

    def report(self, steps_per_s: float) -> dict[str, float]:
        """Metrics of the steps added since the last report, at `steps_per_s`."""
        if self.cost is None or self._steps == 0:
            return {}
        flops, tokens = self._flops / self._steps, self._tokens / self._steps
        self._flops, self._tokens, self._steps = 0.0, 0, 0
        out = {"tokens_per_s": tokens * steps_per_s, "model_flops_per_step": flops}
        if self.peak:
            out["mfu"] = mfu(flops, steps_per_s, self.peak, self.devices)
        return out

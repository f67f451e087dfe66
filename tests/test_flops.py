"""MFU accounting: the DiT FLOPs formula against a hand count and against the program's own
matmuls; the throughput meter's arithmetic."""

import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from sora_jax import flops
from sora_jax.models.dit import DiT, DiTConfig

CFG = DiTConfig(
    in_channels=4, out_channels=4, dim=32, ffn_dim=64, num_heads=2, num_layers=2,
    text_dim=16, freq_dim=8, dtype="float32", attention="xla",
)  # fmt: skip


def test_forward_flops_match_hand_count():
    """Latents 2x4x6, patch 1x2x2 -> T'=2, N = 2*2*3 = 12 tokens; 3 text tokens."""
    n, lt, d, f, frames = 12, 3, 32, 64, 2
    hand = (
        2 * n * 16 * d  # patch embedding: 16 = 4 channels x 4 patch pixels
        + 2 * n * d * 16  # output projection
        + 2 * lt * (16 * d + d * d)  # text embedder
        + 2 * frames * (8 * d + d * d) + 2 * frames * d * 6 * d  # time MLP + adaLN projection
        + 2 * (  # two blocks
            2 * n * 4 * d * d + 4 * n * n * d  # self-attention
            + 2 * n * 2 * d * d + 2 * lt * 2 * d * d + 4 * n * lt * d  # cross-attention
            + 2 * n * 2 * d * f  # FFN
        )
    )  # fmt: skip
    assert flops.dit_forward_flops(CFG, (2, 4, 6), 3) == hand
    assert flops.dit_train_flops(CFG, (2, 4, 6), 3, batch=5) == 3 * 5 * hand
    assert flops.dit_tokens(CFG, (2, 4, 6), batch=5) == 60


def _dot_flops(jaxpr: jax.extend.core.Jaxpr) -> float:
    """2 x MACs of every dot_general in a jaxpr, through scans (x length) and sub-jaxprs."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in lc)
        mult = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for p in eqn.params.values():  # scan / jit / remat / custom_vjp bodies
            inner = p if isinstance(p, jax.extend.core.Jaxpr) else getattr(p, "jaxpr", None)
            if isinstance(inner, jax.extend.core.Jaxpr):
                total += mult * _dot_flops(inner)
    return total


@pytest.mark.parametrize("scan_layers", [True, False])
def test_forward_flops_equal_the_programs_matmuls(scan_layers):
    """The formula counts exactly the dot products XLA is asked to run (xla attention)."""
    cfg = DiTConfig(**{**CFG.__dict__, "scan_layers": scan_layers})
    model = nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((2, 2, 4, 6, 4), jnp.float32)
    t = jax.ShapeDtypeStruct((2, 2), jnp.float32)
    ctx = jax.ShapeDtypeStruct((2, 3, 16), jnp.float32)
    mask = jax.ShapeDtypeStruct((2, 3), jnp.bool_)
    fwd = lambda s, *a: nnx.merge(graphdef, s)(*a)  # noqa: E731
    jaxpr = jax.make_jaxpr(fwd)(state, x, t, ctx, mask).jaxpr
    assert _dot_flops(jaxpr) == flops.dit_forward_flops(cfg, (2, 4, 6), 3, batch=2)


def test_meter_reports_tokens_per_s_and_mfu_over_the_interval():
    cost = lambda shapes: (1e12 * shapes["latents"][0], 100 * shapes["latents"][0])  # noqa: E731
    meter = flops.ThroughputMeter(cost, peak_per_device=1e13, devices=2)
    for b in (1, 3):  # two steps of different buckets: mean 2e12 FLOPs, 200 tokens per step
        meter.add({"latents": jnp.zeros((b, 1, 1, 1, 1))})
    out = meter.report(steps_per_s=4.0)
    assert out["tokens_per_s"] == 800.0 and out["model_flops_per_step"] == 2e12
    assert out["mfu"] == pytest.approx(2e12 * 4.0 / 2e13)
    assert meter.report(4.0) == {}  # nothing added since
    no_peak = flops.ThroughputMeter(cost, peak_per_device=None, devices=1)
    no_peak.add({"latents": jnp.zeros((1, 1, 1, 1, 1))})
    assert "mfu" not in no_peak.report(1.0)


def test_bad_grid_raises_value_error():
    with pytest.raises(ValueError, match="latent grid"):
        flops.dit_forward_flops(CFG, (2, 5, 6), 3)

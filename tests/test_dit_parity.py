"""Parity of sora_jax's DiT with diffusers' WanTransformer3DModel (Wan 2.1 T2V), in fp32."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_jax.interop.wan_names import load_wan_dit_state_dict
from sora_jax.models.dit import DiT, DiTConfig

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

B, F, H, W, L = 2, 3, 4, 6, 7
SMALL = dict(
    in_channels=4,
    out_channels=4,
    patch_size=(1, 2, 2),
    dim=64,
    ffn_dim=128,
    num_heads=4,
    num_layers=2,
    text_dim=32,
    freq_dim=256,
)


@pytest.fixture(scope="module")
def reference():
    """A small diffusers Wan transformer with every parameter perturbed away from its init."""
    torch.manual_seed(0)
    ref = diffusers.WanTransformer3DModel(
        patch_size=SMALL["patch_size"],
        num_attention_heads=SMALL["num_heads"],
        attention_head_dim=SMALL["dim"] // SMALL["num_heads"],
        in_channels=SMALL["in_channels"],
        out_channels=SMALL["out_channels"],
        text_dim=SMALL["text_dim"],
        freq_dim=SMALL["freq_dim"],
        ffn_dim=SMALL["ffn_dim"],
        num_layers=SMALL["num_layers"],
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():  # norms start at ones and biases near zero: move them all
            p.add_(0.1 * torch.randn_like(p))
    state = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    return ref, state


def _inputs(seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, F, H, W, SMALL["in_channels"])).astype(np.float32)
    ctx = rng.standard_normal((B, L, SMALL["text_dim"])).astype(np.float32)
    return x, ctx


def _ours(state, scan_layers: bool) -> DiT:
    cfg = DiTConfig(**SMALL, dtype="float32", attention="xla", scan_layers=scan_layers)
    model = DiT(cfg, rngs=nnx.Rngs(1))
    load_wan_dit_state_dict(model, state)
    return model


def _run_ref(ref, x, ctx, timestep) -> np.ndarray:
    with torch.no_grad():
        out = ref(
            torch.from_numpy(x).permute(0, 4, 1, 2, 3),  # channels-last -> [B, C, F, H, W]
            torch.from_numpy(timestep),
            torch.from_numpy(ctx),
            return_dict=False,
        )[0]
    return out.permute(0, 2, 3, 4, 1).numpy()


@pytest.mark.parametrize("scan_layers", [True, False])
def test_matches_diffusers_wan_scalar_timestep(reference, scan_layers):
    ref, state = reference
    x, ctx = _inputs(0)
    t = np.array([0.37, 0.81], np.float32)
    want = _run_ref(ref, x, ctx, t * 1000.0)
    model = _ours(state, scan_layers)
    t_frames = jnp.broadcast_to(jnp.asarray(t)[:, None], (B, F))
    got = model(jnp.asarray(x), t_frames, jnp.asarray(ctx), jnp.ones((B, L), bool))
    err = np.abs(np.asarray(got) - want).max()
    print(f"max abs diff vs diffusers: {err:.2e}")
    assert err <= 1e-4


def test_matches_diffusers_wan_per_frame_timesteps(reference):
    """diffusers' per-token timestep path (Wan 2.2 TI2V) equals our per-frame modulation."""
    ref, state = reference
    x, ctx = _inputs(1)
    t = np.array([[0.0, 0.4, 0.9], [1.0, 0.2, 0.0]], np.float32)  # [B, F]
    tokens_per_frame = (H // 2) * (W // 2)
    want = _run_ref(ref, x, ctx, np.repeat(t, tokens_per_frame, axis=1) * 1000.0)
    model = _ours(state, scan_layers=True)
    got = model(jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx), jnp.ones((B, L), bool))
    err = np.abs(np.asarray(got) - want).max()
    print(f"max abs diff vs diffusers: {err:.2e}")
    assert err <= 1e-4


def test_loader_rejects_missing_and_unknown_weights(reference):
    _, state = reference
    cfg = DiTConfig(**SMALL, dtype="float32", attention="xla")
    model = DiT(cfg, rngs=nnx.Rngs(1))
    partial = {k: v for k, v in state.items() if k != "blocks.1.attn2.norm_k.weight"}
    with pytest.raises(ValueError, match="missing for blocks"):
        load_wan_dit_state_dict(model, partial)
    partial = {k: v for k, v in state.items() if k != "proj_out.bias"}
    with pytest.raises(ValueError, match="no weights for parameters"):
        load_wan_dit_state_dict(model, partial)
    extra = dict(state, **{"blocks.0.attn2.add_k_proj.weight": np.zeros((64, 64), np.float32)})
    with pytest.raises(ValueError, match="no counterpart"):
        load_wan_dit_state_dict(model, extra)

"""Parity of CausalVAE with diffusers' AutoencoderKLWan (Wan 2.1 VAE) on small random configs.

Diffusers runs Wan's chunked pass (frame 0, then 4 frames per chunk with a per-conv feature
cache, 'Rep' zero cache in the time upsamplers); ours runs the whole sequence at once. Equal
numbers after `load_wan_vae_state_dict` show that the two define the same function.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_jax.interop.wan_names import load_wan_vae_state_dict
from sora_jax.models.vae import CausalVAE, VAEConfig

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

CASES = {
    # mults, temporal_downsample, num_res_blocks, frames
    "three_levels_time_twice": ((1, 2, 2), (True, True), 1, 9),
    "wan_layout_four_levels": ((1, 2, 4, 4), (False, True, True), 2, 9),
}


def random_wan(mults, time_down, num_res_blocks):
    torch.manual_seed(0)
    wan = diffusers.AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=list(mults),
        num_res_blocks=num_res_blocks,
        temperal_downsample=list(time_down),
    ).eval()
    with torch.no_grad():
        for name, p in wan.named_parameters():
            # Non-trivial gammas and biases, so a wrong mapping of any of them shows.
            base = 1.0 if name.endswith("gamma") else 0.0
            p.copy_(base + torch.randn_like(p) * (0.3 if name.endswith("weight") else 0.1))
        # Keep decoded pixels mostly inside [-1, 1] so the clamp hides little.
        wan.decoder.conv_out.weight.mul_(0.05)
    return wan


def to_torch(x: np.ndarray):
    return torch.from_numpy(x).permute(0, 4, 1, 2, 3)  # [B, F, H, W, C] -> [B, C, F, H, W]


def to_numpy(x) -> np.ndarray:
    return x.permute(0, 2, 3, 4, 1).numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_diffusers_wan_encode_and_decode(case):
    mults, time_down, num_res_blocks, frames = CASES[case]
    wan = random_wan(mults, time_down, num_res_blocks)
    cfg = VAEConfig(
        base_channels=8,
        channel_mults=mults,
        num_res_blocks=num_res_blocks,
        temporal_downsample=time_down,
        z_channels=4,
    )
    ours = CausalVAE(cfg, rngs=nnx.Rngs(0))
    load_wan_vae_state_dict(ours, {k: v.numpy() for k, v in wan.state_dict().items()})

    rng = np.random.default_rng(0)
    size = 2 * ours.spatial_factor
    x = rng.uniform(-1, 1, (2, frames, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        want_mean = to_numpy(wan.encode(to_torch(x)).latent_dist.mode())
        z = rng.standard_normal(want_mean.shape).astype(np.float32)
        want_video = to_numpy(wan.decode(to_torch(z)).sample)
    assert 0.5 < float(np.mean(np.abs(want_video) < 1.0))  # the clamp leaves most pixels alone

    mean, _ = nnx.jit(lambda m, x: m.encode(x))(ours, jnp.asarray(x))
    video = nnx.jit(lambda m, z: m.decode(z))(ours, jnp.asarray(z))
    assert mean.shape == want_mean.shape and video.shape == want_video.shape
    np.testing.assert_allclose(np.asarray(mean), want_mean, rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(video), want_video, rtol=0, atol=1e-4)


def test_loader_rejects_mismatched_state_dict():
    wan = random_wan((1, 2, 2), (True, True), 1)
    state = {k: v.numpy() for k, v in wan.state_dict().items()}
    wrong_depth = VAEConfig(
        base_channels=8,
        channel_mults=(1, 2, 2),
        num_res_blocks=2,
        temporal_downsample=(True, True),
        z_channels=4,
    )
    with pytest.raises(ValueError, match="missing parameters"):
        load_wan_vae_state_dict(CausalVAE(wrong_depth, rngs=nnx.Rngs(0)), state)
    wrong_width = VAEConfig(
        base_channels=16,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        temporal_downsample=(True, True),
        z_channels=4,
    )
    with pytest.raises(ValueError, match="does the VAEConfig match"):
        load_wan_vae_state_dict(CausalVAE(wrong_width, rngs=nnx.Rngs(0)), state)

"""Causal 3D VAE: shapes, causality, image = 1-frame video, input errors, chunked = full pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_jax.models.vae import CausalVAE, VAEConfig

TINY = VAEConfig(
    base_channels=8,
    channel_mults=(1, 2, 2),
    num_res_blocks=1,
    temporal_downsample=(True, True),
    z_channels=4,
)
SIZE = 16  # pixels; latents are 4x4


@pytest.fixture(scope="module")
def vae():
    return CausalVAE(TINY, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def fns(vae):
    """Jitted passes (one compile per input shape, reused across tests)."""
    return {
        "encode": nnx.jit(lambda m, x: m.encode(x)[0]),
        "decode": nnx.jit(lambda m, z: m.decode(z)),
        "encode_chunked": nnx.jit(lambda m, x: m.encode_chunked(x)[0]),
        "decode_chunked": nnx.jit(lambda m, z: m.decode_chunked(z)),
    }


def video(frames: int, seed: int = 0, batch: int = 1) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(-1, 1, (batch, frames, SIZE, SIZE, 3)), jnp.float32)


def latent(frames: int, seed: int = 0) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((1, frames, 4, 4, TINY.z_channels)), jnp.float32)


def test_compression_factors():
    assert CausalVAE(TINY, rngs=nnx.Rngs(0)).spatial_factor == 4
    wan = nnx.eval_shape(lambda: CausalVAE(VAEConfig(), rngs=nnx.Rngs(0)))
    assert (wan.spatial_factor, wan.temporal_factor) == (8, 4)
    assert wan.latent_shape(81, 480, 832) == (21, 60, 104, 16)


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_shapes_for_1_5_9_frames(vae, fns, frames):
    mean, logvar = vae.encode(video(frames, batch=2))
    t = 1 + (frames - 1) // 4
    assert mean.shape == logvar.shape == (2, t, 4, 4, 4) == (2, *vae.latent_shape(frames, 16, 16))
    recon = vae.decode(mean)
    assert recon.shape == (2, frames, SIZE, SIZE, 3)
    assert float(jnp.abs(recon).max()) <= 1.0


def test_encode_is_causal(fns, vae):
    x = video(9)
    changed = x.at[:, 5:].set(video(4, seed=1)[:, :4])  # frames 5..8 feed latent frame 2 only
    a, b = fns["encode"](vae, x), fns["encode"](vae, changed)
    np.testing.assert_array_equal(np.asarray(a[:, :2]), np.asarray(b[:, :2]))
    assert float(jnp.abs(a[:, 2] - b[:, 2]).max()) > 1e-3


def test_decode_is_causal(fns, vae):
    z = latent(3)
    changed = z.at[:, 2].set(latent(1, seed=1)[:, 0])  # latent frame 2 -> frames 5..8
    a, b = fns["decode"](vae, z), fns["decode"](vae, changed)
    np.testing.assert_array_equal(np.asarray(a[:, :5]), np.asarray(b[:, :5]))
    assert float(jnp.abs(a[:, 5:] - b[:, 5:]).max()) > 1e-3


def test_image_is_first_latent_of_video(fns, vae):
    x = video(9)
    image_latent = fns["encode"](vae, x[:, :1])
    assert image_latent.shape[1] == 1
    np.testing.assert_allclose(image_latent, fns["encode"](vae, x)[:, :1], atol=1e-5)
    z = latent(3)
    np.testing.assert_allclose(fns["decode"](vae, z[:, :1]), fns["decode"](vae, z)[:, :1],
                               atol=1e-5)


def test_chunked_encode_equals_full(fns, vae):
    x = video(9)
    np.testing.assert_allclose(fns["encode_chunked"](vae, x), fns["encode"](vae, x), atol=1e-5)
    mean8, _ = vae.encode_chunked(x, frames_per_chunk=8)
    np.testing.assert_allclose(mean8, fns["encode"](vae, x), atol=1e-5)


def test_chunked_decode_equals_full(fns, vae):
    z = latent(3)
    np.testing.assert_allclose(fns["decode_chunked"](vae, z), fns["decode"](vae, z), atol=1e-5)
    np.testing.assert_allclose(
        vae.decode_chunked(latent(5), latents_per_chunk=2), fns["decode"](vae, latent(5)),
        atol=1e-5,
    )


def test_call_samples_with_rng_else_uses_mean(vae):
    x = video(5)
    recon, mean, logvar = vae(x)
    np.testing.assert_allclose(recon, vae.decode(mean, clip=False), atol=1e-6)
    recon_a, _, _ = vae(x, rng=jax.random.key(1))
    recon_b, _, _ = vae(x, rng=jax.random.key(2))
    assert float(jnp.abs(recon_a - recon_b).max()) > 1e-4
    assert bool(jnp.all(logvar >= -30.0)) and bool(jnp.all(logvar <= 20.0))


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((1, 4, SIZE, SIZE, 3), "1 \\+ 4\\*k frames"),
        ((1, 5, SIZE, SIZE, 4), "expected \\[B, F, H, W, 3\\]"),
        ((1, 5, 18, SIZE, 3), "multiples of 4"),
        ((5, SIZE, SIZE, 3), "expected \\[B, F, H, W, 3\\]"),
    ],
)
def test_bad_video_raises(vae, shape, match):
    with pytest.raises(ValueError, match=match):
        vae.encode(jnp.zeros(shape))


def test_non_finite_and_bad_latent_raise(vae):
    with pytest.raises(ValueError, match="NaN or Inf"):
        vae.encode(video(1).at[0, 0, 3, 3, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="NaN or Inf"):
        vae.decode(latent(1).at[0, 0, 0, 0, 0].set(jnp.inf))
    with pytest.raises(ValueError, match="T, h, w, 4"):
        vae.decode(jnp.zeros((1, 2, 4, 4, 3)))
    with pytest.raises(ValueError, match="frames_per_chunk=3"):
        vae.encode_chunked(video(9), frames_per_chunk=3)
    with pytest.raises(ValueError, match="temporal_downsample"):
        VAEConfig(channel_mults=(1, 2), temporal_downsample=(True, True))

"""Causal 3D VAE: shapes, causality, image = 1-frame video, input errors, chunked = full pass."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_jax.models import vae_blocks
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


def test_compression_factors(vae):
    assert (vae.spatial_factor, vae.temporal_factor) == (4, 4)
    wan = nnx.eval_shape(lambda: CausalVAE(VAEConfig(), rngs=nnx.Rngs(0)))
    assert (wan.spatial_factor, wan.temporal_factor) == (8, 4)
    assert wan.latent_shape(81, 480, 832) == (21, 60, 104, 16)


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_shapes_for_1_5_9_frames(vae, frames):
    # Shapes only: trace without compiling (the numbers are checked by the tests below).
    graphdef, state = nnx.split(vae)

    def shape_of(method: str, arg):
        fn = lambda s, a: getattr(nnx.merge(graphdef, s), method)(a)
        return jax.eval_shape(fn, state, arg)

    mean, logvar = shape_of("encode", video(frames, batch=2))
    t = 1 + (frames - 1) // 4
    assert mean.shape == logvar.shape == (2, t, 4, 4, 4) == (2, *vae.latent_shape(frames, 16, 16))
    assert shape_of("encode_chunked", video(frames, batch=2))[0].shape == mean.shape
    for method in ("decode", "decode_chunked"):
        assert shape_of(method, mean).shape == (2, frames, SIZE, SIZE, 3)


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
    np.testing.assert_allclose(
        fns["decode"](vae, z[:, :1]), fns["decode"](vae, z)[:, :1], atol=1e-5
    )


def test_chunked_encode_equals_full(fns, vae):
    x = video(9)
    np.testing.assert_allclose(fns["encode_chunked"](vae, x), fns["encode"](vae, x), atol=1e-5)


def test_chunked_decode_equals_full(fns, vae):
    z = latent(3)
    full = fns["decode"](vae, z)
    np.testing.assert_allclose(fns["decode_chunked"](vae, z), full, atol=1e-5)
    two = nnx.jit(lambda m, z: m.decode_chunked(z, latents_per_chunk=2))(vae, z)
    np.testing.assert_allclose(two, full, atol=1e-5)


def test_call_samples_with_rng_else_uses_mean(fns, vae):
    x = video(1)
    call = nnx.jit(lambda m, x, k: (m(x), m(x, rng=k)))
    (recon, mean, logvar), (sampled, _, _) = call(vae, x, jax.random.key(1))
    np.testing.assert_allclose(mean, fns["encode"](vae, x), atol=1e-6)
    np.testing.assert_allclose(jnp.clip(recon, -1, 1), fns["decode"](vae, mean), atol=1e-6)
    assert float(jnp.abs(sampled - recon).max()) > 1e-4
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


@pytest.mark.parametrize(("time_pad", "stride"), [((2, 0), 1), ((0, 0), 2)])
def test_folded_cpu_conv_equals_3d_conv(monkeypatch, time_pad, stride):
    conv = vae_blocks.CausalConv3d(4, 6, (3, 3, 3), dtype="float32", rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 5, 6, 4)), jnp.float32)
    folded = conv.conv(x, time_pad, stride)
    monkeypatch.setattr(vae_blocks, "fold_time_taps", lambda: False)  # the GPU/TPU path
    np.testing.assert_allclose(folded, conv.conv(x, time_pad, stride), atol=1e-5)


def test_tiled_decode_one_tile_equals_full(fns, vae):
    z = latent(2)
    tiled = nnx.jit(lambda m, z: m.decode_tiled(z, tile=4, overlap=2))(vae, z)
    np.testing.assert_allclose(tiled, fns["decode"](vae, z), atol=1e-5)


def test_tiled_decode_blending_bounds_seam_error():
    # No attention and a spatially constant latent: the full decode is (nearly) the same
    # everywhere, so the tiled result's distance to it measures the seams alone.
    local = CausalVAE(dataclasses.replace(TINY, mid_attention=False), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    z = jnp.broadcast_to(
        jnp.asarray(rng.standard_normal((1, 1, 1, 1, 4)), jnp.float32), (1, 1, 8, 8, 4)
    )
    full = nnx.jit(lambda m, z: m.decode(z, clip=False))(local, z)
    err = {}
    for tile, overlap in [(4, 0), (6, 4)]:  # 2x2 tiles each: hard cuts vs 16-pixel ramps
        tiled = nnx.jit(
            lambda m, z, t=tile, o=overlap: m.decode_tiled(z, tile=t, overlap=o, clip=False)
        )(local, z)
        err[overlap] = float(jnp.abs(tiled - full).mean())
    assert err[4] < 0.7 * err[0]  # measured ratio 0.52 at this seed, 0.25-0.44 at others


def test_unnormalised_variant_is_causal_and_chunks_exactly():
    vae = CausalVAE(dataclasses.replace(TINY, norm="none"), rngs=nnx.Rngs(0))
    assert not vae.encoder.norm_out.normalize
    n_params = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
    assert n_params(vae) == n_params(CausalVAE(TINY, rngs=nnx.Rngs(0)))  # same checkpoint layout
    x = video(9)
    full = vae.encode(x)[0]
    np.testing.assert_allclose(vae.encode_chunked(x)[0], full, atol=1e-5)
    later = x.at[:, 5:].set(0.0)  # frames 5.. feed latent 2 only
    np.testing.assert_allclose(vae.encode(later)[0][:, :2], full[:, :2], atol=1e-6)
    z = latent(3)
    np.testing.assert_allclose(vae.decode_chunked(z), vae.decode(z), atol=1e-5)


def test_unknown_norm_rejected():
    with pytest.raises(ValueError, match="norm='batch'"):
        dataclasses.replace(TINY, norm="batch")


def test_shortcut_variant_is_causal_and_chunks_exactly():
    cfg = dataclasses.replace(TINY, shortcuts=True)
    vae = CausalVAE(cfg, rngs=nnx.Rngs(0))
    n_params = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
    assert n_params(vae) == n_params(CausalVAE(TINY, rngs=nnx.Rngs(0)))  # parameter-free paths
    x = video(9)
    full = vae.encode(x)[0]
    assert float(jnp.abs(full - CausalVAE(TINY, rngs=nnx.Rngs(0)).encode(x)[0]).max()) > 1e-2
    np.testing.assert_allclose(vae.encode_chunked(x)[0], full, atol=1e-5)
    later = x.at[:, 5:].set(0.0)  # frames 5.. feed latent 2 only
    np.testing.assert_allclose(vae.encode(later)[0][:, :2], full[:, :2], atol=1e-6)
    np.testing.assert_allclose(vae.encode(x[:, :1])[0], full[:, :1], atol=1e-6)  # image first
    z = latent(3)
    np.testing.assert_allclose(vae.decode_chunked(z), vae.decode(z), atol=1e-5)
    with pytest.raises(ValueError, match="multiple of z_channels=3"):
        dataclasses.replace(cfg, z_channels=3)


def test_shortcut_paths_match_a_loop_reference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 5, 4, 6, 8)).astype(np.float32)  # [B, F, H, W, C]
    pooled = np.asarray(vae_blocks.pool_shortcut(jnp.asarray(x), first=True, time=True))
    want = np.zeros((1, 3, 2, 3, 8), np.float32)
    for t, frames in enumerate([[0], [1, 2], [3, 4]]):
        for i in range(2):
            for j in range(3):
                want[0, t, i, j] = x[0, frames, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(
                    (0, 1, 2)
                )
    np.testing.assert_allclose(pooled, want, atol=1e-6)
    later = np.asarray(vae_blocks.pool_shortcut(jnp.asarray(x[:, 1:]), first=False, time=True))
    np.testing.assert_allclose(later, want[:, 1:], atol=1e-6)  # a later chunk pairs its own

    up = np.asarray(vae_blocks.unshuffle_shortcut(jnp.asarray(x), 4, first=True, time=True))
    assert up.shape == (1, 9, 8, 12, 4)
    src = [0, 1, 1, 2, 2, 3, 3, 4, 4]  # frame 0 once, the others twice
    for t in range(9):
        for i in range(8):
            for j in range(12):
                children = x[0, src[t], i // 2, j // 2].reshape(2, 2, 2)  # [C/4, dy, dx]
                np.testing.assert_allclose(
                    up[0, t, i, j], np.repeat(children[:, i % 2, j % 2], 2), atol=1e-6
                )


def test_patched_variant_compresses_the_same_and_chunks_exactly():
    cfg = dataclasses.replace(TINY, channel_mults=(1, 2), temporal_downsample=(True,),
                              patch_size=2)  # fmt: skip
    assert cfg.spatial_factor == 4 and cfg.temporal_factor == 2
    vae = CausalVAE(cfg, rngs=nnx.Rngs(0))
    x = video(9)
    full = vae.encode(x)[0]
    assert full.shape == (1, 5, 4, 4, TINY.z_channels)
    np.testing.assert_allclose(vae.encode_chunked(x, frames_per_chunk=2)[0], full, atol=1e-5)
    np.testing.assert_allclose(vae.encode(x[:, :1])[0], full[:, :1], atol=1e-6)  # image first
    z = latent(3)
    assert vae.decode(z).shape == (1, 5, SIZE, SIZE, 3)
    np.testing.assert_allclose(vae.decode_chunked(z), vae.decode(z), atol=1e-5)
    y = jnp.arange(2 * 3 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 3, 4, 6, 3)
    np.testing.assert_array_equal(vae_blocks.unpatchify(vae_blocks.patchify(y, 2), 2), y)
    assert vae_blocks.patchify(y, 2)[0, 0, 0, 0, :6].tolist() == y[0, 0, 0, :2].ravel().tolist()
    with pytest.raises(ValueError, match="patch_size=0"):
        dataclasses.replace(TINY, patch_size=0)

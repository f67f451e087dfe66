"""StreamingVAE: chunk-by-chunk encode/decode equals the full pass, with one compiled chunk step
reused for every length, inputs from the host or the device, outputs to either."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_jax.models.vae import CausalVAE, VAEConfig
from sora_jax.models.vae_stream import StreamingVAE

CFG = VAEConfig(
    base_channels=8,
    channel_mults=(1, 2, 2),
    num_res_blocks=1,
    temporal_downsample=(True, True),
    z_channels=4,
)


@pytest.fixture(scope="module")
def vae():
    return CausalVAE(CFG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def stream(vae):
    return StreamingVAE(vae)


def _rng(seed):
    return np.random.default_rng(seed)


def test_streamed_encode_equals_full_from_host_and_device(vae, stream):
    x = _rng(0).uniform(-1, 1, (1, 9, 16, 16, 3)).astype(np.float32)
    want_mean, want_logvar = nnx.jit(lambda m, x: m.encode(x))(vae, jnp.asarray(x))
    for video in (x, jnp.asarray(x)):
        mean, logvar = stream.encode(video)
        np.testing.assert_allclose(np.asarray(mean), np.asarray(want_mean), atol=1e-5)
        np.testing.assert_allclose(np.asarray(logvar), np.asarray(want_logvar), atol=1e-5)


def test_streamed_decode_equals_full_and_reuses_one_step(vae, stream):
    full = nnx.jit(lambda m, z: m.decode(z))
    for t in (3, 5):  # 9 and 17 frames: two lengths, one compiled chunk step
        z = _rng(t).standard_normal((1, t, 4, 4, 4)).astype(np.float32)
        want = np.asarray(full(vae, jnp.asarray(z)))
        host = stream.decode(z)
        assert isinstance(host, np.ndarray) and host.shape == want.shape == (
            1,
            4 * t - 3,
            16,
            16,
            3,
        )
        np.testing.assert_allclose(host, want, atol=1e-5)
        np.testing.assert_allclose(np.asarray(stream.decode(jnp.asarray(z), to_host=False)), want,
                                   atol=1e-5)  # fmt: skip
    assert stream._dec_step._cache_size() == 1 and stream._dec_first._cache_size() == 1


def test_bf16_parameters_stay_close(vae, stream):
    z = _rng(7).standard_normal((1, 2, 4, 4, 4)).astype(np.float32)
    low = StreamingVAE(vae, param_dtype="bfloat16")
    assert low.state["decoder"]["conv_out"]["kernel"][...].dtype == jnp.bfloat16
    np.testing.assert_allclose(low.decode(z), stream.decode(z), atol=0.1)


def test_bad_lengths_and_values_fail_in_one_sentence(stream):
    with pytest.raises(ValueError, match="num_frames=8 is not supported"):
        stream.encode(np.zeros((1, 8, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        stream.encode(np.full((1, 5, 16, 16, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="latents_per_chunk=2 after the first"):
        StreamingVAE(stream.vae, latents_per_chunk=2).decode(np.zeros((1, 4, 4, 4, 4), np.float32))

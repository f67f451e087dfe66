"""The VAE under a mesh of 8 fake CPU devices (in a subprocess): batch over the data axes, frame
height over 'context'; sharded encode/decode (full and chunked) equal one device's to 1e-5."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    jax.config.update("jax_default_matmul_precision", "highest")
    from sora_jax import parallel
    from sora_jax.models.vae import CausalVAE, VAEConfig

    cfg = VAEConfig(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1,
                    temporal_downsample=(True, True), z_channels=4)
    vae = CausalVAE(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(vae)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 5, 32, 16, 3)).astype(np.float32)  # latents 2 x 8 x 4
    z = rng.standard_normal((2, 2, 8, 4, 4)).astype(np.float32)

    def fns():
        m = lambda s: nnx.merge(graphdef, s)
        return {
            "encode": jax.jit(lambda s, x: m(s).encode(x)[0]),
            "decode": jax.jit(lambda s, z: m(s).decode(z)),
            "encode_chunked": jax.jit(lambda s, x: m(s).encode_chunked(x)[0]),
            "decode_chunked": jax.jit(lambda s, z: m(s).decode_chunked(z)),
        }

    single = {k: np.asarray(f(state, x if k.startswith("en") else z)) for k, f in fns().items()}
    mesh = parallel.make_mesh(dict(data=2, fsdp=1, context=4, tensor=1))
    spec = P(("data", "fsdp"), None, "context", None, None)
    out = {"devices": jax.device_count()}
    with jax.set_mesh(mesh):
        rep = jax.device_put(state, NamedSharding(mesh, P()))
        xs = jax.device_put(x, NamedSharding(mesh, spec))
        zs = jax.device_put(z, NamedSharding(mesh, spec))
        for k, f in fns().items():
            args = (rep, xs if k.startswith("en") else zs)
            compiled = f.lower(*args).compile()
            got = compiled(*args)
            out[k] = float(np.abs(np.asarray(got) - single[k]).max())
            spec_out = tuple(got.sharding.spec) + (None,) * 5
            out[k + "_axes"] = [sorted(a for a in ((ax,) if isinstance(ax, str) else ax or ())
                                       if mesh.shape[a] > 1) for ax in spec_out[:5]]
            hlo = compiled.as_text()
            out[k + "_halo_exchanges"] = hlo.count("collective-permute-start") + hlo.count(
                "collective-permute(")
            out[k + "_scale"] = float(np.abs(single[k]).max())
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def result():
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def test_runs_on_eight_devices(result):
    assert result["devices"] == 8


@pytest.mark.parametrize("fn", ["encode", "decode", "encode_chunked", "decode_chunked"])
def test_sharded_equals_single_device(result, fn):
    assert result[fn + "_scale"] > 0.1  # a non-trivial output
    assert result[fn] <= 1e-5, result


@pytest.mark.parametrize("fn", ["encode", "decode", "encode_chunked", "decode_chunked"])
def test_activations_stay_sharded_over_batch_and_height(result, fn):
    # Batch over data=2, height over context=4 (latent height 8, pixel height 32), in and out;
    # convs on the split height trade halos with neighbours (collective-permutes), no gather.
    assert result[fn + "_axes"] == [["data"], [], ["context"], [], []], result
    assert result[fn + "_halo_exchanges"] > 0

"""tools/import_weights.py: diffusers Wan folders (safetensors) -> checkpoints our loaders read.

Tiny random `AutoencoderKLWan` / `WanTransformer3DModel` are saved with `save_pretrained`, imported,
restored with `state_lib.load_model` and run against torch on the same inputs (fp32, <= 1e-4).
"""

import json
import os
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_jax.interop import wan
from sora_jax.models import dit as dit_lib
from sora_jax.models import vae as vae_lib
from sora_jax.train import state as state_lib
from sora_jax.train import vae_task

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
import import_weights  # noqa: E402

Z = 4
MEAN = [0.1, -0.2, 0.3, -0.4]
STD = [1.5, 2.0, 0.5, 1.0]


def _perturb(model, scale: float = 0.1):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def wan_vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLWan(
        base_dim=8,
        z_dim=Z,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[True, True],
        latents_mean=MEAN,
        latents_std=STD,
    )
    _perturb(ref)
    with torch.no_grad():
        ref.decoder.conv_out.weight.mul_(0.05)  # decoded pixels mostly inside the [-1, 1] clamp
    path = tmp_path_factory.mktemp("wan_vae")
    ref.save_pretrained(path, safe_serialization=True, max_shard_size="20KB")  # sharded + index
    return ref, str(path)


@pytest.fixture(scope="module")
def wan_dit_dir(tmp_path_factory):
    torch.manual_seed(0)
    ref = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=Z,
        out_channels=Z,
        text_dim=24,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
    )
    _perturb(ref)
    path = tmp_path_factory.mktemp("wan_dit")
    ref.save_pretrained(path, safe_serialization=True)
    return ref, str(path)


def _creator(fn) -> types.SimpleNamespace:
    return types.SimpleNamespace(name="model", create_model=fn)


def _to_torch(x: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 4, 1, 2, 3)


def _from_torch(x) -> np.ndarray:
    return x.permute(0, 2, 3, 4, 1).numpy()


def test_sharded_vae_folder_is_read(wan_vae_dir):
    _, path = wan_vae_dir
    files = wan.safetensors_files(path)
    assert len(files) > 1 and any(n.endswith(".index.json") for n in os.listdir(path))
    cfg = wan.vae_config_from_diffusers(wan.read_config(path))
    assert (cfg.base_channels, cfg.channel_mults, cfg.z_channels) == (8, (1, 2, 2), Z)
    assert cfg.temporal_downsample == (True, True) and cfg.mid_attention


def test_imported_vae_matches_torch_and_feeds_the_dit_stage(wan_vae_dir, tmp_path):
    ref, src = wan_vae_dir
    dst = str(tmp_path / "vae")
    out = import_weights.import_weights("vae", src, dst)
    assert out["params"] == sum(p.numel() for p in ref.parameters())
    with open(os.path.join(dst, "vae_config.json")) as f:
        cfg = vae_lib.VAEConfig(**{k: tuple(v) if isinstance(v, list) else v
                                   for k, v in json.load(f).items()})  # fmt: skip
    # Restored the way the DiT stage does it: VAETask + config.vae_train -> state_lib.load_model.
    config = _stage_config(cfg)
    vae = state_lib.load_model(vae_task.VAETask(config), config.vae_train, dst)
    mean, std = vae_task.load_latent_stats(dst)
    np.testing.assert_allclose(mean, MEAN) and np.testing.assert_allclose(std, STD)

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (1, 5, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        want_mean = _from_torch(ref.encode(_to_torch(x)).latent_dist.mode())
        z = rng.standard_normal(want_mean.shape).astype(np.float32)
        want_video = _from_torch(ref.decode(_to_torch(z)).sample)
    got_mean = nnx.jit(lambda m, x: m.encode(x)[0])(vae, jnp.asarray(x))
    got_video = nnx.jit(lambda m, z: m.decode(z))(vae, jnp.asarray(z))
    np.testing.assert_allclose(np.asarray(got_mean), want_mean, rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got_video), want_video, rtol=0, atol=1e-4)


def _stage_config(vae_cfg: vae_lib.VAEConfig):
    import ml_collections

    import_cfg = import_weights.optimizer_config()
    return ml_collections.ConfigDict(
        dict(
            seed=0,
            vae={k: getattr(vae_cfg, k) for k in vae_cfg.__dataclass_fields__},
            vae_train=dict(import_cfg.to_dict(), buckets=(("5x16x16", 1, 1.0),)),
            world=dict(resolutions=((16, 16),)),
        )
    )


def test_imported_dit_matches_torch(wan_dit_dir, tmp_path):
    ref, src = wan_dit_dir
    dst = str(tmp_path / "dit")
    import_weights.main(["--kind=dit", f"--src={src}", f"--dst={dst}"])
    with open(os.path.join(dst, "dit_config.json")) as f:
        fields = json.load(f)
    fields.update(dtype="float32", attention="xla")
    cfg = dit_lib.DiTConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    )
    assert (cfg.dim, cfg.num_heads, cfg.num_layers, cfg.text_dim) == (32, 2, 2, 24)
    model = state_lib.load_model(
        _creator(lambda rngs: dit_lib.DiT(cfg, rngs=rngs)), import_weights.optimizer_config(), dst
    )
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 6, Z)).astype(np.float32)
    ctx = rng.standard_normal((2, 5, 24)).astype(np.float32)
    t = np.array([0.3, 0.8], np.float32)
    with torch.no_grad():
        want = ref(_to_torch(x), torch.from_numpy(t * 1000.0), torch.from_numpy(ctx),
                   return_dict=False)[0]  # fmt: skip
    t_frames = jnp.broadcast_to(jnp.asarray(t)[:, None], (2, 3))
    args = (jnp.asarray(x), t_frames, jnp.asarray(ctx), jnp.ones((2, 5), bool))
    got = nnx.jit(lambda m, *a: m(*a))(model, *args)
    np.testing.assert_allclose(np.asarray(got), _from_torch(want), rtol=0, atol=1e-4)


def test_pickle_only_folder_and_bad_configs_are_refused(tmp_path, wan_vae_dir):
    (tmp_path / "config.json").write_text(json.dumps({"z_dim": 4}))
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="pickle files .* never loaded"):
        wan.read_safetensors(str(tmp_path))
    with pytest.raises(ValueError, match="is_residual=True"):
        wan.vae_config_from_diffusers({"is_residual": True})
    with pytest.raises(ValueError, match="image_dim=1280"):
        wan.dit_config_from_diffusers({"image_dim": 1280})
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        wan.model_folder(str(tmp_path / "empty"), "vae")
    dst = tmp_path / "dst"
    import_weights.import_weights("vae", wan_vae_dir[1], str(dst))
    assert import_weights.main(["--kind=vae", f"--src={wan_vae_dir[1]}", f"--dst={dst}"]) == 2

"""Every config builds; the big ones by `jax.eval_shape` with their parameter counts asserted."""

import importlib.util
import pathlib

import pytest
from flax import nnx

from sora_jax import eval_suite
from sora_jax.models import dit as dit_lib
from sora_jax.models import vae as vae_lib

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def load_config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def abstract_params(model_fn) -> int:
    model = nnx.eval_shape(lambda: model_fn(nnx.Rngs(0)))
    return dit_lib.param_count(model)


# Counts of diffusers' WanTransformer3DModel with the same shape (built on torch's meta device).
@pytest.mark.parametrize("name,count", [("l", 1_418_996_800), ("xl", 14_288_491_584)])
def test_big_configs_eval_shape_with_wan_parameter_counts(name, count):
    c = load_config(name)
    cfg = dit_lib.DiTConfig(**c.dit.to_dict())
    assert abstract_params(lambda rngs: dit_lib.DiT(cfg, rngs=rngs)) == count


@pytest.mark.parametrize(
    "name,low,high", [("s", 80e6, 150e6), ("b", 250e6, 400e6), ("world", 25e6, 35e6)]
)
def test_small_configs_have_their_advertised_size(name, low, high):
    c = load_config(name)
    cfg = dit_lib.DiTConfig(**c.dit.to_dict())
    assert low < abstract_params(lambda rngs: dit_lib.DiT(cfg, rngs=rngs)) < high


@pytest.mark.parametrize("name", ["tiny", "vae", "s", "b", "l", "xl", "world"])
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_every_config_builds_its_models(name, arg):
    c = load_config(name, arg)
    assert set(c.stages.split(",")) <= {"vae", "dit", "sample", "eval"}
    vae = nnx.eval_shape(
        lambda: vae_lib.CausalVAE(vae_lib.VAEConfig(**c.vae.to_dict()), rngs=nnx.Rngs(0))
    )
    # tiny: 2x2x2 (its first frame keeps >= 30 dB, issue 5); world:res=128 4x16x16; the rest
    # 4x4x4 or 4x8x8
    assert (vae.temporal_factor, vae.spatial_factor) in {(2, 2), (2, 8), (4, 4), (4, 8), (4, 16)}
    dit = dit_lib.DiTConfig(**c.dit.to_dict())
    assert dit.in_channels == c.vae.z_channels


@pytest.mark.parametrize("name", ["tiny", "vae", "s", "b", "l", "xl", "world"])
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_every_config_trains_its_vae_on_clips_long_enough(name, arg):
    from sora_jax.train import vae_task

    assert vae_task.clip_length_warning(load_config(name, arg)) is None


def test_short_vae_clips_warn_with_the_frames_to_use():
    from sora_jax.train import vae_task

    c = load_config("world", "micro")  # 4x temporal compression, 9-frame DiT clips
    c.vae_train.buckets = (("5x32x32", 2, 1.0), ("1x32x32", 2, 1.0))
    note = vae_task.clip_length_warning(c)
    assert "at most 5 frames (2 latent frames)" in note and "9-frame" in note
    assert note.endswith("train it on clips of >= 9 frames.")
    c.dit_train.buckets = (("5x32x32", 2, 1.0),)
    c.sample.num_frames = 5
    assert vae_task.clip_length_warning(c) is None  # nothing longer than it trained on


def test_bad_config_argument_fails_with_a_sentence():
    with pytest.raises(ValueError, match="unknown config argument"):
        load_config("l", "resolution=480")


def test_wan_vae_preset_compresses_4x8x8_to_16_channels():
    c = load_config("vae")
    vae = nnx.eval_shape(
        lambda: vae_lib.CausalVAE(vae_lib.VAEConfig(**c.vae.to_dict()), rngs=nnx.Rngs(0))
    )
    assert vae.latent_shape(81, 480, 832) == (21, 60, 104, 16)


@pytest.mark.parametrize(
    "arg", [None, "res=128", "micro", "res=128,micro", "temporal=2", "temporal=2,micro"]
)
def test_world_configs_have_a_bucket_for_every_eval_shape(arg):
    from sora_jax import eval_cases
    from sora_jax.data import buckets

    c = load_config("world", arg)
    vae = nnx.eval_shape(
        lambda: vae_lib.CausalVAE(vae_lib.VAEConfig(**c.vae.to_dict()), rngs=nnx.Rngs(0))
    )
    if arg == "res=128":  # the twelfth run's: 4x16x16 to 32 channels
        assert vae.latent_shape(17, 128, 128) == (5, 8, 8, 32)
    if "micro" not in (arg or ""):  # the DiT trained on every shape the suite samples
        trained = {b.name for b in buckets.parse_buckets(c.dit_train.buckets)}
        assert {c.eval.shape, *c.eval.sweep_shapes} <= trained
    assert eval_cases.build_suite(c)  # every eval set builds from the config alone


def test_world_default_is_the_64x64_recipe_and_ninth_gives_the_ninth_runs():
    assert load_config("world", None).to_dict() == load_config("world", "res=64").to_dict()
    c = load_config("world", "res=64")
    vae = nnx.eval_shape(
        lambda: vae_lib.CausalVAE(vae_lib.VAEConfig(**c.vae.to_dict()), rngs=nnx.Rngs(0))
    )
    assert vae.latent_shape(17, 64, 64) == (5, 8, 8, 16)  # 8x8 latent frames, as at 128x128
    assert c.dit.in_channels == c.dit.out_channels == 16 and tuple(c.dit.patch_size) == (1, 2, 2)
    assert (c.vae_train.steps, c.dit_train.steps, c.flow.shift) == (10000, 15000, 1.0)
    assert c.vae_train.latent_noise == 0.2 and c.eval.guidance == c.sample.guidance == 5.0
    assert c.dit_train.image_text_length == 0  # the 1-frame bucket's captions run to 92 tokens
    assert {"guidance": 3.0} in c.eval.t2v_variants
    # The suite samples text -> image -> video with autoguidance by a DiT checkpoint the stage
    # keeps (checked as the eval starts) on prompts of seed 200, which chose none of it (seed
    # 100: the twenty-third run's check); CFG 5 alone (the suite of runs 16-22, also on the
    # conditioned modes with targets) and each part of the setting are its variants.
    suite = eval_suite._settings(c)
    assert suite["factorized"] and (suite["autoguidance"], suite["autoguide_step"]) == (2.0, 2500)
    assert c.eval.seed == 200 and c.sample.autoguidance == 1.0 and not c.sample.factorized
    assert c.eval.modes_per_set == 96
    eval_suite._check_guide_kept(c, 2500)
    variants = eval_suite.t2v_variants(
        c, ("t2v", "t2v_occlusion", "i2v", "extend_forward", "extend_backward", "infill")
    )
    cfg5 = variants["t2v_occlusion@autoguidance=1.0,factorized=False"]
    assert (cfg5["guidance"], "autoguidance" in cfg5, "factorized" in cfg5) == (5.0, False, False)
    assert variants["t2v@factorized=False"]["autoguidance"] == 2.0
    assert variants["t2v@autoguidance=1.0"]["factorized"] and len(variants) == 17
    assert {k.split("@")[0] for k in variants if k.endswith("=1.0,factorized=False")} == {
        "t2v", "t2v_occlusion", "i2v", "extend_forward", "extend_backward"
    }  # fmt: skip
    ninth = load_config("world", "ninth")
    assert ninth.vae_train.steps == ninth.dit_train.steps == 15000
    assert ninth.vae_train.latent_noise == 0.0
    assert ninth.eval.guidance == ninth.sample.guidance == 3.0
    assert {"guidance": 5.0} in ninth.eval.t2v_variants
    assert {"guidance": 3.0} not in ninth.eval.t2v_variants
    with pytest.raises(ValueError, match="ninth and temporal=2 are res=64 recipes"):
        load_config("world", "res=128,ninth")
    assert c.vae_train.buckets == (("17x64x64", 32, 1.0),)
    assert [b[0] for b in c.dit_train.buckets] == [
        "17x64x64", "17x64x96", "17x96x64", "33x64x64", "1x64x64"]  # fmt: skip
    assert c.eval.shape == "17x64x64" and c.sample.height == c.sample.width == 64
    with pytest.raises(ValueError, match="res=96 is not a recipe"):
        load_config("world", "res=96")


def _tokens_per_step(c) -> dict[str, int]:
    from sora_jax.data import buckets

    vae = vae_lib.VAEConfig(**c.vae.to_dict())
    compression = (vae.temporal_factor, vae.spatial_factor, vae.spatial_factor)
    return {
        b.name: b.batch_size * buckets.tokens_per_clip(
            b.num_frames, b.height, b.width, compression, tuple(c.dit.patch_size))
        for b in buckets.parse_buckets(c.dit_train.buckets)
    }  # fmt: skip


def test_world_temporal2_halves_time_once_at_the_tokens_per_step_of_the_recipe():
    import jax
    import jax.numpy as jnp

    c, base = load_config("world", "temporal=2"), load_config("world")
    vae = nnx.eval_shape(
        lambda: vae_lib.CausalVAE(vae_lib.VAEConfig(**c.vae.to_dict()), rngs=nnx.Rngs(0))
    )
    assert vae.latent_shape(17, 64, 64) == (9, 8, 8, 16)  # 144 tokens of 1x2x2 patches
    assert vae.latent_shape(33, 64, 64) == (17, 8, 8, 16)
    micro = load_config("world", "temporal=2,micro")  # CPU sizes keep the 2x time
    assert tuple(micro.vae.temporal_downsample) == (True, False)
    tokens, tokens_base = _tokens_per_step(c), _tokens_per_step(base)
    assert tokens["17x64x64"] == 128 * 144 and tokens_base["17x64x64"] == 256 * 80
    for name, n in tokens.items():  # each bucket's step within 15% of the recipe's tokens
        assert 0.85 <= n / tokens_base[name] <= 1.15, (name, n, tokens_base[name])
    # Everything else is the recipe's: only the VAE's time and the DiT's batches differ.
    a, b = c.to_dict(), base.to_dict()
    for key in ("vae", "dit_train"):
        a.pop(key), b.pop(key)
    assert a == b
    # The VAE's encoder at the main bucket's size: 9 latent frames of 8x8x16.
    x = jax.ShapeDtypeStruct((1, 17, 64, 64, 3), jnp.float32)
    mean = jax.eval_shape(lambda v, x: v.encode(x)[0], vae, x)
    assert mean.shape == (1, 9, 8, 8, 16)
    with pytest.raises(ValueError, match="temporal=3 is not a recipe"):
        load_config("world", "temporal=3")
    with pytest.raises(ValueError, match="res=64 recipes"):
        load_config("world", "res=128,temporal=2")

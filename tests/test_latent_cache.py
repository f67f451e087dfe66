"""Latent cache: records round-trip; a cached batch trains exactly like one encoded on the fly."""

import importlib.util
import json
import os
import pathlib
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from sora_jax.data import latent_cache
from sora_jax.models import vae as vae_lib
from sora_jax.train import dit_task, vae_task

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))


def _micro_config():
    spec = importlib.util.spec_from_file_location("cfg_tiny_cache", ROOT / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("micro")
    config.dit_train.latent_cache_clips = 0
    config.dit_train.caption_probs = {"prompt": 0.5, "caption": 0.5}
    config.dit_train.caption_dropout = 0.25
    return config


def test_entry_round_trips_arrays_and_fields():
    arrays = {"latents": np.arange(24, dtype=np.float32).reshape(2, 3, 4, 1),
              "emb_prompt": np.ones((3, 5), np.float16)}  # fmt: skip
    out, fields = latent_cache.decode_entry(latent_cache.encode_entry(arrays, {"prompt": "é x"}))
    np.testing.assert_array_equal(out["latents"], arrays["latents"])
    assert out["emb_prompt"].dtype == np.float16 and fields == {"prompt": "é x"}


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """A random-weight micro VAE, its latent stats, and a 4-clip-per-bucket cache."""
    import cache_latents

    workdir = str(tmp_path_factory.mktemp("run"))
    config = _micro_config()
    vae_cfg = vae_lib.VAEConfig(**config.vae.to_dict())
    vae = nnx.jit(lambda: vae_lib.CausalVAE(vae_cfg, rngs=nnx.Rngs(0)))()
    os.makedirs(os.path.join(workdir, "vae"))
    z = config.vae.z_channels
    stats = {"mean": np.linspace(-0.1, 0.1, z).tolist(), "std": np.linspace(0.5, 1.5, z).tolist()}
    with open(os.path.join(workdir, "vae", vae_task.LATENT_STATS), "w") as f:
        json.dump(stats, f)
    task = dit_task.DiTTask(config, workdir, vae)
    cache_dir = os.path.join(workdir, "cache")
    meta = cache_latents.write_cache(task, cache_dir, clips_per_bucket=4, batch_size=3)
    config.dit_train.latent_cache_dir = cache_dir
    cache_task = dit_task.DiTTask(config, workdir, vae, embedder=task.embedder)
    return task, cache_task, meta


def test_cache_holds_every_bucket_with_its_latent_shape(cached):
    task, _, meta = cached
    assert set(meta["buckets"]) == {"5x16x16", "1x16x16"}
    assert meta["buckets"]["5x16x16"]["latent_shape"][0] == 2  # 5 frames -> 1 + 4/4
    assert all(sum(b["shard_lengths"]) == 4 for b in meta["buckets"].values())
    assert meta["text_dim"] == task.embedder.encoder.dim


def _perturbed_dit(task):
    model = nnx.jit(lambda: task.create_model(nnx.Rngs(0)))()  # eager init compiles per op
    graphdef, state = nnx.split(model)
    leaves, tree = jax.tree.flatten(state)
    rng = np.random.default_rng(1)  # host noise: eager jax.random would compile per shape
    # The DiT's output projections are zero-initialised; noise makes the loss see text + latents.
    leaves = [x + 0.05 * rng.standard_normal(x.shape).astype(np.float32) for x in leaves]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


def test_cached_batch_gives_the_same_loss_as_encoding_on_the_fly(cached):
    task, cache_task, _ = cached
    graphdef, params = nnx.split(_perturbed_dit(task))

    def loss_fn(t):  # jitted: an eager VAE + DiT forward costs minutes on a CPU
        return jax.jit(lambda p, fr, b, r: t.loss(nnx.merge(graphdef, p), fr, b, r)[0])

    cache_loss, fly_loss = loss_fn(cache_task), loss_fn(task)
    stream = cache_task.latent_cache_stream()
    source = task.source()
    rng = jax.random.key(3)
    checked = 0
    for step in range(16):  # the video bucket only: each bucket costs two more compiles
        raw = stream.step_batch(step)
        if raw["bucket"] != "5x16x16":
            continue
        texts = list(raw["text"])
        cached_batch = cache_task._with_text(
            step, {"latents": raw["latents"]}, texts, (raw["text_emb"], raw["text_mask"])
        )
        video = np.stack([source.clip(int(i), 16, 16, 5)["video"] for i in raw["index"]])
        fly_batch = task._with_text(step, {"video": video}, texts)
        loss_cache = cache_loss(params, cache_task.frozen(), cached_batch, rng)
        loss_fly = fly_loss(params, task.frozen(), fly_batch, rng)
        assert abs(float(loss_cache) - float(loss_fly)) <= 1e-5, (step, loss_cache, loss_fly)
        checked += 1
    assert checked == 5  # steps 4, 6, 8, 9 and 15 draw it (seed 1)


def test_dit_task_batches_read_the_cache_when_configured(cached):
    _, cache_task, _ = cached
    batch = next(iter(cache_task.batches(0)))
    assert set(batch) == {"latents", "text", "text_mask", "data_skipped"}
    assert batch["latents"].dtype == np.float32 and batch["latents"].shape[0] == 2
    assert batch["text"].shape[:2] == batch["text_mask"].shape


def test_chunked_encode_in_the_step_equals_the_full_pass(cached):
    """dit_train.vae_encode_chunk_frames: the step's latents equal the one-pass encode."""
    task, _, _ = cached
    video = np.random.default_rng(3).integers(0, 256, (2, 5, 16, 16, 3), dtype=np.uint8)
    full = jax.jit(task.encode_latents)(task.frozen(), video)
    task.train_cfg.vae_encode_chunk_frames = 4
    try:
        chunked = jax.jit(task.encode_latents)(task.frozen(), video)
    finally:
        task.train_cfg.vae_encode_chunk_frames = 0
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(full), atol=1e-5)


def test_bf16_dit_trains_on_bf16_text_with_the_very_same_loss(cached, tmp_path):
    """A bf16 DiT without pooled text gets its batch's text in bf16 (half the bytes per step):
    its first use of the text is that cast, so the loss equals the one on float32 text."""
    import copy

    import jax.numpy as jnp

    task, _, _ = cached
    config = copy.deepcopy(task.config)
    config.dit.dtype, config.dit_train.caption_dropout = "bfloat16", 0.0
    vae = nnx.merge(task.vae_graphdef, task.vae_state)
    stats = (np.asarray(task.latent_mean), np.asarray(task.latent_std))
    t16 = dit_task.DiTTask(config, str(tmp_path), vae, latent_stats=stats)
    assert t16.text_dtype == jnp.bfloat16 and t16.embedder.store_dtype == jnp.bfloat16
    config.dit.pooled_text = True  # the model averages the text in float32: keep it so
    pooled = dit_task.DiTTask(config, str(tmp_path), vae, latent_stats=stats,
                              embedder=task.embedder)  # fmt: skip
    assert pooled.text_dtype == np.float32 and task.text_dtype == np.float32  # fp32 micro DiT
    texts = ["a red circle moving left", "a blue star"]
    z = config.vae.z_channels
    latents = np.random.default_rng(0).standard_normal((2, 2, 4, 4, z)).astype(np.float32)
    b16 = t16._with_text(0, {"latents": latents}, texts)
    b32 = task._with_text(0, {"latents": latents}, texts)
    assert b16["text"].dtype == jnp.bfloat16 and b32["text"].dtype == np.float32
    np.testing.assert_array_equal(b16["text"], b32["text"].astype(jnp.bfloat16))
    np.testing.assert_array_equal(b16["text_mask"], b32["text_mask"])
    spec = t16.batch_specs(0, 1)
    assert all(s["text"].dtype == jnp.bfloat16 for s in spec)  # precompiled for what comes
    graphdef, params = nnx.split(_perturbed_dit(t16))
    loss = jax.jit(lambda p, b, r: t16.loss(nnx.merge(graphdef, p), t16.frozen(), b, r)[0])
    rng = jax.random.key(5)
    assert float(loss(params, b16, rng)) == float(loss(params, b32, rng))


def test_image_batches_carry_image_text_length_tokens_with_the_same_loss(cached, tmp_path):
    """dit_train.image_text_length: a batch of images carries that many text tokens (padding
    cut), videos all of them; where every caption fits, the loss is the uncut batch's. A
    caption that does not fit is cut, counted and logged."""
    import copy

    task, _, _ = cached
    config = copy.deepcopy(task.config)
    config.dit_train.image_text_length = 6
    config.dit_train.caption_dropout = 0.0
    vae = nnx.merge(task.vae_graphdef, task.vae_state)
    stats = (np.asarray(task.latent_mean), np.asarray(task.latent_std))
    cut = dit_task.DiTTask(config, str(tmp_path), vae, latent_stats=stats,
                           embedder=task.embedder)  # fmt: skip
    config.dit_train.image_text_length = 0
    full = dit_task.DiTTask(config, str(tmp_path), vae, latent_stats=stats,
                            embedder=task.embedder)  # fmt: skip
    texts = ["a blue star", "a red circle"]  # 5 tokens each with [CLS] and [SEP]
    z = config.vae.z_channels
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 1, 4, 4, z)).astype(np.float32)
    videos = rng.standard_normal((2, 2, 4, 4, z)).astype(np.float32)
    b_cut = cut._with_text(0, {"latents": images}, texts)
    b_full = full._with_text(0, {"latents": images}, texts)
    assert b_cut["text"].shape[1] == 6 and b_full["text"].shape[1] == 8
    np.testing.assert_array_equal(b_cut["text"], b_full["text"][:, :6])
    assert not b_full["text_mask"][:, 6:].any()
    assert cut._with_text(0, {"latents": videos}, texts)["text"].shape[1] == 8
    graphdef, params = nnx.split(_perturbed_dit(cut))
    loss = jax.jit(lambda p, b, r: cut.loss(nnx.merge(graphdef, p), cut.frozen(), b, r)[0])
    key = jax.random.key(5)
    np.testing.assert_allclose(float(loss(params, b_cut, key)), float(loss(params, b_full, key)),
                               rtol=1e-6)  # fmt: skip
    assert cut.text_truncated == 0
    long = cut.with_captions({"latents": images}, ["a red circle moving left on a wall", "x"])
    assert long["text"].shape[1] == 6 and long["text_mask"][0].all()
    assert cut.text_truncated == 1
    # Pixel batches (no latent cache): the clip's latent frames decide (1 frame: 1; 5: 2).
    image_clips = np.zeros((2, 1, 16, 16, 3), np.uint8)
    assert cut.with_captions({"video": image_clips}, texts)["text"].shape[1] == 6
    video_clips = np.zeros((2, 5, 16, 16, 3), np.uint8)
    assert cut.with_captions({"video": video_clips}, texts)["text"].shape[1] == 8


def test_training_times_follow_the_configured_flow_shift(cached):
    """`flow.shift` moves the training times towards noise (SD3's resolution shift): with shift
    2 each logit-normal draw t becomes 2t / (1 + t), so the median 0.5 becomes 2/3."""
    import copy

    from sora_jax.diffusion import flow

    task, _, _ = cached
    rng, times = jax.random.key(3), {}
    for shift in (1.0, 2.0):
        clone = copy.copy(task)  # sample_times reads only config.flow
        clone.config = copy.deepcopy(task.config)
        clone.config.flow.shift = shift
        times[shift] = np.asarray(clone.sample_times(rng, 4096))
    np.testing.assert_allclose(times[2.0], np.asarray(flow.shift_t(times[1.0], 2.0)), rtol=1e-6)
    assert abs(np.median(times[1.0]) - 0.5) < 0.02 and abs(np.median(times[2.0]) - 2 / 3) < 0.02

"""Stage "vae": the loss trains, the GAN joins at its step with VQGAN's adaptive weight, PSNR/SSIM
are right, evaluation runs during training and on a workdir, bad input fails in one sentence."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from sora_jax import evaluate, quality
from sora_jax.data import buckets as buckets_lib
from sora_jax.data import sources
from sora_jax.data import world as world_lib
from sora_jax.models import vae as vae_lib
from sora_jax.models.perceptual import FeatureNet
from sora_jax.train import loop, vae_eval, vae_losses, vae_task

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))

START = 3  # disc_start_step


def make_config(**train) -> ml_collections.ConfigDict:
    vae_train = dict(
        steps=2, lr=3e-3, lr_warmup_steps=0, lr_schedule="constant", weight_decay=0.0,
        grad_clip_norm=1.0, ema_decay=0.0, log_every_steps=1, checkpoint_every_steps=2,
        buckets=(("5x16x16", 2, 1.0),), l1_weight=1.0, l2_weight=1.0, ssim_weight=0.2,
        kl_weight=1e-6, disc_weight=0.5, disc_start_step=START, disc_channels=4, disc_layers=2,
        eval_every_steps=2, eval_clips=2,
    )  # fmt: skip
    vae_train.update(train)
    return ml_collections.ConfigDict(
        dict(
            seed=0,
            mesh=dict(data=1, fsdp=-1, context=1, tensor=1),
            world=dict(resolutions=((16, 16),), num_frames=(5,), max_objects=1, holdout=()),
            vae=dict(base_channels=4, channel_mults=(1, 2), num_res_blocks=1,
                     temporal_downsample=(True,), z_channels=4, mid_attention=False),
            vae_train=vae_train,
        )
    )  # fmt: skip


VIDEO = np.stack([sources.make_world(make_config()).clip(i, 16, 16, 5)["video"] for i in (0, 1)])


def _setup(config: ml_collections.ConfigDict):
    task = vae_task.VAETask(config)
    model = task.create_model(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(p, step):
        batch = {"video": jnp.asarray(VIDEO), "step": jnp.int32(step)}
        return task.loss(nnx.merge(graphdef, p, rest), None, batch, jax.random.key(0))

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    return task, graphdef, params, rest, grad_fn, loss_fn


@pytest.fixture(scope="module")
def setup():
    return _setup(make_config())


def _disc_norm(grads) -> float:
    disc = nnx.state(grads, lambda path, _: "discriminator" in path)
    return float(optax.tree.norm(disc))


def test_loss_falls_on_a_fixed_batch(setup):
    _, _, params, _, grad_fn, _ = setup
    tx = optax.adam(1e-2)
    opt = tx.init(params)
    recs = []
    for step in range(10):  # the GAN is on from step START
        (_, aux), grads = grad_fn(params, step)
        updates, opt = tx.update(grads, opt, params)
        params = optax.apply_updates(params, updates)
        recs.append(float(aux["rec"]))
    assert recs[-1] < 0.6 * recs[0], recs


def test_first_frame_weight_scales_frame_zero_in_the_total_only():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (2, 5, 8, 8, 3)), jnp.float32)
    recon = x + jnp.asarray(rng.normal(0, 0.1, x.shape), jnp.float32)
    weights = dict(l1_weight=1.0, l2_weight=10.0, ssim_weight=0.0, disc_weight=0.0)
    plain = vae_task.VAETask(make_config(**weights))
    heavy = vae_task.VAETask(make_config(**weights, first_frame_weight=4.0))
    total, terms = plain.reconstruction(recon, x, None)
    total4, terms4 = heavy.reconstruction(recon, x, None)
    err = np.asarray(recon - x)
    w = np.array([4.0, 1, 1, 1, 1])[None, :, None, None, None]
    want = np.mean(w * np.abs(err)) + 10.0 * np.mean(w * err**2)
    np.testing.assert_allclose(float(total4), want, rtol=1e-5)
    np.testing.assert_allclose(float(total), np.mean(np.abs(err)) + 10 * np.mean(err**2), rtol=1e-5)
    assert float(terms4["l2"]) == float(terms["l2"])  # the logged terms stay unweighted


def test_gan_switches_on_at_the_configured_step(setup):
    _, _, params, _, grad_fn, _ = setup
    (loss_off, aux_off), g_off = grad_fn(params, START - 1)
    (loss_on, aux_on), g_on = grad_fn(params, START)
    assert float(aux_off["gan_on"]) == 0.0 and float(aux_on["gan_on"]) == 1.0
    assert _disc_norm(g_off) == 0.0 and _disc_norm(g_on) > 1e-3
    adv = 0.5 * aux_on["adaptive_weight"] * aux_on["g_loss"] + aux_on["d_loss"]
    np.testing.assert_allclose(float(loss_on - loss_off), float(adv), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(loss_off), float(aux_off["rec"] + 1e-6 * aux_off["kl"]),
                               rtol=1e-5)  # fmt: skip


def test_adaptive_weight_is_the_ratio_of_last_layer_gradient_norms(setup):
    _check_adaptive_weight(*setup[:5])


def test_adaptive_weight_with_patched_vae():  # conv_out emits 2x2 patches, unfolded after it
    config = make_config()
    config.vae.patch_size = 2  # 16x16 frames -> 4x4 latents (8x8 without patches)
    _check_adaptive_weight(*_setup(config)[:5])


def _check_adaptive_weight(task, graphdef, params, rest, grad_fn):
    (_, aux), _ = grad_fn(params, START)
    x = vae_lib.to_pixels(jnp.asarray(VIDEO))

    def parts(p):  # the same forward as the loss, with the two terms apart
        m = nnx.merge(graphdef, p, rest)
        mean, logvar = m.encode(x)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(jax.random.key(0), mean.shape)
        recon = m.decode(z, clip=False)
        critic = vae_losses.stopped(m.discriminator)
        return task.reconstruction(recon, x, None)[0], vae_losses.generator_loss(
            "hinge", critic(recon)
        )

    kernel = lambda g: g["decoder"]["conv_out"]["kernel"][...]  # noqa: E731
    both = jax.jit(lambda p: [kernel(jax.grad(lambda q, i=i: parts(q)[i])(p)) for i in (0, 1)])
    g_rec, g_gan = both(params)
    want = jnp.linalg.norm(g_rec) / (jnp.linalg.norm(g_gan) + 1e-4)
    np.testing.assert_allclose(float(aux["adaptive_weight"]), float(want), rtol=1e-4)


def _ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s SSIM with scipy: 11x11 Gaussian (sigma 1.5), 'valid', per channel."""
    from scipy.signal import convolve2d

    t = np.arange(11) - 5.0
    g = np.exp(-0.5 * (t / 1.5) ** 2)
    win = np.outer(g, g) / np.outer(g, g).sum()
    f = lambda v: convolve2d(v, win, mode="valid")  # noqa: E731
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    maps = []
    for ch in range(a.shape[-1]):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
        mx, my = f(x), f(y)
        sxx, syy, sxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
        maps.append(((2 * mx * my + c1) * (2 * sxy + c2))
                    / ((mx**2 + my**2 + c1) * (sxx + syy + c2)))  # fmt: skip
    return float(np.mean(maps))


def test_ssim_psnr_values():
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (24, 20, 3)).astype(np.float32)
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), -1, 1).astype(np.float32)
    assert float(quality.ssim(a, a)) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(float(quality.ssim(a, b)), _ssim_reference(a, b), rtol=1e-4)
    assert float(quality.psnr(a, a + 0.1)) == pytest.approx(10 * np.log10(4 / 0.01), abs=1e-3)
    per = quality.psnr(np.stack([a, a]), np.stack([a + 0.1, a + 0.2]), per_item=True)
    np.testing.assert_allclose(per, [26.0206, 19.9999], atol=1e-3)


def _write_run(config, workdir: str):
    """A checkpoint of a freshly initialised model of `config` (as training would leave it)."""
    import import_weights  # tools/: a step-0 TrainState around a model's parameters

    from sora_jax.train import checkpoint as ckpt_lib

    task = vae_task.VAETask(config)
    model = task.create_model(nnx.Rngs(0))
    state = import_weights.train_state(model)
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    ckpt.save(0, state, config.to_dict(), {"task": "vae"})
    ckpt.close()
    return task, model, state


def test_eval_every_n_steps_and_on_a_workdir(tmp_path):
    config = make_config()
    workdir = str(tmp_path / "vae")
    task, model, state = _write_run(config, workdir)
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    for step in (1, 2, 3, 4):  # the loop calls this after every step; eval_every_steps=2
        task.periodic(step, loop.PeriodicContext(step, state, graphdef, rest, workdir, None))
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [2, 4]
    assert np.isfinite(rows[0]["eval_psnr"]) and -1 <= rows[0]["eval_ssim"] <= 1
    # A config without a GAN (e.g. a DiT run's) loads the GAN-trained run: the layout comes
    # from the run's saved config.
    result = vae_task.evaluate_vae(make_config(disc_weight=0.0), workdir)
    assert set(result) >= {"psnr", "ssim", "psnr_5x16x16", "ssim_5x16x16"}
    assert json.load(open(os.path.join(workdir, vae_task.EVAL_FILE)))["psnr"] == result["psnr"]
    np.testing.assert_allclose(result["psnr"], rows[0]["eval_psnr"], rtol=1e-5)
    np.testing.assert_allclose(result["ssim"], rows[0]["eval_ssim"], rtol=1e-5)
    # Footage the VAE never saw (tools/eval_vae.py): a centre crop, PSNR of the round trip.
    import eval_vae

    video = np.random.default_rng(0).integers(0, 256, (7, 20, 30, 3), dtype=np.uint8)
    crop = eval_vae.centre_crop(video, 5, 16, 4)
    np.testing.assert_array_equal(crop, video[:5, 2:18, 7:23])
    with pytest.raises(ValueError, match="has 7 frames"):
        eval_vae.centre_crop(video, 9, 16, 4)
    loaded = vae_task.load_vae(make_config(disc_weight=0.0), workdir)
    got = vae_eval.evaluate_videos(loaded, {"clip": crop})["clip"]
    x = vae_lib.to_pixels(crop[None])
    want = quality.psnr(loaded.decode(loaded.encode(x)[0]), x)
    np.testing.assert_allclose(got["psnr"], float(want), rtol=1e-5)
    assert got["shape"] == [5, 16, 16, 3] and -1 <= got["ssim"] <= 1


def test_eval_grades_the_reconstructions(monkeypatch):
    """recon_*_acc grade each bucket's reconstructions against their own clips' specs."""
    config = make_config(buckets=(("5x16x16", 2, 1.0), ("1x16x16", 2, 1.0)), eval_clips=4)
    model = vae_task.VAETask(config).create_model(nnx.Rngs(0))
    got = vae_eval.evaluate_model(model, config)
    buckets = buckets_lib.parse_buckets(config.vae_train.buckets)
    videos, specs = vae_eval.heldout_clips(config, 4, buckets[0])
    x = vae_lib.to_pixels(jnp.asarray(videos))
    recon = np.asarray(vae_lib.to_uint8(model.decode(model.encode(x)[0])))
    want = evaluate.grade_many(list(recon), specs)
    assert got["recon_shape_acc_5x16x16"] == want["shape_acc"]
    assert got["recon_color_acc_5x16x16"] == want["color_acc"]
    # Frame 0 alone (the image path), per bucket and averaged; a still is its frame 0.
    x16 = vae_lib.to_pixels(jnp.asarray(vae_eval.heldout_clips(config, 4, buckets[1])[0]))

    def first(v):
        return quality.psnr(model.decode(model.encode(v)[0])[:, :1], v[:, :1], per_item=True)

    want_first = [float(np.mean(first(v))) for v in (x, x16)]
    np.testing.assert_allclose([got["psnr_first_5x16x16"], got["psnr_first_1x16x16"]], want_first,
                               rtol=1e-4)  # fmt: skip
    np.testing.assert_allclose(got["psnr_first_1x16x16"], got["psnr_1x16x16"], rtol=1e-5)
    np.testing.assert_allclose(got["psnr_first"], np.mean(want_first), rtol=1e-4)
    # Stills have no motion to grade: the 1-frame bucket reports none, the mean is the 5-frame's.
    assert "recon_motion_acc_1x16x16" not in got
    assert got["recon_motion_acc"] == got["recon_motion_acc_5x16x16"]
    shape_accs = (got["recon_shape_acc_5x16x16"], got["recon_shape_acc_1x16x16"])
    np.testing.assert_allclose(got["recon_shape_acc"], np.mean(shape_accs))
    # Flicker of the round trip: frame differences of the reconstructions over the clips'.
    mad = lambda vs: np.mean([evaluate.frame_differences(v).mean() for v in vs])  # noqa: E731
    np.testing.assert_allclose(got["recon_mad_ratio_5x16x16"], mad(recon) / mad(videos), rtol=1e-4)
    assert "recon_mad_ratio_1x16x16" not in got
    assert got["recon_mad_ratio"] == got["recon_mad_ratio_5x16x16"]
    # A lossless round trip grades exactly as the clips themselves (the specs stay aligned).
    identity = lambda state, video: (
        (np.zeros(len(video)),) * 2 + (video, video, np.zeros(len(video)))
    )
    monkeypatch.setattr(vae_eval, "_eval_fn", lambda graphdef: identity)
    lossless = vae_eval.evaluate_model(model, config)
    truth = evaluate.grade_many(list(videos), specs)
    assert lossless["recon_shape_acc_5x16x16"] == truth["shape_acc"]
    assert lossless["recon_color_acc_5x16x16"] == truth["color_acc"] == 1.0
    assert lossless["recon_mad_ratio"] == 1.0


def test_eval_grades_object_permanence_of_occlusion_round_trips(monkeypatch):
    """recon_permanence: the evaluation suite's occlusion scenes through the round trip, graded
    by evaluate.object_permanence; only buckets with frames before and after the bar have it."""
    config = make_config(buckets=(("9x32x32", 2, 1.0), ("1x32x32", 2, 1.0)),
                         eval_occlusion_clips=3)  # fmt: skip
    model = vae_task.VAETask(config).create_model(nnx.Rngs(0))
    got = vae_eval.evaluate_model(model, config)
    bucket = buckets_lib.parse_buckets(config.vae_train.buckets)[0]
    videos, specs = vae_eval.occlusion_clips(config, 3, bucket)
    assert videos.shape == (3, 9, 32, 32, 3) and all(s["occluder"] for s in specs)
    cfg = sources.make_world(config).cfg  # the suite's first scenes (eval.seed 0)
    assert specs == world_lib.occlusion_suite(cfg, 3, seed=0)
    x = vae_lib.to_pixels(jnp.asarray(videos))
    recon = np.asarray(vae_lib.to_uint8(model.decode(model.encode(x)[0])))
    kept = [evaluate.object_permanence(r, s)["permanent"] for r, s in zip(recon, specs)]
    assert got["recon_permanence_9x32x32"] == np.mean(kept)
    assert "recon_permanence_1x32x32" not in got
    assert got["recon_permanence"] == got["recon_permanence_9x32x32"]
    # A lossless round trip grades as the rendered clips do (the specs stay aligned; at 32x32
    # the grader loses one of these three small subjects' shapes on the real clips too).
    identity = lambda state, video: (
        (np.zeros(len(video)),) * 2 + (video, video, np.zeros(len(video)))
    )
    monkeypatch.setattr(vae_eval, "_eval_fn", lambda graphdef: identity)
    truth = [evaluate.object_permanence(v, s)["permanent"] for v, s in zip(videos, specs)]
    assert vae_eval.evaluate_model(model, config)["recon_permanence"] == np.mean(truth) == 2 / 3
    # Off by default: no occlusion scenes rendered or graded.
    assert "recon_permanence" not in vae_eval.evaluate_model(model, make_config())


def test_latent_noise_is_scaled_per_channel_and_per_clip():
    rng = np.random.default_rng(0)
    scales = jnp.asarray([0.5, 2.0, 8.0, 1.0], jnp.float32)
    mean = jnp.asarray(rng.normal(0, 1, (64, 3, 4, 4, 4)), jnp.float32) * scales
    assert vae_losses.add_latent_noise(mean, mean, 0.0, jax.random.key(1)) is mean
    fixed = vae_losses.add_latent_noise(mean, mean, 0.3, jax.random.key(1), uniform=False)
    noise = np.asarray(fixed - mean) / np.asarray(jnp.std(mean, axis=(0, 1, 2, 3)))
    np.testing.assert_allclose(noise.std(axis=(0, 1, 2, 3)), 0.3, rtol=0.05)  # 3,072 draws each
    drawn = vae_losses.add_latent_noise(mean, mean, 0.3, jax.random.key(1))
    per_clip = (np.asarray(drawn - mean) / np.asarray(jnp.std(mean, axis=(0, 1, 2, 3)))).std(
        axis=(1, 2, 3, 4)
    )
    assert per_clip.max() <= 0.3 * 1.25 and per_clip.min() < 0.05 and 0.1 < per_clip.mean() < 0.2


def test_latent_noise_changes_the_loss_only_when_on():
    base = make_config(disc_weight=0.0)
    noisy = make_config(disc_weight=0.0, latent_noise=0.5)
    batch = {"video": jnp.asarray(VIDEO), "step": jnp.int32(0)}
    model = vae_task.VAETask(base).create_model(nnx.Rngs(0))
    key = jax.random.key(0)
    plain = float(vae_task.VAETask(base).loss(model, None, batch, key)[0])
    again = float(vae_task.VAETask(make_config(disc_weight=0.0, latent_noise=0.0)).loss(
        model, None, batch, key)[0])  # fmt: skip
    assert plain == again  # latent_noise 0 draws what it did before the option existed
    (total, _), grads = nnx.value_and_grad(
        lambda m: vae_task.VAETask(noisy).loss(m, None, batch, key), has_aux=True
    )(model)
    assert float(total) != plain and np.isfinite(float(optax.tree.norm(nnx.state(grads))))


def test_eval_grades_permanence_of_noisy_round_trips():
    """recon_permanence_noisy: the occlusion scenes decoded from their latent means plus noise
    at eval_latent_noise standard deviations per channel (one fixed draw); absent at 0."""
    cfg = lambda level: make_config(buckets=(("9x32x32", 2, 1.0),), eval_occlusion_clips=4,
                                    eval_latent_noise=level)  # fmt: skip
    model = vae_task.VAETask(cfg(0.0)).create_model(nnx.Rngs(0))
    cache: dict = {}
    assert "recon_permanence_noisy" not in vae_eval.evaluate_model(model, cfg(0.0), cache=cache)
    faint = vae_eval.evaluate_model(model, cfg(1e-6), cache=cache)
    assert faint["recon_permanence_noisy"] == faint["recon_permanence"]
    bucket = buckets_lib.parse_buckets(cfg(0.0).vae_train.buckets)[0]
    videos, specs = vae_eval.occlusion_clips(cfg(0.0), 4, bucket)
    recon = []
    for i in (0, 2):  # the eval's batches: the noise's scale is each batch's channel spread
        mean = model.encode(vae_lib.to_pixels(jnp.asarray(videos[i : i + 2])))[0]
        z = vae_losses.add_latent_noise(mean, mean, 3.0, jax.random.PRNGKey(0), uniform=False)
        recon.append(np.asarray(vae_lib.to_uint8(model.decode(z))))
    kept = [evaluate.object_permanence(r, s)["permanent"]
            for r, s in zip(np.concatenate(recon), specs)]  # fmt: skip
    got = vae_eval.evaluate_model(model, cfg(3.0), cache=cache)["recon_permanence_noisy"]
    assert got == np.mean(kept)


@pytest.mark.slow
def test_training_runs_the_gan_and_logs_eval(tmp_path):
    config = make_config(disc_start_step=1)
    workdir = str(tmp_path / "vae")
    result = loop.train(vae_task.VAETask(config), config, config.vae_train, workdir)
    assert [h["gan_on"] for h in result.history] == [0.0, 1.0]
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "eval_psnr" in r] == [2]


def test_bad_input_fails_in_one_sentence(setup, tmp_path):
    with pytest.raises(ValueError, match=r"buckets entry '4x16x16': num_frames=4 .* 1 \+ 2\*k"):
        vae_task.VAETask(make_config(buckets=(("4x16x16", 2, 1.0),)))
    with pytest.raises(ValueError, match="disc_loss='wgan' is unknown"):
        vae_task.VAETask(make_config(disc_loss="wgan"))
    with pytest.raises(ValueError, match="needs vae_train.perceptual_path"):
        vae_task.VAETask(make_config(perceptual_weight=1.0))
    with pytest.raises(FileNotFoundError, match="does not exist; expected a local .safetensors"):
        vae_task.VAETask(make_config(perceptual_weight=1.0, perceptual_path=str(tmp_path / "x")))
    *_, loss_fn = setup
    task, graphdef, params, rest = setup[:4]
    four_channels = {"video": jnp.zeros((2, 5, 16, 16, 4), jnp.uint8), "step": jnp.int32(0)}
    with pytest.raises(ValueError, match=r"expected \[B, F, H, W, 3\]"):
        jax.jit(lambda p: task.loss(nnx.merge(graphdef, p, rest), None, four_channels,
                                    jax.random.key(0)))(params)  # fmt: skip


def test_perceptual_features_match_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    nn = torch.nn
    conv = lambda i, o: nn.Conv2d(i, o, 3, padding=1)  # noqa: E731
    features = nn.Sequential(conv(3, 4), nn.ReLU(), conv(4, 4), nn.ReLU(), nn.MaxPool2d(2),
                             conv(4, 6), nn.ReLU())  # fmt: skip
    path = str(tmp_path / "vgg.safetensors")
    save_file({f"features.{k}": v.contiguous() for k, v in features.state_dict().items()}, path)
    net = FeatureNet.from_safetensors(path)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    scaled = (x - np.array([-0.030, -0.088, -0.188])) / np.array([0.458, 0.448, 0.450])
    with torch.no_grad():
        t = torch.from_numpy(scaled.astype(np.float32)).permute(0, 3, 1, 2)
        want = [features[:4](t), features(t)]
    got = net.features(jnp.asarray(x))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), w.permute(0, 2, 3, 1).numpy(), atol=1e-5)
    y = x[::-1].copy()
    assert float(jnp.max(jnp.abs(net.distance(x, x)))) == 0.0
    assert float(jnp.min(net.distance(x, y))) > 0.0


def test_stage_end_evaluation_reuses_the_compile_of_training_evaluations(tmp_path, monkeypatch):
    from sora_jax import recipe

    monkeypatch.setattr(vae_eval, "_EVAL_FNS", {})
    result = recipe.run_vae(make_config(disc_weight=0.0), str(tmp_path))  # eval at step 2 too
    rows = [json.loads(line) for line in open(tmp_path / "vae" / "metrics.jsonl")]
    (evaluated,) = [r for r in rows if "eval_psnr" in r]
    assert evaluated["step"] == 2
    (run,) = vae_eval._EVAL_FNS.values()
    # One program for both (on the H200 the stage-end evaluation compiled again: 38 s).
    assert run._cache_size() == 1
    np.testing.assert_allclose(result["psnr"], evaluated["eval_psnr"], rtol=1e-5)


def test_training_evaluations_compile_beside_the_steps(tmp_path, monkeypatch):
    """The evaluation's programs compile in a thread after the first step
    (VAETask.periodic_programs), so the first evaluation compiles nothing itself."""
    import threading

    from jax import monitoring

    from sora_jax import recipe

    monkeypatch.setattr(vae_eval, "_EVAL_FNS", {})
    compiles, evaluating = [], []

    def listener(name, secs, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append((threading.current_thread().name, bool(evaluating)))

    evaluate_model = vae_eval.evaluate_model

    def recorded(*args, **kwargs):
        evaluating.append(1)
        try:
            return evaluate_model(*args, **kwargs)
        finally:
            evaluating.clear()

    monkeypatch.setattr(vae_eval, "evaluate_model", recorded)
    # 3 held-out clips in batches of 2: two shapes; the stage's own end evaluates too.
    config = make_config(disc_weight=0.0, steps=3, eval_every_steps=3, eval_clips=3)
    assert vae_eval.eval_video_shapes(config) == [(2, 5, 16, 16, 3), (1, 5, 16, 16, 3)]
    monitoring.register_event_duration_secs_listener(listener)
    try:
        recipe.run_vae(config, str(tmp_path))
    finally:
        monitoring.unregister_event_duration_listener(listener)
    assert sum(name == "periodic-compile" for name, _ in compiles) == 2
    assert [c for c in compiles if c[1]] == []  # none while evaluating
    rows = [json.loads(line) for line in open(tmp_path / "vae" / "metrics.jsonl")]
    assert [r["step"] for r in rows if "eval_psnr" in r] == [3]
    # precompile=False: the evaluation compiles its own programs.
    compiles.clear()
    monkeypatch.setattr(vae_eval, "_EVAL_FNS", {})
    config.vae_train.precompile = False
    monitoring.register_event_duration_secs_listener(listener)
    try:
        recipe.run_vae(config, str(tmp_path / "off"))
    finally:
        monitoring.unregister_event_duration_listener(listener)
    assert not any(name == "periodic-compile" for name, _ in compiles)
    assert sum(during for _, during in compiles) >= 2

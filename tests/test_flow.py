"""Noising maths: rectified flow (flow.py) and DDPM schedules / parameterisations (ddpm.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from sora_jax.diffusion import ddpm, flow


def _x0_eps_t(seed=0, shape=(2, 3, 4, 5, 6)):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x0 = jax.random.normal(k1, shape)
    eps = jax.random.normal(k2, shape)
    t = jax.random.uniform(k3, shape[:2], minval=0.05, maxval=0.95)
    return x0, eps, t


# ---------------------------------------------------------------- flow
def test_add_noise_is_per_frame_interpolation():
    x0, eps, t = _x0_eps_t()
    xt = flow.add_noise(x0, eps, t)
    b, f = 1, 2
    np.testing.assert_allclose(xt[b, f], (1 - t[b, f]) * x0[b, f] + t[b, f] * eps[b, f], atol=1e-6)
    np.testing.assert_array_equal(flow.add_noise(x0, eps, jnp.zeros(t.shape)), x0)
    np.testing.assert_array_equal(flow.add_noise(x0, eps, jnp.ones(t.shape)), eps)


def test_velocity_conversions_recover_x0_and_eps():
    x0, eps, t = _x0_eps_t()
    xt = flow.add_noise(x0, eps, t)
    v = flow.velocity_target(x0, eps)
    np.testing.assert_allclose(flow.x0_from_velocity(xt, v, t), x0, atol=1e-5)
    np.testing.assert_allclose(flow.eps_from_velocity(xt, v, t), eps, atol=1e-5)
    np.testing.assert_allclose(flow.velocity_from_x0(xt, x0, t), v, atol=1e-4)
    np.testing.assert_allclose(flow.velocity_from_eps(xt, eps, t), v, atol=1e-4)


def test_velocity_is_the_time_derivative_of_the_path():
    x0, eps, t = _x0_eps_t()
    d = jax.jvp(lambda s: flow.add_noise(x0, eps, s), (t,), (jnp.ones_like(t),))[1]
    np.testing.assert_allclose(d, flow.velocity_target(x0, eps), atol=1e-6)


def test_shift_t_fixes_endpoints_divides_snr_and_inverts():
    t = jnp.linspace(0.01, 0.99, 50)
    s = 3.0
    ts = flow.shift_t(t, s)
    np.testing.assert_allclose(flow.shift_t(jnp.array([0.0, 1.0]), s), [0.0, 1.0])
    np.testing.assert_allclose(flow.shift_t(t, 1.0), t)
    snr = lambda u: ((1 - u) / u) ** 2
    np.testing.assert_allclose(snr(ts), snr(t) / s**2, rtol=1e-4)
    np.testing.assert_allclose(flow.inverse_shift_t(ts, s), t, atol=1e-6)


def test_shift_t_matches_diffusers_static_shift():
    sched = FlowMatchEulerDiscreteScheduler(shift=5.0)
    u = np.linspace(1, 1000, 1000, dtype=np.float32)[::-1] / 1000
    np.testing.assert_allclose(flow.shift_t(u, 5.0), sched.sigmas.numpy(), atol=1e-6)


@pytest.mark.parametrize("tokens", [256, 1024, 4096, 6000])
def test_resolution_shift_is_exp_of_flux_mu(tokens):
    mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
    np.testing.assert_allclose(flow.resolution_shift(tokens), np.exp(mu), rtol=1e-6)
    # Flux's time_shift(mu, 1, t) is shift_t(t, e^mu).
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    t = torch.linspace(0.05, 0.95, 7)
    np.testing.assert_allclose(
        flow.shift_t(t.numpy(), flow.resolution_shift(tokens)),
        sched.time_shift(mu, 1.0, t).numpy(),
        atol=1e-6,
    )


def test_sample_t_is_logit_normal():
    t = flow.sample_t(jax.random.key(0), (200, 100), logit_mean=0.5, logit_std=0.8)
    assert t.shape == (200, 100) and float(t.min()) > 0 and float(t.max()) < 1
    logit = np.log(np.asarray(t, np.float64) / (1 - np.asarray(t, np.float64)))
    assert abs(logit.mean() - 0.5) < 0.02 and abs(logit.std() - 0.8) < 0.02


def test_flow_loss_is_fp32_mse():
    x0, eps, _ = _x0_eps_t()
    pred = (eps - x0 + 0.1).astype(jnp.bfloat16)
    loss = flow.flow_loss(pred, flow.velocity_target(x0, eps))
    assert loss.dtype == jnp.float32
    ref = np.mean((np.asarray(pred, np.float32) - np.asarray(eps - x0)) ** 2)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)


def test_flow_loss_frame_weight_excludes_given_frames_and_normalises():
    x0, eps, _ = _x0_eps_t()
    target = flow.velocity_target(x0, eps)
    pred = target.at[:, 0].add(100.0)  # a huge error on frame 0 only ...
    pred = pred.at[:, 1:].add(0.5)  # ... and 0.25 squared error elsewhere
    w = jnp.ones((2, 3)).at[:, 0].set(0.0)  # ... and frame 0 is a given frame
    np.testing.assert_allclose(flow.flow_loss(pred, target, w), 0.25, rtol=1e-5)
    # Weights scale per frame; normalised by their sum, so doubling all weights is a no-op.
    np.testing.assert_allclose(flow.flow_loss(pred, target, 2 * w), 0.25, rtol=1e-5)
    assert float(flow.flow_loss(pred, target, jnp.zeros((2, 3)))) == 0.0
    with pytest.raises(ValueError):
        flow.flow_loss(pred, target, jnp.ones((2,)))


# ---------------------------------------------------------------- ddpm
@pytest.mark.parametrize(
    "name,diffusers_name",
    [("linear", "linear"), ("scaled_linear", "scaled_linear"), ("cosine", "squaredcos_cap_v2")],
)
def test_beta_schedules_match_diffusers(name, diffusers_name):
    kw = {"beta_start": 0.00085, "beta_end": 0.012} if name == "scaled_linear" else {}
    ref = DDPMScheduler(beta_schedule=diffusers_name, **kw)
    betas = ddpm.beta_schedule(name)
    np.testing.assert_allclose(betas, ref.betas.numpy(), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(ddpm.alphas_cumprod(betas), ref.alphas_cumprod.numpy(), atol=2e-6)


def test_ddpm_parameterisations_round_trip():
    x0, eps, _ = _x0_eps_t()
    ac = ddpm.alphas_cumprod(ddpm.beta_schedule("cosine"))
    t = jnp.array([[0.0, 0.3, 0.6], [0.1, 0.5, 0.9]])
    abar = ddpm.alpha_bar_at(ac, t)
    np.testing.assert_allclose(abar[0, 1], ac[300], rtol=1e-6)
    x = ddpm.add_noise(x0, eps, abar)
    v = ddpm.v_target(x0, eps, abar)
    for pred, kind in [(eps, "eps"), (v, "v"), (x0, "x0")]:
        got_x0, got_eps = ddpm.to_x0_eps(pred, x, abar, kind)
        np.testing.assert_allclose(got_x0, x0, atol=2e-4)
        np.testing.assert_allclose(got_eps, eps, atol=2e-3)
    np.testing.assert_allclose(ddpm.v_from_eps(x, eps, abar), v, atol=1e-4)
    with pytest.raises(ValueError):
        ddpm.to_x0_eps(eps, x, abar, "velocity")


def test_ddpm_v_matches_diffusers_get_velocity():
    x0, eps, _ = _x0_eps_t(shape=(3, 1, 2, 2, 4))
    sched = DDPMScheduler(beta_schedule="linear")
    k = torch.tensor([10, 500, 990])
    ref = sched.get_velocity(torch.tensor(np.asarray(x0)), torch.tensor(np.asarray(eps)), k)
    abar = ddpm.alpha_bar_at(sched.alphas_cumprod.numpy(), (k.numpy() / 1000)[:, None])
    np.testing.assert_allclose(ddpm.v_target(x0, eps, abar), ref.numpy(), atol=1e-6)

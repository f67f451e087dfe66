"""Samplers: exactness on Gaussian data, parity with diffusers, given frames, CFG, jit."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
)

from sora_jax.diffusion import ddpm, flow
from sora_jax.diffusion.conditioning import i2v_mask, infill_mask
from sora_jax.diffusion.samplers import ddim_timesteps, flow_timesteps, sample

# ---------------------------------------------------------------- Gaussian data, exact denoisers
# x0 ~ N(mu, S) in D = 3 dims (full covariance). Both noising paths keep x_t Gaussian, so
# E[x0 | x_t] and E[eps | x_t] are linear in x_t; with S = Q diag(lam) Q^T everything is
# diagonal in the Q basis.
D = 3
MU = np.array([1.5, -1.0, 0.5], np.float32)
# A rotated diagonal covariance with standard deviations 0.5 .. 1.2 (latents are normalised
# to about unit variance; much smaller variances make 50 Euler steps visibly biased).
Q = np.linalg.qr(np.array([[1.0, 0.4, 0.0], [0.3, 0.7, 0.2], [-0.2, 0.1, 0.5]]))[0]
LAM = np.array([0.25, 0.6, 1.4])
SIGMA = ((Q * LAM) @ Q.T).astype(np.float32)
SQRT_SIGMA = (Q * np.sqrt(LAM)) @ Q.T  # S^(1/2)


def _in_q(x, fn):
    """Apply a per-eigenvalue diagonal map fn(lam) [..., D] in the Q basis."""
    q = jnp.asarray(Q, jnp.float32)
    return jnp.einsum("...d,ed->...e", fn(jnp.asarray(LAM, jnp.float32)) * (x @ q), q)


def exact_flow_velocity(x, t, cond):
    """E[eps - x0 | x_t] for x_t = (1-t) x0 + t eps: C_t = (1-t)^2 S + t^2 I, r = x_t - (1-t) mu."""
    tb = t[:, :, None, None, None]
    r = x - (1 - tb) * MU
    c = lambda lam: (1 - tb) ** 2 * lam + tb**2
    e_x0 = MU + _in_q(r, lambda lam: (1 - tb) * lam / c(lam))
    e_eps = _in_q(r, lambda lam: tb / c(lam))
    return e_eps - e_x0


def exact_flow_solution(x1):
    """The probability-flow map from t = 1 to 0: x0 = mu + S^(1/2) x1 (covariances commute)."""
    return MU + x1 @ SQRT_SIGMA.T.astype(np.float32)


AC = ddpm.alphas_cumprod(ddpm.beta_schedule("linear"))


def exact_ddpm_eps(x, t, cond):
    """E[eps | x_k] for x_k = a x0 + s eps: C = a^2 S + s^2 I, E[eps|x] = s C^-1 (x - a mu)."""
    abar = ddpm.alpha_bar_at(AC, t)[:, :, None, None, None]
    a, s = jnp.sqrt(abar), jnp.sqrt(1 - abar)
    return _in_q(x - a * MU, lambda lam: s / (abar * lam + 1 - abar))


def exact_ddpm_v(x, t, cond):
    abar = ddpm.alpha_bar_at(AC, t)[:, :, None, None, None]
    return ddpm.v_from_eps(x, exact_ddpm_eps(x, t, cond), abar)


def _noise(n=20000, seed=0):
    # 20k samples laid out as [B=4, T=5, H=1000, W=1, C=D].
    return jax.random.normal(jax.random.key(seed), (4, 5, n // 20, 1, D), jnp.float32)


def _moment_errors(x):
    x = np.asarray(x, np.float64).reshape(-1, D)
    mean_err = np.linalg.norm(x.mean(0) - MU) / np.linalg.norm(MU)
    cov_err = np.linalg.norm(np.cov(x.T) - SIGMA) / np.linalg.norm(SIGMA)
    return mean_err, cov_err


# Tolerance: <= 2% relative error of the mean (|.|_2 / |mu|) and covariance (Frobenius);
# sampling noise of 20k samples alone is ~0.5%. Euler is first order: at 50 steps (shift 3) it
# is ~7% off the covariance, so it gets the steps it needs for 2%.
@pytest.mark.parametrize("sampler,steps", [("euler", 300), ("heun", 50), ("dpmpp_2m", 50)])
def test_flow_samplers_reproduce_gaussian_moments(sampler, steps):
    x = sample(exact_flow_velocity, _noise(), None, steps=steps, sampler=sampler, shift=3.0)
    mean_err, cov_err = _moment_errors(x)
    assert mean_err <= 0.02 and cov_err <= 0.02, (mean_err, cov_err)


def _ode_error(sampler, steps, noise, exact):
    x = sample(exact_flow_velocity, noise, None, steps=steps, sampler=sampler, shift=3.0)
    return float(np.sqrt(np.mean((np.asarray(x) - exact) ** 2)))


def test_higher_order_flow_solvers_beat_euler_at_10_steps():
    noise = _noise(2000)
    exact = exact_flow_solution(np.asarray(noise))
    err = {name: _ode_error(name, 10, noise, exact) for name in ["euler", "heun", "dpmpp_2m"]}
    # Measured: euler 0.155, heun 0.066, dpmpp_2m 0.068 (RMS distance to the exact ODE map).
    assert err["heun"] < 0.5 * err["euler"], err
    assert err["dpmpp_2m"] < 0.5 * err["euler"], err


def test_solvers_converge_at_their_order():
    noise = _noise(2000)
    exact = exact_flow_solution(np.asarray(noise))
    ratio = {
        name: _ode_error(name, 10, noise, exact) / _ode_error(name, 20, noise, exact)
        for name in ["euler", "heun"]
    }
    assert 1.7 < ratio["euler"] < 2.3, ratio  # first order: halving dt halves the error
    assert ratio["heun"] > 3.4, ratio  # second order: ~4x
    # 200 Heun steps reproduce the exact ODE map to ~2e-4 RMS.
    assert _ode_error("heun", 200, noise, exact) < 5e-4


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_reproduces_gaussian_moments(prediction):
    # DDIM (eta = 0) is first order too: covariance error 7% at 50 steps, 3.6% at 100, 1.5% at
    # 250. The mean keeps a ~0.9% floor from starting at N(0, I) instead of the true x_980.
    denoise = exact_ddpm_eps if prediction == "eps" else exact_ddpm_v
    x = sample(
        denoise, _noise(), None, steps=250, sampler="ddim", prediction=prediction, schedule=AC
    )
    mean_err, cov_err = _moment_errors(x)
    assert mean_err <= 0.02 and cov_err <= 0.02, (mean_err, cov_err)


# ---------------------------------------------------------------- parity with diffusers
C = 4
_W = (np.random.default_rng(0).standard_normal((C, C)) * 0.3).astype(np.float32)
_BIAS = np.linspace(-0.5, 0.5, C, dtype=np.float32)


def toy_jax(x, t, cond):
    """A fixed t-dependent linear map, shared by the JAX and torch loops."""
    tb = t[:, :, None, None, None]
    return (x @ _W) * (1 + tb) + _BIAS * tb


def toy_torch(x, t):
    return (x @ torch.from_numpy(_W)) * (1 + t) + torch.from_numpy(_BIAS) * t


def _recording(denoise):
    """Wrap a JAX denoiser so every (x, t) it sees, i.e. the trajectory, is recorded in order."""
    seen = []

    def fn(x, t, cond):
        jax.debug.callback(
            lambda a, b: seen.append((np.asarray(a), np.asarray(b))), x, t, ordered=True
        )
        return denoise(x, t, cond)

    return fn, seen


def _torch_loop(scheduler, x, scale_t, pred_fn=toy_torch):
    """Drive a diffusers scheduler; returns the model inputs [(x, t)] and the final sample."""
    seen = []
    for i, k in enumerate(scheduler.timesteps):
        t = scale_t(i, k)
        seen.append((x.numpy().copy(), float(t)))
        x = scheduler.step(pred_fn(x, t), k, x, return_dict=False)[0]
    return seen, x.numpy()


def _assert_same_trajectory(jax_seen, torch_seen, x_jax, x_torch, tol=1e-5):
    """Every model input (x, t) and the result agree to 1e-5 (absolute, or relative where the
    toy eps model drives |x| to ~100)."""
    assert len(jax_seen) == len(torch_seen)
    for (xj, tj), (xt, tt) in zip(jax_seen, torch_seen, strict=True):
        np.testing.assert_allclose(tj, tt, atol=1e-6)
        np.testing.assert_allclose(xj, xt, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(x_jax), x_torch, rtol=tol, atol=tol)


def _parity_noise():
    return np.asarray(jax.random.normal(jax.random.key(1), (2, 3, 4, 4, C)))


@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_euler_matches_diffusers_flow_match_euler(shift):
    steps, noise = 12, _parity_noise()
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)  # Wan: shift 5 (720p) / 3 (480p)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    torch_seen, x_t = _torch_loop(
        sched, torch.from_numpy(noise.copy()), lambda i, k: sched.sigmas[i]
    )
    fn, seen = _recording(toy_jax)
    x = sample(fn, jnp.asarray(noise), None, steps=steps, shift=shift)
    _assert_same_trajectory(seen, torch_seen, x, x_t)


def test_heun_matches_diffusers_flow_match_heun_on_its_grid():
    steps, noise = 8, _parity_noise()
    sched = FlowMatchHeunDiscreteScheduler(shift=3.0)
    sched.set_timesteps(steps)
    grid = np.unique(sched.sigmas.numpy())[::-1].copy()  # the distinct sigmas, ending at 0
    torch_seen, x_t = _torch_loop(
        sched, torch.from_numpy(noise.copy()), lambda i, k: k / sched.config.num_train_timesteps
    )
    fn, seen = _recording(toy_jax)
    x = sample(fn, jnp.asarray(noise), None, steps=steps, sampler="heun", schedule=grid)
    _assert_same_trajectory(seen, torch_seen, x, x_t)


def test_dpmpp_2m_matches_diffusers_dpm_solver_on_wan_flow_grid():
    steps, shift, noise = 10, 3.0, _parity_noise()
    sched = DPMSolverMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
    )
    sched.set_timesteps(steps)
    torch_seen, x_t = _torch_loop(
        sched, torch.from_numpy(noise.copy()), lambda i, k: sched.sigmas[i]
    )
    start = float(flow.shift_t(1 - 1 / 1000, shift))  # Wan starts at sigma_max = 0.999
    np.testing.assert_allclose(
        flow_timesteps(steps, start_t=start, shift=shift), sched.sigmas.numpy(), atol=1e-6
    )
    fn, seen = _recording(toy_jax)
    x = sample(
        fn, jnp.asarray(noise), None, steps=steps, sampler="dpmpp_2m", shift=shift, start_t=start
    )
    _assert_same_trajectory(seen, torch_seen, x, x_t)


@pytest.mark.parametrize("prediction,diffusers_name", [("eps", "epsilon"), ("v", "v_prediction")])
def test_ddim_matches_diffusers_ddim(prediction, diffusers_name):
    steps, noise = 10, _parity_noise()
    sched = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,  # Stable Diffusion's, our scaled_linear default
        beta_end=0.012,
        clip_sample=False,
        prediction_type=diffusers_name,
    )
    sched.set_timesteps(steps)
    np.testing.assert_allclose(
        ddpm.alphas_cumprod(sched.betas.numpy()), sched.alphas_cumprod, atol=1e-6
    )
    torch_seen, x_t = _torch_loop(sched, torch.from_numpy(noise.copy()), lambda i, k: k / 1000)
    fn, seen = _recording(toy_jax)
    ac = ddpm.alphas_cumprod(ddpm.beta_schedule("scaled_linear"))
    x = sample(
        fn,
        jnp.asarray(noise),
        None,
        steps=steps,
        sampler="ddim",
        prediction=prediction,
        schedule=ac,
    )
    np.testing.assert_array_equal(ddim_timesteps(steps, 1000)[0], sched.timesteps.numpy())
    _assert_same_trajectory(seen, torch_seen, x, x_t)


# ---------------------------------------------------------------- given frames, CFG, jit
def _cond_denoise(x, t, cond):
    """A toy model that reads a pytree cond (batch-first leaves) and changes every frame."""
    shift = cond["emb"][:, None, None, None, :] + cond["scale"][:, :, None, None, None]
    return toy_jax(x, t, None) + shift


def _cond(b, seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"emb": jax.random.normal(k1, (b, C)), "scale": jax.random.normal(k2, (b, 1))}


SAMPLER_KW = {
    "euler": {},
    "heun": {},
    "dpmpp_2m": {},
    "ddim": {"prediction": "v", "schedule": AC},
}


@pytest.mark.parametrize("sampler", list(SAMPLER_KW))
def test_given_frames_come_back_bit_identical(sampler):
    noise = jnp.asarray(_parity_noise())
    given = jax.random.normal(jax.random.key(7), noise.shape) * 3.0
    mask = infill_mask(2, 3, [0, 2])
    kw = SAMPLER_KW[sampler]
    x = sample(
        _cond_denoise,
        noise,
        _cond(2, 0),
        uncond=_cond(2, 1),
        guidance=4.0,
        steps=6,
        sampler=sampler,
        given=given,
        given_mask=mask,
        **kw,
    )
    np.testing.assert_array_equal(np.asarray(x[:, [0, 2]]), np.asarray(given[:, [0, 2]]))
    assert float(jnp.abs(x[:, 1] - given[:, 1]).min()) > 0


def test_given_frames_reach_the_model_clean_at_t0():
    noise = jnp.asarray(_parity_noise())
    given = jnp.full(noise.shape, 0.25)
    fn, seen = _recording(toy_jax)
    sample(fn, noise, None, steps=4, sampler="heun", given=given, given_mask=i2v_mask(2, 3))
    for x, t in seen:
        assert np.all(x[:, 0] == 0.25) and np.all(t[:, 0] == 0.0) and np.all(t[:, 1:] > 0)


@pytest.mark.parametrize("sampler", list(SAMPLER_KW))
def test_cfg_guidance_one_equals_no_cfg(sampler):
    noise, kw = jnp.asarray(_parity_noise()), SAMPLER_KW[sampler]
    plain = sample(_cond_denoise, noise, _cond(2, 0), steps=5, sampler=sampler, **kw)
    # A traced guidance of 1 runs the full CFG path: u + 1 * (c - u) == c up to rounding.
    run = jax.jit(
        lambda g: sample(
            _cond_denoise,
            noise,
            _cond(2, 0),
            uncond=_cond(2, 1),
            guidance=g,
            steps=5,
            sampler=sampler,
            **kw,
        )
    )
    np.testing.assert_allclose(run(jnp.float32(1.0)), plain, atol=1e-5)
    static = sample(
        _cond_denoise,
        noise,
        _cond(2, 0),
        uncond=_cond(2, 1),
        guidance=1.0,
        steps=5,
        sampler=sampler,
        **kw,
    )
    np.testing.assert_array_equal(static, plain)


def test_cfg_is_one_batched_call_with_the_guidance_formula():
    noise, g = jnp.asarray(_parity_noise()), 3.5
    cond, uncond = _cond(2, 0), _cond(2, 1)
    batch_sizes = []

    def counting(x, t, c):
        batch_sizes.append(x.shape[0])
        return _cond_denoise(x, t, c)

    got = sample(counting, noise, cond, uncond=uncond, guidance=g, steps=5)
    assert batch_sizes == [4]  # traced once inside the scan, on the concatenated batch

    def manual(x, t, _):
        c, u = _cond_denoise(x, t, cond), _cond_denoise(x, t, uncond)
        return u + g * (c - u)

    np.testing.assert_allclose(got, sample(manual, noise, None, steps=5), atol=1e-5)


def test_guidance_interval_outside_every_step_equals_conditional_only():
    noise = jnp.asarray(_parity_noise())
    cond, uncond = _cond(2, 0), _cond(2, 1)
    plain = sample(_cond_denoise, noise, cond, steps=5, shift=3.0)
    never = sample(
        _cond_denoise,
        noise,
        cond,
        uncond=uncond,
        guidance=5.0,
        steps=5,
        shift=3.0,
        guidance_interval=(2.0, 3.0),
    )
    np.testing.assert_allclose(never, plain, atol=1e-6)  # same maths, compiled inside a cond
    always = sample(_cond_denoise, noise, cond, uncond=uncond, guidance=5.0, steps=5, shift=3.0)
    part = sample(
        _cond_denoise,
        noise,
        cond,
        uncond=uncond,
        guidance=5.0,
        steps=5,
        shift=3.0,
        guidance_interval=(0.5, 1.0),
    )
    assert float(jnp.abs(part - always).max()) > 1e-3 and float(jnp.abs(part - plain).max()) > 1e-3


def _weak_denoise(x, t, cond):
    """A 'bad version' of _cond_denoise: damped and biased, as a less-trained model might be."""
    return 0.7 * _cond_denoise(x, t, cond) + 0.1


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "ddim"])
def test_autoguidance_follows_its_formula_with_and_without_cfg(sampler):
    noise, kw = jnp.asarray(_parity_noise()), SAMPLER_KW[sampler]
    cond, uncond, g, a = _cond(2, 0), _cond(2, 1), 3.0, 2.5
    calls = []

    def counting_weak(x, t, c):
        calls.append(x.shape[0])
        return _weak_denoise(x, t, c)

    both = sample(_cond_denoise, noise, cond, uncond=uncond, guidance=g, guide=counting_weak,
                  autoguidance=a, steps=5, sampler=sampler, **kw)  # fmt: skip
    assert calls == [2]  # the guide: its own call at the batch's size, with cond

    def manual(x, t, _, g=g):
        c, u, w = (f(x, t, k) for f, k in ((_cond_denoise, cond), (_cond_denoise, uncond),
                                             (_weak_denoise, cond)))  # fmt: skip
        return c + (g - 1) * (c - u) + (a - 1) * (c - w)

    np.testing.assert_allclose(both, sample(manual, noise, None, steps=5, sampler=sampler, **kw),
                               atol=1e-5)  # fmt: skip
    # Autoguidance alone is Karras et al.'s w + a (c - w).
    alone = sample(_cond_denoise, noise, cond, guide=_weak_denoise, autoguidance=a, steps=5,
                   sampler=sampler, **kw)  # fmt: skip
    ref = sample(lambda x, t, _: _weak_denoise(x, t, cond) + a * (
        _cond_denoise(x, t, cond) - _weak_denoise(x, t, cond)), noise, None, steps=5,
        sampler=sampler, **kw)  # fmt: skip
    np.testing.assert_allclose(alone, ref, atol=1e-5)
    assert float(jnp.abs(alone - both).max()) > 1e-2


def test_autoguidance_with_the_model_itself_or_scale_one_changes_nothing():
    noise, cond, uncond = jnp.asarray(_parity_noise()), _cond(2, 0), _cond(2, 1)
    cfg = sample(_cond_denoise, noise, cond, uncond=uncond, guidance=4.0, steps=5)
    # The guide equal to the model: c - w is exactly 0.
    same = sample(_cond_denoise, noise, cond, uncond=uncond, guidance=4.0, guide=_cond_denoise,
                  autoguidance=3.0, steps=5)  # fmt: skip
    np.testing.assert_allclose(same, cfg, atol=1e-6)
    one = sample(_cond_denoise, noise, cond, uncond=uncond, guidance=4.0, guide=_weak_denoise,
                 autoguidance=1.0, steps=5)  # fmt: skip
    np.testing.assert_array_equal(one, cfg)  # a static 1: the guide is never called
    # Inside a guidance interval that no step reaches, neither guidance applies.
    plain = sample(_cond_denoise, noise, cond, steps=5)
    never = sample(_cond_denoise, noise, cond, uncond=uncond, guidance=4.0, guide=_weak_denoise,
                   autoguidance=3.0, guidance_interval=(2.0, 3.0), steps=5)  # fmt: skip
    np.testing.assert_allclose(never, plain, atol=1e-6)


@pytest.mark.parametrize("sampler", list(SAMPLER_KW))
def test_sample_is_jittable_and_deterministic(sampler):
    noise, kw = jnp.asarray(_parity_noise()), SAMPLER_KW[sampler]
    fn = jax.jit(partial(sample, _cond_denoise, steps=5, sampler=sampler, **kw))
    a = fn(noise, _cond(2, 0), uncond=_cond(2, 1), guidance=2.0)
    b = fn(noise, _cond(2, 0), uncond=_cond(2, 1), guidance=2.0)
    np.testing.assert_array_equal(a, b)
    eager = sample(
        _cond_denoise,
        noise,
        _cond(2, 0),
        uncond=_cond(2, 1),
        guidance=2.0,
        steps=5,
        sampler=sampler,
        **kw,
    )
    np.testing.assert_allclose(a, eager, atol=1e-5)


def test_ddim_eta_uses_rng_deterministically():
    noise = jnp.asarray(_parity_noise())
    run = jax.jit(
        partial(sample, toy_jax, steps=5, sampler="ddim", prediction="eps", schedule=AC, eta=1.0)
    )
    a, b = run(noise, None, rng=jax.random.key(0)), run(noise, None, rng=jax.random.key(0))
    c = run(noise, None, rng=jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a - c).max()) > 1e-3


def test_sdedit_grid_starts_at_start_t_and_ends_clean():
    grid = np.asarray(flow_timesteps(10, start_t=0.6, shift=3.0))
    np.testing.assert_allclose([grid[0], grid[-1]], [0.6, 0.0], atol=1e-6)
    assert np.all(np.diff(grid) < 0)
    np.testing.assert_allclose(flow_timesteps(4, shift=1.0), [1.0, 0.75, 0.5, 0.25, 0.0])
    ks, prev = ddim_timesteps(5, 1000, start_t=0.5)
    np.testing.assert_array_equal(ks, [400, 300, 200, 100, 0])
    np.testing.assert_array_equal(prev, ks - 100)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sampler": "rk4"},
        {"sampler": "ddim", "prediction": "eps"},  # no schedule
        {"sampler": "ddim", "schedule": AC},  # 'velocity' is a flow parameterisation
        {"steps": 0},
        {"eta": 0.5},  # eta is ddim-only
        {"given_mask": jnp.zeros((2, 3), bool)},  # mask without given latents
        {"autoguidance": 2.0},  # no guide model
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        sample(toy_jax, jnp.asarray(_parity_noise()), None, **kwargs)

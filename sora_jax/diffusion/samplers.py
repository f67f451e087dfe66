"""Samplers for flow and DDPM models: Euler, Heun, DPM-Solver++(2M), DDIM; CFG; given frames.

Legend: B batch, T latent frames, H W latent height/width, C latent channels, S steps.

The model is any ``denoise(x [B, T, H, W, C], t [B, T], cond) -> prediction`` (x-like); the
whole loop is one ``jax.lax.scan``, so ``jax.jit(partial(sample, denoise, steps=..,
sampler=..))`` compiles it once.

Flow time grid (Wan / diffusers convention): u = linspace(u0, 0, S + 1), t = shift_t(u), with
u0 = inverse_shift_t(start_t) so that t_0 = start_t exactly. With start_t = 1 this is the grid
diffusers' ``FlowMatchEulerDiscreteScheduler`` produces from ``set_timesteps(sigmas=
linspace(1, 0, S + 1)[:-1])`` with ``shift`` in its config, and with start_t =
shift_t(1 - 1/1000) it is the ``use_flow_sigmas`` grid of diffusers'
``DPMSolverMultistepScheduler`` (sigma_max = 0.999, as in Wan 2.1's own flow solvers). Any
other grid (e.g. diffusers' default ``set_timesteps(S)``) can be passed as ``schedule``.
start_t < 1 is SDEdit: noise the input to start_t (``flow.add_noise(x0, eps, start_t)``)
and pass it as ``noise``.

Flow solvers on dx/dt = v(x, t), from t_i to t_{i+1} (dt < 0):

  euler     x' = x + dt v(x, t)
  heun      x~ = x + dt v(x, t);  x' = x + dt (v(x, t) + v(x~, t')) / 2, Euler on the last
            step to t' = 0 (Karras et al. 2022, Alg. 1): 2S - 1 model calls.
  dpmpp_2m  DPM-Solver++(2M) (Lu et al. 2022) in data-prediction form with alpha = 1 - t,
            sigma = t, lambda = log(alpha / sigma), h = lambda' - lambda:
              x' = (sigma'/sigma) x - alpha' (e^-h - 1) (D0 + D1 / 2),
              D0 = x0_i,  D1 = (x0_i - x0_{i-1}) / r,  r = h_{i-1} / h_i  (midpoint variant).
            Its first-order form (D1 = 0) reduces to Euler exactly for flow
            [x' = (t'/t) x + (1 - t'/t) x0 with x0 = x - t v]; as diffusers does, the first
            step (no history) and the last step (sigma' = 0, lambda' = inf) are first order.

DDIM (Song et al. 2021) for DDPM eps / v / x0 models, diffusers' "leading" spacing:
k_i = (S - 1 - i) * (N // S), previous abar = abar[k_i - N // S] (1 at the end), and
  x' = sqrt(abar') x0 + sqrt(1 - abar' - s^2) eps + s z,
  s = eta sqrt((1 - abar') / (1 - abar) (1 - abar / abar')).
The model sees t = k / N.

Classifier-free guidance (Ho & Salimans 2022): cond and uncond go through ONE denoise call
(concatenated on the batch axis, leafwise for pytrees), pred = u + g (c - u), used only while
the step's t lies in ``guidance_interval`` (Kynkäänniemi et al. 2024); elsewhere the
conditional prediction alone (one half-size call, chosen by ``lax.cond``).

Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"):
a weaker ``guide`` model (e.g. an earlier checkpoint of the same run) sees the same input and
conditioning, and pred = c + (g - 1)(c - u) + (a - 1)(c - w), w its prediction and a the
``autoguidance`` scale: a alone (g = 1) is w + a (c - w), their form; a = 1 is CFG alone. It
applies in the same ``guidance_interval`` as CFG; the guide is a separate call (other weights).

Given frames ([B, T] mask): before every model call their latents are replaced by ``given``
and their t set to 0; after every update they are restored, so they come back bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.diffusion import ddpm, flow
from sora_jax.diffusion.conditioning import apply_condition

Array = jax.Array
PyTree = Any
Denoise = Callable[[Array, Array, PyTree], Array]
Model = Callable[[Array, Array], Array]  # (x, scalar t) -> fp32 prediction

FLOW_SAMPLERS = ("euler", "heun", "dpmpp_2m")
DDPM_SAMPLERS = ("ddim",)
FLOW_PREDICTIONS = ("velocity", "x0")


def _static(v: Any) -> bool:
    return isinstance(v, (int, float))


def flow_timesteps(
    steps: int, *, start_t: float | Array = 1.0, shift: float | Array = 1.0
) -> Array:
    """The flow sampling grid [S + 1]: shift_t(linspace(u0, 0, S + 1)), t_0 = start_t, t_S = 0."""
    u0 = 1.0 if _static(start_t) and start_t == 1.0 else flow.inverse_shift_t(start_t, shift)
    return flow.shift_t(jnp.linspace(u0, 0.0, steps + 1, dtype=jnp.float32), shift)


def ddim_timesteps(
    steps: int, num_train_steps: int, *, start_t: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Train steps (k [S], k_prev [S]) visited by DDIM; k_prev < 0 means abar' = 1 (clean).

    diffusers' "leading" spacing over the first start_t * N train steps:
    k_i = (S - 1 - i) * r, k_prev = k - r, r = floor(start_t * N) // S.
    """
    span = int(np.floor(start_t * num_train_steps + 1e-6))
    ratio = span // steps
    if ratio < 1:
        raise ValueError(
            f"ddim with steps={steps} needs at least that many train steps, got {span}."
        )
    ks = (np.arange(steps) * ratio)[::-1].astype(np.int32)
    return ks, ks - ratio


def _concat_batch(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(lambda u, v: jnp.concatenate([u, v], axis=0), a, b)


def _make_model(
    denoise: Denoise,
    cond: PyTree,
    uncond: PyTree | None,
    guidance: float | Array,
    interval: tuple[float, float],
    given: Array | None,
    mask: Array | None,
    guide: Denoise | None = None,
    autoguidance: float | Array = 1.0,
) -> Model:
    """Wrap denoise as (x, scalar t) -> fp32 prediction with given frames, CFG and
    autoguidance applied."""
    use_cfg = uncond is not None and not (_static(guidance) and guidance == 1.0)
    use_auto = guide is not None and not (_static(autoguidance) and autoguidance == 1.0)
    always = all(map(_static, interval)) and interval[0] <= 0.0 and interval[1] >= 1.0
    both = _concat_batch(cond, uncond) if use_cfg else None

    def model(x: Array, t: Array) -> Array:
        tt = jnp.full(x.shape[:2], t, jnp.float32)
        if mask is not None:
            x, tt = apply_condition(x, tt, given, mask)

        def plain() -> Array:
            return denoise(x, tt, cond).astype(jnp.float32)

        def guided() -> Array:
            if use_cfg:
                out = denoise(jnp.concatenate([x, x]), jnp.concatenate([tt, tt]), both)
                c, u = jnp.split(out.astype(jnp.float32), 2)
                pred = u + guidance * (c - u)
            else:
                c = pred = plain()
            if use_auto:
                weak = guide(x, tt, cond).astype(jnp.float32)
                pred = pred + (autoguidance - 1.0) * (c - weak)
            return pred

        if not (use_cfg or use_auto):
            return plain()
        if always:
            return guided()
        return jax.lax.cond((t >= interval[0]) & (t <= interval[1]), guided, plain)

    return model


def _flow_v_x0(model: Model, x: Array, t: Array, prediction: str) -> tuple[Array, Array]:
    """(velocity, x0) at scalar t from the model's velocity or x0 prediction."""
    pred = model(x, t)
    if prediction == "velocity":
        return pred, flow.x0_from_velocity(x, pred, t)
    return flow.velocity_from_x0(x, pred, t), pred


def _flow_loop(
    model: Model, x: Array, grid: Array, sampler: str, prediction: str, restore: Callable
) -> Array:
    steps = grid.shape[0] - 1
    lam = lambda t: jnp.log(1.0 - t) - jnp.log(t)  # log SNR^(1/2) of the flow path

    def step(carry: tuple[Array, Array], xs: tuple[Array, ...]) -> tuple[tuple, None]:
        x, x0_prev = carry
        i, t_prev, t, t_next = xs
        v, x0 = _flow_v_x0(model, x, t, prediction)
        dt = t_next - t
        if sampler == "euler":
            x_next = x + dt * v
        elif sampler == "heun":
            x_e = restore(x + dt * v)
            correct = lambda: x + dt * 0.5 * (v + _flow_v_x0(model, x_e, t_next, prediction)[0])
            x_next = jax.lax.cond(t_next > 0, correct, lambda: x_e)
        else:  # dpmpp_2m
            ratio = t_next / t
            first = ratio * x + (1.0 - ratio) * x0
            h = lam(t_next) - lam(t)
            h_prev = jnp.where(i == 0, 1.0, lam(t) - lam(t_prev))  # no history at i = 0
            d1 = (x0 - x0_prev) * (h / h_prev)
            second = first - 0.5 * (1.0 - t_next) * jnp.expm1(-h) * d1
            x_next = jnp.where((i == 0) | (i == steps - 1), first, second)
        return (restore(x_next), x0), None

    xs = (jnp.arange(steps), jnp.concatenate([grid[:1], grid[:-2]]), grid[:-1], grid[1:])
    (x, _), _ = jax.lax.scan(step, (x, jnp.zeros_like(x)), xs)
    return x


def _ddim_loop(
    model: Model,
    x: Array,
    alphas_cumprod: Array,
    grid: tuple[np.ndarray, np.ndarray],
    prediction: str,
    eta: float | Array,
    rng: Array | None,
    restore: Callable,
) -> Array:
    n = alphas_cumprod.shape[0]
    ks, prev = grid
    ac = jnp.asarray(alphas_cumprod, jnp.float32)
    a_t = ac[ks]
    a_prev = jnp.where(prev >= 0, ac[np.maximum(prev, 0)], 1.0)

    def step(x: Array, xs: tuple[Array, ...]) -> tuple[Array, None]:
        i, k, a, a_p = xs
        x0, eps = ddpm.to_x0_eps(model(x, k / n), x, a, prediction)
        std = eta * jnp.sqrt((1.0 - a_p) / (1.0 - a) * (1.0 - a / a_p))
        x_prev = jnp.sqrt(a_p) * x0 + jnp.sqrt(1.0 - a_p - std**2) * eps
        if rng is not None:
            x_prev = x_prev + std * jax.random.normal(jax.random.fold_in(rng, i), x.shape)
        return restore(x_prev), None

    xs = (jnp.arange(len(ks)), jnp.asarray(ks, jnp.float32), a_t, a_prev)
    x, _ = jax.lax.scan(step, x, xs)
    return x


def _check_args(
    noise: Array,
    steps: int,
    sampler: str,
    prediction: str,
    given: Array | None,
    given_mask: Array | None,
    schedule: Any,
    eta: Any,
    rng: Array | None,
) -> None:
    if noise.ndim != 5:
        raise ValueError(f"noise must be [B, T, H, W, C] latents, got shape {noise.shape}.")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}.")
    if sampler not in FLOW_SAMPLERS + DDPM_SAMPLERS:
        raise ValueError(
            f"sampler must be one of {FLOW_SAMPLERS + DDPM_SAMPLERS}, got {sampler!r}."
        )
    if (given is None) != (given_mask is None):
        raise ValueError("given and given_mask must be passed together (or neither).")
    if given_mask is not None and given_mask.shape != noise.shape[:2]:
        raise ValueError(f"given_mask must be [B, T] = {noise.shape[:2]}, got {given_mask.shape}.")
    if given is not None and given.shape != noise.shape:
        raise ValueError(f"given must have the shape of noise {noise.shape}, got {given.shape}.")
    if sampler in FLOW_SAMPLERS:
        if prediction not in FLOW_PREDICTIONS:
            raise ValueError(
                f"flow samplers need prediction in {FLOW_PREDICTIONS}, got {prediction!r}."
            )
        if schedule is not None and jnp.shape(schedule) != (steps + 1,):
            raise ValueError(f"a flow schedule is a time grid of steps+1={steps + 1} values.")
        if not (_static(eta) and eta == 0):
            raise ValueError(f"eta applies to ddim only; flow sampler {sampler!r} got eta={eta}.")
    else:
        if prediction not in ("eps", "v", "x0"):
            raise ValueError(f"ddim needs prediction 'eps', 'v' or 'x0', got {prediction!r}.")
        if schedule is None or jnp.ndim(schedule) != 1:
            raise ValueError("ddim needs schedule= the training alphas_cumprod [N] (ddpm.py).")
        if not (_static(eta) and eta == 0) and rng is None:
            raise ValueError(f"ddim with eta={eta} is stochastic and needs rng=.")


def sample(
    denoise: Denoise,
    noise: Array,
    cond: PyTree,
    *,
    uncond: PyTree | None = None,
    guidance: float | Array = 1.0,
    steps: int = 50,
    sampler: str = "euler",
    shift: float | Array = 1.0,
    given: Array | None = None,
    given_mask: Array | None = None,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    start_t: float | Array = 1.0,
    prediction: str = "velocity",
    schedule: Array | np.ndarray | None = None,
    eta: float | Array = 0.0,
    rng: Array | None = None,
    guide: Denoise | None = None,
    autoguidance: float | Array = 1.0,
) -> Array:
    """Integrate from noise to clean latents.

    Args:
      denoise: ``(x [B', T, H, W, C], t [B', T], cond) -> prediction`` (B' = B or 2B with CFG).
      noise: [B, T, H, W, C] starting latents: pure noise, or an input noised to ``start_t``.
      cond: conditioning pytree, leaves batch-first [B, ...].
      uncond: unconditional pytree of the same structure, or None for no guidance.
      guidance: CFG scale g; 1 means the conditional prediction only.
      steps: number of solver steps S (static).
      sampler: 'euler' | 'heun' | 'dpmpp_2m' (flow) or 'ddim' (DDPM) (static).
      shift: flow time shift (``flow.shift_t``); use 1 for ddim.
      given, given_mask: [B, T, H, W, C] clean conditioning latents and their [B, T] bool mask.
      guidance_interval: (lo, hi): guide only while lo <= t <= hi.
      start_t: noise level of ``noise``; < 1 for SDEdit (static for ddim).
      prediction: flow: 'velocity' | 'x0'; ddim: 'eps' | 'v' | 'x0' (static).
      schedule: flow: optional explicit time grid [S + 1] (overrides start_t / shift);
        ddim: the training ``alphas_cumprod`` [N] (required).
      eta: ddim stochasticity (0 = deterministic DDIM, 1 = DDPM-like).
      rng: PRNG key, needed for ddim with eta != 0.
      guide: a weaker model's ``(x [B, T, ...], t [B, T], cond) -> prediction`` for
        autoguidance (same prediction type as ``denoise``), or None.
      autoguidance: its scale a; 1 (or no guide) means none.

    Returns:
      [B, T, H, W, C] float32 clean latents; given frames equal ``given`` bit for bit.
    """
    _check_args(noise, steps, sampler, prediction, given, given_mask, schedule, eta, rng)
    if given_mask is not None:
        m = given_mask.reshape(given_mask.shape + (1,) * 3)
        g32 = given.astype(jnp.float32)
        restore = lambda x: jnp.where(m, g32, x)
    else:
        restore = lambda x: x
    if guide is None and not (_static(autoguidance) and autoguidance == 1.0):
        raise ValueError(f"autoguidance={autoguidance} needs guide=, the weaker model.")
    model = _make_model(denoise, cond, uncond, guidance, guidance_interval, given, given_mask,
                        guide, autoguidance)  # fmt: skip
    x = restore(noise.astype(jnp.float32))
    if sampler in FLOW_SAMPLERS:
        if schedule is None:
            grid = flow_timesteps(steps, start_t=start_t, shift=shift)
        else:
            grid = jnp.asarray(schedule, jnp.float32)
        return _flow_loop(model, x, grid, sampler, prediction, restore)
    if not (_static(shift) and shift == 1.0):
        raise ValueError(f"shift applies to flow samplers only; ddim got shift={shift}.")
    grid = ddim_timesteps(steps, int(jnp.shape(schedule)[0]), start_t=start_t)
    stochastic_rng = None if _static(eta) and eta == 0 else rng
    return _ddim_loop(model, x, schedule, grid, prediction, eta, stochastic_rng, restore)

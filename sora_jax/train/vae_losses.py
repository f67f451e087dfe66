"""Loss terms of the VAE stage: reconstruction, KL, and the adversarial game with VQGAN's
adaptive weight (Esser et al. 2021, eq. 7).

Legend: B batch, F frames, H W height/width, C channels; videos `[B, F, H, W, 3]` in [-1, 1].

The generic loop trains one parameter tree with one optimizer, so the discriminator lives inside
the model (`VAEWithDiscriminator`) and both players are updated by one gradient step of

    loss = rec + kl_weight * KL
           + on * (disc_weight * lambda * L_G(D_sg(x_hat)) + L_D(D(x), D(sg(x_hat))))

`sg` is stop-gradient: L_G reaches the VAE only (the discriminator's parameters are stopped), L_D
reaches the discriminator only (the reconstruction is stopped), so the single step makes the
two simultaneous updates of a GAN. `on` is 1 from `disc_start_step`. `lambda` =
||dRec/dW|| / (||dL_G/dW|| + 1e-4) over the decoder's last conv kernel W, clipped to
[0, adaptive_weight_max] and stopped, balances the two pulls on the decoder. Shared by both
players: the learning-rate schedule, AdamW's moments per parameter, and the global-norm clip
(a very large discriminator gradient also shrinks the VAE's step that iteration).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sora_jax.models import vae as vae_lib
from sora_jax.models import vae_blocks
from sora_jax.models.discriminator import PatchDiscriminator3D

Array = jax.Array
GAN_LOSSES = ("hinge", "non_saturating")


class VAEWithDiscriminator(vae_lib.CausalVAE):
    """The VAE plus its critic (`.discriminator`); a CausalVAE everywhere else."""

    def __init__(
        self, cfg: vae_lib.VAEConfig, *, disc_channels: int, disc_layers: int, rngs: nnx.Rngs
    ):
        super().__init__(cfg, rngs=rngs)
        self.discriminator = PatchDiscriminator3D(
            disc_channels, disc_layers, dtype=cfg.dtype, rngs=rngs
        )


def kl_divergence(mean: Array, logvar: Array) -> Array:
    """Mean over elements of KL(N(mean, exp(logvar)) || N(0, 1))."""
    return 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)


def add_latent_noise(
    z: Array, mean: Array, level: float, rng: Array | None, *, uniform: bool = True
) -> Array:
    """z + s * std_c * N(0, 1), std_c each latent channel's standard deviation over the batch's
    posterior means (no gradient through it): the decoder learns to draw latents near the
    encoder's, as a DiT's samples are, not only the encoder's own (`vae_train.latent_noise`).
    With `uniform`, s ~ U(0, level) per clip, so clean and noisy latents are both decoded; else
    s = level. At level 0, z as given (and `rng` unused: None will do)."""
    if level <= 0:
        return z
    axes = tuple(range(mean.ndim - 1))
    std = jax.lax.stop_gradient(jnp.std(mean, axis=axes, keepdims=True))
    k_scale, k_noise = jax.random.split(rng)
    scale = jnp.full((z.shape[0],) + (1,) * (z.ndim - 1), level, z.dtype)
    if uniform:
        scale = scale * jax.random.uniform(k_scale, scale.shape, z.dtype)
    return z + scale * std * jax.random.normal(k_noise, z.shape, z.dtype)


def gradient_l1(recon: Array, x: Array) -> Array:
    """L1 between the spatial finite differences of two videos (keeps edges sharp)."""
    return sum(jnp.mean(jnp.abs(jnp.diff(recon, axis=a) - jnp.diff(x, axis=a))) for a in (2, 3))


def discriminator_loss(kind: str, real: Array, fake: Array) -> Array:
    """Critic loss on real and (stopped) fake logits: hinge or non-saturating (softplus)."""
    if kind == "hinge":
        return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake)))
    return 0.5 * (jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake)))


def generator_loss(kind: str, fake: Array) -> Array:
    """The VAE's adversarial loss on the critic's logits of its reconstructions."""
    if kind == "hinge":
        return -jnp.mean(fake)
    return jnp.mean(jax.nn.softplus(-fake))


def adaptive_weight(
    head: nnx.Module, feats: Array, rec_fn, gan_fn, max_weight: float, post=lambda y: y
) -> Array:
    """VQGAN's lambda: ratio of the gradient norms of `rec_fn` and `gan_fn` (each a function of
    the reconstruction `post(head(feats))`) with respect to the kernel of `head`, the decoder's
    last conv, applied to its input `feats` (`post`: the patch unfolding, if any). Only `head` is
    differentiated, so this costs one small extra backward."""
    graphdef, state = nnx.split(head)
    state, feats = jax.lax.stop_gradient((state, feats))

    def kernel_grad_norm(fn) -> Array:
        recon = lambda s: post(nnx.merge(graphdef, s)(feats)).astype(jnp.float32)  # noqa: E731
        grads = jax.grad(lambda s: fn(recon(s)))(state)
        return jnp.sqrt(jnp.sum(jnp.square(grads["kernel"][...])))

    ratio = kernel_grad_norm(rec_fn) / (kernel_grad_norm(gan_fn) + 1e-4)
    return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, max_weight))


def stopped(module: nnx.Module) -> nnx.Module:
    """A copy of `module` whose parameters pass no gradient."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.lax.stop_gradient(state))


def adversarial(
    model: VAEWithDiscriminator,
    feats: Array,
    recon: Array,
    x: Array,
    rec_fn,
    *,
    kind: str,
    on: Array,
    disc_weight: float,
    max_weight: float,
) -> tuple[Array, dict[str, Array]]:
    """on * (disc_weight * lambda * L_G + L_D) and its metrics (see the module docstring)."""
    disc = model.discriminator
    real, fake = disc(x), disc(jax.lax.stop_gradient(recon))
    d_loss = discriminator_loss(kind, real, fake)
    critic = stopped(disc)
    gan_fn = lambda r: generator_loss(kind, critic(r))  # noqa: E731
    g_loss = gan_fn(recon)
    unpatch = lambda y: vae_blocks.unpatchify(y, model.decoder.patch)  # noqa: E731
    lam = adaptive_weight(model.decoder.conv_out, feats, rec_fn, gan_fn, max_weight, unpatch)
    loss = on * (disc_weight * lam * g_loss + d_loss)
    metrics = {
        "d_loss": d_loss,
        "g_loss": g_loss,
        "adaptive_weight": lam,
        "gan_on": on,
        "logits_real": jnp.mean(real),
        "logits_fake": jnp.mean(fake),
    }
    return loss, metrics

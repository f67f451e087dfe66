"""Sweep VAE training settings on world images/clips (standalone: jax + numpy only)."""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sora_jax.data import world as world_lib
from sora_jax.models import vae as v

SIZES = ("medium", "large")
w = world_lib.World(
    world_lib.WorldConfig(
        resolutions=((32, 32),),
        num_frames=(9,),
        max_objects=1,
        camera_pan_prob=0.0,
        occluder_prob=0.0,
        backgrounds=("flat",),
        sizes=SIZES,
    )
)


def batch(s, B, F):
    return (
        jnp.asarray(
            np.stack([w.clip(s * B + i, 32, 32, F)["video"] for i in range(B)]), jnp.float32
        )
        / 127.5
        - 1
    )


test = batch(30000, 32, 9)


def psnr(a, b):
    return float(10 * jnp.log10(4.0 / jnp.mean((a - b) ** 2)))


def run(lr, bc, mults, nres, F, steps, loss="l1", B=16, z=8, use_rng=True, lv_init=0.0):
    cfg = v.VAEConfig(
        base_channels=bc,
        channel_mults=mults,
        num_res_blocks=nres,
        temporal_downsample=(True,) * (len(mults) - 1),
        z_channels=z,
        mid_attention=False,
    )
    m = v.CausalVAE(cfg, rngs=nnx.Rngs(0))
    if lv_init:
        b = m.quant_conv.bias[...]
        m.quant_conv.bias.value = b.at[z:].set(lv_init)
    g, p = nnx.split(m)
    sched = optax.warmup_cosine_decay_schedule(0, lr, 50, steps, lr * 0.1)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sched))
    o = tx.init(p)

    @jax.jit
    def step(p, o, x, key):
        def loss_fn(p):
            r, mu, lv = nnx.merge(g, p)(x, rng=key if use_rng else None)
            e = r - x
            kl = 0.5 * jnp.mean(mu**2 + jnp.exp(lv) - 1 - lv)
            rec = {
                "l1": jnp.mean(jnp.abs(e)),
                "l1l2": jnp.mean(jnp.abs(e)) + jnp.mean(e**2) * 4,
                "l2": 10 * jnp.mean(e**2),
                "l1l2g": jnp.mean(jnp.abs(e))
                + 4 * jnp.mean(e**2)
                + 0.5
                * sum(jnp.mean(jnp.abs(jnp.diff(r, axis=a) - jnp.diff(x, axis=a))) for a in (2, 3)),
            }[loss]
            return rec + 1e-6 * kl

        L, gr = jax.value_and_grad(loss_fn)(p)
        u, o = tx.update(gr, o, p)
        return optax.apply_updates(p, u), o, L

    t = time.time()
    for s in range(steps):
        p, o, L = step(p, o, batch(s, B, F), jax.random.key(s))
    mm = nnx.merge(g, p)
    out = dict(
        lr=lr,
        bc=bc,
        mults=mults,
        nres=nres,
        F=F,
        steps=steps,
        loss=loss,
        z=z,
        use_rng=use_rng,
        lv_init=lv_init,
        psnr=psnr(mm.decode(mm.encode(test)[0]), test),
        s=round(time.time() - t, 1),
    )
    print(json.dumps(out), flush=True)


for args in [
    (1e-3, 16, (1, 2, 4), 1, 9, 600, "l1l2g", 8, 8, True, -8.0),
    (1e-3, 16, (1, 2, 4), 1, 9, 600, "l2", 8, 8, True, -8.0),
    (2e-3, 16, (1, 2, 4), 1, 9, 600, "l2", 8, 8, True, -8.0),
    (1e-3, 16, (1, 2, 4), 1, 9, 600, "l2", 8, 8, False),
    (1e-3, 32, (1, 2, 2), 1, 9, 600, "l2", 8, 8, True, -8.0),
    (1e-3, 16, (1, 2, 4), 1, 9, 1500, "l2", 8, 8, True, -8.0),
]:
    run(*args)

"""How fast does the tiny VAE learn? One variant per process, on the 32x32 one-object world.

  python tools/experiments/vae_learning_sweep.py NAME '{"steps": 4800, "B": 32, "lr": 0.002}'
  NORM=none python tools/experiments/vae_learning_sweep.py nonorm '{"steps": 4800}'

Prints held-out PSNR (all frames, and frame 0 alone: the image path that image->video keeps)
and the grader's colour/shape accuracy on reconstructions at 300, 600, 800, 1200, 2400 and 4800
steps, and writes $OUT/vs_NAME.json. NORM=none|ln|gn swaps the VAE's RMS norm (diagnostic only).
Arguments (JSON): steps, B (batch), lr, b2, clip, rng, loss (l2 | l1l2), w0 (loss weight of
frame 0), seed (initialisation and training clips), and the VAE: bc (base channels), mults,
nres, td (temporal downsampling per level), z, sc (shortcuts), patch (patch_size), dtype; the
data: res, frames, test_frames (the held-out clips' length; default frames), full_world
(configs/world.py's world instead of the one-object one); evals (steps to evaluate at).
The world VAE of configs/world.py, for example:

  python tools/experiments/vae_learning_sweep.py world '{"full_world": true, "res": 64,
      "frames": 33, "B": 16, "bc": 64, "mults": [1, 2, 4, 4], "td": [false, true, true],
      "z": 16, "lr": 0.0015, "steps": 4800}'

Results of the 2026-12-02 H200 run: tools/bench/results/vae_sweep_h200.json.
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sora_jax import evaluate
from sora_jax.data import world as world_lib
from sora_jax.models import vae as v
from sora_jax.models import vae_blocks

NORM = os.environ.get("NORM", "rms")
if NORM == "none":
    vae_blocks.RMSNorm.__call__ = lambda self, x: x.astype(jnp.float32) * self.gamma[...]
elif NORM == "ln":

    def ln(self, x):
        x = x.astype(jnp.float32)
        x = x - x.mean(-1, keepdims=True)
        return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * self.gamma[...]

    vae_blocks.RMSNorm.__call__ = ln
elif NORM == "gn":  # group norm over (F,H,W, channels/groups) as in SD's VAE, 8 groups

    def gn(self, x):
        x = x.astype(jnp.float32)
        b, f, h, w, c = x.shape
        g = min(8, c)
        y = x.reshape(b, f, h, w, g, c // g)
        m = y.mean((1, 2, 3, 5), keepdims=True)
        s = jnp.mean((y - m) ** 2, (1, 2, 3, 5), keepdims=True)
        return ((y - m) * jax.lax.rsqrt(s + 1e-6)).reshape(x.shape) * self.gamma[...]

    vae_blocks.RMSNorm.__call__ = gn
A = json.loads(sys.argv[2])
name = sys.argv[1]
res = A.get("res", 32)
F = A.get("frames", 5)  # clip length (1 + 4k)
TF = A.get("test_frames", F)  # held-out clips' length: the clips-vs-frames trade
if A.get("full_world", False):  # configs/world.py's world: distractors, pans, occluders, textures
    wcfg = world_lib.WorldConfig(resolutions=((res, res),), num_frames=(F,), max_objects=3,
                                 camera_pan_prob=0.2, occluder_prob=0.25)  # fmt: skip
else:  # configs/tiny.py's world: one object on a flat background
    wcfg = world_lib.WorldConfig(
        resolutions=((res, res),),
        num_frames=(9,),
        max_objects=1,
        camera_pan_prob=0.0,
        occluder_prob=0.0,
        backgrounds=("flat",),
        sizes=("medium", "large"),
    )
w = world_lib.World(wcfg)


SEED = A.get("seed", 0)  # the VAE's initialisation and the training clips (held-out ones fixed)


def clips(s, B, F):
    return [w.clip(SEED * 500_000 + s * B + i, res, res, F) for i in range(B)]


def batch(s, B, F):
    return jnp.asarray(np.stack([c["video"] for c in clips(s, B, F)]), jnp.float32) / 127.5 - 1


test_clips = [w.clip(900000 + i, res, res, TF) for i in range(64)]
test5 = jnp.asarray(np.stack([c["video"] for c in test_clips]), jnp.float32) / 127.5 - 1
psnr = lambda a, b: float(10 * jnp.log10(4.0 / jnp.mean((a - b) ** 2)))
steps, lr, B = A.get("steps", 1200), A.get("lr", 1e-3), A.get("B", 8)
z = A.get("z", 8)
cfg = v.VAEConfig(
    base_channels=A.get("bc", 16),
    channel_mults=tuple(A.get("mults", (1, 2, 4))),
    num_res_blocks=A.get("nres", 1),
    temporal_downsample=tuple(A.get("td", (True, True))),
    z_channels=z,
    mid_attention=False,
    shortcuts=A.get("sc", False),
    patch_size=A.get("patch", 1),
    dtype=A.get("dtype", "float32"),
)
m = v.CausalVAE(cfg, rngs=nnx.Rngs(SEED))
m.quant_conv.bias.value = m.quant_conv.bias[...].at[z:].set(-8.0)
g, p = nnx.split(m)
chain = [optax.clip_by_global_norm(1.0)] if A.get("clip", True) else []
tx = optax.chain(
    *chain,
    optax.adam(
        optax.warmup_cosine_decay_schedule(0, lr, 50, steps, lr * 0.1), b2=A.get("b2", 0.999)
    ),
)
o = tx.init(p)
use_rng = A.get("rng", True)
loss_kind = A.get("loss", "l2")


@jax.jit
def step(p, o, x, key):
    def lf(p):
        r, mu, lv = nnx.merge(g, p)(x, rng=key if use_rng else None)
        e = r - x
        e = e.at[:, 0].multiply(A.get("w0", 1.0) ** 0.5)  # extra weight on the image frame
        rec = (
            10 * jnp.mean(e**2) if loss_kind == "l2" else jnp.mean(jnp.abs(e)) + 10 * jnp.mean(e**2)
        )
        return rec + 1e-6 * 0.5 * jnp.mean(mu**2 + jnp.exp(lv) - 1 - lv)

    L, gr = jax.value_and_grad(lf)(p)
    u, o = tx.update(gr, o, p)
    return optax.apply_updates(p, u), o, L


def save(hist: dict, seconds: float) -> None:
    os.makedirs(os.environ.get("OUT", "/tmp"), exist_ok=True)
    with open(os.path.join(os.environ.get("OUT", "/tmp"), f"vs_{name}.json"), "w") as f:
        json.dump(dict(name=name, args=A, norm=NORM, hist=hist, s=seconds), f)


t = time.time()
hist = {}
for s in range(steps):
    p, o, L = step(p, o, batch(s, B, F), jax.random.key(s))
    if (s + 1) in tuple(A.get("evals", (300, 600, 800, 1200, 2400, 4800))):
        mm = nnx.merge(g, p)
        rec = jnp.concatenate(  # in chunks of 16 clips: 64 full-world clips at once is a lot
            [mm.decode(mm.encode(test5[i : i + 16])[0]) for i in range(0, 64, 16)]
        )
        r8 = np.asarray(jnp.clip((rec + 1) * 127.5, 0, 255)).astype(np.uint8)
        gr = evaluate.grade_many(list(r8), [c["spec"] for c in test_clips])
        hist[s + 1] = dict(
            psnr=round(psnr(rec, test5), 2),
            # frame 0 is encoded alone: the image path (what image->video keeps)
            psnr_first=round(psnr(rec[:, :1], test5[:, :1]), 2),
            color=gr["color_acc"],
            shape=gr["shape_acc"],
        )
        print(name, s + 1, hist[s + 1], round(time.time() - t, 1), flush=True)
        save(hist, time.time() - t)  # after every evaluation: a timeout keeps what was measured

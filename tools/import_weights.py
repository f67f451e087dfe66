r"""Import public Wan 2.1 weights (diffusers format, safetensors only) as a sora_jax checkpoint.

    python tools/import_weights.py --kind=vae --src=/models/Wan2.1-T2V-1.3B-Diffusers \
        --dst=/ckpt/wan_vae
    python tools/import_weights.py --kind=dit --src=/models/Wan2.1-T2V-1.3B-Diffusers \
        --dst=/runs/wan/dit

`--src` is a folder with config.json + *.safetensors (or a pipeline root with vae/ and
transformer/ subfolders). `--dst` becomes a stage directory like the ones training writes:

  <dst>/checkpoints/0/{state,config,meta}  a complete TrainState at step 0: params = EMA = the
                                           imported weights, zero Adam moments. `load_model`
                                           (sora_jax/train/state.py) restores it; `loop.train` in
                                           <dst> fine-tunes from it.
  <dst>/vae_config.json | dit_config.json  the model config (set `config.vae` / `config.dit`)
  <dst>/latent_stats.json                  (VAE) Wan's latents_mean / latents_std

so a DiT run uses the imported VAE with `--config.dit_train.vae_workdir=<dst>`, and an imported
DiT samples when `<dst>` is `<workdir>/dit`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sora_jax.interop import wan
from sora_jax.train import checkpoint as ckpt_lib
from sora_jax.train import loop, vae_task
from sora_jax.train import state as state_lib

KINDS = ("vae", "dit")


def optimizer_config() -> ml_collections.ConfigDict:
    """The optimizer whose (zero) state the checkpoint holds. Only its structure matters for a
    restore: AdamW after global-norm clipping, as with every stage's default grad_clip_norm."""
    return ml_collections.ConfigDict(dict(lr=1e-4, steps=1, lr_warmup_steps=0, grad_clip_norm=1.0))


def train_state(model: nnx.Module, seed: int = 0) -> state_lib.TrainState:
    """A step-0 TrainState around `model`'s parameters (EMA = params, zero optimizer state)."""
    _, params, _ = nnx.split(model, nnx.Param, ...)
    tx = loop.make_optimizer(optimizer_config())
    # Zeros from numpy are allocated lazily by the OS, so multi-GB moments cost no memory here.
    opt_state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(tx.init, params))
    return state_lib.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt_state,
        ema=params,
        rng=jax.random.key_data(jax.random.key(seed + 1)),
        skipped=jnp.zeros((), jnp.int32),
    )


def _write_json(path: str, value) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=1)


def import_weights(kind: str, src: str, dst: str, *, seed: int = 0) -> dict:
    """Converts the `kind` model of `src` into a checkpoint in `dst`; returns what it wrote."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not supported; expected one of {KINDS}.")
    ckpt_dir = os.path.join(dst, "checkpoints")
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
        raise FileExistsError(f"{ckpt_dir} already holds checkpoints; choose an empty --dst.")
    os.makedirs(dst, exist_ok=True)
    if kind == "vae":
        model, stats = wan.load_vae(src)
        _write_json(os.path.join(dst, vae_task.LATENT_STATS), stats)
    else:
        model = wan.load_dit(src)
    model_cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in
                 dataclasses.asdict(model.cfg).items()}  # fmt: skip
    _write_json(os.path.join(dst, f"{kind}_config.json"), model_cfg)
    source = os.path.abspath(src)
    checkpointer = ckpt_lib.Checkpointer(ckpt_dir, async_save=False)
    checkpointer.save(
        0, train_state(model, seed), {kind: model_cfg}, {"task": kind, "source": source}
    )
    checkpointer.close()
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return {"kind": kind, "source": source, "dst": os.path.abspath(dst), "params": n_params}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--src", required=True, help="diffusers-format folder (safetensors)")
    parser.add_argument("--dst", required=True, help="output stage directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the TrainState's rng")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(import_weights(args.kind, args.src, args.dst, seed=args.seed)))
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # bad input: one sentence
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Wan 2.1 weights from a local diffusers-format folder: `config.json` + `*.safetensors`.

A folder is what `save_pretrained` writes (`AutoencoderKLWan` or `WanTransformer3DModel`): one
`diffusion_pytorch_model.safetensors`, or shards listed in `*.safetensors.index.json`. The root
of a diffusers pipeline (with `vae/` and `transformer/` subfolders) works too. Only safetensors
are read: pickled `.bin`/`.pt` checkpoints are refused, since unpickling runs arbitrary code.

    vae, stats = load_vae("Wan2.1-T2V-1.3B-Diffusers")   # CausalVAE, latent mean/std
    dit = load_dit("Wan2.1-T2V-1.3B-Diffusers", attention="cudnn")
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from flax import nnx
from safetensors import safe_open

from sora_jax.interop import wan_names
from sora_jax.models import dit as dit_lib
from sora_jax.models import vae as vae_lib

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_SUBFOLDERS = {"vae": "vae", "dit": "transformer"}


def model_folder(path: str, kind: str) -> str:
    """`path` itself when it holds a config.json, else its diffusers subfolder for `kind`."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"weights folder {path!r} does not exist.")
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    sub = os.path.join(path, _SUBFOLDERS[kind])
    if os.path.exists(os.path.join(sub, "config.json")):
        return sub
    raise FileNotFoundError(
        f"{path!r} has no config.json (nor {_SUBFOLDERS[kind]}/config.json); expected a "
        "diffusers-format folder as written by save_pretrained."
    )


def read_config(folder: str) -> dict[str, Any]:
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)


def safetensors_files(folder: str) -> list[str]:
    """The weight files of `folder`: the shards of an index, else every *.safetensors."""
    names = sorted(os.listdir(folder))
    index = [n for n in names if n.endswith(".safetensors.index.json")]
    if index:
        with open(os.path.join(folder, index[0])) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        missing = [s for s in shards if not os.path.exists(os.path.join(folder, s))]
        if missing:
            raise FileNotFoundError(f"{index[0]} in {folder!r} lists missing shards {missing}.")
        return [os.path.join(folder, s) for s in shards]
    files = [os.path.join(folder, n) for n in names if n.endswith(".safetensors")]
    if not files:
        pickled = [n for n in names if n.endswith(_PICKLE_SUFFIXES)]
        hint = f" (found pickle files {pickled}, which are never loaded)" if pickled else ""
        raise FileNotFoundError(f"{folder!r} has no *.safetensors weights{hint}.")
    return files


def read_safetensors(folder: str) -> dict[str, np.ndarray]:
    """Every tensor of the folder as float32 numpy (bf16/fp16 checkpoints are upcast)."""
    out: dict[str, np.ndarray] = {}
    for path in safetensors_files(folder):
        # framework="flax" reads bf16, which numpy alone cannot represent.
        with safe_open(path, framework="flax") as f:
            for key in f.keys():
                out[key] = np.asarray(f.get_tensor(key), np.float32)
    return out


# ---- configs ----


def _require(cfg: dict, key: str, allowed, what: str) -> None:
    if cfg.get(key, allowed[0]) not in allowed:
        raise ValueError(f"config.json has {key}={cfg[key]!r}; {what} (supported: {allowed}).")


def vae_config_from_diffusers(cfg: dict[str, Any], **overrides) -> vae_lib.VAEConfig:
    """`AutoencoderKLWan` config.json -> VAEConfig (Wan 2.1 layouts only)."""
    _require(cfg, "is_residual", (False,), "Wan 2.2's residual VAE is not supported")
    _require(cfg, "patch_size", (None, 1), "patchified (Wan 2.2) VAEs are not supported")
    _require(cfg, "attn_scales", ([],), "attention outside the mid block is not supported")
    _require(cfg, "in_channels", (3,), "the VAE reads RGB video")
    _require(cfg, "out_channels", (3,), "the VAE writes RGB video")
    base = int(cfg.get("base_dim", 96))
    _require(cfg, "decoder_base_dim", (None, base), "the decoder must be as wide as the encoder")
    fields = dict(
        base_channels=base,
        channel_mults=tuple(int(m) for m in cfg.get("dim_mult", (1, 2, 4, 4))),
        num_res_blocks=int(cfg.get("num_res_blocks", 2)),
        temporal_downsample=tuple(bool(t) for t in cfg.get("temperal_downsample", (0, 1, 1))),
        z_channels=int(cfg.get("z_dim", 16)),
        mid_attention=True,
        dropout=float(cfg.get("dropout", 0.0)),
    )
    fields.update(overrides)
    return vae_lib.VAEConfig(**fields)


def latent_stats_from_diffusers(cfg: dict[str, Any], z_channels: int) -> dict[str, list[float]]:
    """Wan's per-channel latent mean/std (the DiT trains on (z - mean) / std)."""
    mean, std = cfg.get("latents_mean"), cfg.get("latents_std")
    if mean is None or std is None:
        raise ValueError("config.json has no latents_mean/latents_std; expected a Wan VAE config.")
    if len(mean) != z_channels or len(std) != z_channels:
        raise ValueError(
            f"latents_mean/std have {len(mean)}/{len(std)} entries; expected z_dim={z_channels}."
        )
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def dit_config_from_diffusers(cfg: dict[str, Any], **overrides) -> dit_lib.DiTConfig:
    """`WanTransformer3DModel` config.json -> DiTConfig (text-to-video models only)."""
    _require(cfg, "image_dim", (None,), "image-conditioned (I2V) transformers are not supported")
    _require(cfg, "added_kv_proj_dim", (None,), "extra image K/V projections are not supported")
    _require(cfg, "pos_embed_seq_len", (None,), "learned position embeddings are not supported")
    qk_norm = cfg.get("qk_norm", "rms_norm_across_heads")
    _require(cfg, "qk_norm", ("rms_norm_across_heads", None), "per-head q/k norms are unsupported")
    heads = int(cfg.get("num_attention_heads", 40))
    head_dim = int(cfg.get("attention_head_dim", 128))
    in_channels = int(cfg.get("in_channels", 16))
    fields = dict(
        in_channels=in_channels,
        out_channels=int(cfg.get("out_channels") or in_channels),
        patch_size=tuple(int(p) for p in cfg.get("patch_size", (1, 2, 2))),
        dim=heads * head_dim,
        ffn_dim=int(cfg.get("ffn_dim", 13824)),
        num_heads=heads,
        num_layers=int(cfg.get("num_layers", 40)),
        text_dim=int(cfg.get("text_dim", 4096)),
        freq_dim=int(cfg.get("freq_dim", 256)),
        qk_norm=qk_norm is not None,
        cross_attn_norm=bool(cfg.get("cross_attn_norm", True)),
        eps=float(cfg.get("eps", 1e-6)),
    )
    fields.update(overrides)
    return dit_lib.DiTConfig(**fields)


# ---- models ----


def load_vae(path: str, **overrides) -> tuple[vae_lib.CausalVAE, dict[str, list[float]]]:
    """(CausalVAE with the folder's weights, latent stats {'mean', 'std'}); fp32 parameters.

    `overrides` set VAEConfig fields that do not change weights (e.g. dtype='bfloat16').
    """
    folder = model_folder(path, "vae")
    raw = read_config(folder)
    cfg = vae_config_from_diffusers(raw, **overrides)
    model = nnx.eval_shape(lambda: vae_lib.CausalVAE(cfg, rngs=nnx.Rngs(0)))  # no random init
    wan_names.load_wan_vae_state_dict(model, read_safetensors(folder))
    return model, latent_stats_from_diffusers(raw, cfg.z_channels)


def load_dit(path: str, **overrides) -> dit_lib.DiT:
    """DiT with the folder's weights (fp32 parameters); `overrides` set DiTConfig fields that do
    not change weights (dtype, attention, remat, scan_layers)."""
    folder = model_folder(path, "dit")
    cfg = dit_config_from_diffusers(read_config(folder), **overrides)
    # Shape-only parameters that the loader fills (it fails on any it does not): no random init
    # of a model that may have billions of parameters.
    model = nnx.eval_shape(lambda: dit_lib.DiT(cfg, rngs=nnx.Rngs(0)))
    wan_names.load_wan_dit_state_dict(model, read_safetensors(folder))
    return model

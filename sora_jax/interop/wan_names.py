"""Wan 2.1's diffusers weight names and layouts -> our module trees (sora_jax/interop/wan.py
reads the folders; the parity tests load diffusers' own state dicts through these)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sora_jax.models import dit as dit_lib
from sora_jax.models import vae as vae_lib

# ---- the DiT: diffusers WanTransformer3DModel (T2V) ----

_DIT_RENAMES = (
    ("condition_embedder.", ""),
    (".to_out.0.", ".to_out."),
    ("ffn.net.0.proj.", "ffn.linear_1."),
    ("ffn.net.2.", "ffn.linear_2."),
)


def _wan_target(key: str, value: np.ndarray) -> tuple[int | None, tuple[str, ...], np.ndarray]:
    """diffusers key + tensor -> (block index or None, path in our module tree, our array)."""
    name = key
    for old, new in _DIT_RENAMES:
        name = name.replace(old, new)
    parts = name.split(".")
    layer = None
    if parts[0] == "blocks":
        layer, parts = int(parts[1]), parts[2:]
    *module, leaf = parts
    if leaf == "weight" and module == ["patch_embedding"]:
        # Conv3d [D, C, pt, ph, pw] -> linear over patch features ordered (pt, ph, pw, C).
        value = value.transpose(2, 3, 4, 1, 0).reshape(-1, value.shape[0])
        leaf = "kernel"
    elif leaf == "weight" and module[-1].startswith("norm"):
        leaf = "scale"
    elif leaf == "weight":
        value, leaf = value.T, "kernel"  # torch Linear stores [out, in]
    return layer, (*module, leaf), value


def load_wan_dit_state_dict(model: dit_lib.DiT, state_dict: dict[str, np.ndarray]) -> None:
    """Copy a diffusers `WanTransformer3DModel` (T2V) state dict into `model` in place.

    Keys and tensors are diffusers' (torch layouts, as numpy arrays). Every parameter of
    `model` must be covered and every key used; shapes must match the model's config.
    """
    cfg = model.cfg
    per_layer: dict[tuple[str, ...], dict[int, np.ndarray]] = {}
    done: set[int] = set()
    for key, value in state_dict.items():
        layer, path, arr = _wan_target(key, np.asarray(value, dtype=np.float32))
        if layer is None:
            done.add(_assign(model, path, arr, key))
        elif not 0 <= layer < cfg.num_layers:
            raise ValueError(f"weight {key!r} is for block {layer}; model has {cfg.num_layers}.")
        elif cfg.scan_layers:
            _param_at(model.blocks, path, key)  # fail early on weights we have no place for
            per_layer.setdefault(path, {})[layer] = arr
        else:
            done.add(_assign(model.blocks[layer], path, arr, key))
    for path, arrs in per_layer.items():
        name = "blocks.*." + ".".join(path)
        if len(arrs) != cfg.num_layers:
            missing = sorted(set(range(cfg.num_layers)) - set(arrs))
            raise ValueError(f"weight {name} is missing for blocks {missing}.")
        stacked = np.stack([arrs[i] for i in range(cfg.num_layers)])
        done.add(_assign(model.blocks, path, stacked, name))
    missing = [
        ".".join(map(str, p))
        for p, v in nnx.iter_graph(model)
        if isinstance(v, nnx.Param) and id(v) not in done
    ]
    if missing:
        raise ValueError(f"the state dict has no weights for parameters {missing}.")


def _param_at(root: nnx.Module, path: tuple[str, ...], key: str) -> nnx.Param:
    obj = root
    for name in path:
        obj = getattr(obj, name, None)
    if not isinstance(obj, nnx.Param):
        raise ValueError(
            f"weight {key!r} has no counterpart in the model (I2V image weights are unsupported)."
        )
    return obj


def _assign(root: nnx.Module, path: tuple[str, ...], arr: np.ndarray, key: str) -> int:
    """Set the Param at `path` under `root` to `arr`; return the Param's id."""
    param = _param_at(root, path, key)
    if param.shape != arr.shape:
        raise ValueError(f"weight {key!r} has shape {arr.shape}; the model expects {param.shape}.")
    param.set_value(jnp.asarray(arr))
    return id(param)


# ---- the VAE: diffusers AutoencoderKLWan ----

_VAE_RENAMES = (
    ("resample.1.", "spatial."),
    ("upsamplers.0.", "upsampler."),
    ("attentions.0.", "attention."),
)


def _wan_key_to_path(key: str) -> tuple[str | int, ...]:
    for old, new in _VAE_RENAMES:
        key = key.replace(old, new)
    parts = key.split(".")
    parts[-1] = {"weight": "kernel"}.get(parts[-1], parts[-1])
    return tuple(int(p) if p.isdigit() else p for p in parts)


def _to_ours(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Torch layout -> ours: conv3d OIDHW -> DHWIO, conv2d OIHW -> HWIO, 1x1 conv2d -> [I, O]."""
    if len(shape) == 1:
        return value.reshape(-1)  # biases; RMS gammas are stored as [C, 1, 1(, 1)]
    if value.ndim == 5:
        value = value.transpose(2, 3, 4, 1, 0)
    elif value.ndim == 4 and len(shape) == 2:
        value = value[:, :, 0, 0].T
    elif value.ndim == 4:
        value = value.transpose(2, 3, 1, 0)
    return value


def load_wan_vae_state_dict(
    model: vae_lib.CausalVAE, state_dict: dict[str, np.ndarray]
) -> vae_lib.CausalVAE:
    """Copy a diffusers `AutoencoderKLWan` state dict (numpy arrays) into `model`, in place.

    Every parameter of `model` must be set and every key used; raises ValueError otherwise,
    or when a shape does not match (e.g. a config that differs from the checkpoint's).
    """
    ours = {path: var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    unexpected, loaded = [], set()
    for key, value in state_dict.items():
        path = _wan_key_to_path(key)
        if path not in ours:
            unexpected.append(key)
            continue
        target = ours[path]
        value = _to_ours(np.asarray(value, np.float32), target.shape)
        if value.shape != target.shape:
            raise ValueError(
                f"weight {key} has shape {value.shape} after conversion; the model expects "
                f"{target.shape} (does the VAEConfig match the checkpoint?)."
            )
        target.set_value(jnp.asarray(value))  # also fills a shape-only (eval_shape) model
        loaded.add(path)
    missing = sorted(".".join(map(str, p)) for p in set(ours) - loaded)
    if unexpected or missing:
        raise ValueError(
            f"state dict does not match the model: unexpected keys {unexpected[:8]}, "
            f"missing parameters {missing[:8]} ({len(unexpected)} and {len(missing)} in all)."
        )
    nnx.update(model, nnx.from_flat_state(list(ours.items())))
    return model

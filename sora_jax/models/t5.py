"""T5 v1.1 and umT5 text encoders in Flax NNX (the encoder stack only), loading HF safetensors.

Architecture (Raffel et al. 2020; T5 v1.1 and umT5 as released by Google, read off Hugging Face's
`T5EncoderModel` / `UMT5EncoderModel`): token embedding without absolute positions; pre-norm
blocks of self-attention + feed-forward, each behind an RMS "T5 LayerNorm" (scale only, no mean,
no bias); attention logits are NOT scaled by 1/sqrt(d_kv) (T5 folds that into the init) and get a
learned bias per (relative-position bucket, head). T5 learns one bias table in layer 0 and shares
it with every layer; umT5 learns one table per layer. The feed-forward is gated-GELU in v1.1/umT5
(act(x W0) * (x W1)) W_out, with GELU in its tanh form ("gelu_new"); the original T5 used ReLU
without the gate, which is supported too. No biases anywhere.

Blocks are identical in shape, so their params are stacked on a leading 'layers' axis and run
under `lax.scan` (one compiled block for 24-layer XXL). Every param carries logical axis names
(`embed`, `mlp`, `heads`, `vocab`; `layers` for the stack) that `sora_jax.parallel.param_shardings`
maps to the mesh, so umT5-XXL (5.7B params) can be split over a pod or sit on one GPU.

Einsum legend: B batch, N query tokens, M key tokens, K heads, H head dim (d_kv), D model dim,
F feed-forward dim, V vocab, R relative-position buckets.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from sora_jax import parallel
from sora_jax.models.layers import LOGICAL

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# HF ACT2FN names used by T5 configs; "gelu_new" is the tanh approximation.
_ACTS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Shapes and flavour of a T5-family encoder (HF config.json field names where they exist)."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 1024
    num_layers: int = 8
    num_heads: int = 6
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"  # "gated-<act>" or "<act>" (original T5: "relu")
    per_layer_position_bias: bool = False  # umT5: True (a bias table in every layer)
    dtype: str = "float32"  # matmul compute dtype; params, norms and residuals stay fp32
    scan_layers: bool = True  # stack block params and run them under lax.scan

    @property
    def gated(self) -> bool:
        return self.feed_forward_proj.split("-")[0] == "gated"

    @property
    def act_name(self) -> str:
        # HF special case: "gated-gelu" means the tanh GELU (configuration_t5.py).
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else self.act_suffix

    @property
    def act_suffix(self) -> str:
        return self.feed_forward_proj.split("-")[-1]

    def __post_init__(self):
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(
                f"feed_forward_proj={self.feed_forward_proj!r}; expected 'gated-<act>' or '<act>'."
            )
        if self.act_name not in _ACTS:
            raise ValueError(
                f"feed_forward_proj={self.feed_forward_proj!r} uses activation "
                f"{self.act_name!r}; expected one of {sorted(_ACTS)}."
            )
        if self.dtype not in _DTYPES:
            raise ValueError(f"T5Config.dtype={self.dtype!r}; expected one of {sorted(_DTYPES)}.")


def config_from_hf(hf: Mapping[str, Any], *, umt5: bool, **overrides: Any) -> T5Config:
    """T5Config from a Hugging Face T5/UMT5 config.json dict (`overrides`: dtype, scan_layers)."""
    model_type = hf.get("model_type", "umt5" if umt5 else "t5")
    expected = "umt5" if umt5 else "t5"
    if model_type != expected:
        raise ValueError(
            f"config.json has model_type={model_type!r} but text.encoder={expected!r}; set "
            f"text.encoder={model_type!r} for this folder."
        )
    # Only architecture fields: HF's own "dtype" (storage) must not set our compute dtype.
    fields = {f.name for f in dataclasses.fields(T5Config)} - {"dtype", "scan_layers"}
    fields -= {"per_layer_position_bias"}
    kwargs = {k: hf[k] for k in fields if k in hf}
    return T5Config(**kwargs, per_layer_position_bias=umt5, **overrides)


def relative_position_buckets(
    query_len: int, key_len: int, num_buckets: int, max_distance: int
) -> np.ndarray:
    """Bidirectional T5 bucket of every (query, key) pair: int32 [N, M] in [0, num_buckets).

    Half the buckets are for keys after the query. Within a half, distances below half of it
    get one bucket each, longer ones share log-spaced buckets up to `max_distance`. Computed on
    the host in float32 with HF's operation order (`_relative_position_bucket`): the truncation
    to an int makes the result sensitive to the last bit at bucket boundaries, so it is kept out
    of XLA's device-specific log (asserted equal to HF for 600 positions in tests/test_t5.py).
    """
    rel = np.arange(key_len)[None, :] - np.arange(query_len)[:, None]  # key - query
    half = num_buckets // 2
    out = (rel > 0).astype(np.int64) * half
    rel = np.abs(rel)
    max_exact = half // 2
    safe = np.maximum(rel, 1).astype(np.float32)  # log(0) is masked below; avoid the warning
    scaled = np.log(safe / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
    large = max_exact + (scaled * np.float32(half - max_exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (out + np.where(rel < max_exact, rel, large)).astype(np.int32)


def _param(shape: tuple[int, ...], axes: tuple[str | None, ...], rngs: nnx.Rngs) -> nnx.Param:
    """fp32 param ~ N(0, 1/fan_in); checkpoints overwrite it, the init only serves tests."""
    std = 1.0 / math.sqrt(shape[0]) if len(shape) > 1 else 0.0
    value = std * jax.random.normal(rngs.params(), shape) if std else jnp.ones(shape)
    return nnx.Param(value.astype(jnp.float32), **{LOGICAL: axes})


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """T5 LayerNorm: x / rms(x) * scale, no mean subtraction, in fp32. [..., D] -> [..., D]."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + eps) * scale


def _bias(table: jax.Array, buckets: np.ndarray) -> jax.Array:
    """Bias table [R, K] looked up at buckets [N, M] -> [K, N, M] fp32."""
    return jnp.transpose(table[buckets], (2, 0, 1)).astype(jnp.float32)


class T5Block(nnx.Module):
    """Pre-norm self-attention (relative bias, unscaled logits) + gated feed-forward."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        d, inner, f = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff
        self.cfg = cfg
        self.attn_norm = _param((d,), ("norm",), rngs)
        self.q = _param((d, inner), ("embed", "heads"), rngs)
        self.k = _param((d, inner), ("embed", "heads"), rngs)
        self.v = _param((d, inner), ("embed", "heads"), rngs)
        self.o = _param((inner, d), ("heads", "embed"), rngs)
        self.rel_bias = (
            _param((cfg.relative_attention_num_buckets, cfg.num_heads), (None, "heads"), rngs)
            if cfg.per_layer_position_bias
            else None
        )
        self.ffn_norm = _param((d,), ("norm",), rngs)
        self.wi_0 = _param((d, f), ("embed", "mlp"), rngs)
        self.wi_1 = _param((d, f), ("embed", "mlp"), rngs) if cfg.gated else None
        self.wo = _param((f, d), ("mlp", "embed"), rngs)

    def __call__(
        self, x: jax.Array, mask: jax.Array, buckets: np.ndarray, bias: jax.Array | None
    ) -> jax.Array:
        """x [B, N, D] fp32, mask [B, M] bool, buckets [N, M], bias [K, N, M] or None -> x'."""
        cfg, dt = self.cfg, _DTYPES[self.cfg.dtype]
        b, n, _ = x.shape
        mm = lambda a, w: jnp.dot(a.astype(dt), w[...].astype(dt))  # noqa: E731
        h = rms_norm(x, self.attn_norm[...], cfg.layer_norm_epsilon)
        q, k, v = (
            mm(h, w).reshape(b, n, cfg.num_heads, cfg.d_kv) for w in (self.q, self.k, self.v)
        )
        logits = jnp.einsum("BNKH,BMKH->BKNM", q, k, preferred_element_type=jnp.float32)
        if self.rel_bias is not None:
            bias = _bias(self.rel_bias[...], buckets)
        logits = logits + bias[None]
        # Padded keys are excluded explicitly (never trust padded embeddings to be zero).
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(dt)
        attn = jnp.einsum("BKNM,BMKH->BNKH", probs, v).reshape(b, n, -1)
        x = x + mm(attn, self.o).astype(jnp.float32)
        x = parallel.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
        h = rms_norm(x, self.ffn_norm[...], cfg.layer_norm_epsilon)
        g = _ACTS[cfg.act_name](mm(h, self.wi_0))
        if self.wi_1 is not None:
            g = g * mm(h, self.wi_1)
        return x + mm(g, self.wo).astype(jnp.float32)


def _stacked_blocks(cfg: T5Config, rngs: nnx.Rngs) -> T5Block:
    """One T5Block whose params carry a leading [num_layers] axis (logical axis 'layers')."""

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(r: nnx.Rngs) -> T5Block:
        return T5Block(cfg, rngs=r)

    blocks = make(rngs)
    for _, var in nnx.iter_graph(blocks):
        if isinstance(var, nnx.Variable) and LOGICAL in var.get_metadata():
            var.set_metadata(LOGICAL, ("layers", *var.get_metadata()[LOGICAL]))
    return blocks


class T5Encoder(nnx.Module):
    """T5 / umT5 encoder stack: ids [B, N] + mask [B, N] -> last hidden states [B, N, D] fp32."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = _param((cfg.vocab_size, cfg.d_model), ("vocab", "embed"), rngs)
        self.rel_bias = (
            None
            if cfg.per_layer_position_bias
            else _param((cfg.relative_attention_num_buckets, cfg.num_heads), (None, "heads"), rngs)
        )
        if cfg.scan_layers:
            self.blocks = _stacked_blocks(cfg, rngs)
        else:
            self.blocks = nnx.List([T5Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = _param((cfg.d_model,), ("norm",), rngs)

    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """ids: [B, N] int, mask: [B, N] bool (True = real token) -> hidden [B, N, D] fp32."""
        cfg, n = self.cfg, ids.shape[1]
        buckets = relative_position_buckets(
            n, n, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
        )
        x = jnp.take(self.embed[...], ids, axis=0).astype(jnp.float32)
        # T5: layer 0's table, shared by all layers, so computed once; umT5: per layer, inside.
        bias = None if self.rel_bias is None else _bias(self.rel_bias[...], buckets)
        if cfg.scan_layers:
            graphdef, state = nnx.split(self.blocks)

            def body(h, layer_state):
                return nnx.merge(graphdef, layer_state)(h, mask, buckets, bias), None

            x, _ = jax.lax.scan(body, x, state)
        else:
            for block in self.blocks:
                x = block(x, mask, buckets, bias)
        return rms_norm(x, self.final_norm[...], cfg.layer_norm_epsilon)


# ----------------------------------------------------------------------------- safetensors

# safetensors dtype codes -> numpy dtypes (bf16 through ml_dtypes, which numpy alone lacks).
_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}  # fmt: skip


class SafetensorsFolder(Mapping[str, np.ndarray]):
    """Lazy name -> array view of a folder's model.safetensors or sharded model-*.safetensors.

    Files are memory-mapped and each tensor is read only when indexed, so a 20 GB checkpoint is
    copied into the model one tensor at a time. Reads the format directly (8-byte header length,
    JSON header, raw little-endian data) because `safetensors.numpy` cannot return bfloat16.
    """

    def __init__(self, folder: Path):
        single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
        if single.is_file():
            files = [single]
        else:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = [folder / f for f in sorted(set(weight_map.values()))]
        self._where: dict[str, tuple[np.memmap, str, list[int], int, int]] = {}
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(
                    f"checkpoint shard {str(file)!r} listed in {index} is missing."
                )
            with open(file, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n))
            data = np.memmap(file, dtype=np.uint8, mode="r")
            for name, info in header.items():
                if name != "__metadata__":
                    start, end = info["data_offsets"]
                    self._where[name] = (
                        data,
                        info["dtype"],
                        info["shape"],
                        8 + n + start,
                        8 + n + end,
                    )

    def __getitem__(self, name: str) -> np.ndarray:
        data, dtype, shape, start, end = self._where[name]
        if dtype not in _ST_DTYPES:
            raise ValueError(
                f"weight {name!r} has dtype {dtype}; expected one of {sorted(_ST_DTYPES)}."
            )
        return data[start:end].view(_ST_DTYPES[dtype]).reshape(shape)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


# ----------------------------------------------------------------------------- HF weights


def _hf_layer_names(cfg: T5Config, i: int) -> dict[str, tuple[str, bool]]:
    """HF tensor name of block i -> (T5Block attribute, transpose?). torch Linear is [out, in]."""
    pre = f"encoder.block.{i}.layer."
    names = {
        pre + "0.layer_norm.weight": ("attn_norm", False),
        pre + "1.layer_norm.weight": ("ffn_norm", False),
        pre + "1.DenseReluDense.wo.weight": ("wo", True),
    }
    for w in "qkvo":
        names[f"{pre}0.SelfAttention.{w}.weight"] = (w, True)
    if cfg.gated:
        names[pre + "1.DenseReluDense.wi_0.weight"] = ("wi_0", True)
        names[pre + "1.DenseReluDense.wi_1.weight"] = ("wi_1", True)
    else:
        names[pre + "1.DenseReluDense.wi.weight"] = ("wi_0", True)
    if cfg.per_layer_position_bias:
        names[pre + "0.SelfAttention.relative_attention_bias.weight"] = ("rel_bias", False)
    return names


def _tensor(tensors: Mapping[str, np.ndarray], name: str, shape: tuple, transpose: bool):
    if name not in tensors:
        raise ValueError(f"weight {name!r} is missing from the checkpoint tensors.")
    value = np.asarray(tensors[name], dtype=np.float32)
    value = value.T if transpose else value
    if value.shape != tuple(shape):
        raise ValueError(f"weight {name!r} has shape {value.shape}, expected {tuple(shape)}.")
    return value


def load_hf_weights(model: T5Encoder, tensors: Mapping[str, np.ndarray]) -> T5Encoder:
    """Copies HF T5EncoderModel / UMT5EncoderModel (or full T5) tensors into `model`; returns it.

    `tensors` maps HF names to arrays (may be lazy: each is read once). The token embedding is
    `encoder.embed_tokens.weight` or the tied `shared.weight`; decoder and lm_head tensors of
    full encoder-decoder checkpoints are ignored. `model` may be abstract (`nnx.eval_shape`).
    """
    cfg = model.cfg
    emb = "encoder.embed_tokens.weight" if "encoder.embed_tokens.weight" in tensors else None
    model.embed.set_value(_tensor(tensors, emb or "shared.weight", model.embed.shape, False))
    model.final_norm.set_value(
        _tensor(tensors, "encoder.final_layer_norm.weight", model.final_norm.shape, False)
    )
    if model.rel_bias is not None:
        name = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        model.rel_bias.set_value(_tensor(tensors, name, model.rel_bias.shape, False))
    for attr in _hf_layer_names(cfg, 0).values():
        if cfg.scan_layers:  # fill one [L, ...] buffer layer by layer: no second full copy
            var = getattr(model.blocks, attr[0])
            buf = np.empty(var.shape, np.float32)
            for i in range(cfg.num_layers):
                name = _name_of(cfg, i, attr[0])
                buf[i] = _tensor(tensors, name, var.shape[1:], attr[1])
            var.set_value(buf)
        else:
            for i, block in enumerate(model.blocks):
                var = getattr(block, attr[0])
                var.set_value(_tensor(tensors, _name_of(cfg, i, attr[0]), var.shape, attr[1]))
    return model


def _name_of(cfg: T5Config, i: int, attr: str) -> str:
    return next(k for k, (a, _) in _hf_layer_names(cfg, i).items() if a == attr)

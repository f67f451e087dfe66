"""A BERT encoder in Flax NNX (the MiniLM-L6 of `sora_jax.models.text`), loading HF safetensors.

Post-norm blocks as in Hugging Face's `BertModel` (absolute position embeddings, GELU, token-type
embedding 0 only); `load_safetensors_into` maps a BertModel / sentence-transformers checkpoint
onto it by name, with one clear error for a missing or mis-shaped tensor.

Einsum legend: B batch, N query tokens, M key tokens, K heads, H head dim, D model dim.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class BertLayer(nnx.Module):
    """Post-LayerNorm BERT block: self-attention then GELU MLP, each with residual + LN."""

    def __init__(self, d: int, heads: int, mlp: int, eps: float, dtype: Any, *, rngs: nnx.Rngs):
        if d % heads:
            raise ValueError(f"hidden_size {d} is not divisible by num_attention_heads {heads}.")
        self.heads = heads
        lin = dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        # Norms in fp32 with the exact (two-pass) variance, as torch.nn.LayerNorm computes it.
        ln = dict(epsilon=eps, dtype=jnp.float32, use_fast_variance=False, rngs=rngs)
        self.query = nnx.Linear(d, d, **lin)
        self.key = nnx.Linear(d, d, **lin)
        self.value = nnx.Linear(d, d, **lin)
        self.attn_out = nnx.Linear(d, d, **lin)
        self.attn_norm = nnx.LayerNorm(d, **ln)
        self.mlp_in = nnx.Linear(d, mlp, **lin)
        self.mlp_out = nnx.Linear(mlp, d, **lin)
        self.mlp_norm = nnx.LayerNorm(d, **ln)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """x: [B, N, D] fp32, mask: [B, N] bool (True = real token) -> [B, N, D] fp32."""
        b, n, d = x.shape
        split = lambda t: t.reshape(b, n, self.heads, d // self.heads)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        logits = jnp.einsum("BNKH,BMKH->BKNM", q, k, preferred_element_type=jnp.float32)
        logits = logits / math.sqrt(d // self.heads)
        # Padded keys are excluded explicitly (never trust padded embeddings to be zero).
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        attn = jnp.einsum("BKNM,BMKH->BNKH", probs, v).reshape(b, n, d)
        x = self.attn_norm(x + self.attn_out(attn).astype(jnp.float32))
        # HF "gelu" is the exact erf form, not the tanh approximation.
        h = jax.nn.gelu(self.mlp_in(x), approximate=False)
        return self.mlp_norm(x + self.mlp_out(h).astype(jnp.float32))


class BertEncoder(nnx.Module):
    """BERT encoder (embeddings + post-LN blocks), no pooler: returns last hidden states.

    `cfg` is the Hugging Face BertModel config.json as a dict.
    """

    def __init__(self, cfg: Mapping[str, Any], *, dtype: str = "float32", rngs: nnx.Rngs):
        _check_bert_config(cfg)
        d, eps = int(cfg["hidden_size"]), float(cfg.get("layer_norm_eps", 1e-12))
        self.max_positions = int(cfg["max_position_embeddings"])
        emb = dict(param_dtype=jnp.float32, rngs=rngs)
        self.word_embeddings = nnx.Embed(int(cfg["vocab_size"]), d, **emb)
        self.position_embeddings = nnx.Embed(self.max_positions, d, **emb)
        self.token_type_embeddings = nnx.Embed(int(cfg.get("type_vocab_size", 2)), d, **emb)
        self.embed_norm = nnx.LayerNorm(
            d, epsilon=eps, dtype=jnp.float32, use_fast_variance=False, rngs=rngs
        )
        compute = DTYPES[dtype]
        self.layers = nnx.List(
            [
                BertLayer(
                    d,
                    int(cfg["num_attention_heads"]),
                    int(cfg["intermediate_size"]),
                    eps,
                    compute,
                    rngs=rngs,
                )
                for _ in range(int(cfg["num_hidden_layers"]))
            ]
        )

    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """ids: [B, N] int, mask: [B, N] bool -> hidden [B, N, D] fp32."""
        n = ids.shape[1]
        if n > self.max_positions:
            raise ValueError(
                f"sequence length {n} exceeds max_position_embeddings {self.max_positions}."
            )
        # Single-segment input: token_type_ids are all 0, as BertModel assumes by default.
        x = (
            self.word_embeddings(ids)
            + self.position_embeddings.embedding[...][:n][None]
            + self.token_type_embeddings.embedding[...][0]
        )
        x = self.embed_norm(x.astype(jnp.float32))
        for layer in self.layers:
            x = layer(x, mask)
        return x


def _check_bert_config(cfg: Mapping[str, Any]) -> None:
    """Rejects BERT variants this port does not implement, in one sentence."""
    pos = cfg.get("position_embedding_type", "absolute")
    act = cfg.get("hidden_act", "gelu")
    if pos != "absolute" or act != "gelu":
        raise ValueError(
            f"BertEncoder supports position_embedding_type='absolute' and hidden_act='gelu', "
            f"got {pos!r} and {act!r}."
        )


def bert_param_map(num_layers: int) -> dict[str, tuple[tuple[str | int, ...], bool]]:
    """HF BertModel tensor name -> (path of the NNX param in BertEncoder, transpose?).

    torch Linear stores weight as [out, in]; nnx.Linear's kernel is [in, out], hence transpose.
    """
    m: dict[str, tuple[tuple[str | int, ...], bool]] = {
        "embeddings.word_embeddings.weight": (("word_embeddings", "embedding"), False),
        "embeddings.position_embeddings.weight": (("position_embeddings", "embedding"), False),
        "embeddings.token_type_embeddings.weight": (("token_type_embeddings", "embedding"), False),
        "embeddings.LayerNorm.weight": (("embed_norm", "scale"), False),
        "embeddings.LayerNorm.bias": (("embed_norm", "bias"), False),
    }
    sub = {
        "attention.self.query": "query",
        "attention.self.key": "key",
        "attention.self.value": "value",
        "attention.output.dense": "attn_out",
        "intermediate.dense": "mlp_in",
        "output.dense": "mlp_out",
    }
    norms = {"attention.output.LayerNorm": "attn_norm", "output.LayerNorm": "mlp_norm"}
    for i in range(num_layers):
        pre = f"encoder.layer.{i}."
        for hf, ours in sub.items():
            m[pre + hf + ".weight"] = (("layers", i, ours, "kernel"), True)
            m[pre + hf + ".bias"] = (("layers", i, ours, "bias"), False)
        for hf, ours in norms.items():
            m[pre + hf + ".weight"] = (("layers", i, ours, "scale"), False)
            m[pre + hf + ".bias"] = (("layers", i, ours, "bias"), False)
    return m


def load_safetensors_into(model: BertEncoder, tensors: Mapping[str, np.ndarray]) -> BertEncoder:
    """Copies HF BertModel tensors (name -> array) into `model`'s params; returns `model`.

    Accepts names with or without a "bert." prefix (BertFor* checkpoints); the pooler and the
    position_ids buffer are not used. Every mapped tensor must be present with the right shape.
    """
    tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
    for name, (path, transpose) in bert_param_map(len(model.layers)).items():
        if name not in tensors:
            raise ValueError(f"weight {name!r} is missing from the checkpoint tensors.")
        var: Any = model
        for p in path:
            var = var[p] if isinstance(p, int) else getattr(var, p)
        value = np.asarray(tensors[name], dtype=np.float32)
        value = value.T if transpose else value
        if value.shape != var.shape:
            raise ValueError(f"weight {name!r} has shape {value.shape}, expected {var.shape}.")
        var.set_value(jnp.asarray(value))
    return model

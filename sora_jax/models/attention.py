"""One registry of attention kernels, selected by name from the config.

Einsum legend: B batch, N query tokens, M key tokens, K heads, Dh head dim.

All kernels take q [B, N, K, Dh], k/v [B, M, K, Dh] and optional boolean masks:
`kv_mask` [B, M] (False = padded key), `q_mask` [B, N] (False = padded query; its output row is
zero) and a general `mask` broadcastable to [B, K, N, M]. Masked keys get exactly zero weight
and a query whose keys are all masked returns zeros, never NaN.

    xla    einsum softmax in fp32 (any backend; the CPU default)
    cudnn  cuDNN flash attention through `jax.nn.dot_product_attention` (GPU, bf16/fp16)
    auto   cudnn on GPU for bf16/fp16 inputs, else xla

Later kernels (splash on TPU, Ulysses / ring around another kernel) join with
`register_attention(name)`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
AttentionFn = Callable[..., Array]

_REGISTRY: dict[str, AttentionFn] = {}


def register_attention(name: str) -> Callable[[AttentionFn], AttentionFn]:
    """Decorator adding a kernel `fn(q, k, v, *, kv_mask, q_mask, mask) -> out` by name."""

    def deco(fn: AttentionFn) -> AttentionFn:
        _REGISTRY[name] = fn
        return fn

    return deco


def available_attention() -> tuple[str, ...]:
    """Names accepted by `attention(..., implementation=...)`."""
    return ("auto", *sorted(_REGISTRY))


def resolve_implementation(implementation: str, dtype: jnp.dtype) -> str:
    """Map 'auto' to a concrete kernel for the default backend and `dtype`."""
    if implementation != "auto":
        if implementation not in _REGISTRY:
            raise ValueError(
                f"attention implementation {implementation!r} is unknown; "
                f"expected one of {available_attention()}."
            )
        return implementation
    low_precision = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if jax.default_backend() == "gpu" and low_precision else "xla"


def attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    kv_mask: Array | None = None,
    q_mask: Array | None = None,
    mask: Array | None = None,
    implementation: str = "auto",
) -> Array:
    """Scaled dot-product attention [B, N, K, Dh] x [B, M, K, Dh] -> [B, N, K, Dh] (q's dtype)."""
    if q.ndim != 4 or k.shape != v.shape or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"attention expects q [B, N, K, Dh] and k, v [B, M, K, Dh]; "
            f"got q {q.shape}, k {k.shape}, v {v.shape}."
        )
    fn = _REGISTRY[resolve_implementation(implementation, q.dtype)]
    return fn(q, k, v, kv_mask=kv_mask, q_mask=q_mask, mask=mask)


def _combined_mask(
    b: int, n: int, m: int, kv_mask: Array | None, q_mask: Array | None, mask: Array | None
) -> Array | None:
    """All masks as one boolean broadcastable to [B, K, N, M], or None."""
    out = None
    if kv_mask is not None:
        out = kv_mask.astype(bool)[:, None, None, :]
    if q_mask is not None:
        qm = q_mask.astype(bool)[:, None, :, None]
        out = qm if out is None else out & qm
    if mask is not None:
        out = mask.astype(bool) if out is None else out & mask.astype(bool)
    return out


@register_attention("xla")
def xla_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    kv_mask: Array | None = None,
    q_mask: Array | None = None,
    mask: Array | None = None,
) -> Array:
    """Plain einsum attention; logits and softmax in fp32."""
    b, n, _, dh = q.shape
    logits = jnp.einsum("bnkd,bmkd->bknm", q, k, preferred_element_type=jnp.float32)
    logits = logits * (dh**-0.5)
    full = _combined_mask(b, n, k.shape[1], kv_mask, q_mask, mask)
    if full is not None:
        logits = jnp.where(full, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if full is not None:
        # A fully masked row softmaxes to uniform weights; zero it (and make masked weights
        # exactly 0 regardless of the logits' range).
        probs = jnp.where(full, probs, 0.0)
    probs = probs.astype(v.dtype)
    out = jnp.einsum("bknm,bmkd->bnkd", probs, v, preferred_element_type=jnp.float32)
    return out.astype(q.dtype)


@register_attention("cudnn")
def cudnn_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    kv_mask: Array | None = None,
    q_mask: Array | None = None,
    mask: Array | None = None,
) -> Array:
    """cuDNN flash attention.

    `kv_mask` / `q_mask` must be right-padding masks (valid tokens first, as tokenizers pad);
    they become sequence lengths, which cuDNN skips without materialising a bias. A general
    `mask` becomes an additive bias [B, K|1, N, M].
    """
    if jnp.dtype(q.dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise ValueError(
            f"cudnn attention needs bfloat16 or float16 inputs, got {q.dtype}; "
            "use implementation='xla' for float32."
        )
    b, n, _, _ = q.shape
    m = k.shape[1]
    kv_len = None if kv_mask is None else jnp.sum(kv_mask, axis=-1, dtype=jnp.int32)
    q_len = None if q_mask is None else jnp.sum(q_mask, axis=-1, dtype=jnp.int32)
    if mask is not None:
        mask = jnp.broadcast_to(mask.astype(bool), (b, mask.shape[-3], n, m))
    out = jax.nn.dot_product_attention(
        q,
        k,
        v,
        mask=mask,
        # cuDNN's padding path is undefined for empty sequences; those rows are zeroed below.
        query_seq_lengths=None if q_len is None else jnp.maximum(q_len, 1),
        key_value_seq_lengths=None if kv_len is None else jnp.maximum(kv_len, 1),
        implementation="cudnn",
    )
    keep = jnp.ones((b, n, 1), bool)  # [B, N, K|1]
    if kv_len is not None:
        keep = keep & (kv_len > 0)[:, None, None]
    if q_mask is not None:
        keep = keep & q_mask.astype(bool)[:, :, None]
    if mask is not None:
        keep = keep & jnp.any(mask, axis=-1).transpose(0, 2, 1)
    return jnp.where(keep[..., None], out, jnp.zeros((), out.dtype))

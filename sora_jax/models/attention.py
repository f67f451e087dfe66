"""One registry of attention kernels, selected by name from the config.

Einsum legend: B batch, N query tokens, M key tokens, K heads, Dh head dim, C context shards.

All kernels take q [B, N, K, Dh], k/v [B, M, K, Dh] and optional boolean masks:
`kv_mask` [B, M] (False = padded key), `q_mask` [B, N] (False = padded query; its output row is
zero) and a general `mask` broadcastable to [B, K, N, M]. Masked keys get exactly zero weight
and a query whose keys are all masked returns zeros, never NaN.

    xla        einsum softmax in fp32 (any backend; the CPU default)
    cudnn      cuDNN flash attention through `jax.nn.dot_product_attention` (GPU, bf16/fp16);
               padding masks become sequence lengths (right padding only)
    cudnn_pad  cudnn on sequences right-padded to a multiple of 128 tokens (as sequence
               lengths), for lengths cuDNN tiles badly (32,760 tokens: 18% slower than 32,768)
    splash     Pallas splash attention (TPU; `interpret=True` elsewhere, for tests); padding
               masks become segment ids (sora_jax/models/attention_splash.py)
    ulysses:X  DeepSpeed-Ulysses context parallelism around kernel X (xla, cudnn, splash or
               auto): inside `jax.shard_map`, q/k/v sharded over the sequence on the `context`
               mesh axis are exchanged all-to-all so each device holds the full sequence for
               K/C heads, X runs locally, and a second all-to-all restores sequence sharding.
               `ulysses` alone is `ulysses:auto`. Without a mesh whose `context` axis is > 1
               it is X itself.
    auto       splash on TPU, cudnn on GPU for bf16/fp16 inputs, else xla; wrapped in Ulysses
               when the current mesh (`jax.set_mesh`) has a `context` axis larger than 1

Kernels join with `register_attention(name)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

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


def _context_size() -> int:
    """Size of the `context` axis of the current mesh (1 outside a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or "context" not in mesh.axis_names:
        return 1
    return int(mesh.shape["context"])


def _backend_kernel(dtype: jnp.dtype) -> str:
    low_precision = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    backend = jax.default_backend()
    if backend == "tpu":
        return "splash"
    return "cudnn" if backend == "gpu" and low_precision else "xla"


def resolve_implementation(implementation: str, dtype: jnp.dtype) -> str:
    """Map 'auto' to a concrete kernel for the default backend, `dtype` and current mesh."""
    if implementation != "auto":
        if implementation not in _REGISTRY:
            raise ValueError(
                f"attention implementation {implementation!r} is unknown; "
                f"expected one of {available_attention()}."
            )
        return implementation
    kernel = _backend_kernel(dtype)
    return f"ulysses:{kernel}" if _context_size() > 1 else kernel


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
    precision = _LOW_PRECISION_DOTS.get(jnp.dtype(q.dtype))
    logits = jnp.einsum(
        "bnkd,bmkd->bknm", q, k, preferred_element_type=jnp.float32, precision=precision
    )
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
    out = jnp.einsum(
        "bknm,bmkd->bnkd", probs, v, preferred_element_type=jnp.float32, precision=precision
    )
    return out.astype(q.dtype)


# The dot algorithm of xla_attention's two products for 16-bit inputs: 16-bit operands with fp32
# accumulation, as without it in the forward. Without it their backward products pair the fp32
# cotangent with an upcast 16-bit operand, fp32 matmuls: on the H100 the world DiT's step ran 102
# TF32 GEMMs of its attention backward (~4.3 ms of its ~55 ms; world_h100_run14.json's trace).
# With it they take 16-bit operands, as flash attention's backward does (jax.nn's XLA attention
# sets the same, jax-ml/jax#24047); the forward is unchanged (tests/test_attention.py).
_LOW_PRECISION_DOTS = {
    jnp.dtype(jnp.bfloat16): jax.lax.DotAlgorithmPreset.BF16_BF16_F32,
    jnp.dtype(jnp.float16): jax.lax.DotAlgorithmPreset.F16_F16_F32,
}


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
    _check_cudnn_dtype(q)
    return seq_len_attention(q, k, v, kv_mask=kv_mask, q_mask=q_mask, mask=mask)


def _check_cudnn_dtype(q: Array) -> None:
    if jnp.dtype(q.dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise ValueError(
            f"cudnn attention needs bfloat16 or float16 inputs, got {q.dtype}; "
            "use implementation='xla' for float32."
        )


CUDNN_PAD = 128  # cudnn_pad: sequences padded to a multiple of this


@register_attention("cudnn_pad")
def cudnn_padded_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    kv_mask: Array | None = None,
    q_mask: Array | None = None,
    mask: Array | None = None,
) -> Array:
    """cuDNN flash attention on sequences right-padded to a multiple of CUDNN_PAD tokens, for
    lengths cuDNN tiles badly: on the H200 its forward took 11.34 ms at 32,760 tokens
    (Wan-1.3B at 480x832x81) and 9.62 ms at 32,768. Padding masks only (no general `mask`)."""
    if mask is not None:
        raise ValueError("cudnn_pad attention takes padding masks (kv_mask, q_mask) only.")
    _check_cudnn_dtype(q)
    return padded_seq_len_attention(q, k, v, kv_mask=kv_mask, q_mask=q_mask)


def padded_seq_len_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    kv_mask: Array | None = None,
    q_mask: Array | None = None,
    multiple: int = CUDNN_PAD,
    implementation: str = "cudnn",
    scale: float | None = None,
) -> Array:
    """`seq_len_attention` on q and k/v right-padded with zeros to a multiple of `multiple`
    tokens; the padded tokens are sequence lengths (skipped) and the padded rows are sliced
    off, so the result is that of the unpadded call. 'xla' runs it on any backend (tests)."""
    (b, n), m = q.shape[:2], k.shape[1]
    pad_n, pad_m = -n % multiple, -m % multiple
    if pad_n == 0 and pad_m == 0:
        return seq_len_attention(q, k, v, kv_mask=kv_mask, q_mask=q_mask,
                                 implementation=implementation, scale=scale)  # fmt: skip

    def pad(x: Array, amount: int) -> Array:  # [B, L, ...] -> [B, L + amount, ...], zeros
        return jnp.pad(x, [(0, 0), (0, amount)] + [(0, 0)] * (x.ndim - 2))

    kv_mask = jnp.ones((b, m), bool) if kv_mask is None else kv_mask.astype(bool)
    q_mask = jnp.ones((b, n), bool) if q_mask is None else q_mask.astype(bool)
    out = seq_len_attention(
        pad(q, pad_n), pad(k, pad_m), pad(v, pad_m), kv_mask=pad(kv_mask, pad_m),
        q_mask=pad(q_mask, pad_n), implementation=implementation, scale=scale,
    )  # fmt: skip
    return out[:, :n]


def seq_len_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    kv_mask: Array | None = None,
    q_mask: Array | None = None,
    mask: Array | None = None,
    implementation: str = "cudnn",
    scale: float | None = None,
) -> Array:
    """`jax.nn.dot_product_attention` with padding given as sequence lengths (cuDNN's way).

    The cudnn kernel calls this with implementation='cudnn'; with 'xla' the same length
    masking runs on any backend, which is how the tests check it on a CPU. `scale`: of the
    logits (None = 1/sqrt(Dh)).
    """
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
        scale=scale,
        # cuDNN's padding path is undefined for empty sequences; those rows are zeroed below.
        query_seq_lengths=None if q_len is None else jnp.maximum(q_len, 1),
        key_value_seq_lengths=None if kv_len is None else jnp.maximum(kv_len, 1),
        implementation=implementation,
    )
    if kv_len is None and q_mask is None and mask is None:
        return out
    keep = jnp.ones((b, n, 1), bool)  # [B, N, K|1]
    if kv_len is not None:
        keep = keep & (kv_len > 0)[:, None, None]
    if q_mask is not None:
        keep = keep & q_mask.astype(bool)[:, :, None]
    if mask is not None:
        keep = keep & jnp.any(mask, axis=-1).transpose(0, 2, 1)
    return jnp.where(keep[..., None], out, jnp.zeros((), out.dtype))


# --- Ulysses context parallelism ----------------------------------------------------------------


def _ulysses_specs(q: Array, mesh) -> tuple[P, P, P]:
    """(q/out spec [B, N, K, Dh], mask spec [B, N], replicated-sequence kv spec) on `mesh`."""
    from sora_jax import parallel  # models may use the sharding vocabulary, not the reverse

    spec = parallel.fit_spec_to_shape(
        parallel.logical_to_spec(
            ("activation_batch", "activation_length", "activation_heads", None)
        ),
        q.shape,
        mesh,
    )
    bax, _, hax, _ = tuple(spec) + (None,) * (4 - len(spec))
    return P(bax, "context", hax, None), P(bax, "context"), P(bax, None, hax, None)


def _ulysses(inner: str) -> AttentionFn:
    """Wrap kernel `inner` (a registry name or 'auto') in Ulysses all-to-all over 'context'."""

    def fn(
        q: Array,
        k: Array,
        v: Array,
        *,
        kv_mask: Array | None = None,
        q_mask: Array | None = None,
        mask: Array | None = None,
    ) -> Array:
        name = _backend_kernel(q.dtype) if inner == "auto" else inner
        kernel = _REGISTRY[name]
        c = _context_size()
        _, n, heads, _ = q.shape
        if c == 1 or n % c:  # nothing to split (or an unshardable length): the plain kernel
            return kernel(q, k, v, kv_mask=kv_mask, q_mask=q_mask, mask=mask)
        if mask is not None:
            raise ValueError(
                "ulysses attention takes padding masks (kv_mask, q_mask) only, not a general mask."
            )
        mesh = jax.sharding.get_abstract_mesh()
        seq, seq_mask, kv_full = _ulysses_specs(q, mesh)
        hax = seq[2]
        local_heads = heads // (math.prod(mesh.shape[a] for a in _axes(hax)) if hax else 1)
        self_attn = k.shape[1] == n
        if self_attn and local_heads % c:
            raise ValueError(
                f"ulysses attention splits the {local_heads} heads per tensor shard over "
                f"context={c} devices; num_heads must be a multiple of context x tensor."
            )
        kv_spec, kvm_spec = (seq, seq_mask) if self_attn else (kv_full, P(seq[0], None))
        masks = {n_: x for n_, x in (("kv_mask", kv_mask), ("q_mask", q_mask)) if x is not None}
        mask_specs = {"kv_mask": kvm_spec, "q_mask": seq_mask}

        if name == "splash":  # already inside a shard_map: call the per-device kernel
            kernel = attention_splash.splash_local

        def local(q, k, v, masks):
            if not self_attn:  # keys are not sequence-sharded: local queries see all of them
                return kernel(q, k, v, **masks)
            # [B, N/C, K', Dh] -> [B, N, K'/C, Dh]: trade sequence shards for head shards.
            q, k, v = (
                jax.lax.all_to_all(a, "context", split_axis=2, concat_axis=1, tiled=True)
                for a in (q, k, v)
            )
            masks = {
                n_: jax.lax.all_gather(x, "context", axis=1, tiled=True) for n_, x in masks.items()
            }
            out = kernel(q, k, v, **masks)
            return jax.lax.all_to_all(out, "context", split_axis=1, concat_axis=2, tiled=True)

        in_specs = (seq, kv_spec, kv_spec, {n_: mask_specs[n_] for n_ in masks})
        return jax.shard_map(
            local, mesh=mesh, in_specs=in_specs, out_specs=seq, check_vma=name != "splash"
        )(q, k, v, masks)

    fn.__doc__ = f"Ulysses context parallelism around the {inner!r} kernel."
    return fn


def _axes(axes) -> tuple[str, ...]:
    return (axes,) if isinstance(axes, str) else tuple(axes)


for _inner in ("xla", "cudnn", "splash", "auto"):
    register_attention("ulysses" if _inner == "auto" else f"ulysses:{_inner}")(_ulysses(_inner))
register_attention("ulysses:auto")(_ulysses("auto"))


# The Pallas TPU kernel registers itself from its own module (it uses `_ulysses_specs` above;
# Ulysses calls its per-device `splash_local`).
from sora_jax.models import attention_splash  # noqa: E402

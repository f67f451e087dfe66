"""The `splash` attention kernel: Pallas splash attention (TPU; `interpret=True` elsewhere, so
the tests run it on a CPU). Registered in sora_jax.models.attention's registry, which imports
this module; the module docstring there gives the kernels' common interface."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from sora_jax.models.attention import Array, _ulysses_specs, register_attention

SPLASH_BLOCK = 512  # largest q/kv block; sequences are padded to a multiple of the block used


def _splash_block(length: int) -> int:
    """Block size for a sequence: a multiple of 128 (the TPU lane width), at most SPLASH_BLOCK."""
    return min(SPLASH_BLOCK, -(-length // 128) * 128)


@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, n_pad: int, m_pad: int, bq: int, bkv: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    blocks = sk.BlockSizes(
        block_q=bq, block_kv=bkv, block_kv_compute=bkv,
        block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
        block_q_dq=bq, block_kv_dq=bkv,
    )  # fmt: skip
    full = sm.MultiHeadMask([sm.FullMask((n_pad, m_pad)) for _ in range(heads)])
    return sk.make_splash_mha(
        full, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret
    ), sk.SegmentIds


@register_attention("splash")
def splash_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    kv_mask: Array | None = None,
    q_mask: Array | None = None,
    mask: Array | None = None,
) -> Array:
    """Pallas splash attention; runs natively on TPU and in interpret mode elsewhere (slow).

    Padding becomes segment ids: queries are segment 1, valid keys segment 1, padded keys (and
    the block-alignment padding) segment 0, so they get exactly zero weight. A sample without
    any valid key attends to all its keys (splash must not see an empty row) and its output is
    zeroed, like the other kernels. A Pallas call has no automatic partitioning rule, so under
    a multi-device mesh it runs inside `jax.shard_map`, split over batch and heads.
    """
    if mask is not None:
        raise ValueError(
            "splash attention takes padding masks (kv_mask, q_mask) only; "
            "use implementation='xla' for a general mask."
        )
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or math.prod(mesh.shape.values()) == 1:
        return splash_local(q, k, v, kv_mask=kv_mask, q_mask=q_mask)
    seq, _, _ = _ulysses_specs(q, mesh)
    spec, mask_spec = P(seq[0], None, seq[2], None), P(seq[0], None)
    masks = {n_: x for n_, x in (("kv_mask", kv_mask), ("q_mask", q_mask)) if x is not None}
    in_specs = (spec, spec, spec, dict.fromkeys(masks, mask_spec))
    local = lambda q, k, v, masks: splash_local(q, k, v, **masks)  # noqa: E731
    # Pallas outputs carry no varying-axes annotation, so shard_map's check must be off.
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=spec, check_vma=False)(
        q, k, v, masks
    )


def splash_local(
    q: Array, k: Array, v: Array, *, kv_mask: Array | None = None, q_mask: Array | None = None
) -> Array:
    """Splash on arrays local to one device (see `splash_attention`)."""
    b, n, heads, dh = q.shape
    m = k.shape[1]
    bq, bkv = _splash_block(n), _splash_block(m)
    n_pad, m_pad = -(-n // bq) * bq, -(-m // bkv) * bkv
    kernel, segment_ids = _splash_kernel(
        heads, n_pad, m_pad, bq, bkv, jax.default_backend() != "tpu"
    )
    kv_valid = jnp.ones((b, m), bool) if kv_mask is None else kv_mask.astype(bool)
    has_key = jnp.any(kv_valid, axis=-1)
    kv_seg = (kv_valid | ~has_key[:, None]).astype(jnp.int32)
    kv_seg = jnp.pad(kv_seg, ((0, 0), (0, m_pad - m)))
    q_seg = jnp.ones((b, n_pad), jnp.int32)
    # Splash does not scale the logits; scale q in fp32 before the cast back.
    qs = (q.astype(jnp.float32) * dh**-0.5).astype(q.dtype)

    def to_khd(x: Array, length: int) -> Array:  # [B, N, K, Dh] -> [B, K, N_pad, Dh]
        return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

    def one(q1, k1, v1, qs1, ks1):
        return kernel(q1, k1, v1, segment_ids=segment_ids(q=qs1, kv=ks1))

    out = jax.vmap(one)(to_khd(qs, n_pad), to_khd(k, m_pad), to_khd(v, m_pad), q_seg, kv_seg)
    out = out.transpose(0, 2, 1, 3)[:, :n]  # [B, N, K, Dh]
    keep = has_key[:, None]
    if q_mask is not None:
        keep = keep & q_mask.astype(bool)
    return jnp.where(keep[:, :, None, None], out, jnp.zeros((), out.dtype)).astype(q.dtype)

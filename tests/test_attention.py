"""Attention registry: kernels against a naive reference, masking semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.models.attention import (
    attention,
    available_attention,
    resolve_implementation,
    seq_len_attention,
)

B, N, M, K, DH = 2, 5, 7, 3, 8


def _qkv(seed: int, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (B, N, K, DH), dtype)
    k = jax.random.normal(keys[1], (B, M, K, DH), dtype)
    v = jax.random.normal(keys[2], (B, M, K, DH), dtype)
    return q, k, v


def _naive(q, k, v, allowed):
    """Row-by-row softmax over the allowed keys only; rows with none allowed are zero.

    allowed: bool [B, K, N, M].
    """
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    out = np.zeros(q.shape)
    for b in range(q.shape[0]):
        for h in range(q.shape[2]):
            for i in range(q.shape[1]):
                idx = np.flatnonzero(allowed[b, h, i])
                if idx.size == 0:
                    continue
                logits = k[b, idx, h] @ q[b, i, h] / np.sqrt(q.shape[-1])
                w = np.exp(logits - logits.max())
                out[b, i, h] = (w / w.sum()) @ v[b, idx, h]
    return out


# Right padding in sample 0, an interior hole in sample 1 (xla accepts any pattern).
KV_MASK = np.array([[1, 1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 1, 1, 0]], bool)
Q_MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)


def test_xla_matches_naive_without_mask():
    q, k, v = _qkv(0)
    got = attention(q, k, v, implementation="xla")
    want = _naive(q, k, v, np.ones((B, K, N, M), bool))
    assert np.abs(np.asarray(got) - want).max() <= 1e-5


def test_xla_matches_naive_with_kv_and_q_padding():
    q, k, v = _qkv(1)
    got = attention(q, k, v, kv_mask=jnp.asarray(KV_MASK), q_mask=jnp.asarray(Q_MASK))
    allowed = KV_MASK[:, None, None, :] & Q_MASK[:, None, :, None]
    want = _naive(q, k, v, np.broadcast_to(allowed, (B, K, N, M)))
    assert np.abs(np.asarray(got) - want).max() <= 1e-5


def test_xla_matches_naive_with_general_mask():
    q, k, v = _qkv(2)
    mask = np.array(jax.random.bernoulli(jax.random.key(3), 0.6, (B, K, N, M)))
    mask[0, 1, 2] = False  # one query row of one head sees nothing
    got = attention(q, k, v, mask=jnp.asarray(mask), implementation="xla")
    assert np.abs(np.asarray(got) - _naive(q, k, v, mask)).max() <= 1e-5


def test_bf16_products_take_bf16_operands_in_the_backward_too():
    """xla attention on bf16: every product of its gradient program multiplies bf16 operands
    with fp32 accumulation (no fp32 matmuls of upcast operands, as without the dot algorithm);
    the forward equals the plain einsums and the gradients the fp32 ones to bf16 rounding."""
    import re

    q, k, v = _qkv(7, jnp.bfloat16)
    ct = jax.random.normal(jax.random.key(8), q.shape, jnp.float32)

    def loss(q, k, v):
        out = attention(q, k, v, kv_mask=jnp.asarray(KV_MASK), implementation="xla")
        return jnp.sum(out.astype(jnp.float32) * ct)

    text = jax.jit(jax.grad(loss, (0, 1, 2))).lower(q, k, v).as_text()
    dots = re.findall(r"stablehlo.dot_general.*", text)
    assert len(dots) == 5  # the logits and the 4 backward products (the loss is linear in out)
    assert all("lhs_precision_type = bf16, rhs_precision_type = bf16" in d for d in dots)
    logits = jnp.einsum("bnkd,bmkd->bknm", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(jnp.where(KV_MASK[:, None, None], logits * DH**-0.5, -1e30), -1)
    plain = jnp.einsum("bknm,bmkd->bnkd", probs.astype(v.dtype), v,
                       preferred_element_type=jnp.float32).astype(q.dtype)  # fmt: skip
    got = attention(q, k, v, kv_mask=jnp.asarray(KV_MASK), implementation="xla")
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(plain, np.float32))
    f32 = [a.astype(jnp.float32) for a in (q, k, v)]
    for g, want in zip(jax.grad(loss, (0, 1, 2))(q, k, v), jax.grad(loss, (0, 1, 2))(*f32)):
        err = float(jnp.abs(g.astype(jnp.float32) - want).max() / jnp.abs(want).max())
        assert err < 0.02, err


def test_masked_keys_have_exactly_zero_weight():
    q, k, v = _qkv(4)
    kv_mask = jnp.asarray(KV_MASK)
    out = attention(q, k, v, kv_mask=kv_mask, implementation="xla")
    junk = jnp.where(kv_mask[:, :, None, None], 0.0, 1e4)
    out_junk = attention(q, k + junk, v - junk, kv_mask=kv_mask, implementation="xla")
    assert np.array_equal(np.asarray(out), np.asarray(out_junk))


def test_fully_masked_rows_are_zero_with_finite_gradients():
    q, k, v = _qkv(5)
    kv_mask = jnp.asarray(KV_MASK).at[1].set(False)  # sample 1 has no valid key

    def loss(q, k, v):
        return jnp.sum(attention(q, k, v, kv_mask=kv_mask, implementation="xla") ** 2)

    out = attention(q, k, v, kv_mask=kv_mask, implementation="xla")
    assert np.all(np.asarray(out[1]) == 0.0)
    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_auto_resolves_to_xla_on_cpu_and_unknown_names_raise():
    assert "xla" in available_attention() and "cudnn" in available_attention()
    if jax.default_backend() == "cpu":
        assert resolve_implementation("auto", jnp.bfloat16) == "xla"
    assert resolve_implementation("auto", jnp.float32) == "xla"
    with pytest.raises(ValueError, match="unknown"):
        resolve_implementation("flash9000", jnp.float32)


def test_bad_shapes_raise_value_error():
    q, k, v = _qkv(6)
    with pytest.raises(ValueError, match="attention expects"):
        attention(q[..., :4], k, v)


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_matches_xla_with_right_padding():
    """cuDNN flash attention (bf16) against xla on the same bf16 inputs; padded keys/queries
    and a sample without any valid key."""
    b, n, m, k_, dh = 2, 256, 128, 4, 64
    keys = jax.random.split(jax.random.key(7), 3)
    q = jax.random.normal(keys[0], (b, n, k_, dh), jnp.bfloat16)
    k = jax.random.normal(keys[1], (b, m, k_, dh), jnp.bfloat16)
    v = jax.random.normal(keys[2], (b, m, k_, dh), jnp.bfloat16)
    for lengths in ([77, 128], [5, 0]):
        kv_mask = jnp.arange(m)[None, :] < jnp.asarray(lengths)[:, None]
        got = attention(q, k, v, kv_mask=kv_mask, implementation="cudnn")
        want = attention(q, k, v, kv_mask=kv_mask, implementation="xla")
        err = jnp.abs(got.astype(jnp.float32) - want.astype(jnp.float32)).max()
        assert float(err) <= 2e-2, (lengths, float(err))
        assert bool(jnp.isfinite(got.astype(jnp.float32)).all())


# Right padding in both samples, and a sample without any valid key (cuDNN's length masks
# and splash's segment ids must both give exactly the xla result there).
RIGHT_KV_MASK = np.array([[1, 1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]], bool)


def _rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("kv_mask", [KV_MASK, RIGHT_KV_MASK], ids=["holes", "empty_sample"])
def test_splash_interpret_matches_xla_on_padded_inputs(kv_mask):
    """Splash (Pallas, interpret mode on CPU): padded keys as segment ids, padded queries
    zeroed; forward and gradients agree with xla to 1e-5."""
    q, k, v = _qkv(8)
    masks = dict(kv_mask=jnp.asarray(kv_mask), q_mask=jnp.asarray(Q_MASK))

    def loss(impl):
        return lambda q, k, v: jnp.sum(jnp.sin(attention(q, k, v, **masks, implementation=impl)))

    got = attention(q, k, v, **masks, implementation="splash")
    want = attention(q, k, v, **masks, implementation="xla")
    assert _rel_err(got, want) <= 1e-5
    g_got = jax.grad(loss("splash"), argnums=(0, 1, 2))(q, k, v)
    g_want = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_got, g_want):
        assert np.isfinite(np.asarray(a)).all() and _rel_err(a, b) <= 1e-5


def test_sequence_length_masking_matches_xla_on_right_padding():
    """cuDNN's masking path (padding as sequence lengths, empty samples zeroed) run through
    `jax.nn.dot_product_attention(implementation='xla')` so it is checked on a CPU."""
    q, k, v = _qkv(9)
    masks = dict(kv_mask=jnp.asarray(RIGHT_KV_MASK), q_mask=jnp.asarray(Q_MASK))
    got = seq_len_attention(q, k, v, **masks, implementation="xla")
    want = attention(q, k, v, **masks, implementation="xla")
    assert np.all(np.asarray(got[1]) == 0.0)
    assert _rel_err(got, want) <= 1e-5


def test_splash_rejects_general_mask():
    q, k, v = _qkv(10)
    with pytest.raises(ValueError, match="padding masks"):
        attention(q, k, v, mask=jnp.ones((B, K, N, M), bool), implementation="splash")


def test_ulysses_without_context_axis_is_its_inner_kernel():
    q, k, v = _qkv(11)
    kv_mask = jnp.asarray(KV_MASK)
    got = attention(q, k, v, kv_mask=kv_mask, implementation="ulysses:xla")
    want = attention(q, k, v, kv_mask=kv_mask, implementation="xla")
    assert np.array_equal(np.asarray(got), np.asarray(want))
    assert {"splash", "ulysses", "ulysses:xla", "ulysses:cudnn"} <= set(available_attention())


def _count_eqns(jaxpr, name: str) -> int:
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == name
        for p in eqn.params.values():
            inner = p if isinstance(p, jax.extend.core.Jaxpr) else getattr(p, "jaxpr", None)
            if isinstance(inner, jax.extend.core.Jaxpr):
                n += _count_eqns(inner, name)
    return n


@pytest.mark.parametrize(
    "policy,kernels", [("save_dots", 4), ("full", 4), ("save_attn", 3), ("save_dots_attn", 3)]
)
def test_attention_saving_remat_keeps_the_kernels_forward(policy, kernels):
    """Splash under remat: forward + dq + dkv kernels (3), plus a forward rerun in the
    backward pass (4) unless the policy keeps the kernel's outputs and residuals."""
    from sora_jax.models.dit import remat_policy

    def block(x, w):
        q = (x @ w).reshape(1, 8, 2, 4)
        return jnp.sum(jnp.sin(attention(q, q, q, implementation="splash")))

    grad = jax.grad(jax.checkpoint(block, policy=remat_policy(policy)), argnums=1)
    jaxpr = jax.make_jaxpr(grad)(jnp.ones((8, 8)), jnp.full((8, 8), 0.1)).jaxpr
    assert _count_eqns(jaxpr, "pallas_call") == kernels


def test_padded_sequence_lengths_equal_the_unpadded_call():
    """cudnn_pad's padding (to a multiple of 4 here; xla implementation on the CPU): N = 5 and
    M = 7 tokens padded to 8, with the q/kv padding masks of the caller, an empty sample too."""
    from sora_jax.models.attention import padded_seq_len_attention

    q, k, v = _qkv(11)
    q_mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    for kv_mask, qm in ((None, None), (RIGHT_KV_MASK, None), (RIGHT_KV_MASK, q_mask)):
        want = seq_len_attention(q, k, v, kv_mask=kv_mask, q_mask=qm, implementation="xla")
        got = padded_seq_len_attention(q, k, v, kv_mask=kv_mask, q_mask=qm, multiple=4,
                                       implementation="xla")  # fmt: skip
        assert got.shape == want.shape == q.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert "cudnn_pad" in available_attention()
    with pytest.raises(ValueError, match="cudnn attention needs bfloat16"):
        attention(q, k, v, implementation="cudnn_pad")  # float32


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_pad_matches_cudnn():
    b, n, k_, dh = 2, 200, 4, 64  # 200 tokens: padded to 256
    keys = jax.random.split(jax.random.key(8), 3)
    q, k, v = (jax.random.normal(x, (b, n, k_, dh), jnp.bfloat16) for x in keys)
    got = attention(q, k, v, implementation="cudnn_pad").astype(jnp.float32)
    want = attention(q, k, v, implementation="xla").astype(jnp.float32)
    assert float(jnp.abs(got - want).max()) <= 2e-2

"""DiT: shapes, zero init, scan/remat equivalence, text masking, per-frame timesteps, sizes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_jax.models.dit import REMAT_POLICIES, DiT, DiTConfig, param_count
from sora_jax.models.layers import LOGICAL

TINY = DiTConfig(
    in_channels=4,
    out_channels=4,
    dim=64,
    ffn_dim=128,
    num_heads=4,
    num_layers=2,
    text_dim=32,
    freq_dim=32,
    dtype="float32",
    attention="xla",
)
B, L = 2, 6


def _randomize(model: DiT, seed: int = 0, std: float = 0.2) -> DiT:
    """Replace every parameter with noise so zero-initialised projections do not hide bugs."""
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [std * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    nnx.update(model, jax.tree.unflatten(treedef, noisy))
    return model


def _model(cfg: DiTConfig = TINY, seed: int = 0) -> DiT:
    return _randomize(DiT(cfg, rngs=nnx.Rngs(seed)), seed)


# Compiles take seconds on a CPU; these numerics-neutral options halve that.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@jax.jit(static_argnums=0, compiler_options=_FAST_COMPILE)
def _jit_apply(graphdef, state, x, t, ctx, mask):
    return nnx.merge(graphdef, state)(x, t, ctx, mask)


def _fwd(model: DiT, x, t, ctx, mask):
    """Jitted forward; the compile is shared by every model of the same config and shapes."""
    return _jit_apply(*nnx.split(model), x, t, ctx, mask)


def _inputs(t_frames: int = 3, h: int = 4, w: int = 6, seed: int = 0):
    ks = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(ks[0], (B, t_frames, h, w, TINY.in_channels))
    t = jax.random.uniform(ks[1], (B, t_frames))
    ctx = jax.random.normal(ks[2], (B, L, TINY.text_dim))
    mask = jnp.ones((B, L), bool)
    return x, t, ctx, mask


@pytest.mark.parametrize("grid", [(1, 2, 2), (3, 4, 6)])
def test_output_shape_and_dtype(grid):
    model = _model()
    x, t, ctx, mask = _inputs(*grid)
    out = _fwd(model, x, t, ctx, mask)
    assert out.shape == (B, *grid, TINY.out_channels) and out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()


def test_bfloat16_compute_returns_float32_close_to_float32():
    x, t, ctx, mask = _inputs()
    out32 = _fwd(_model(), x, t, ctx, mask)
    out16 = _fwd(_model(dataclasses.replace(TINY, dtype="bfloat16")), x, t, ctx, mask)
    assert out16.dtype == jnp.float32
    rel = jnp.abs(out16 - out32).max() / jnp.abs(out32).max()
    assert float(rel) <= 5e-2


def test_untrained_model_predicts_zero():
    model = DiT(TINY, rngs=nnx.Rngs(0))
    out = _fwd(model, *_inputs())
    assert float(jnp.abs(out).max()) == 0.0


def _unstacked_copy(scanned: DiT) -> DiT:
    """An unscanned DiT holding the same weights as `scanned` (block i = slice i)."""
    unscanned = DiT(dataclasses.replace(scanned.cfg, scan_layers=False), rngs=nnx.Rngs(99))
    flat = dict(nnx.to_flat_state(nnx.state(scanned, nnx.Param)))
    new = {}
    for path, var in nnx.to_flat_state(nnx.state(unscanned, nnx.Param)):
        if path[0] == "blocks":
            new[path] = var.replace(flat[("blocks", *path[2:])][...][path[1]])
        else:
            new[path] = var.replace(flat[path][...])
    nnx.update(unscanned, nnx.from_flat_state(new))
    return unscanned


def test_scanned_equals_unscanned():
    scanned = _model()
    unscanned = _unstacked_copy(scanned)
    assert param_count(scanned) == param_count(unscanned)
    args = _inputs()
    diff = jnp.abs(_fwd(scanned, *args) - _fwd(unscanned, *args)).max()
    assert float(diff) <= 1e-5


def _out_and_grad(cfg: DiTConfig, args):
    graphdef, params = nnx.split(_model(cfg))

    def loss(params):
        out = nnx.merge(graphdef, params)(*args)
        return jnp.mean(out**2), out

    step = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(params)
    (_, out), grads = step.compile(compiler_options=_FAST_COMPILE)(params)
    return out, grads


@pytest.fixture(scope="module")
def no_remat_reference():
    args = _inputs()
    return args, _out_and_grad(TINY, args)


@pytest.mark.parametrize("policy", [p for p in REMAT_POLICIES if p != "none"])
def test_remat_policy_gives_same_output_and_gradient(policy, no_remat_reference):
    args, (out_ref, g_ref) = no_remat_reference
    out, g = _out_and_grad(dataclasses.replace(TINY, remat=policy), args)
    assert float(jnp.abs(out - out_ref).max()) <= 1e-5
    gdiff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g, g_ref)
    assert max(jax.tree.leaves(gdiff)) <= 1e-5
    assert max(jax.tree.leaves(jax.tree.map(lambda a: float(jnp.abs(a).max()), g_ref))) > 0


@pytest.mark.parametrize("scan_layers", [True, False])
def test_fused_projections_give_same_output_and_gradient(scan_layers, no_remat_reference):
    """`fused_projections` concatenates the q/k/v kernels at call time: the same parameters
    (so the same checkpoints) and, in fp32, the same outputs and gradients as three matmuls."""
    args, (out_ref, g_ref) = no_remat_reference
    if not scan_layers:  # the reference's weights, unstacked, against unfused unscanned
        unscanned = _unstacked_copy(_model())
        ref = nnx.split(unscanned)
        fused = dataclasses.replace(TINY, scan_layers=False, fused_projections=True)
        graphdef = nnx.graphdef(DiT(fused, rngs=nnx.Rngs(0)))
        out = _jit_apply(graphdef, ref[1], *args)
        assert float(jnp.abs(out - _jit_apply(*ref, *args)).max()) <= 1e-5
        return
    out, g = _out_and_grad(dataclasses.replace(TINY, fused_projections=True), args)
    assert jax.tree.structure(g) == jax.tree.structure(g_ref)
    assert float(jnp.abs(out - out_ref).max()) <= 1e-5
    gdiff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g, g_ref)
    assert max(jax.tree.leaves(gdiff)) <= 1e-5


@pytest.mark.parametrize("pooled_text", [False, True])
def test_padded_text_tokens_have_no_effect(pooled_text):
    model = _model(dataclasses.replace(TINY, pooled_text=pooled_text))
    x, t, ctx, _ = _inputs()
    mask = jnp.asarray([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], bool)
    other = ctx + 10.0 * jax.random.normal(jax.random.key(5), ctx.shape) * ~mask[:, :, None]
    out, out_other = _fwd(model, x, t, ctx, mask), _fwd(model, x, t, other, mask)
    assert float(jnp.abs(out - out_other).max()) <= 1e-6
    # Without the mask the padding does change the output (the test is not vacuous).
    assert float(jnp.abs(_fwd(model, x, t, ctx, None) - out).max()) > 1e-3


def test_pooled_text_starts_as_off_and_learns():
    """`pooled_text`: the other parameters initialise as without it and the zero projection leaves
    the output as it was; its gradient is not zero, and once it is, the prompt moves every block's
    modulation (the output changes with the text even with cross-attention's output zeroed)."""
    x, t, ctx, mask = _inputs()
    plain = DiT(TINY, rngs=nnx.Rngs(0))
    pooled = DiT(dataclasses.replace(TINY, pooled_text=True), rngs=nnx.Rngs(0))
    _randomize(plain)
    nnx.update(pooled, nnx.state(plain, nnx.Param))  # every shared parameter, text_pool stays 0
    assert float(jnp.abs(pooled.text_pool.kernel[...]).max()) == 0.0
    np.testing.assert_array_equal(np.asarray(_fwd(pooled, x, t, ctx, mask)),
                                  np.asarray(_fwd(plain, x, t, ctx, mask)))  # fmt: skip
    graphdef, params = nnx.split(pooled, nnx.Param)
    loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(x, t, ctx, mask) ** 2)  # noqa: E731
    assert float(jnp.abs(jax.grad(loss)(params)["text_pool"]["kernel"][...]).max()) > 0
    to_out = pooled.blocks.attn2.to_out  # every block's cross-attention now adds nothing
    to_out.kernel[...], to_out.bias[...] = (
        jnp.zeros_like(p[...]) for p in (to_out.kernel, to_out.bias)
    )
    other_text = ctx + 1.0
    unpooled_same = _fwd(pooled, x, t, ctx, mask) - _fwd(pooled, x, t, other_text, mask)
    assert float(jnp.abs(unpooled_same).max()) == 0.0  # zero projection: the text has no path
    pooled.text_pool.kernel[...] = 0.1 * jax.random.normal(jax.random.key(3), (TINY.text_dim, 64))
    moved = _fwd(pooled, x, t, ctx, mask) - _fwd(pooled, x, t, other_text, mask)
    assert float(jnp.abs(moved).max()) > 1e-3


def test_all_text_masked_gives_finite_output():
    model = _model()
    x, t, ctx, _ = _inputs()
    out = _fwd(model, x, t, ctx, jnp.zeros((B, L), bool))
    assert np.isfinite(np.asarray(out)).all()


def test_changing_one_frames_timestep_changes_other_frames():
    model = _model()
    x, t, ctx, mask = _inputs()
    out = _fwd(model, x, t, ctx, mask)
    out2 = _fwd(model, x, t.at[:, 1].set(0.0), ctx, mask)
    assert float(jnp.abs(out[:, 0] - out2[:, 0]).max()) > 1e-4  # full spacetime attention


def test_equal_frame_timesteps_equal_scalar_timestep():
    model = _model()
    x, _, ctx, mask = _inputs()
    t_scalar = jnp.asarray([0.3, 0.9])
    out_frames = _fwd(model, x, jnp.broadcast_to(t_scalar[:, None], x.shape[:2]), ctx, mask)
    out_scalar = _fwd(model, x, t_scalar, ctx, mask)
    assert float(jnp.abs(out_frames - out_scalar).max()) == 0.0


def test_temporal_patch_uses_first_frame_timestep():
    cfg = dataclasses.replace(TINY, patch_size=(2, 2, 2))
    model = _model(cfg)
    x, t, ctx, mask = _inputs(t_frames=4)
    out = _fwd(model, x, t, ctx, mask)
    assert out.shape == x.shape
    assert float(jnp.abs(_fwd(model, x, t.at[:, 1::2].set(0.5), ctx, mask) - out).max()) == 0.0


# Parameter counts of diffusers' WanTransformer3DModel, obtained once with
#   with torch.device("meta"): m = WanTransformer3DModel(num_attention_heads=..., ...)
#   sum(p.numel() for p in m.parameters())
# (diffusers 0.42; attention_head_dim=128, in/out 16, text_dim 4096, freq_dim 256).
WAN_1_3B = (dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30), 1_418_996_800)
WAN_14B = (dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40), 14_288_491_584)


@pytest.mark.parametrize("shape,count", [WAN_1_3B, WAN_14B], ids=["wan1.3b", "wan14b"])
def test_param_count_matches_diffusers_wan(shape, count):
    cfg = DiTConfig(**shape)
    abstract = nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0)))
    assert param_count(abstract) == count


def test_params_carry_logical_axes():
    model = DiT(TINY, rngs=nnx.Rngs(0))
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            axes = var.get_metadata()[LOGICAL]
            assert len(axes) == var.ndim, path
            assert (axes[0] == "layers") == (path[0] == "blocks"), path


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(x=jnp.zeros((B, 3, 4, 6, 5))), "latents"),
        (dict(x=jnp.zeros((B, 3, 5, 6, 4))), "divisible"),
        (dict(t=jnp.zeros((B, 2))), "t has shape"),
        (dict(ctx=jnp.zeros((B, L, 7))), "context has shape"),
        (dict(mask=jnp.ones((B, L + 1), bool)), "context_mask"),
    ],
)
def test_bad_inputs_raise_value_error(change, match):
    model = DiT(TINY, rngs=nnx.Rngs(0))
    args = dict(zip(("x", "t", "ctx", "mask"), _inputs(), strict=True)) | change
    with pytest.raises(ValueError, match=match):
        _fwd(model, args["x"], args["t"], args["ctx"], args["mask"])


def test_bad_config_raises_value_error():
    with pytest.raises(ValueError, match="remat"):
        DiTConfig(remat="most")
    with pytest.raises(ValueError, match="heads"):
        DiTConfig(dim=100, num_heads=12)
    with pytest.raises(ValueError, match="attention"):
        DiTConfig(attention="flash9000")
    with pytest.raises(ValueError, match="cross_attention 'flash9000' is unknown"):
        DiTConfig(cross_attention="flash9000")


def test_cross_attention_runs_on_its_own_kernel(monkeypatch):
    """`cross_attention` sends the text attention (and only it) to another kernel; same output."""
    from sora_jax.models import attention as attention_lib

    key_lengths = []

    def recording(q, k, v, **masks):
        key_lengths.append(k.shape[1])
        return attention_lib.xla_attention(q, k, v, **masks)

    monkeypatch.setitem(attention_lib._REGISTRY, "recording", recording)
    x, t, ctx, mask = _inputs()
    mask = mask.at[0, 4:].set(False)  # padded text tokens reach the kernel as kv_mask
    split = dataclasses.replace(TINY, cross_attention="recording")
    got = _model(split)(x, t, ctx, mask)
    assert key_lengths == [L]  # the text attention alone; scanned layers trace it once
    want = _model(TINY)(x, t, ctx, mask)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

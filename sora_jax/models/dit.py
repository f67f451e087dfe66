"""Diffusion transformer over spacetime latent patches (Sora report §"Scaling transformers";
the architecture can express Wan 2.1 T2V exactly: sora_jax/interop/wan_names.py loads its
weights).

Einsum legend: B batch, T latent frames, H W latent height/width, T' H' W' the patch grid,
N = T'H'W' tokens (frame-major), S = H'W' tokens per frame, D model dim, K heads, Dh head dim,
L text tokens, C channels.

Timestep conditioning is adaLN-single (PixArt-α; Wan): one shared time MLP gives a 6·D
modulation per latent frame, each block adds its own learned `scale_shift_table`. Because the
modulation is per frame, frames given as conditions can sit at t = 0 while the rest is noised.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from sora_jax import parallel
from sora_jax.models import layers
from sora_jax.models.attention import attention, available_attention

Array = jax.Array

# Logical activation axes (sora_jax.parallel maps them to mesh axes; no-ops without a mesh).
_TOKENS = ("activation_batch", "activation_length", "activation_embed")  # [B, N, D]
_TEXT = ("activation_batch", None, "activation_embed")  # [B, L, D]: text is never split
_HEADS = ("activation_batch", "activation_length", "activation_heads", None)  # [B, N, K, Dh]
_TEXT_HEADS = ("activation_batch", None, "activation_heads", None)  # [B, L, K, Dh]

REMAT_POLICIES = (
    "none", "full", "save_dots", "save_qkv_out", "offload", "save_attn", "save_dots_attn",
)  # fmt: skip
# Activations tagged with `checkpoint_name` for the save_qkv_out / offload policies.
_SAVED_NAMES = ("query", "key", "value", "attention_out")
# Projection outputs tagged for save_attn: everything but the FFN hidden layer (F wide).
_PROJ_NAMES = ("q_proj", "k_proj", "v_proj", "attn_proj", "ffn_out")
# Fused attention kernels whose forward outputs (incl. softmax statistics) a policy may keep,
# so the backward pass does not rerun them: cuDNN's custom call and splash's pallas_call.
_ATTENTION_KERNELS = ("dot_product_attention_fwd", "splash")


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """DiT hyper-parameters; the defaults are Wan 2.1 T2V 1.3B."""

    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w) over latents
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    text_dim: int = 4096
    freq_dim: int = 256  # sinusoidal timestep features
    qk_norm: bool = True  # RMSNorm on q and k over the full dim (Wan "rms_norm_across_heads")
    cross_attn_norm: bool = True
    eps: float = 1e-6
    rope_theta: float = 10000.0
    dtype: str = "bfloat16"  # compute dtype; params fp32; norms/modulation/residuals fp32
    remat: str = "none"  # REMAT_POLICIES; see remat_policy()
    # xla | cudnn | splash | ulysses:<kernel> (context parallel) | auto: per backend, and
    # Ulysses when the mesh has a context axis > 1 (sora_jax.models.attention)
    attention: str = "auto"
    # The text cross-attention's kernel ("" = `attention`): its keys are few (<= 512 text tokens),
    # a shape a flash kernel tuned for long key sequences may not suit.
    cross_attention: str = ""
    # Also condition the modulation on the mean of the text tokens (a zero-initialised projection
    # added to the time embedding, as SD3 and Flux add a pooled text vector): every block's
    # adaLN then sees the prompt, not only its cross-attention. Off in Wan (and its weights).
    pooled_text: bool = False
    scan_layers: bool = True  # blocks' params stacked on a leading 'layers' axis
    # Self-attention's q, k, v (and cross-attention's k, v) as one matmul over their kernels
    # concatenated at call time: fewer, larger kernels for small models; the parameters, and so
    # checkpoints and loaded weights, are the same as unfused.
    fused_projections: bool = False

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size {self.patch_size} must be three positive ints (t, h, w).")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(
                f"dim {self.dim} must split into num_heads {self.num_heads} heads of even size."
            )
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat {self.remat!r} is unknown; expected one of {REMAT_POLICIES}.")
        cross = self.cross_attention or self.attention  # "" = the self-attention's kernel
        for field, name in (("attention", self.attention), ("cross_attention", cross)):
            if name not in available_attention():
                raise ValueError(
                    f"{field} {name!r} is unknown; expected one of {available_attention()}."
                )
        jnp.dtype(self.dtype)  # raises on an unknown dtype name

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


def _is_attention_kernel(prim, params: dict) -> bool:
    """Whether a jaxpr equation is a fused attention kernel's forward (cuDNN or splash)."""
    name = prim.name
    if name in ("jit", "pjit"):
        name = str(params.get("name", ""))
    elif name == "pallas_call":
        name = str(params.get("name_and_src_info", params.get("name", "")))
    return any(k in name for k in _ATTENTION_KERNELS)


def _or(*policies: Callable) -> Callable:
    def policy(prim, *args, **params):
        return any(p(prim, *args, **params) for p in policies)

    return policy


def remat_policy(name: str) -> Callable | None:
    """The `jax.checkpoint` policy of a remat name ('none' -> no checkpointing -> None).

    full            keep only the block input; recompute the whole block (least memory)
    save_dots       keep every projection matmul output; rerun attention in the backward pass
    save_qkv_out    keep q, k, v and the attention output
    offload         like save_qkv_out, parked in pinned host memory
    save_attn       keep the projections except the FFN hidden layer, and the fused attention
                    kernel's outputs: only the FFN's first matmul and elementwise ops rerun
    save_dots_attn  save_dots plus the fused attention kernel's outputs (most memory)
    """
    cp = jax.checkpoint_policies
    kernel = lambda prim, *_, **params: _is_attention_kernel(prim, params)  # noqa: E731
    policies = {
        "full": cp.nothing_saveable,
        # Saves projection matmuls (no batch dims) and recomputes attention logits.
        "save_dots": cp.dots_with_no_batch_dims_saveable,
        "save_qkv_out": cp.save_only_these_names(*_SAVED_NAMES),
        "save_attn": _or(cp.save_only_these_names(*_PROJ_NAMES, "attention_out"), kernel),
        "save_dots_attn": _or(cp.dots_with_no_batch_dims_saveable, kernel),
        "offload": cp.save_and_offload_only_these_names(
            names_which_can_be_saved=[],
            names_which_can_be_offloaded=list(_SAVED_NAMES),
            offload_src="device",
            offload_dst="pinned_host",
        ),
    }
    if name == "none":
        return None
    if name not in policies:
        raise ValueError(f"remat {name!r} is unknown; expected one of {REMAT_POLICIES}.")
    return policies[name]


def _fused_dense(projections: tuple[nnx.Linear, ...], x: Array) -> list[Array]:
    """Several biased linear maps of the same x as one matmul: [B, N, D] -> each [B, N, D_i].

    Their kernels and biases are concatenated along the output axis at call time, which equals
    applying each `nnx.Linear` (in its compute dtype) up to the matmul's summation order.
    """
    dtype = projections[0].dtype
    kernel = jnp.concatenate([p.kernel[...] for p in projections], axis=1).astype(dtype)
    bias = jnp.concatenate([p.bias[...] for p in projections]).astype(dtype)
    y = jnp.einsum("bnd,de->bne", x.astype(dtype), kernel) + bias
    sizes = np.cumsum([p.kernel.shape[1] for p in projections])[:-1]
    return jnp.split(y, sizes, axis=-1)


class Attention(nnx.Module):
    """Multi-head attention with Wan's full-dim QK RMSNorm; self- (with RoPE) or cross-."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs, implementation: str = ""):
        d, dt = cfg.dim, jnp.dtype(cfg.dtype)
        self.num_heads, self.impl = cfg.num_heads, implementation or cfg.attention
        self.fused = cfg.fused_projections
        self.to_q = layers.dense(d, d, axes=("embed", "heads"), dtype=dt, rngs=rngs)
        self.to_k = layers.dense(d, d, axes=("embed", "heads"), dtype=dt, rngs=rngs)
        self.to_v = layers.dense(d, d, axes=("embed", "heads"), dtype=dt, rngs=rngs)
        # Zero-initialised so every residual branch starts as the identity.
        self.to_out = layers.dense(
            d, d, axes=("heads", "embed"), dtype=dt, rngs=rngs, zero_init=True
        )
        self.norm_q = layers.RMSNorm(d, eps=cfg.eps) if cfg.qk_norm else None
        self.norm_k = layers.RMSNorm(d, eps=cfg.eps) if cfg.qk_norm else None

    def __call__(
        self,
        x: Array,
        context: Array | None = None,
        *,
        kv_mask: Array | None = None,
        rope: tuple[Array, Array] | None = None,
    ) -> Array:
        """x [B, N, D] attends to itself (context None) or to context [B, L, D] -> [B, N, D]."""
        src = x if context is None else context
        if not self.fused:
            q, k, v = self.to_q(x), self.to_k(src), self.to_v(src)
        elif context is None:
            q, k, v = _fused_dense((self.to_q, self.to_k, self.to_v), x)
        else:
            q = self.to_q(x)
            k, v = _fused_dense((self.to_k, self.to_v), src)
        q, k, v = (checkpoint_name(a, nm) for a, nm in zip((q, k, v), _PROJ_NAMES))
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        b, n, d = q.shape
        q, k, v = (a.reshape(a.shape[0], a.shape[1], self.num_heads, -1) for a in (q, k, v))
        q = parallel.constrain(q, _HEADS)
        k, v = (parallel.constrain(a, _HEADS if context is None else _TEXT_HEADS) for a in (k, v))
        if rope is not None:
            q, k = layers.apply_rope(q, *rope), layers.apply_rope(k, *rope)
        q, k, v = (checkpoint_name(a, nm) for a, nm in zip((q, k, v), _SAVED_NAMES))
        out = attention(q, k, v, kv_mask=kv_mask, implementation=self.impl)
        out = checkpoint_name(parallel.constrain(out, _HEADS), "attention_out")
        return checkpoint_name(self.to_out(out.reshape(b, n, d)), "attn_proj")


class DiTBlock(nnx.Module):
    """Wan block: modulated self-attn (RoPE) -> cross-attn to text -> modulated FFN."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        d, dt = cfg.dim, jnp.dtype(cfg.dtype)
        self.eps, self.dtype = cfg.eps, dt
        self.attn1 = Attention(cfg, rngs=rngs)
        self.attn2 = Attention(cfg, rngs=rngs, implementation=cfg.cross_attention)
        self.norm2 = layers.LayerNorm(d, eps=cfg.eps, affine=True) if cfg.cross_attn_norm else None
        self.ffn = layers.MLP(
            d, cfg.ffn_dim, d, act=layers.gelu_tanh, dtype=dt, rngs=rngs, zero_init_out=True
        )
        table = jax.random.normal(rngs.params(), (1, 6, d)) / math.sqrt(d)
        self.scale_shift_table = nnx.Param(table, **{layers.LOGICAL: (None, None, "embed")})

    def __call__(
        self,
        h: Array,
        context: Array,
        context_mask: Array | None,
        mod: Array,
        rope: tuple[Array, Array],
    ) -> Array:
        """h [B, N, D] fp32, context [B, L, D], mod [B, T', 6, D] fp32 -> h [B, N, D] fp32."""
        nf = mod.shape[1]
        m = mod + self.scale_shift_table[...][None]
        shift, scale, g, c_shift, c_scale, c_g = (m[:, :, i] for i in range(6))
        y = layers.modulate(layers.layer_norm(h, self.eps), shift, scale, nf)
        h = h + layers.gate(self.attn1(y.astype(self.dtype), rope=rope), g, nf)
        y = h if self.norm2 is None else self.norm2(h)
        y = self.attn2(y.astype(self.dtype), context, kv_mask=context_mask)
        h = h + y.astype(jnp.float32)
        y = layers.modulate(layers.layer_norm(h, self.eps), c_shift, c_scale, nf)
        y = checkpoint_name(self.ffn(y.astype(self.dtype)), "ffn_out")
        return h + layers.gate(y, c_g, nf)


def _stacked_blocks(cfg: DiTConfig, rngs: nnx.Rngs) -> DiTBlock:
    """One DiTBlock whose params carry a leading [num_layers] axis (logical axis 'layers')."""

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(r: nnx.Rngs) -> DiTBlock:
        return DiTBlock(cfg, rngs=r)

    blocks = make(rngs)
    for _, var in nnx.iter_graph(blocks):
        if isinstance(var, nnx.Variable) and layers.LOGICAL in var.get_metadata():
            var.set_metadata(layers.LOGICAL, ("layers", *var.get_metadata()[layers.LOGICAL]))
    return blocks


class DiT(nnx.Module):
    """Text-conditioned spacetime-patch diffusion transformer (Wan 2.1 T2V layout)."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, f32 = cfg.dim, jnp.float32
        dt = jnp.dtype(cfg.dtype)
        patch_feat = math.prod(cfg.patch_size)
        # Conv3d with kernel = stride = patch is a linear map of each flattened patch.
        self.patch_embedding = layers.dense(
            cfg.in_channels * patch_feat, d, axes=(None, "embed"), dtype=dt, rngs=rngs
        )
        # Input dims of the embedders are 'embed' too, so FSDP splits them (the text
        # embedder's first kernel is 4096 x D: 84 MB fp32 at 14B, x3 with Adam's moments).
        self.text_embedder = layers.MLP(
            cfg.text_dim, d, d, act=layers.gelu_tanh, dtype=dt, rngs=rngs,
            axes=("embed", "mlp", "embed"),
        )  # fmt: skip
        # Time path in fp32 (tiny: [B, T', D]) because it drives all modulation.
        self.time_embedder = layers.MLP(
            cfg.freq_dim, d, d, act=jax.nn.silu, dtype=f32, rngs=rngs,
            axes=("embed", "mlp", "embed"),
        )  # fmt: skip
        self.time_proj = layers.dense(d, 6 * d, axes=("embed", "mlp"), dtype=f32, rngs=rngs)
        if cfg.scan_layers:
            self.blocks = _stacked_blocks(cfg, rngs)
        else:
            self.blocks = nnx.List([DiTBlock(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        table = jax.random.normal(rngs.params(), (1, 2, d)) / math.sqrt(d)
        self.scale_shift_table = nnx.Param(table, **{layers.LOGICAL: (None, None, "embed")})
        # Zero-initialised: an untrained model predicts exactly 0.
        self.proj_out = layers.dense(
            d, cfg.out_channels * patch_feat, axes=("embed", None), dtype=dt, rngs=rngs,
            zero_init=True,
        )  # fmt: skip
        # Last, so that every other parameter initialises as without it; zero: starts as off.
        self.text_pool = (
            layers.dense(cfg.text_dim, d, axes=("embed", "mlp"), dtype=f32, rngs=rngs,
                         zero_init=True)
            if cfg.pooled_text else None
        )  # fmt: skip

    def __call__(
        self, x: Array, t: Array, context: Array, context_mask: Array | None = None
    ) -> Array:
        """Predict the denoising target.

        x: [B, T, H, W, in_channels] latents; t: [B, T] per-latent-frame timesteps in [0, 1]
        (or [B], the same for every frame); context: [B, L, text_dim] text embeddings;
        context_mask: [B, L] bool, False for padded text tokens (None: all valid).
        With patch_size t > 1 a temporal patch uses the timestep of its first frame.
        Returns [B, T, H, W, out_channels] float32.
        """
        cfg = self.cfg
        grid = self._check_inputs(x, t, context, context_mask)
        dt, nf = jnp.dtype(cfg.dtype), grid[0]
        b = x.shape[0]
        h = self.patch_embedding(layers.patchify(x, cfg.patch_size).astype(dt))
        h = parallel.constrain(h.astype(jnp.float32), _TOKENS)  # the residual stream stays fp32
        t = jnp.broadcast_to(t[:, None], (b, x.shape[1])) if t.ndim == 1 else t
        t_tok = t[:, :: cfg.patch_size[0]].astype(jnp.float32) * 1000.0  # Wan's 0..1000 scale
        temb = self.time_embedder(layers.timestep_features(t_tok, cfg.freq_dim))  # [B, T', D]
        if self.text_pool is not None:
            mask = jnp.ones(context.shape[:2], bool) if context_mask is None else context_mask
            pooled = layers.mean_pool(context, mask, normalize=False)  # [B, text_dim] fp32
            temb = temb + self.text_pool(pooled)[:, None, :]
        mod = self.time_proj(jax.nn.silu(temb)).reshape(b, nf, 6, cfg.dim)
        ctx = parallel.constrain(self.text_embedder(context.astype(dt)), _TEXT)
        rope = layers.rope_3d(grid, cfg.head_dim, cfg.rope_theta)
        h = self._run_blocks(h, ctx, context_mask, mod, rope)
        # Wan modulates the output with temb itself, not with the 6·D projection.
        ss = self.scale_shift_table[...][None] + temb[:, :, None, :]  # [B, T', 2, D]
        y = layers.modulate(layers.layer_norm(h, cfg.eps), ss[:, :, 0], ss[:, :, 1], nf)
        out = self.proj_out(y.astype(dt)).astype(jnp.float32)
        out = parallel.constrain(out, _TOKENS)
        return layers.unpatchify(out, grid, cfg.patch_size)

    def _run_blocks(
        self, h: Array, ctx: Array, ctx_mask: Array | None, mod: Array, rope: tuple[Array, Array]
    ) -> Array:
        """Apply the blocks functionally (split/merge) so scan and remat see pure functions."""
        cfg = self.cfg
        policy = remat_policy(cfg.remat)

        def block_fn(graphdef: nnx.GraphDef) -> Callable:
            def apply(h, state, ctx, ctx_mask, mod, rope):
                # Block boundaries pin the residual stream's layout (batch x sequence shards).
                block = nnx.merge(graphdef, state)
                h = block(parallel.constrain(h, _TOKENS), ctx, ctx_mask, mod, rope)
                return parallel.constrain(h, _TOKENS)

            if policy is None:
                return apply
            # Inside scan, CSE across iterations cannot undo the remat, so skip its barrier.
            return jax.checkpoint(apply, policy=policy, prevent_cse=not cfg.scan_layers)

        if cfg.scan_layers:
            graphdef, state = nnx.split(self.blocks)
            apply = block_fn(graphdef)

            def body(h, layer_state):
                return apply(h, layer_state, ctx, ctx_mask, mod, rope), None

            h, _ = jax.lax.scan(body, h, state)
            return h
        for block in self.blocks:
            graphdef, state = nnx.split(block)
            h = block_fn(graphdef)(h, state, ctx, ctx_mask, mod, rope)
        return h

    def _check_inputs(
        self, x: Array, t: Array, context: Array, context_mask: Array | None
    ) -> tuple[int, int, int]:
        """Validate static shapes; return the token grid (T', H', W')."""
        cfg = self.cfg
        if x.ndim != 5 or x.shape[-1] != cfg.in_channels:
            raise ValueError(
                f"x has shape {x.shape}; expected [B, T, H, W, {cfg.in_channels}] latents."
            )
        b, nt, nh, nw, _ = x.shape
        if any(n % p for n, p in zip((nt, nh, nw), cfg.patch_size, strict=True)):
            raise ValueError(
                f"latent grid (T, H, W) = {(nt, nh, nw)} is not divisible by patch_size "
                f"{cfg.patch_size}."
            )
        if t.shape not in ((b,), (b, nt)):
            raise ValueError(f"t has shape {t.shape}; expected [B, T] = {(b, nt)} or [B] = ({b},).")
        if context.ndim != 3 or context.shape[0] != b or context.shape[-1] != cfg.text_dim:
            raise ValueError(
                f"context has shape {context.shape}; expected [B, L, {cfg.text_dim}] with B = {b}."
            )
        if context_mask is not None and context_mask.shape != context.shape[:2]:
            raise ValueError(
                f"context_mask has shape {context_mask.shape}; expected [B, L] = "
                f"{context.shape[:2]}."
            )
        pt, ph, pw = cfg.patch_size
        return nt // pt, nh // ph, nw // pw


def param_count(model: nnx.Module) -> int:
    """Number of scalar parameters (works on `nnx.eval_shape` abstract models too)."""
    return sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))

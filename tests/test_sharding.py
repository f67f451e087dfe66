"""Sharded DiT train steps on 8 fake CPU devices equal the single-device step; golden param
shardings; Ulysses attention; multi-host initialisation from the environment.

The 8-device runs happen in one subprocess (XLA's device count is fixed when JAX starts) that
prints a JSON report; the tests below read it.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType
from jax.sharding import PartitionSpec as P

from sora_jax import parallel
from sora_jax.models.dit import DiT, DiTConfig

# Micro DiT: 4 heads so Ulysses can split them over context=4 (or tensor=2 x context=2).
MICRO = dict(
    in_channels=4, out_channels=4, dim=32, ffn_dim=64, num_heads=4, num_layers=2,
    text_dim=16, freq_dim=16, dtype="float32",
)  # fmt: skip

WORKER = textwrap.dedent(
    """
    import functools, json, os, sys
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, ml_collections, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    from sora_jax import parallel
    from sora_jax.models.attention import attention, resolve_implementation
    from sora_jax.train import dit_task, loop, state as state_lib

    FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    MICRO = json.loads(sys.argv[1])
    B, T, H, W, L = 8, 3, 4, 4, 5  # 12 tokens per sample

    def config(attention, **dit):
        return ml_collections.ConfigDict(dict(
            seed=0,
            dit=dict(MICRO, attention=attention, **dit),
            dit_train=dict(steps=10, lr=1e-2, lr_warmup_steps=1, weight_decay=0.01,
                           grad_clip_norm=1.0, b1=0.9, b2=0.99, ema_decay=0.9,
                           buckets=(("9x32x32", B, 1.0),)),
            flow=dict(logit_mean=0.0, logit_std=1.0, shift=2.0,
                      cond_mixture={"t2v": 0.5, "i2v_head": 0.5}),
        ))

    rng = np.random.default_rng(0)
    text_len = np.array([5, 3, 1, 0, 2, 5, 4, 1])[:, None]
    BATCH = {
        "latents": rng.normal(size=(B, T, H, W, MICRO["in_channels"])).astype(np.float32),
        "text": rng.normal(size=(B, L, MICRO["text_dim"])).astype(np.float32),
        "text_mask": np.arange(L)[None, :] < text_len,
    }

    def run(mesh_sizes, attention, devices, **dit):
        mesh = parallel.make_mesh(mesh_sizes, devices=jax.devices()[:devices])
        cfg = config(attention, **dit)
        task = dit_task.DiTTask.for_latents(cfg)
        graphdef, state, rest, tx, _ = state_lib.init_state(task, cfg.dit_train, mesh, seed=0)
        # Random weights everywhere (zero-initialised outputs would zero most gradients).
        leaves, treedef = jax.tree.flatten(state.params)
        r = np.random.default_rng(1)
        leaves = [jax.device_put((0.3 * r.normal(size=x.shape)).astype(np.float32), x.sharding)
                  for x in leaves]
        state = state.replace(params=jax.tree.unflatten(treedef, leaves))
        step = jax.jit(state_lib.build_step(task, graphdef, rest, tx, 0.9), compiler_options=FAST)
        losses = []
        with jax.set_mesh(mesh):
            batch = parallel.host_to_global(BATCH, mesh)
            state, metrics, _ = step(state, task.frozen(), batch)
        out = {"loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"]),
               "params_sharded": sum(not x.sharding.is_fully_replicated
                                     for x in jax.tree.leaves(state.params))}
        arrays = {"params": [np.asarray(x) for x in jax.tree.leaves(state.params)],
                  "opt": [np.asarray(x) for x in jax.tree.leaves(state.opt_state)
                          if np.ndim(x) > 0]}
        return out, arrays

    def rel(a, b):
        return max(float(np.abs(x.astype(np.float64) - y).max() / (np.abs(y).max() + 1e-30))
                   for x, y in zip(a, b))

    report = {}
    ref, ref_arrays = run({"fsdp": 1}, "xla", 1)
    report["single"] = ref
    cases = {
        "fsdp8": ({"fsdp": 8}, "xla"),
        "fsdp2_tensor2_context2": ({"fsdp": 2, "tensor": 2, "context": 2}, "xla"),
        "ulysses_context4": ({"fsdp": 2, "context": 4}, "ulysses:xla"),
        # q/k/v kernels concatenated at call time across their tensor-parallel shards
        "fsdp2_tensor2_context2_fused": ({"fsdp": 2, "tensor": 2, "context": 2}, "xla",
                                         {"fused_projections": True}),
    }
    for name, (sizes, attn, *dit) in cases.items():
        out, arrays = run(sizes, attn, 8, **(dit[0] if dit else {}))
        out["loss_rel"] = abs(out["loss"] - ref["loss"]) / abs(ref["loss"])
        out["grad_norm_rel"] = abs(out["grad_norm"] - ref["grad_norm"]) / ref["grad_norm"]
        out["params_rel"] = rel(arrays["params"], ref_arrays["params"])
        out["opt_rel"] = rel(arrays["opt"], ref_arrays["opt"])
        report[name] = out

    # Attention alone: Ulysses self- and cross-attention with padded keys vs xla.
    ks = jax.random.split(jax.random.key(0), 5)
    q, k, v = (jax.random.normal(kk, (2, 16, 4, 8)) for kk in ks[:3])
    kt, vt = (jax.random.normal(kk, (2, 6, 4, 8)) for kk in ks[3:])
    self_mask = jnp.arange(16)[None] < jnp.array([[11], [16]])
    text_mask = jnp.arange(6)[None] < jnp.array([[3], [0]])
    want_self = attention(q, k, v, kv_mask=self_mask, implementation="xla")
    want_cross = attention(q, kt, vt, kv_mask=text_mask, implementation="xla")
    mesh = parallel.make_mesh({"fsdp": 2, "context": 4})
    with jax.set_mesh(mesh):
        f = jax.jit(lambda q, k, v, m: attention(q, k, v, kv_mask=m, implementation="ulysses"))
        report["ulysses_self_err"] = float(jnp.abs(f(q, k, v, self_mask) - want_self).max())
        report["ulysses_cross_err"] = float(jnp.abs(f(q, kt, vt, text_mask) - want_cross).max())
        report["all_to_all_self"] = f.lower(q, k, v, self_mask).as_text().count("all_to_all")
        report["all_to_all_cross"] = f.lower(q, kt, vt, text_mask).as_text().count("all_to_all")
        report["auto_fp32"] = resolve_implementation("auto", jnp.float32)
        g = jax.jit(functools.partial(attention, implementation="ulysses:splash"))
        got = g(q, k, v, kv_mask=self_mask)
        report["ulysses_splash_err"] = float(jnp.abs(got - want_self).max())
    mesh = parallel.make_mesh({"fsdp": 2, "tensor": 2, "context": 2})
    with jax.set_mesh(mesh):  # splash alone: shard_map over batch and heads
        h = jax.jit(lambda q, k, v, m: attention(q, k, v, kv_mask=m, implementation="splash"))
        report["splash_mesh_err"] = float(jnp.abs(h(q, kt, vt, text_mask) - want_cross).max())
    print("REPORT " + json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def report() -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps(MICRO)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("REPORT ") :])


SHARDED = ["fsdp8", "fsdp2_tensor2_context2", "ulysses_context4", "fsdp2_tensor2_context2_fused"]


@pytest.mark.parametrize("case", SHARDED)
def test_sharded_step_matches_single_device(report, case):
    """One AdamW step of the DiT task (conditioning mixture, padded text) on 8 fake devices:
    loss, gradient norm, updated parameters and both Adam moments within 1e-5 relative."""
    got = report[case]
    assert got["loss_rel"] <= 1e-5 and got["grad_norm_rel"] <= 1e-5, got
    assert got["params_rel"] <= 1e-5 and got["opt_rel"] <= 1e-5, got
    assert got["params_sharded"] > 0  # the step really ran sharded


def test_ulysses_exchanges_heads_all_to_all_and_auto_picks_it(report):
    """Self-attention: q, k, v in and the output back (4 all-to-alls); cross-attention to
    unsharded text needs none. 'auto' under a context axis > 1 is Ulysses."""
    assert report["all_to_all_self"] == 4 and report["all_to_all_cross"] == 0
    assert report["auto_fp32"] == "ulysses:xla"


def test_ulysses_attention_matches_xla_with_padded_keys(report):
    assert report["ulysses_self_err"] <= 1e-5 and report["ulysses_cross_err"] <= 1e-5


def test_splash_on_a_mesh_matches_xla(report):
    """Splash (interpret) inside shard_map: alone on data x tensor shards, and as Ulysses'
    inner kernel on context=4."""
    assert report["splash_mesh_err"] <= 1e-5 and report["ulysses_splash_err"] <= 1e-5


# Golden table: every parameter of the micro DiT on fsdp=8. FSDP splits the model dim
# ('embed'); 'tensor' (size 1 here) would split heads and FFN/MLP hidden units; the leading
# axis of the stacked blocks ('layers') is never split.
_QKV, _OUT = P(None, "fsdp", "tensor"), P(None, "tensor", "fsdp")
GOLDEN_FSDP8 = {
    **{f"blocks.{a}.{p}.kernel": _QKV for a in ("attn1", "attn2")
       for p in ("to_q", "to_k", "to_v")},
    **{f"blocks.{a}.{p}.bias": P(None, "tensor") for a in ("attn1", "attn2")
       for p in ("to_q", "to_k", "to_v")},
    **{f"blocks.{a}.to_out.kernel": _OUT for a in ("attn1", "attn2")},
    **{f"blocks.{a}.to_out.bias": P(None, "fsdp") for a in ("attn1", "attn2")},
    **{f"blocks.{a}.{n}.scale": P(None, None) for a in ("attn1", "attn2")
       for n in ("norm_q", "norm_k")},
    "blocks.ffn.linear_1.kernel": _QKV,
    "blocks.ffn.linear_1.bias": P(None, "tensor"),
    "blocks.ffn.linear_2.kernel": _OUT,
    "blocks.ffn.linear_2.bias": P(None, "fsdp"),
    "blocks.norm2.scale": P(None, None),
    "blocks.norm2.bias": P(None, None),
    "blocks.scale_shift_table": P(None, None, None, "fsdp"),
    "patch_embedding.kernel": P(None, "fsdp"),
    "patch_embedding.bias": P("fsdp"),
    "proj_out.kernel": P("fsdp", None),
    "proj_out.bias": P(None),
    "scale_shift_table": P(None, None, "fsdp"),
    **{f"{m}.linear_1.kernel": P("fsdp", "tensor") for m in ("text_embedder", "time_embedder")},
    **{f"{m}.linear_1.bias": P("tensor") for m in ("text_embedder", "time_embedder")},
    **{f"{m}.linear_2.kernel": P("tensor", "fsdp") for m in ("text_embedder", "time_embedder")},
    **{f"{m}.linear_2.bias": P("fsdp") for m in ("text_embedder", "time_embedder")},
    "time_proj.kernel": P("fsdp", "tensor"),
    "time_proj.bias": P("tensor"),
}  # fmt: skip


def _specs(mesh_sizes: dict, **overrides) -> dict[str, P]:
    shape = parallel.mesh_shape(mesh_sizes, 8)
    mesh = AbstractMesh(shape, parallel.MESH_AXES, axis_types=(AxisType.Auto,) * 4)
    cfg = DiTConfig(**{**MICRO, **overrides})
    model = nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0)))
    shardings = parallel.param_shardings(nnx.state(model, nnx.Param), mesh)
    out = {}
    for path, s in jax.tree_util.tree_flatten_with_path(shardings)[0]:
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        out[".".join(k for k in keys if k != "value")] = s.spec
    return out


def test_golden_param_specs_on_fsdp8():
    assert _specs({"fsdp": 8}) == GOLDEN_FSDP8


def test_dims_that_do_not_divide_stay_replicated():
    """dim 20 on fsdp=8: the model-dim axis cannot be split, so FSDP leaves it whole; the
    tensor axis still splits the 48 FFN units."""
    specs = _specs({"fsdp": 8}, dim=20, ffn_dim=48, num_heads=2)
    assert specs["blocks.attn1.to_q.kernel"] == P(None, None, "tensor")
    assert specs["patch_embedding.kernel"] == P(None, None)
    specs = _specs({"fsdp": 2, "tensor": 4}, dim=20, ffn_dim=48, num_heads=2)
    assert specs["blocks.ffn.linear_1.kernel"] == P(None, "fsdp", "tensor")


def test_initialize_distributed_reads_the_environment(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                "MEGASCALE_NUM_SLICES", "SORA_DISTRIBUTED"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    assert parallel.maybe_initialize_distributed() is False and calls == []
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "2")
    assert parallel.maybe_initialize_distributed() is True
    assert calls == [("10.0.0.1:1234", 4, 2)]
    assert parallel.maybe_initialize_distributed(num_processes=1) is False  # flag wins
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
    with pytest.raises(ValueError, match="coordinator_address"):
        parallel.maybe_initialize_distributed()
    for var in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "host-0,host-1")
    assert parallel.maybe_initialize_distributed() is True and calls[-1] == ()

"""Compile the DiT train step ahead of time for a mesh you do not have, and print per-device
memory, so you know before launching whether a config fits.

    python tools/aot_compile.py --config=configs/xl.py --mesh=fsdp=64
    python tools/aot_compile.py --config=configs/l.py:res=480x832 --mesh=data=2,fsdp=4 \\
        --batch=8 --set dit.remat=save_qkv_out
    python tools/aot_compile.py --config=configs/xl.py --mesh=fsdp=256 --topology=v5p:8x8x4

Nothing is allocated: the train state comes from `jax.eval_shape`, the step is lowered with
`jax.ShapeDtypeStruct`s that carry their shardings, and `compiled.memory_analysis()` reports
the per-device program. Devices are fake CPU devices (`--xla_force_host_platform_device_count`,
set before JAX is imported) unless `--topology` names a TPU slice, which needs `libtpu`
(`jax.experimental.topologies`). The batch is the latent-cache form of the DiT stage (latents
+ text embeddings), so the frozen VAE and text encoder are not part of the step.

CPU caveat: on fake CPU devices `attention='auto'` resolves to the einsum kernel, which
materialises [B, K, N, N] logits, so `temp` there overstates what splash (TPU) or cuDNN (GPU)
need; parameters, optimizer state and their sharding are exact.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import math
import os
import sys
import time

GIB = 1024**3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="configs/xl.py[:args]")
    p.add_argument("--mesh", default="fsdp=-1", help="axis=size,... over data/fsdp/context/tensor")
    p.add_argument("--devices", type=int, default=0, help="device count when --mesh has a -1")
    p.add_argument("--batch", type=int, default=0, help="global batch (default: first bucket's)")
    p.add_argument("--topology", default="", help="TPU topology, e.g. v5p:4x4x4 (needs libtpu)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. dit.num_layers=4 (repeatable)")  # fmt: skip
    return p.parse_args(argv)


def parse_mesh(spec: str) -> dict[str, int]:
    out = {}
    for item in filter(None, spec.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"mesh entry {item!r} must read axis=size, e.g. fsdp=64.")
        out[key.strip()] = int(value)
    return out


def device_count(mesh: dict[str, int], devices: int) -> int:
    fixed = math.prod(v for v in mesh.values() if v != -1)
    if -1 in mesh.values():
        if devices <= 0:
            raise ValueError(f"mesh {mesh} has a -1 axis; give --devices=N.")
        return devices
    return devices or fixed


def load_config(spec: str, overrides: list[str]):
    """`path.py[:arg]` -> its get_config(arg), with `a.b=value` overrides applied."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("aot_config", path)
    if module_spec is None or not os.path.exists(path):
        raise ValueError(f"config file {path!r} does not exist.")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = apply_overrides(module.get_config(arg or None), overrides)
    from sora_jax import config_check

    config_check.check(config)  # a bad setting fails here, in one sentence
    return config


def apply_overrides(config, overrides: list[str]):
    """Sets each `a.b=value` of `overrides` on `config` (value a Python literal, else the string
    itself) and returns it."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must read KEY=VALUE, e.g. dit.num_layers=4.")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def latent_batch_shapes(config, batch: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shapes of a latent-cache batch for the config's first DiT bucket 'FxHxW'."""
    spec = config.dit_train.buckets[0]
    frames, height, width = (int(v) for v in str(spec[0]).split("x"))
    vae = config.vae
    t_down = 2 ** sum(bool(x) for x in vae.temporal_downsample)
    s_down = 2 ** (len(vae.channel_mults) - 1)
    grid = (1 + (frames - 1) // t_down, height // s_down, width // s_down)
    b = batch or int(spec[1])
    text = (b, int(config.text.max_length), int(config.dit.text_dim))
    return {
        "latents": ((b, *grid, int(vae.z_channels)), "float32"),
        "text": (text, "float32"),
        "text_mask": (text[:2], "bool"),
    }


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a pytree of sharded ShapeDtypeStructs (largest shard)."""
    import jax

    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shard) * leaf.dtype.itemsize
    return total


def compile_step(config, mesh, batch: int):
    """Lower + compile the DiT train step on `mesh` from abstract inputs; returns a report."""
    import jax

    from sora_jax import parallel
    from sora_jax.train import dit_task, precompile
    from sora_jax.train import state as state_lib

    task = dit_task.DiTTask.for_latents(config)
    cfg = config.dit_train
    graphdef, abstract, abstract_rest, tx, shardings, _ = state_lib.abstract_train_state(
        task, cfg, mesh, config.seed
    )

    state = precompile.sharded_abstract(abstract, shardings[0])
    rest = precompile.sharded_abstract(abstract_rest, shardings[1])
    shapes = latent_batch_shapes(config, batch)
    b, shards = shapes["latents"][0][0], mesh.shape["data"] * mesh.shape["fsdp"]
    if b % shards:
        raise ValueError(
            f"global batch {b} does not split over data x fsdp = {shards} devices; "
            f"pass --batch as a multiple of {shards}."
        )
    batch_in = precompile.abstract_batch(
        {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in shapes.items()}, mesh
    )

    def step(state, rest, batch):
        fn = state_lib.build_step(task, graphdef, rest, tx, cfg.get("ema_decay", 0.999))
        return fn(state, task.frozen(), batch)

    replicated = parallel.named_sharding(mesh, None)
    jitted = jax.jit(
        step, donate_argnums=(0,), out_shardings=(shardings[0], replicated, replicated)
    )
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        lowered = jitted.lower(state, rest, batch_in)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    mem = compiled.memory_analysis()
    groups = {
        "params": state.params,
        "optimizer": state.opt_state,
        "ema": state.ema,
        "batch": batch_in,
    }
    report = {f"{k}_gib": per_device_bytes(v) / GIB for k, v in groups.items()}
    report["params_plus_optimizer_gib"] = report["params_gib"] + report["optimizer_gib"]
    report["train_state_gib"] = report["params_plus_optimizer_gib"] + report["ema_gib"]
    for name in ("argument", "output", "temp", "alias", "generated_code"):
        value = getattr(mem, f"{name}_size_in_bytes", None) if mem is not None else None
        report[f"xla_{name}_gib"] = None if value is None else value / GIB
    if mem is not None:
        # Donated state aliases its output buffers: live = arguments + temp + outputs not aliased.
        report["xla_peak_estimate_gib"] = (
            mem.argument_size_in_bytes + mem.temp_size_in_bytes
            + mem.output_size_in_bytes - mem.alias_size_in_bytes
        ) / GIB  # fmt: skip
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))
    report.update(
        params=n_params,
        batch_shapes={k: v[0] for k, v in shapes.items()},
        lower_s=t1 - t0,
        compile_s=t2 - t1,
        devices=len(mesh.devices.flat),
        mesh=dict(zip(mesh.axis_names, mesh.devices.shape)),
        platform=mesh.devices.flat[0].platform,
    )
    return report


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    mesh_sizes = parse_mesh(args.mesh)
    n = device_count(mesh_sizes, args.devices)
    if not args.topology:
        # Must happen before JAX initialises its backends.
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}"
        )
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    from sora_jax import parallel

    if args.topology:
        from jax.experimental import topologies

        devices = topologies.get_topology_desc(args.topology, platform="tpu").devices
    else:
        devices = jax.devices()[:n]
    config = load_config(args.config, args.set)
    mesh = parallel.make_mesh(mesh_sizes, devices=devices)
    report = compile_step(config, mesh, args.batch)
    _print(report, args)
    return report


def _print(r: dict, args) -> None:
    print(f"config {args.config} {' '.join(args.set)}")
    print(f"mesh {r['mesh']} on {r['devices']} {r['platform']} devices; "
          f"{r['params'] / 1e9:.3f}B parameters; batch {r['batch_shapes']}")  # fmt: skip
    print(f"lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s")
    print(f"per device{'GiB':>24}{'MiB':>12}")
    rows = [
        (k, r[f"{k}_gib"])
        for k in ("params", "optimizer", "params_plus_optimizer", "ema", "train_state", "batch")
    ]
    rows += [
        (f"xla {k}", r.get(f"xla_{k}_gib"))
        for k in ("argument", "output", "alias", "temp", "generated_code", "peak_estimate")
    ]
    for name, value in rows:
        shown = "n/a" if value is None else f"{value:10.3f}  {value * 1024:10.1f}"
        print(f"  {name:<24}{shown}")  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()

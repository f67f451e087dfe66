"""Device mesh, logical axis rules and sharding helpers.

One vocabulary of logical axis names is used across the code base (after MaxText):

  parameters:   embed, mlp, heads, kv, layers, vocab, conv_in, conv_out
  activations:  activation_batch, activation_length, activation_embed, activation_heads

`DEFAULT_RULES` maps each name to mesh axes ('data', 'fsdp', 'context', 'tensor'); a name that is
not in the table, or is mapped to None, is replicated. FSDP is the default: parameters are split
along their `embed` axis over 'fsdp', activations along the batch over ('data', 'fsdp').
Tensor parallelism splits heads / MLP units over 'tensor'; context parallelism splits the
token sequence over 'context' (Ulysses attention, sora_jax.models.attention).
`maybe_initialize_distributed()` joins a multi-host run from flags or the environment.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "context", "tensor")

# logical name -> mesh axis (or tuple of axes). One table; configs may override entries.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", "context"),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("layers", None),
    ("vocab", "tensor"),
    ("conv_in", None),
    ("conv_out", "fsdp"),
)


# Environment variables that mean "this process is one of several" when no coordinator is given:
# jax.distributed.initialize() then detects the cluster itself (SLURM, Open MPI, TPU pods, GKE).
_CLUSTER_ENV = (
    ("SLURM_NTASKS", "SLURM"),
    ("OMPI_COMM_WORLD_SIZE", "Open MPI"),
    ("MEGASCALE_NUM_SLICES", "TPU multislice"),
)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer.") from None


def maybe_initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Calls `jax.distributed.initialize` once when this is a multi-host run; returns whether
    the run is (now) distributed. Must run before anything touches a JAX backend.

    Sources, first found wins: the arguments (e.g. from flags); the environment variables
    `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`; otherwise, on a
    multi-host TPU slice (`TPU_WORKER_HOSTNAMES` lists several hosts), under SLURM or Open MPI
    with more than one task, or with `SORA_DISTRIBUTED=1`, JAX's own cluster detection. A
    single process (`num_processes` 1, or none of the above) is left alone.
    """
    if jax.distributed.is_initialized():
        return True
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    n = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    pid = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    if n is not None and n < 1:
        raise ValueError(f"num_processes={n} must be a positive number of processes.")
    if n == 1:
        return False
    if address is not None or n is not None:
        if address is None or n is None or pid is None:
            raise ValueError(
                f"a multi-host run needs coordinator_address, num_processes and process_id; "
                f"got {address!r}, {n!r}, {pid!r}."
            )
        logging.info("jax.distributed: process %d of %d, coordinator %s", pid, n, address)
        _initialize(address, n, pid)
        return True
    hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    cluster = "TPU slice" if len(hosts) > 1 else None
    for var, name in _CLUSTER_ENV:
        if cluster is None and (_env_int(var) or 1) > 1:
            cluster = name
    if cluster is None and os.environ.get("SORA_DISTRIBUTED", "") in ("1", "true", "auto"):
        cluster = "auto-detected cluster"
    if cluster is None:
        return False
    logging.info("jax.distributed: initialising from the %s environment", cluster)
    _initialize()
    return True


def _initialize(*args) -> None:
    jax.distributed.initialize(*args)
    _no_cache_for_cpu_collectives()


def _no_cache_for_cpu_collectives() -> None:
    """Turns JAX's persistent compilation cache off in a multi-process CPU run.

    Executables of CPU multi-process (gloo) programs loaded back from the cache fail in their
    collectives (seen with jax 0.10.2: a two-process `process_allgather` raised in one process
    and left the other waiting), so such runs (laptops, tests) compile afresh. GPU and TPU runs
    keep the cache.
    """
    if (
        jax.process_count() > 1
        and jax.default_backend() == "cpu"
        and jax.config.jax_enable_compilation_cache
        and jax.config.jax_compilation_cache_dir
    ):
        logging.warning("multi-process CPU run: the persistent compilation cache is off")
        jax.config.update("jax_enable_compilation_cache", False)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = 1
    fsdp: int = -1
    context: int = 1
    tensor: int = 1


def mesh_shape(cfg: MeshConfig | Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves the axis sizes; exactly one axis may be -1 and takes what the others leave."""
    sizes = dict(dataclasses.asdict(cfg)) if isinstance(cfg, MeshConfig) else dict(cfg)
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(
            f"mesh has unknown axes {sorted(unknown)}; expected a subset of {MESH_AXES}."
        )
    shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
    fills = [i for i, s in enumerate(shape) if s == -1]
    if len(fills) > 1:
        raise ValueError(f"mesh {sizes} has more than one axis set to -1; at most one may fill.")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh {sizes} has an axis size that is not positive or -1.")
    fixed = math.prod(s for s in shape if s != -1)
    if fills:
        if num_devices % fixed:
            raise ValueError(
                f"mesh {sizes}: {num_devices} devices do not divide by the fixed axes ({fixed})."
            )
        shape[fills[0]] = num_devices // fixed
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices but "
            f"{num_devices} are available."
        )
    return tuple(shape)


def make_mesh(cfg: MeshConfig | Mapping[str, int] | None = None, devices=None) -> Mesh:
    """A mesh over all (or the given) devices with axes ('data', 'fsdp', 'context', 'tensor')."""
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(cfg or MeshConfig(), len(devices))
    try:
        arr = jax.experimental.mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # non-TPU topologies or unusual counts: a plain reshape is fine.
        arr = np.asarray(devices).reshape(shape)
    mesh = Mesh(arr, MESH_AXES)
    logging.info("mesh: %s", dict(zip(MESH_AXES, shape)))
    return mesh


def logical_to_spec(
    names: Sequence[str | None] | None, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES
) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once."""
    if names is None:
        return PartitionSpec()
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name in names:
        axes = table.get(name) if name is not None else None
        if axes is None:
            out.append(None)
            continue
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
        axes_t = tuple(a for a in axes_t if a not in used)
        used.update(axes_t)
        out.append(axes_t[0] if len(axes_t) == 1 else (axes_t or None))
    return PartitionSpec(*out)


def fit_spec_to_shape(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes from dimensions they do not divide (e.g. a 3-channel conv on fsdp=8)."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is None:
            out.append(None)
            continue
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
        size = math.prod(mesh.shape[a] for a in axes_t)
        out.append(axes if dim % size == 0 else None)
    return PartitionSpec(*out)


def named_sharding(
    mesh: Mesh, names: Sequence[str | None] | None, shape: Sequence[int] | None = None, rules=None
) -> NamedSharding:
    spec = logical_to_spec(names, rules or DEFAULT_RULES)
    if shape is not None:
        spec = fit_spec_to_shape(spec, shape, mesh)
    return NamedSharding(mesh, spec)


def constrain(x: jax.Array, names: Sequence[str | None], rules=None) -> jax.Array:
    """`with_sharding_constraint` by logical names; a no-op outside a mesh context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    spec = fit_spec_to_shape(logical_to_spec(names, rules or DEFAULT_RULES), x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, spec)


def param_shardings(abstract_params: Any, mesh: Mesh, rules=None) -> Any:
    """Shardings for a pytree of (abstract) parameters.

    A leaf carries its logical names in `.logical_axes` metadata when it is an `nnx.Variable`
    (set by the model, e.g. `nnx.Param(x, logical_axes=("embed", "mlp"))`); leaves without
    names are replicated.
    """

    import flax.nnx as nnx

    def one(leaf):
        if not isinstance(leaf, nnx.Variable):
            return named_sharding(mesh, None)
        meta = leaf.get_metadata()
        # Ours first; flax's own annotation (`out_sharding`, formerly `sharding_names`) next.
        names = meta.get("logical_axes") or meta.get("out_sharding") or meta.get("sharding_names")
        if not isinstance(names, (tuple, list)):
            names = None
        # Same tree structure as the input: the Variable keeps its metadata, holds a sharding.
        return leaf.replace(named_sharding(mesh, names, leaf.get_value().shape, rules))

    return jax.tree.map(one, abstract_params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) axis over ('data', 'fsdp'), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def host_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global arrays sharded over the batch axes (multi-host safe)."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        sharding = batch_sharding(mesh, v.ndim) if v.ndim else NamedSharding(mesh, PartitionSpec())
        if jax.process_count() == 1:
            out[k] = jax.device_put(v, sharding)
        else:
            out[k] = jax.make_array_from_process_local_data(sharding, v)
    return out

"""Mesh construction and the logical-axis rules."""

import pytest
from jax.sharding import PartitionSpec as P

from sora_jax import parallel


def test_mesh_shape_fills_one_axis():
    assert parallel.mesh_shape({"data": 1, "fsdp": -1, "context": 2, "tensor": 2}, 8) == (
        1,
        2,
        2,
        2,
    )
    assert parallel.mesh_shape(parallel.MeshConfig(), 8) == (1, 8, 1, 1)


@pytest.mark.parametrize(
    "sizes",
    [{"data": -1, "fsdp": -1}, {"fsdp": 3}, {"fsdp": 0}, {"pipeline": 2}, {"data": 3, "fsdp": -1}],
)
def test_bad_mesh_fails_with_a_sentence(sizes):
    with pytest.raises(ValueError, match="mesh"):
        parallel.mesh_shape(sizes, 8)


def test_logical_rules_use_each_mesh_axis_once():
    assert parallel.logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
    assert parallel.logical_to_spec(("activation_batch", "activation_length", None)) == P(
        ("data", "fsdp"), "context", None
    )
    # 'fsdp' already used by the batch: the embed axis falls back to replicated.
    assert parallel.logical_to_spec(("activation_batch", "embed")) == P(("data", "fsdp"), None)

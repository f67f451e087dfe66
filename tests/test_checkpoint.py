"""Checkpoints: retention, integrity (partial / corrupt / incompatible), metadata, and restoring
onto a different mesh than the one that saved (8 fake CPU devices, in a subprocess)."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.train import checkpoint as ckpt_lib


def _state(seed: float = 0.0):
    return {
        "step": jnp.int32(seed),
        "params": {"w": jnp.arange(64 * 64, dtype=jnp.float32).reshape(64, 64) + seed},
    }


def _save(ck, steps, config=None):
    for s in steps:
        ck.save(s, _state(s), config or {"model": {"dim": 64}}, {"task": "t"})
    ck.wait()


def test_keeps_last_k_plus_every_m(tmp_path):
    ck = ckpt_lib.Checkpointer(str(tmp_path), max_to_keep=2, keep_every_steps=10)
    _save(ck, range(5, 35, 5))
    assert ck.all_steps() == [10, 20, 25, 30]
    ck.close()


def test_partial_checkpoints_are_never_picked(tmp_path):
    ck = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
    _save(ck, [5, 10])
    ck.close()
    # A save killed before Orbax's rename, and a step directory that was never finalised.
    os.makedirs(tmp_path / "15.orbax-checkpoint-tmp" / "state")
    os.makedirs(tmp_path / "20" / "state")
    ck = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
    assert ck.latest_step() == 10
    restored = ck.restore(ckpt_lib.abstract_like(_state()))
    assert restored.step == 10 and int(restored.state["step"]) == 10
    _save(ck, [25])
    assert not (tmp_path / "15.orbax-checkpoint-tmp").exists()  # cleaned up by the next run
    ck.close()


@pytest.mark.parametrize("victim", ["largest", "_METADATA"])
def test_truncated_newest_checkpoint_falls_back_with_warning(tmp_path, caplog, victim):
    ck = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
    _save(ck, [5, 10])
    state_dir = tmp_path / "10" / "state"
    if victim == "largest":  # the array data
        files = [os.path.join(d, f) for d, _, fs in os.walk(state_dir) for f in fs]
        path = max(files, key=os.path.getsize)
    else:  # the tree metadata
        path = str(state_dir / victim)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with caplog.at_level(logging.WARNING):
        restored = ck.restore(ckpt_lib.abstract_like(_state()))
    assert restored.step == 5
    np.testing.assert_array_equal(restored.state["params"]["w"], _state(5)["params"]["w"])
    assert any("checkpoint 10" in r.message and "unreadable" in r.message for r in caplog.records)
    ck.close()


def test_changed_model_shape_fails_naming_the_fields(tmp_path):
    ck = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
    saved = {"model": {"dim": 64, "dtype": "float32"}, "model_train": {"lr": 1.0}, "seed": 0}
    _save(ck, [5], saved)
    now = {"model": {"dim": 32, "dtype": "bfloat16"}, "model_train": {"lr": 2.0}, "seed": 1}
    abstract = ckpt_lib.abstract_like({"step": jnp.int32(0), "params": {"w": jnp.zeros((32, 32))}})
    with pytest.raises(ValueError) as err:
        ck.restore(abstract, config=now)
    assert str(err.value) == (
        f"checkpoint 5 in {tmp_path} does not fit the model of this config (model.dim is 64 in "
        "the checkpoint but 32 now, model.dtype is 'float32' in the checkpoint but 'bfloat16' "
        "now); restore those values or train in a new --workdir."
    )
    # Fields that do not change shapes may change on resume.
    assert ck.restore(ckpt_lib.abstract_like(_state()), config=now).step == 5
    ck.close()


def test_metadata_records_versions_mesh_data_position_and_buckets(tmp_path):
    import jax

    from sora_jax import parallel

    mesh = parallel.make_mesh()
    buckets = (("9x32x32", 2, 1.0),)
    ck = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
    ck.save(7, _state(), {"a": 1}, ckpt_lib.run_metadata(mesh, buckets, task="dit"))
    meta = ck.read_meta()
    assert meta["step"] == meta["data_position"] == 7 and meta["task"] == "dit"
    assert meta["versions"]["jax"] == jax.__version__
    assert meta["mesh"] == {"data": 1, "fsdp": 1, "context": 1, "tensor": 1}
    assert meta["bucket_table"] == ckpt_lib.table_hash([["9x32x32", 2, 1.0]])
    assert meta["bucket_table"] != ckpt_lib.table_hash((("9x32x32", 4, 1.0),))
    assert ck.read_config() == {"a": 1}
    ck.close()


def test_config_diff_skips_train_and_data_sections():
    saved = {"dit": {"dim": 8, "patch_size": [1, 2, 2]}, "dit_train": {"lr": 1}, "world": {"a": 1}}
    now = {"dit": {"dim": 8, "patch_size": (1, 4, 4)}, "dit_train": {"lr": 2}, "world": {"a": 2}}
    assert ckpt_lib.config_diff(saved, now) == [("dit.patch_size", [1, 2, 2], [1, 4, 4])]
    assert ckpt_lib.config_diff(saved, now, ["world"]) == [("world.a", 1, 2)]


RESHARD = textwrap.dedent(
    """
    import json, sys
    import jax, ml_collections, numpy as np
    from sora_jax import parallel
    from sora_jax.models import dit as dit_lib
    from sora_jax.train import checkpoint as ckpt_lib, loop, state as state_lib

    class Task:
        name = "dit"
        def create_model(self, rngs):
            cfg = dit_lib.DiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_channels=4,
                                    out_channels=4, text_dim=16, dtype="float32")
            return dit_lib.DiT(cfg, rngs=rngs)

    task, cfg = Task(), ml_collections.ConfigDict(dict(steps=10, lr=1e-3))
    devices = jax.devices()
    _, state, _, _, _ = state_lib.init_state(task, cfg, parallel.make_mesh(dict(fsdp=8)), 0)
    ck = ckpt_lib.Checkpointer(sys.argv[1])
    ck.save(3, state, {}, {})
    ck.wait()
    saved = [np.asarray(x) for x in jax.tree.leaves(state)]
    out = {"fsdp8": sum(x.sharding.shard_shape(x.shape) != x.shape for x in jax.tree.leaves(state))}
    for name, n, axes in (("one", 1, dict(fsdp=1)), ("fsdp2_tensor2", 4, dict(fsdp=2, tensor=2))):
        mesh = parallel.make_mesh(axes, devices[:n])
        _, abstract, _, _, shardings, _ = state_lib.abstract_train_state(task, cfg, mesh, 0)
        restored = ck.restore(ckpt_lib.abstract_like(abstract, shardings[0])).state
        leaves = jax.tree.leaves(restored)
        want = jax.tree.leaves(shardings[0])
        out[name] = {
            "equal": all(np.array_equal(a, np.asarray(b)) for a, b in zip(saved, leaves)),
            "on_target": all(x.sharding == s for x, s in zip(leaves, want)),
            "devices": sorted({d.id for x in leaves for d in x.sharding.device_set}),
            "ways": sorted({x.size // x.addressable_shards[0].data.size for x in leaves}),
        }
    ck.close()
    print("RESULT" + json.dumps(out))
    """
)


def test_saved_on_fsdp8_restores_on_one_device_and_fsdp2_tensor2(tmp_path):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8",
    }
    proc = subprocess.run(
        [sys.executable, "-c", RESHARD, str(tmp_path / "ckpt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[0][len("RESULT") :])
    assert out["fsdp8"] > 10  # most parameters really were split 8 ways when saved
    assert out["one"] == {"equal": True, "on_target": True, "devices": [0], "ways": [1]}
    # fsdp x tensor: parameters replicated, split 2 ways (one axis) and 4 ways (both).
    assert out["fsdp2_tensor2"] == {
        "equal": True,
        "on_target": True,
        "devices": [0, 1, 2, 3],
        "ways": [1, 2, 4],
    }

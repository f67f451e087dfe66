"""tools/aot_compile.py: the DiT train step compiles ahead of time on 8 fake CPU devices from
abstract inputs, and its per-device memory report agrees with XLA's."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, "tools")
    import aot_compile
    report = aot_compile.main(sys.argv[1:])
    print("REPORT " + json.dumps(report))
    """
)


def _run(*argv: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, *argv],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("REPORT ") :]) | {"stdout": proc.stdout}


@pytest.fixture(scope="module")
def micro_fsdp8() -> dict:
    return _run("--config=configs/tiny.py:micro", "--mesh=fsdp=8", "--batch=8")


def test_aot_compiles_micro_dit_step_on_8_fake_devices(micro_fsdp8):
    r = micro_fsdp8
    assert r["devices"] == 8 and r["platform"] == "cpu"
    assert r["mesh"] == {"data": 1, "fsdp": 8, "context": 1, "tensor": 1}
    assert r["batch_shapes"]["latents"] == [8, 2, 4, 4, 8]  # 5x16x16 clips, 4x4x4 VAE
    assert r["xla_temp_gib"] > 0 and "per device" in r["stdout"]


def test_state_accounting_matches_xla_arguments(micro_fsdp8):
    """XLA's per-device argument bytes = sharded train state + batch shard (+ a few scalars:
    step, rng, skipped count)."""
    r = micro_fsdp8
    ours = (r["train_state_gib"] + r["batch_gib"]) * 1024**3
    assert 0 <= r["xla_argument_gib"] * 1024**3 - ours <= 64


def test_fsdp_splits_parameters_eight_ways(micro_fsdp8):
    """fp32 params on fsdp=8: per device close to 1/8 of the model (norm scales and a few
    small biases stay replicated); Adam's two moments are twice that."""
    r = micro_fsdp8
    full = r["params"] * 4 / 1024**3
    assert full / 8 <= r["params_gib"] <= 1.15 * full / 8
    assert r["optimizer_gib"] == pytest.approx(2 * r["params_gib"], rel=1e-3)


def test_bad_mesh_is_one_sentence():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import aot_compile

    with pytest.raises(ValueError, match="axis=size"):
        aot_compile.parse_mesh("fsdp64")
    with pytest.raises(ValueError, match="--devices"):
        aot_compile.device_count({"fsdp": -1}, 0)

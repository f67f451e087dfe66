"""tools/bench/world_vae.py: one row per BUCKET@BATCH, ratios against the first, bad rows fail."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "bench"))
import world_vae  # noqa: E402


@pytest.mark.slow  # two VAE train steps compiled: ~1 min of CPU
def test_rows_per_bucket_with_pixels_and_ratios(tmp_path, capsys):
    out = tmp_path / "world_vae.json"
    world_vae.main(["--tiny", f"--out={out}", "--buckets=9x32x32@4,9x64x64@1", "--steps=1"])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["bucket"], r["batch"]) for r in rows] == [("9x32x32", 4), ("9x64x64", 1)]
    assert all("error" not in r and r["step_s"] > 0 for r in rows)
    # 4 clips of 32x32 and 1 of 64x64 are the same pixels per step.
    pixels = [r["pixels_per_s"] * r["step_s"] for r in rows]
    assert pixels[0] == pytest.approx(pixels[1])
    assert rows[0]["step_s_vs_first"] == 1.0
    assert "9x64x64" in capsys.readouterr().out


def test_a_row_without_a_batch_fails_with_one_sentence(tmp_path):
    with pytest.raises(SystemExit, match="FRAMESxHEIGHTxWIDTH@BATCH"):
        world_vae.main(["--tiny", f"--out={tmp_path / 'x.json'}", "--buckets=9x32x32"])

"""tools/bench/sampling.py: a row per sampler setting, the first (CFG) as the reference."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "bench"))
import sampling as sample_bench  # noqa: E402


def test_rows_per_setting_with_ratios_to_cfg(tmp_path, capsys):
    out = tmp_path / "sample.json"
    sample_bench.main(["--tiny", f"--out={out}", "--rows=cfg,factorized", "--steps=1"])
    result = json.loads(out.read_text())
    assert result["benchmark"] == "sampling" and result["batch"] == 2 and result["steps"] == 2
    rows = result["rows"]
    assert [r["setting"] for r in rows] == ["cfg", "factorized"]
    assert all("error" not in r and r["batch_s"] > 0 and r["first_call_s"] > 0 for r in rows)
    assert rows[0]["time_vs_first"] == 1.0
    assert rows[1]["time_vs_first"] == pytest.approx(rows[1]["batch_s"] / rows[0]["batch_s"])
    assert rows[1]["videos_per_s"] == pytest.approx(2 / rows[1]["batch_s"])
    assert "factorized" in capsys.readouterr().out


def test_an_unknown_row_fails_with_one_sentence(tmp_path):
    with pytest.raises(SystemExit, match=r"\['cgf'\] are not rows"):
        sample_bench.main(["--tiny", f"--out={tmp_path / 'x.json'}", "--rows=cgf"])


def test_conditioned_rows_time_a_batch_of_extensions_one_per_call_and_together(tmp_path):
    out = tmp_path / "sample.json"
    names = [name for name, _ in sample_bench.CONDITIONED_ROWS]
    sample_bench.main(["--tiny", f"--out={out}", f"--rows={','.join(names)}", "--steps=1"])
    rows = json.loads(out.read_text())["rows"]
    assert [r["setting"] for r in rows] == names
    assert all("error" not in r and r["batch_s"] > 0 for r in rows)
    assert rows[0]["time_vs_one_per_call"] == 1.0
    assert rows[1]["time_vs_one_per_call"] == pytest.approx(rows[1]["batch_s"] / rows[0]["batch_s"])

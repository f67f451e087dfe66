"""tools/experiments/compare_runs.py: two runs' evaluation summaries compared metric by metric."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "experiments"))
import compare_runs  # noqa: E402


def _summary(shape: float, psnr: float, permanence: float) -> dict:
    return {
        "targets": [
            {"set": "t2v", "metric": "shape_acc", "min": 0.8, "value": shape, "ok": shape >= 0.8},
            {"set": "i2v", "metric": "given_psnr", "min": 30.0, "value": psnr, "ok": True},
            {
                "set": "t2v_occlusion",
                "metric": "permanence",
                "min": 0.75,
                "value": permanence,
                "ok": False,
            },
        ],  # fmt: skip
        "sets": {
            "t2v": {"color_acc": 1.0, "shape_acc": shape, "motion_acc": 0.9, "n": 96},
            "t2v_occlusion": {"color_acc": 0.97, "permanence": permanence},
        },  # fmt: skip
    }


def _workdir(tmp_path, name: str, summary: dict) -> str:
    os.makedirs(tmp_path / name / "eval")
    (tmp_path / name / "eval" / "summary.json").write_text(json.dumps(summary))
    return str(tmp_path / name)


def test_identical_runs_are_within_and_differences_are_in_points(tmp_path, capsys):
    a = _workdir(tmp_path, "a", _summary(0.8125, 33.5, 0.75))
    same = compare_runs.main([a, _workdir(tmp_path, "b", _summary(0.8125, 33.5, 0.75))])
    assert same["all_within"] and same["max_abs_points"] == 0.0
    assert [r["metric"] for r in same["rows"]] == [
        "t2v/shape_acc", "i2v/given_psnr", "t2v_occlusion/permanence", "t2v/color_acc",
        "t2v/motion_acc", "t2v_occlusion/color_acc"]  # fmt: skip
    out = tmp_path / "cmp.json"
    other = _summary(0.78125, 31.0, 0.6875)  # shape -3.125 points, permanence -6.25 points
    diff = compare_runs.main([a, _workdir(tmp_path, "c", other), f"--out={out}"])
    rows = {r["metric"]: r for r in diff["rows"]}
    assert rows["t2v/shape_acc"]["points"] == pytest.approx(-3.125)
    assert not rows["t2v/shape_acc"]["within"] and not rows["t2v_occlusion/permanence"]["within"]
    assert rows["t2v/motion_acc"]["within"]
    assert "within" not in rows["i2v/given_psnr"] and rows["i2v/given_psnr"]["diff"] == -2.5
    assert not diff["all_within"] and diff["max_abs_points"] == pytest.approx(6.25)
    assert json.loads(out.read_text())["all_within"] is False
    assert "| t2v/shape_acc | 0.812 | 0.781 | -3.1 pt | **no** |" in capsys.readouterr().out
    loose = compare_runs.main([a, str(tmp_path / "c" / "eval" / "summary.json"), "--points=7"])
    assert loose["all_within"]
    # A tools/world_report.py JSON (sets under "eval_sets") compares the same.
    report = {"targets": other["targets"], "eval_sets": other["sets"]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert compare_runs.main([a, str(tmp_path / "report.json")])["rows"] == diff["rows"]


def test_a_missing_summary_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no evaluation summary"):
        compare_runs.main([str(tmp_path), str(tmp_path)])

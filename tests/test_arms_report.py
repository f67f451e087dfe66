"""tools/experiments/arms_report.py: side-by-side DiT arms -> arms.json and the table."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "experiments"))
import arms_report  # noqa: E402


def _arm(root, name, rounds):
    """rounds: {step: [(shape, right), ...]} -> metrics.jsonl and sample sidecars of one arm."""
    dit = root / name / "dit"
    rows = [{"step": s, "loss": 1.0 / s, "steps_per_s": 10.0 + s / 1000} for s in rounds]
    rows += [
        {"step": s, "sample_shape_acc": sum(r for _, r in g) / len(g)} for s, g in rounds.items()
    ]
    dit.mkdir(parents=True)
    (dit / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for step, graded in rounds.items():
        folder = dit / "samples" / f"step_{step}"
        folder.mkdir(parents=True)
        for i, (shape, right) in enumerate(graded):
            meta = {"spec": {"objects": [{"shape": shape}]}, "grade": {"shape": right}}
            (folder / f"{i:03d}.json").write_text(json.dumps(meta))


def test_pools_the_last_rounds_per_arm(tmp_path, capsys):
    _arm(tmp_path, "base", {1000: [("cross", False)] * 4,
                            2000: [("cross", True), ("star", False)],
                            3000: [("cross", True), ("star", True)],
                            10000: [("cross", False), ("star", True)]})  # fmt: skip
    _arm(tmp_path, "wide", {1000: [("ring", True)] * 3})
    out = arms_report.main([str(tmp_path), "base", "wide", "--last=3"])
    base = out["base"]
    assert base["steps"] == 10000 and base["final_loss"] == pytest.approx(1e-4)
    assert base["pooled"]["rounds"] == [2000, 3000, 10000]  # numeric order, not "10000" < "2000"
    assert base["pooled"]["n"] == 6 and base["pooled"]["shape_acc"] == pytest.approx(
        4 / 6, abs=1e-3
    )
    assert base["pooled"]["shape_acc_se"] == pytest.approx((4 / 6 * 2 / 6 / 6) ** 0.5, abs=1e-3)
    assert base["pooled"]["by_shape"] == {"cross": 0.667, "star": 0.667}
    assert base["shape_acc_by_shape"]["1000"] == {"cross": 0.0}
    assert out["wide"]["pooled"]["shape_acc"] == 1.0
    assert json.loads((tmp_path / "arms.json").read_text())["wide"]["steps"] == 1000
    printed = capsys.readouterr().out.splitlines()
    assert printed[2].startswith("| base | 10000 | ") and printed[2].endswith("| 0.67 ± 0.19 (6) |")


def test_an_arm_that_never_trained_is_a_row_of_dashes(tmp_path, capsys):
    out = arms_report.main([str(tmp_path), "missing"])
    assert out["missing"]["steps"] == 0 and out["missing"]["pooled"]["n"] == 0
    assert capsys.readouterr().out.splitlines()[2] == "| missing | 0 | None | - |  | - |"

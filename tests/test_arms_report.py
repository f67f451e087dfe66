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


def _evaluated(root, name, kept):
    """An arm's eval/: summary.json with two sets and t2v_occlusion.json, one scene per seed."""
    folder = root / name / "eval"
    folder.mkdir(parents=True)
    perm = sum(kept.values()) / len(kept)
    sets = {"t2v": {"color_acc": 1.0, "shape_acc": 0.75, "motion_acc": 0.5, "n": 4},
            "t2v_occlusion": {"color_acc": 1.0, "shape_acc": 0.8, "motion_acc": 0.9, "n": len(kept),
                              "permanence": perm, "permanence_se": 0.1, "wall_s": 3.0}}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps({"sets": sets}))
    samples = [{"seed": s, "permanence": {"permanent": k}} for s, k in kept.items()]
    (folder / "t2v_occlusion.json").write_text(json.dumps({"samples": samples}))


def test_evaluated_arms_are_compared_scene_by_scene(tmp_path, capsys):
    for name in ("base", "res128"):
        _arm(tmp_path, name, {1000: [("cross", True)]})
    # 12 scenes: 3 kept by both, 1 by base only, 6 by res128 only, 2 by neither.
    base = dict.fromkeys(range(3), True) | {3: True} | dict.fromkeys(range(4, 12), False)
    res = dict.fromkeys(range(3), True) | {3: False} | dict.fromkeys(range(4, 10), True)
    res |= {10: False, 11: False}
    _evaluated(tmp_path, "base", base)
    _evaluated(tmp_path, "res128", res)
    out = arms_report.main([str(tmp_path), "base", "res128"])
    pair = out["occlusion_pairs"]["base vs res128"]
    assert (pair["both"], pair["only_first"], pair["only_second"], pair["neither"]) == (3, 1, 6, 2)
    # Exact two-sided binomial test of 1 against 6: 2 * (1 + 7) / 2**7 = 0.125.
    assert pair["p_two_sided"] == pytest.approx(0.125)
    assert out["res128"]["eval"]["t2v_occlusion"]["permanence"] == pytest.approx(9 / 12)
    assert "wall_s" not in out["res128"]["eval"]["t2v_occlusion"]
    saved = json.loads((tmp_path / "arms.json").read_text())
    assert saved["occlusion_pairs"] == out["occlusion_pairs"]
    printed = capsys.readouterr().out
    assert (
        "res128 eval t2v_occlusion (12): colour / shape / motion 1.00 / 0.80 / 0.90, "
        "object permanence 0.75 ± 0.10" in printed
    )
    assert "both 3, first only 1, second only 6, neither 2 (p = 0.125)" in printed

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
    t2v = lambda metric: f"t2v/{metric} [96 samples]"  # noqa: E731
    assert [r["metric"] for r in same["rows"]] == [
        t2v("shape_acc"), "i2v/given_psnr", "t2v_occlusion/permanence", t2v("color_acc"),
        t2v("motion_acc"), "t2v_occlusion/color_acc"]  # fmt: skip
    out = tmp_path / "cmp.json"
    other = _summary(0.78125, 31.0, 0.6875)  # shape -3.125 points, permanence -6.25 points
    diff = compare_runs.main([a, _workdir(tmp_path, "c", other), f"--out={out}"])
    rows = {r["metric"]: r for r in diff["rows"]}
    assert rows[t2v("shape_acc")]["points"] == pytest.approx(-3.125)
    assert not rows[t2v("shape_acc")]["within"] and not rows["t2v_occlusion/permanence"]["within"]
    assert rows[t2v("motion_acc")]["within"]
    assert "within" not in rows["i2v/given_psnr"] and rows["i2v/given_psnr"]["diff"] == -2.5
    assert not diff["all_within"] and diff["max_abs_points"] == pytest.approx(6.25)
    assert json.loads(out.read_text())["all_within"] is False
    assert f"| {t2v('shape_acc')} | 0.812 | 0.781 | -3.1 pt | **no** |" in capsys.readouterr().out
    loose = compare_runs.main([a, str(tmp_path / "c" / "eval" / "summary.json"), "--points=7"])
    assert loose["all_within"]
    # A tools/world_report.py JSON (sets under "eval_sets") compares the same.
    report = {"targets": other["targets"], "eval_sets": other["sets"]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert compare_runs.main([a, str(tmp_path / "report.json")])["rows"] == diff["rows"]


def test_a_missing_summary_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no evaluation summary"):
        compare_runs.main([str(tmp_path), str(tmp_path)])


def _suite(guidance: float, variant: float, occlusion_n: int, shape: dict) -> dict:
    """A suite summary sampled at `guidance` with a t2v@guidance=`variant` variant."""
    settings = lambda g: {"steps": 60, "sampler": "euler", "guidance": g, "shift": None,  # noqa: E731
                          "guidance_interval": [0.0, 1.0]}  # fmt: skip
    return {
        "settings": settings(guidance),
        "targets": [{"set": "t2v", "metric": "shape_acc", "value": shape[guidance]}],
        "sets": {
            "t2v": {"shape_acc": shape[guidance], "n": 96},
            "t2v_occlusion": {"permanence": 0.7, "n": occlusion_n},
        },  # fmt: skip
        "t2v_variants": {
            f"t2v@guidance={variant}": {
                "shape_acc": shape[variant],
                "n": 96,
                "settings": settings(variant),
            }
        },  # fmt: skip
        "val_loss": {"t=0.5": 0.099},
    }


def test_runs_sampled_at_other_settings_compare_where_their_settings_meet(tmp_path):
    shape = {5.0: 0.84375, 3.0: 0.90625}  # one DiT: the same numbers at the same settings
    a = _workdir(tmp_path, "a", _suite(5.0, 3.0, 32, shape))
    b = _workdir(tmp_path, "b", _suite(3.0, 5.0, 96, shape))
    result = compare_runs.main([a, b])
    assert result["all_within"] and result["max_abs_points"] == 0.0
    g = lambda x: f"t2v/shape_acc [60 euler steps, guidance {x}, 96 samples]"  # noqa: E731
    # Both guidances meet (a target of one run, a variant of the other); the occlusion sets
    # (32 vs 96 scenes) do not; validation losses are printed with their difference.
    assert [r["metric"] for r in result["rows"]] == [g(5), g(3), "val_loss/t=0.5"]
    assert compare_runs.settings_label(None, None) == ""
    auto = {"steps": 60, "sampler": "euler", "guidance": 5.0, "autoguidance": 2.0,
            "autoguide_step": 2500}  # fmt: skip
    assert compare_runs.settings_label(auto, 96) == (
        "60 euler steps, guidance 5, autoguidance 2 by step 2500, 96 samples"
    )
    assert compare_runs.settings_label({**auto, "factorized": True}, 96, seed=100) == (
        "60 euler steps, guidance 5, autoguidance 2 by step 2500, factorized, 96 samples, "
        "eval seed 100"
    )


def test_runs_of_other_eval_seeds_share_no_fraction_nor_scene(tmp_path, capsys):
    """Another `eval.seed` is other prompts, scenes and noise: equal grades there are no
    reproduction, so no fraction is paired (nor the validation loss, whose noise the seed
    draws) and no scene."""
    settings = {"steps": 60, "sampler": "euler", "guidance": 5.0}
    runs = []
    for name, seed in (("a", 0), ("b", 100)):
        summary = {**_summary(0.9, 33.0, 0.75), "settings": settings, "seed": seed,
                   "val_loss": {"t=0.5": 0.12}}  # fmt: skip
        run = _workdir(tmp_path, name, summary)
        with open(os.path.join(run, "eval", "t2v_occlusion.json"), "w") as f:
            json.dump({"samples": [{"seed": seed + 20_000 + i, "permanence": {"permanent": True},
                                    "permanence_vae_round_trip": {"permanent": True}}
                                   for i in range(4)]}, f)  # fmt: skip
        runs.append(run)
    result = compare_runs.main(runs)
    assert result["rows"] == [] and result["occlusion_scene_pairs_by_setting"] == {}
    assert "occlusion_scene_pairs" not in result
    assert "none sampled alike by both runs" in capsys.readouterr().out
    # The same seed again pairs everything (seed 100 named in the rows' settings).
    result = compare_runs.main([runs[1], runs[1]])
    metrics = [r["metric"] for r in result["rows"]]
    assert "t2v/shape_acc [60 euler steps, guidance 5, 96 samples, eval seed 100]" in metrics
    assert "val_loss/t=0.5 [eval seed 100]" in metrics
    assert result["occlusion_scene_pairs"]["cases"] == 4


def test_training_losses_compare_step_by_step(tmp_path, capsys):
    curve = [[200, 1.25], [400, 0.5], [600, 0.25]]
    a = _workdir(tmp_path, "a", _summary(0.8125, 33.5, 0.75))
    b = _workdir(tmp_path, "b", _summary(0.8125, 33.5, 0.75))
    for run, last in ((a, 0.25), (b, 0.2499)):  # the same but for the last logged loss
        rows = [{"step": s, "loss": v} for s, v in curve[:2]] + [{"step": 600, "loss": last}]
        rows.append({"step": 600, "sample_shape_acc": 0.5})  # not a loss row
        os.makedirs(os.path.join(run, "dit"))
        with open(os.path.join(run, "dit", "metrics.jsonl"), "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
    result = compare_runs.main([a, b])
    assert result["loss_curves"]["dit"]["steps"] == 3
    assert result["loss_curves"]["dit"]["identical"] == 2
    assert result["loss_curves"]["dit"]["max_abs_diff"] == pytest.approx(1e-4)
    assert "dit training loss: equal at 2 of the 3 logged steps" in capsys.readouterr().out
    # A world_report JSON carries the curve as dit.loss_curve: itself against itself, all equal.
    report = tmp_path / "report.json"
    report.write_text(json.dumps({**_summary(0.8125, 33.5, 0.75), "dit": {"loss_curve": curve}}))
    same = compare_runs.main([str(report), str(report)])["loss_curves"]
    assert same == {"dit": {"steps": 3, "identical": 3, "max_abs_diff": 0.0}}


def test_occlusion_scenes_compare_one_by_one_from_workdirs_and_reports(tmp_path, capsys):
    """Equal permanence (4 of 8 in each run) can hide scenes that changed: paired by seed."""
    kept_a = [True, True, True, True, False, False, False, False]
    kept_b = [True, False, False, False, True, True, True, False]

    def occlusion(kept):
        return {"samples": [{"seed": 100 + i, "permanence": {"permanent": k},
                             "permanence_vae_round_trip": {"permanent": True}}
                            for i, k in enumerate(kept)]}  # fmt: skip

    a = _workdir(tmp_path, "a", _summary(0.8, 33.0, 0.5))
    b = _workdir(tmp_path, "b", _summary(0.8, 33.0, 0.5))
    for run, kept in ((a, kept_a), (b, kept_b)):
        with open(os.path.join(run, "eval", "t2v_occlusion.json"), "w") as f:
            json.dump(occlusion(kept), f)
    out = compare_runs.main([a, b])
    pairs = out["occlusion_scene_pairs"]
    assert (pairs["both"], pairs["only_first"], pairs["only_second"], pairs["neither"]) == (
        1, 3, 3, 1)  # fmt: skip
    assert pairs["cases"] == 8 and pairs["p_two_sided"] == 1.0
    assert "by run A only 3, by run B only 3, by neither 1" in capsys.readouterr().out
    # The same from a tools/world_report.py JSON (occlusion_scenes) against the workdir.
    import world_report  # tools/world_report.py

    report = {"eval_sets": _summary(0.8, 33.0, 0.5)["sets"],
              "occlusion_scenes": world_report.occlusion_scenes(a)}  # fmt: skip
    assert report["occlusion_scenes"]["vae_kept"] == [True] * 8
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    assert compare_runs.main([str(path), b])["occlusion_scene_pairs"] == pairs
    # A run without per-scene outcomes: no pairs, no error.
    assert "occlusion_scene_pairs" not in compare_runs.main([_workdir(tmp_path, "c", _summary(
        0.8, 33.0, 0.5)), b])  # fmt: skip


def test_scenes_pair_where_one_runs_suite_is_the_others_variant(tmp_path, capsys):
    """A run whose suite took the setting an earlier run sampled as a variant (and kept the old
    one as its variant) repeats the earlier run scene by scene under each setting: its suite
    against the other's variant, its variant against the other's suite."""
    cfg5 = {"steps": 60, "sampler": "euler", "guidance": 5.0}
    new = {**cfg5, "autoguidance": 2.0, "autoguide_step": 2500, "factorized": True}
    kept = {"cfg5": [True, False, True, False], "new": [True, True, True, False]}

    def run(name, suite, variant, variant_label):
        summary = {
            **_summary(0.9, 33.0, 0.5),
            "settings": suite,
            "t2v_variants": {variant_label: {"permanence": 0.5, "settings": variant}},
        }
        path = _workdir(tmp_path, name, summary)
        for file, settings in (("t2v_occlusion", suite), (variant_label, variant)):
            outcome = kept["new" if settings is new else "cfg5"]
            with open(os.path.join(path, "eval", f"{file}.json"), "w") as f:
                json.dump({"samples": [{"seed": 20_000 + i, "permanence": {"permanent": k}}
                                       for i, k in enumerate(outcome)]}, f)  # fmt: skip
        return path

    a = run("a", cfg5, new, "t2v_occlusion@autoguidance=2.0,autoguide_step=2500,factorized=True")
    b = run("b", new, cfg5, "t2v_occlusion@autoguidance=1.0,factorized=False")
    result = compare_runs.main([a, b])
    by_setting = result["occlusion_scene_pairs_by_setting"]
    assert set(by_setting) == {"60 euler steps, guidance 5",
                               "60 euler steps, guidance 5, autoguidance 2 by step 2500, "
                               "factorized"}  # fmt: skip
    assert all(p["cases"] == 4 and p["only_first"] == p["only_second"] == 0
               for p in by_setting.values())  # fmt: skip
    assert "occlusion_scene_pairs" not in result  # the suites sampled otherwise
    printed = capsys.readouterr().out
    assert (
        "occlusion scenes [60 euler steps, guidance 5] (4 in both): the object kept by both 2"
        in printed
    )

"""tools/world_report.py: a world run's workdir -> the issue-9 numbers and the README table."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
import world_report  # noqa: E402


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, list):
        path.write_text("".join(json.dumps(r) + "\n" for r in obj))
    else:
        path.write_text(json.dumps(obj))


def _run_dir(tmp_path):
    _write(tmp_path / "summary.json", {"vae": {"psnr": 36.857, "ssim": 0.98221, "wall_s": 586.4},
                                       "dit": {"wall_s": 281.6}})  # fmt: skip
    _write(tmp_path / "vae" / "metrics.jsonl", [
        {"step": 100, "loss": 1.0, "steps_per_s": 2.0},  # the compile's interval: not counted
        {"step": 200, "loss": 0.5, "steps_per_s": 46.0},
        {"step": 200, "eval_psnr": 24.2896, "eval_ssim": 0.82029},
        {"step": 300, "loss": 0.25, "steps_per_s": 47.0},
        {"step": 400, "loss": 0.125, "steps_per_s": 45.0},
    ])  # fmt: skip
    _write(
        tmp_path / "dit" / "metrics.jsonl",
        [
            {
                "step": 200 * k,
                "loss": 1.0 / k,
                "steps_per_s": 30.0 + k,
                "time_compute_s": 0.01 * k,
                "time_data_s": 0.03,
            }
            for k in (1, 2, 3)
        ]  # fmt: skip
        + [{"step": 600, "sample_color_acc": 1.0, "sample_shape_acc": 0.87501}],
    )
    (tmp_path / "timeline.log").write_text(
        "[00:21:24] vae start (XLA_FLAGS=x)\n[00:25:52] vae done\n"
    )
    _write(tmp_path / "vae" / "footage_eval.json", {
        "footage.npz:bikes": {"psnr": 19.9, "ssim": 0.7628, "shape": [33, 256, 256, 3]},
        "footage.npz:carphone": {"psnr": 17.3, "ssim": 0.4886, "shape": [33, 144, 176, 3]},
    })  # fmt: skip
    sets = {
        "t2v": {"color_acc": 1.0, "shape_acc": 0.1458, "motion_acc": 0.3125, "n": 48},
        "t2v_occlusion": {"color_acc": 1.0, "shape_acc": 0.0625, "motion_acc": 0.375, "n": 16,
                          "permanence": 0.3125},
        "t2i": {"color_acc": 1.0, "shape_acc": 0.1875, "motion_acc": None, "n": 16},
        "i2v": {"color_acc": 1.0, "shape_acc": 0.3125, "motion_acc": 0.4375, "n": 16,
                "given_psnr": 39.629, "last_color_acc": 1.0, "continuity_ratio": 2.529},
    }  # fmt: skip
    targets = [
        {"set": "t2v", "metric": "color_acc", "min": 0.9, "value": 1.0, "ok": True},
        {"set": "t2v", "metric": "shape_acc", "min": 0.8, "value": 0.15, "ok": False},
    ]
    _write(
        tmp_path / "eval" / "summary.json",
        {"sets": sets, "targets": targets, "val_loss": {"t=0.5": 0.23}, "wall_s": 200.9},
    )
    return tmp_path


def test_report_collects_every_stage_and_the_targets(tmp_path):
    r = world_report.collect(str(_run_dir(tmp_path)))
    assert r["vae"] == {
        "steps": 400, "first_loss": 1.0, "final_loss": 0.125, "steps_per_s_median": 46.0,
        "eval_during_training": [{"step": 200, "psnr": 24.29, "ssim": 0.8203}],
        "stage_wall_s": 586.4, "heldout_psnr_db": 36.86, "heldout_ssim": 0.9822,
        "loss_curve": [[100, 1.0], [200, 0.5], [300, 0.25], [400, 0.125]],
    }  # fmt: skip
    assert r["dit"]["steps"] == 600 and r["dit"]["steps_per_s_median"] == 32.5
    assert r["dit"]["final_loss"] == pytest.approx(1 / 3, abs=1e-4)
    # Steps after the first tenth (here steps 200-600): mean ms of compute and data wait.
    assert r["dit"]["time_split_ms_per_step"] == {"compute": 20.0, "data": 30.0}
    assert r["dit"]["training_samples"] == [
        {"step": 600, "sample_color_acc": 1.0, "sample_shape_acc": 0.875}
    ]
    assert r["timeline"] == [["00:21:24", "vae start (XLA_FLAGS=x)"], ["00:25:52", "vae done"]]
    assert "timeline" not in world_report.collect(str(tmp_path / "dit"))
    assert r["vae_real_footage"]["mean_psnr"] == 18.6
    assert r["vae_real_footage"]["carphone"] == {"psnr": 17.3, "ssim": 0.489}
    assert (r["targets_met"], r["targets_total"]) == (1, 2)
    assert r["eval"]["val_loss"] == {"t=0.5": 0.23}
    assert "occlusion_scenes" not in r  # no per-scene records in this workdir
    records = [{"seed": 7, "permanence": {"permanent": True},
                "permanence_vae_round_trip": {"permanent": True}},
               {"seed": 3, "permanence": {"permanent": False},
                "permanence_vae_round_trip": {"permanent": True}}]  # fmt: skip
    _write(tmp_path / "eval" / "t2v_occlusion.json", {"samples": records})
    scenes = world_report.collect(str(tmp_path))["occlusion_scenes"]
    assert scenes == {"seed": [7, 3], "kept": [True, False], "vae_kept": [True, True]}
    for rec, motion in zip(records, ("grow", "left")):  # the subject's, and the bar's grade
        rec["spec"] = {"objects": [{"motion": motion, "size": "small"}]}
        rec["occluder"] = {"found": motion == "left", "direction_ok": motion == "left" or None,
                           "speed_ratio": 0.9 if motion == "left" else None}  # fmt: skip
    _write(tmp_path / "eval" / "t2v_occlusion.json", {"samples": records})
    scenes = world_report.collect(str(tmp_path))["occlusion_scenes"]
    assert (scenes["motion"], scenes["size"]) == (["grow", "left"], ["small", "small"])
    assert (scenes["bar_direction_ok"], scenes["bar_speed_ratio"]) == ([None, True], [None, 0.9])
    assert "profile" not in r["dit"]
    profile = {"steps": [3101, 3104], "total_ms": 55.0, "categories": {"matmul": {"pct": 40.0}}}
    _write(tmp_path / "dit" / "profile" / "summary.json", profile)  # the stage's traced steps
    assert world_report.collect(str(tmp_path))["dit"]["profile"] == profile


def test_report_table_has_a_row_per_set_with_its_extra_grades(tmp_path):
    table = world_report.markdown(world_report.collect(str(_run_dir(tmp_path)))["eval_sets"])
    rows = table.splitlines()
    assert len(rows) == 2 + 4  # header, rule, the four sets in the suite's order
    assert rows[2] == "| t2v, in distribution (48) | 1.00 | 0.15 | 0.31 |  |"
    assert rows[3].endswith("| object permanence 0.31 |")
    assert rows[4] == "| t2i (16) | 1.00 | 0.19 | — |  |"
    assert "given frames 39.6 dB, last-frame colour 1.00, continuity 2.53×" in rows[5]


def test_report_of_a_run_without_eval_and_a_missing_folder(tmp_path, capsys):
    run = _run_dir(tmp_path / "run")
    (run / "eval" / "summary.json").unlink()
    out = world_report.main(["--workdir", str(run), "--out", str(tmp_path / "r.json")])
    assert "eval_sets" not in out and out["vae"]["steps"] == 400
    assert json.loads((tmp_path / "r.json").read_text())["dit"]["steps"] == 600
    with pytest.raises(SystemExit):
        world_report.main(["--workdir", str(tmp_path / "nope")])
    assert "is not a folder" in capsys.readouterr().err


def test_report_prints_the_t2v_variants_beside_the_suite_settings(tmp_path, capsys):
    run = _run_dir(tmp_path)
    summary = json.loads((run / "eval" / "summary.json").read_text())
    summary["t2v_variants"] = {"t2v@steps=60": {"color_acc": 1.0, "shape_acc": 0.5,
                                                "motion_acc": 0.75, "n": 48}}  # fmt: skip
    _write(run / "eval" / "summary.json", summary)
    out = world_report.main(["--workdir", str(run)])
    assert out["eval_t2v_variants"]["t2v@steps=60"]["shape_acc"] == 0.5
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2:] == ["| the suite's settings | 1.00 | 0.15 | 0.31 |",
                            "| steps=60 | 1.00 | 0.50 | 0.75 |"]  # fmt: skip


def test_report_names_the_suites_sampler_settings_and_eval_seed(tmp_path, capsys):
    run = _run_dir(tmp_path)
    summary = json.loads((run / "eval" / "summary.json").read_text())
    summary.update(seed=100, settings={"steps": 60, "guidance": 5.0, "shift": None,
                                       "guidance_interval": [0.0, 1.0], "autoguidance": 2.0,
                                       "autoguide_step": 2500, "factorized": True})  # fmt: skip
    _write(run / "eval" / "summary.json", summary)
    out = world_report.main(["--workdir", str(run)])
    assert out["eval"]["seed"] == 100
    assert ("the suite sampled with steps 60, guidance 5, shift -, guidance_interval 0-1, "
            "autoguidance 2, autoguide_step 2500, factorized True; eval seed 100"
            ) in capsys.readouterr().out.splitlines()  # fmt: skip


def test_report_prints_the_occlusion_set_per_sampler_setting(tmp_path, capsys):
    run = _run_dir(tmp_path)
    summary = json.loads((run / "eval" / "summary.json").read_text())
    summary["sets"]["t2v_occlusion"] = {"color_acc": 1.0, "shape_acc": 0.8, "motion_acc": 0.7,
                                        "n": 32, "permanence": 0.5625,
                                        "permanence_vae_round_trip": 0.90625}  # fmt: skip
    summary["t2v_variants"] = {
        "t2v@steps=60": {"color_acc": 1.0, "shape_acc": 0.5, "motion_acc": 0.75, "n": 48},
        "t2v_occlusion@steps=60": {"color_acc": 1.0, "shape_acc": 0.9, "motion_acc": 0.8,
                                   "n": 32, "permanence": 0.75},
    }  # fmt: skip
    _write(run / "eval" / "summary.json", summary)
    world_report.main(["--workdir", str(run)])
    printed = capsys.readouterr().out.splitlines()
    assert "| steps=60 | 1.00 | 0.50 | 0.75 |" in printed  # the t2v table: t2v rows only
    assert ("| t2v, occlusion scenes (32) | 1.00 | 0.80 | 0.70 | object permanence 0.56, "
            "VAE round trips' 0.91 |") in printed  # fmt: skip
    summary["sets"]["t2v_occlusion"]["permanence_where_vae_keeps"] = 0.6
    _write(run / "eval" / "summary.json", summary)
    world_report.main(["--workdir", str(run)])
    assert ("| t2v, occlusion scenes (32) | 1.00 | 0.80 | 0.70 | object permanence 0.56, "
            "VAE round trips' 0.91, where those keep it 0.60 |"
            ) in capsys.readouterr().out.splitlines()  # fmt: skip
    del summary["sets"]["t2v_occlusion"]["permanence_where_vae_keeps"]
    _write(run / "eval" / "summary.json", summary)
    assert sum(line.startswith("| steps=60 |") for line in printed) == 2
    assert printed[-4:] == ["| t2v_occlusion sampled with | shape | object permanence |",
                            "|---|---|---|", "| the suite's settings | 0.80 | 0.56 |",
                            "| steps=60 | 0.90 | 0.75 |"]  # fmt: skip
    summary["sets"]["t2v_occlusion"]["permanence_by_motion"] = {"grow": 0.0, "left": 0.75}
    _write(run / "eval" / "summary.json", summary)
    world_report.main(["--workdir", str(run)])
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == "object permanence by the subject's motion: grow 0.00, left 0.75"
    summary["sets"]["t2v_occlusion"]["permanence_by_size"] = {"large": 0.84, "small": 0.41}
    _write(run / "eval" / "summary.json", summary)
    world_report.main(["--workdir", str(run)])
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "object permanence by the subject's motion: grow 0.00, left 0.75",
        "object permanence by the subject's size: large 0.84, small 0.41"]  # fmt: skip
    summary["sets"]["t2v_occlusion"].update(
        prompted_shape_by_size={"large": {"before": 0.94, "after": 0.91},
                                "small": {"before": 0.72, "after": 0.5}},
        permanence=0.71875, permanence_se=0.0459, n=96)  # fmt: skip
    _write(run / "eval" / "summary.json", summary)
    world_report.main(["--workdir", str(run)])
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "the prompted shape before / after the bar by the subject's size: large 0.94 / 0.91, "
        "small 0.72 / 0.50",
        "object permanence 0.72 ± 0.05 (binomial standard error, 96 scenes)"]  # fmt: skip
    summary["sets"]["t2v_occlusion"]["permanence_misses"] = {
        "unseen_before": 1, "unseen_after": 3, "other_size": 8, "other_shape": 27}  # fmt: skip
    _write(run / "eval" / "summary.json", summary)
    world_report.main(["--workdir", str(run)])
    assert capsys.readouterr().out.splitlines()[-2] == (
        "object permanence misses (39): not seen before the bar 1, not seen after it 3, "
        "back at another size 8, back as another shape 27"
    )
    summary["sets"]["t2v_occlusion"].update(
        occluder_found=0.98, occluder_direction_acc=0.52, occluder_speed_ratio=0.91,
        permanence_by_occluder={"as captioned": [0.82, 28], "reversed": [0.68, 47]})  # fmt: skip
    _write(run / "eval" / "summary.json", summary)
    world_report.main(["--workdir", str(run)])
    assert capsys.readouterr().out.splitlines()[-2] == (
        "the bar: shown in 0.98 of the scenes, the captioned way in 0.52 of those (median speed "
        "0.91x the world's); object permanence where it went as captioned 0.82 (28), "
        "reversed 0.68 (47)"
    )


def test_report_pairs_each_occlusion_variant_with_the_suite_scene_by_scene(tmp_path, capsys):
    """Variants sample the suite's scenes with its seeds: each is compared scene by scene (kept
    by both / the variant only / the suite only / neither, McNemar's exact p)."""
    run = _run_dir(tmp_path)
    kept = {"suite": [True] * 6 + [False] * 4, "a": [True] * 4 + [False] * 2 + [True] * 4,
            "b": [True] * 6 + [False] * 4}  # fmt: skip
    files = {"suite": "t2v_occlusion", "a": "t2v_occlusion@factorized=True",
             "b": "t2v_occlusion@guidance=3.0"}  # fmt: skip
    for key, name in files.items():
        records = [{"seed": 10 + i, "permanence": {"permanent": k}}
                   for i, k in enumerate(kept[key])]  # fmt: skip
        _write(run / "eval" / f"{name}.json", {"samples": records})
    r = world_report.collect(str(run))
    assert r["occlusion_variant_scenes"] == {
        files[k]: {"seed": list(range(10, 20)), "kept": kept[k]} for k in ("a", "b")
    }
    world_report.main(["--workdir", str(run)])
    printed = capsys.readouterr().out.splitlines()
    # a: 4 both, 4 only a, 2 only the suite, 0 neither; p = 2 P(X <= 2 | n=6) = 0.6875.
    assert "| factorized=True | 4 | 4 | 2 | 0 | 0.688 |" in printed
    assert "| guidance=3.0 | 6 | 0 | 0 | 4 | 1.000 |" in printed
    assert world_report.paired_variants(None, r["occlusion_variant_scenes"]) == ""


def test_versions_come_from_the_run_machines_report(tmp_path):
    run = _run_dir(tmp_path)
    here = world_report.main(["--workdir", str(run), "--out", str(run / "report.json")])
    assert here["device"] is None and here["versions"]["jax"]  # this machine's, written there
    gpu = {"python": "3.12.3", "jax": "0.11.2", "flax": "0.12.10"}
    _write(run / "report.json", {**here, "device": "NVIDIA H200", "versions": gpu})
    copy = world_report.main(["--workdir", str(run), "--out", str(tmp_path / "copy.json")])
    assert copy["versions"] == gpu and copy["device"] == "NVIDIA H200"
    assert world_report.main(["--workdir", str(run), "--device", "other"])["device"] == "other"


def test_a_run_cut_short_before_its_report_keeps_the_versions_it_started_with(tmp_path):
    run = _run_dir(tmp_path)  # no report.json: world_gpu.sh writes it after the eval stage
    gpu = {"python": "3.12.3", "jax": "0.11.2", "flax": "0.12.10"}
    _write(run / "versions.json", gpu)  # world_gpu.sh writes this at its start
    assert world_report.main(["--workdir", str(run)])["versions"] == gpu


def test_report_prints_the_vae_round_trip_grades(tmp_path, capsys):
    run = _run_dir(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    summary["vae"].update(recon_color_acc=1.0, recon_shape_acc=0.84375, recon_motion_acc=0.9,
                          recon_mad_ratio=1.4372, recon_permanence=0.90625,
                          recon_permanence_noisy=0.84375, psnr_first=30.1234)  # fmt: skip
    _write(run / "summary.json", summary)
    # An eval during training with frame 0's PSNR and the round trips' grades.
    row = {"step": 400, "eval_psnr": 28.0, "eval_ssim": 0.9, "eval_psnr_first": 29.0,
           "eval_recon_shape_acc": 0.65625, "eval_recon_permanence": 0.75,
           "eval_recon_permanence_noisy": 0.71875}  # fmt: skip
    with open(run / "vae" / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    row = {"step": 800, "sample_color_acc": 1.0, "sample_shape_acc": 0.9,
           "sample_permanence": 0.6875}  # fmt: skip
    with open(run / "dit" / "metrics.jsonl", "a") as f:  # occlusion scenes among the samples
        f.write(json.dumps(row) + "\n")
    out = world_report.main(["--workdir", str(run)])
    assert out["vae"]["heldout_recon_grades"] == {"color": 1.0, "shape": 0.844, "motion": 0.9}
    assert out["vae"]["heldout_recon_mad_ratio"] == 1.437
    assert out["vae"]["occlusion_recon_permanence"] == 0.906
    assert out["vae"]["occlusion_recon_permanence_noisy"] == 0.844
    assert out["vae"]["heldout_psnr_first_frame_db"] == 30.12
    assert out["vae"]["eval_during_training"][-1] == {
        "step": 400, "psnr": 28.0, "ssim": 0.9, "psnr_first": 29.0, "recon_shape_acc": 0.656,
        "recon_permanence": 0.75, "recon_permanence_noisy": 0.719}  # fmt: skip
    assert out["dit"]["training_samples"][-1]["sample_permanence"] == 0.6875
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith("videos): color 1.00, shape 0.84, motion 0.90")
    assert printed[1].endswith("(continuity floor): 1.44")
    assert printed[2].endswith("object permanence (the ceiling): 0.91")
    assert printed[3].endswith("with noise (vae_train.eval_latent_noise): 0.84")
    assert printed[4] == "DiT training samples at step 600: color_acc 1.00, shape_acc 0.88"
    assert printed[5].endswith("step 800: color_acc 1.00, shape_acc 0.90, permanence 0.69")
    assert "heldout_recon_grades" not in world_report.collect(str(_run_dir(tmp_path / "b")))["vae"]


def test_report_prints_t2v_shape_accuracy_per_shape(tmp_path, capsys):
    run = _run_dir(tmp_path)
    summary = json.loads((run / "eval" / "summary.json").read_text())
    summary["sets"]["t2v"]["shape_acc_by_shape"] = {"circle": 1.0, "cross": 0.0}
    summary["t2v_variants"] = {"t2v@steps=60": {"color_acc": 1.0, "shape_acc": 0.5,
                                                "motion_acc": 0.75, "n": 48,
                                                "shape_acc_by_shape": {"cross": 0.25}}}  # fmt: skip
    _write(run / "eval" / "summary.json", summary)
    world_report.main(["--workdir", str(run)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[-4:] == ["| t2v shape accuracy | circle | cross |", "|---|---|---|",
                            "| the suite's settings | 1.00 | 0.00 |",
                            "| steps=60 | — | 0.25 |"]  # fmt: skip


def test_report_carries_what_ran_when_told(tmp_path):
    run = _run_dir(tmp_path / "run")
    plain = world_report.main(["--workdir", str(run)])
    assert "commit" not in plain and "date" not in plain and plain["xla_flags"] == "x"
    out = world_report.main(["--workdir", str(run), "--out", str(tmp_path / "r.json"),
                             "--run", "eighth", "--commit", "abc1234", "--gpu_seconds", "1562",
                             "--command", "a.sh 1", "--command", "b.sh"])  # fmt: skip
    written = json.loads((tmp_path / "r.json").read_text())
    assert list(written)[:5] == ["date", "run", "commit", "commands", "gpu_seconds_lease_held"]
    assert written["commands"] == ["a.sh 1", "b.sh"] and written["gpu_seconds_lease_held"] == 1562
    assert written["commit"] == "abc1234" and out["run"] == "eighth"
    assert written["timeline"] == [["00:21:24", "vae start (XLA_FLAGS=x)"],
                                   ["00:25:52", "vae done"]]  # fmt: skip


def test_an_evaluation_cut_short_reports_the_sets_that_finished(tmp_path):
    # The suite writes <set>.json as each set finishes and summary.json last.
    _write(tmp_path / "eval" / "t2v.json", {"set": "t2v", "metrics": {
        "color_acc": 1.0, "shape_acc": 0.85, "motion_acc": 0.7}, "samples": []})  # fmt: skip
    _write(tmp_path / "eval" / "t2v_occlusion.json",
           {"set": "t2v_occlusion", "metrics": {"permanence": 0.8}, "samples": []})  # fmt: skip
    _write(tmp_path / "eval" / "t2v@steps=30.json",  # a variant: not a set of the targets
           {"set": "t2v@steps=30", "metrics": {"color_acc": 0.0}, "samples": []})  # fmt: skip
    r = world_report.collect(str(tmp_path))
    assert r["eval_partial_sets"] == ["t2v", "t2v_occlusion"]
    assert r["eval_sets"]["t2v"]["shape_acc"] == 0.85
    ok = {(t["set"], t["metric"]): t["ok"] for t in r["eval"]["targets"]}
    assert ok == {("t2v", "color_acc"): True, ("t2v", "shape_acc"): True,
                  ("t2v", "motion_acc"): False, ("t2v_occlusion", "permanence"): True}  # fmt: skip
    assert (r["targets_met"], r["targets_total"]) == (3, 4)
    _write(tmp_path / "eval" / "summary.json", {"sets": {}, "targets": []})  # a whole eval wins
    assert "eval_partial_sets" not in world_report.collect(str(tmp_path))


def test_fixed_costs_read_the_stage_logs_metrics_and_ready_file(tmp_path):
    """Where a run's time went outside its steps (world_report.fixed_costs): from the stages'
    absl logs, their metrics' intervals and stage dit_compile's ready file."""
    (tmp_path / "dit.log").write_text(
        "I1205 23:59:50.000000 1 recipe.py:247] stage dit\n"
        "W1205 23:59:51.000000 1 x.py:1] noise\n"
        "I1206 00:00:30.500000 2 dit_latent_cache.py:178] dit: latent cache of bucket 17x64x64: "
        "4096 clips in 40.5 s (39.0 s waiting for decoded/rendered clips)\n"
        "I1206 00:00:40.000000 1 loop.py:365] dit: step 1: first batch of shapes {} compiled\n"
        "I1206 00:00:41.000000 1 loop.py:365] dit: step 2: first batch of shapes {} compiled\n"
        "W1206 00:01:00.000000 2 dit_latent_cache.py:1] dit: latent-cache render workers "
        "failed (boom); rendering in the trainer instead\n"
    )
    (tmp_path / "vae.log").write_text(
        "I1205 10:00:00.000000 1 recipe.py:247] stage vae\n"
        "I1205 10:00:30.000000 1 loop.py:365] vae: step 1: first batch of shapes {} compiled\n"
        "I1205 10:01:00.000000 3 loop.py:1] vae: 1 periodic programs compiled beside the steps "
        "in 25.5 s\n"
    )
    _write(tmp_path / "vae" / "metrics.jsonl", [
        {"step": 100, "steps_per_s": 2.0},  # the compile's interval: left out
        {"step": 200, "steps_per_s": 40.0, "time_hooks_s": 0.0, "time_checkpoint_s": 0.01},
        {"step": 200, "eval_psnr": 20.0},
        {"step": 300, "steps_per_s": 20.0, "time_hooks_s": 0.04, "time_checkpoint_s": 0.0},
        {"step": 400, "steps_per_s": 39.0},
    ])  # fmt: skip
    _write(
        tmp_path / "vae" / "profile" / "summary.json",
        {"steps": [3, 6], "total_ms": 20.04, "busy_ms": 19.0, "span_ms": 25.0,
         "host": {"launches_per_iter": 1245.0, "launch_ms_per_iter": 21.5,
                  "launch_threads": ["python"],
                  "cuda_api": [{"call": "cuLaunchKernelEx", "calls_per_iter": 1200.0,
                                "ms_per_iter": 6.0}]}},
    )  # fmt: skip
    step_times = {"latents 256x5x8x8x16, text 256x96x384": {"steps": 90, "median_ms": 47.04,
                                                             "p90_ms": 49.0},
                  # runs since the seventeenth: the mean and the host's share too
                  "latents 1024x1x8x8x16, text 1024x96x384": {
                      "steps": 30, "median_ms": 97.5, "p90_ms": 99.0, "mean_ms": 120.25,
                      "data_ms": 3.0, "dispatch_ms": 41.5, "wait_ms": 70.0}}  # fmt: skip
    _write(tmp_path / "dit" / "step_times.json", step_times)
    ready = {"programs": 5, "compile_s": 249.3, "encode_programs": 5, "encode_compile_s": 97.7,
             "caption_programs": 28, "caption_compile_s": 41.0}  # fmt: skip
    _write(tmp_path / "dit_compile.ready", ready)
    costs = world_report.fixed_costs(str(tmp_path))
    assert costs["dit"] == {
        "start_to_first_step_s": 50.0,  # across midnight
        "latent_caches": [{"bucket": "17x64x64", "seconds": 40.5, "waiting_s": 39.0}],
        "render_workers_failed": True,
        "step_ms_by_shape": step_times,
    }
    assert costs["vae"] == {
        "start_to_first_step_s": 30.0,
        "periodic_compile_s": 25.5,
        "median_steps_per_s": 39.0,
        "hooks_s": 4.0,  # 0.04 s a step over 100 steps
        "checkpoint_s": 1.0,
        "slow_intervals": [[300, 20.0]],
        "kernel_ms_per_step": 20.0,
        "busy_ms_per_step": 19.0,
        "span_ms_per_step": 25.0,
        "traced_host": {"launches_per_iter": 1245.0, "launch_ms_per_iter": 21.5,
                        "launch_threads": ["python"],
                        "cuda_api": [{"call": "cuLaunchKernelEx", "calls_per_iter": 1200.0,
                                      "ms_per_iter": 6.0}]},
    }  # fmt: skip
    assert costs["dit_compile_ready"] == ready
    assert world_report.costs_text(costs["dit"]) == (
        "first step after 50 s, latent caches 40 s (39 s waiting for clips), render workers "
        "failed, a step by batch: latents 256x5x8x8x16 47.0 ms (90 steps), "
        "latents 1024x1x8x8x16 97.5 ms median, 120.2 mean (host: data 3.0, dispatch 41.5, "
        "wait 70.0 ms) (30 steps)"
    )
    assert world_report.costs_text(costs["vae"]) == (
        "first step after 30 s, periodic programs compiled beside in 26 s, hooks 4 s, "
        "checkpoints 1 s, median 39.0 steps/s, 1 slower log intervals, "
        "kernels 20.0 ms a traced step (a step 25.6 ms at the median rate), "
        "device busy 19.0 of 25.0 ms a traced step, 1245 launches a traced step, 21.5 ms on "
        "python (cuLaunchKernelEx 1200x 6.0 ms)"
    )
    assert world_report.costs_text(ready) == "caption programs 41 s, encodes 98 s, steps 249 s"
    assert world_report.collect(str(tmp_path))["fixed_costs"] == costs
    assert world_report.fixed_costs(str(tmp_path / "none")) is None


def test_report_prints_conditioned_modes_per_sampler_setting(tmp_path, capsys):
    run = _run_dir(tmp_path)
    summary = json.loads((run / "eval" / "summary.json").read_text())
    fwd = {"color_acc": 1.0, "shape_acc": 1.0, "motion_acc": 0.88, "n": 96, "given_psnr": 34.71,
           "last_color_acc": 0.97, "continuity_ratio": 2.05}  # fmt: skip
    summary["sets"]["extend_forward"] = fwd
    summary["t2v_variants"] = {
        "t2v@autoguidance=1.0": {"color_acc": 1.0, "shape_acc": 0.5, "motion_acc": 0.75, "n": 4},
        "extend_forward@autoguidance=1.0": {**fwd, "continuity_ratio": 1.8, "motion_acc": 0.9},
    }
    _write(run / "eval" / "summary.json", summary)
    world_report.main(["--workdir", str(run)])
    printed = capsys.readouterr().out.splitlines()
    start = printed.index("| set, sampled with | motion | given dB | last-frame colour | "
                          "continuity |")  # fmt: skip
    assert printed[start + 2 : start + 4] == [
        "| extend_forward, the suite's settings | 0.88 | 34.7 | 0.97 | 2.05 |",
        "| extend_forward, autoguidance=1.0 | 0.90 | 34.7 | 0.97 | 1.80 |",
    ]
    assert world_report.conditioned_markdown(summary["sets"], {}) == ""

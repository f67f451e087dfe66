"""Analyses of world runs: evaluate.sweeps and tools/experiments/sample_sweeps.py (bars the
prompt did not ask for), tools/experiments/blur_permanence.py (permanence of blurred scenes),
tools/experiments/occluder_motion.py (how the occlusion scenes' bars moved),
tools/experiments/bar_word_probe.py (the text encoder's features of the bar's way),
tools/experiments/guide_sweep.py (a run's prompts under several sampler settings),
tools/experiments/permanence_by_subject.py (kept occlusion scenes by subject)."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from sora_jax import eval_files, evaluate, sample_run
from sora_jax.data import world

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "experiments"))
import bar_word_probe  # noqa: E402
import blur_permanence  # noqa: E402
import guide_sweep  # noqa: E402
import occluder_motion  # noqa: E402
import permanence_by_subject  # noqa: E402
import sample_sweeps  # noqa: E402

CFG = world.WorldConfig(resolutions=((64, 64),), num_frames=(17,))


def test_sweeps_flags_a_passing_bar_and_nothing_else():
    occluded = world.occlusion_suite(CFG, 8)
    bare = world.prompt_suite(CFG, 8, seed=0)  # one moving subject, no bar
    pans = [world.make_spec("red", "circle", "left", background=b, pan="left", seed=i)
            for i, b in enumerate(("texture", "gradient", "flat"))]  # fmt: skip
    render = lambda s: world.render(s, 64, 64, 17)  # noqa: E731
    assert all(evaluate.sweeps(render(s)) for s in occluded)
    assert not any(evaluate.sweeps(render(s)) for s in bare + pans)
    assert not evaluate.sweeps(render(occluded[0])[:1])  # one frame: nothing passes


def test_split_compares_bar_samples_with_the_bare_scenes_of_their_prompts(tmp_path):
    # Samples of bare prompts, half of which draw the bar of the same scene.
    bare = world.prompt_suite(CFG, 4, seed=0)
    drawn = [world.respec(s, 7 + i, occluder=i % 2 == 1) for i, s in enumerate(bare)]
    specs = [world.respec(s, 7 + i) for i, s in enumerate(bare)]  # what the prompts name
    videos = [world.render(s, 64, 64, 17) for s in drawn]
    folder = tmp_path / "samples" / "step_100"
    for i, (video, spec) in enumerate(zip(videos, specs)):
        sample_run.save_video(str(folder / f"{i:03d}"), video, 8.0, {"spec": spec})
    (folder / "occlusion_000.json").write_text(json.dumps({"spec": drawn[1]}))  # not a prompt
    (rows,) = sample_sweeps.main([str(tmp_path / "samples"), "--world_clips=0"])
    assert (rows["step"], rows["samples"], rows["with_bar"]) == (100, 4, 2)
    np.testing.assert_allclose(rows["flicker_ratio_without_bar"], 1.0)  # drawn as prompted
    want = evaluate.flicker_ratio([videos[1], videos[3]], [specs[1], specs[3]])
    np.testing.assert_allclose(rows["flicker_ratio_with_bar"], want)
    assert want > 2.0
    np.testing.assert_allclose(rows["flicker_ratio"], evaluate.flicker_ratio(videos, specs))
    assert (rows["kept_with_bar"], rows["kept_without_bar"]) == (2, 2)  # real clips keep it
    # What the eval suite and the training samples log of the same videos.
    bars = evaluate.bar_metrics(videos, specs)
    assert bars["bar_rate"] == 0.5
    assert bars["flicker_ratio_without_bar"] == rows["flicker_ratio_without_bar"]
    assert np.isnan(evaluate.bar_metrics([videos[1]], [specs[1]])["flicker_ratio_without_bar"])


def test_blur_permanence_grades_the_suites_scenes_blurred():
    rows = blur_permanence.main(["--sigmas=0,3", "--scenes=4"])
    assert [r["sigma"] for r in rows] == [0.0, 3.0]
    sharp, blurred = rows
    assert sharp["permanence"] == 1.0 and sharp["psnr_db"] > 100  # the clips themselves
    assert blurred["psnr_db"] < 30
    video = world.render(world.occlusion_suite(CFG, 1)[0], 64, 64, 17)
    np.testing.assert_array_equal(blur_permanence.blur(video, 0.0), video)
    soft = blur_permanence.blur(video, 2.0)
    assert soft.dtype == np.uint8 and soft.shape == video.shape
    assert (
        np.abs(np.diff(soft.astype(int), axis=2)).max()
        < np.abs(np.diff(video.astype(int), axis=2)).max()
    )


def test_occluder_motion_regrades_a_runs_scenes_by_how_the_bar_moved(tmp_path):
    specs = world.occlusion_suite(CFG, 6)
    real = [world.render(s, 64, 64, 17) for s in specs]
    # The suite's videos: the real clips, two of them played backwards (the bar goes the other
    # way; a growing subject then shrinks, against its spec).
    videos = [v[::-1] if i < 2 else v for i, v in enumerate(real)]
    kept = [evaluate.object_permanence(v, s)["permanent"] for v, s in zip(videos, specs)]
    (tmp_path / "eval").mkdir()
    eval_files.save_videos(str(tmp_path / "eval" / "t2v_occlusion_videos.npz"), videos,
                           [20 + i for i in range(6)])  # fmt: skip
    records = [
        {"seed": 20 + i, "spec": s, "permanence": evaluate.object_permanence(v, s)}
        for i, (s, v) in enumerate(zip(specs, videos))
    ]  # as the suite writes them
    (tmp_path / "eval" / "t2v_occlusion.json").write_text(json.dumps({"samples": records}))
    # A training-samples round: the first scene's bar erased (no bar drawn), the rest as real.
    erased = world.respec(specs[0], 0)
    erased["occluder"] = None
    samples = [world.render(erased, 64, 64, 17)] + real[1:3]
    folder = tmp_path / "dit" / "samples" / "step_500"
    for i, (video, spec) in enumerate(zip(samples, specs)):
        grade = evaluate.object_permanence(video, spec)  # the round's own grade of its sample
        sample_run.save_video(str(folder / f"occlusion_{i:03d}"), video, 8.0,
                              {"spec": spec, "grade": grade})  # fmt: skip
    out = tmp_path / "bars.json"
    rows = occluder_motion.main([str(tmp_path), f"--out={out}"])
    assert json.loads(out.read_text()) == rows
    suite, step = rows
    assert (suite["set"], suite["scenes"]) == ("eval t2v_occlusion", 6)
    assert suite["permanence"] == np.mean(kept) and all(kept[2:])
    assert suite["occluder_found"] == 1.0 and suite["occluder_direction_acc"] == 4 / 6
    assert suite["occluder_speed_ratio"] == 1.0
    assert suite["permanence_by_occluder"] == {"as captioned": [1.0, 4],
                                               "reversed": [np.mean(kept[:2]), 2]}  # fmt: skip
    steady = [i for i, s in enumerate(specs) if s["objects"][0]["motion"] not in ("grow", "shrink")]
    assert suite["steady"]["scenes"] == len(steady)  # subjects that neither grow nor shrink
    assert suite["steady"]["permanence"] == np.mean([kept[i] for i in steady])
    # Drawn at the world's speed (or its reverse): |ratio| 1 in every third of the speeds, no
    # relation to compute (a constant ratio: no correlation).
    by_speed = suite["by_world_speed"]
    assert sum(t["scenes"] for t in by_speed["thirds"]) == 6
    assert all(t["median_ratio"] == 1.0 for t in by_speed["thirds"])
    assert by_speed["speed_correlation"] is None
    assert (step["set"], step["scenes"]) == ("samples step_500", 3)
    assert step["occluder_found"] == 2 / 3 and step["occluder_direction_acc"] == 1.0
    assert step["permanence_by_occluder"]["not found"][1] == 1
    # By the drawn bar's speed: the real clips' at 1x, the reversed ones apart.
    assert suite["by_drawn_speed"] == {"0.8-1.25x": [1.0, 4], "reversed": [np.mean(kept[:2]), 2]}
    # Two workdirs (the same run twice): each set named by its run, then the suites' steady
    # scenes pooled.
    rows = occluder_motion.main([str(tmp_path), str(tmp_path)])
    pooled = rows[-1]
    assert rows[0]["set"] == f"{tmp_path.name} eval t2v_occlusion"
    assert pooled["scenes"] == 2 * len(steady)
    assert pooled["permanence"] == suite["steady"]["permanence"]
    assert pooled["by_drawn_speed"] == {
        k: [p, 2 * n] for k, (p, n) in suite["steady"]["by_drawn_speed"].items()}  # fmt: skip


@pytest.mark.slow  # MiniLM over 480 captions: ~45 s of CPU
def test_bar_word_probe_reads_the_way_from_the_end_words_of_the_order_wording(tmp_path):
    out = tmp_path / "probe.json"
    got = bar_word_probe.main(["--captions=240", f"--out={out}"])
    assert json.loads(out.read_text()) == got and got["captions"] == 240
    for row in got["rows"]:  # "from top to bottom": MiniLM's feature of each end word says
        ends = bar_word_probe.ENDS[row["orientation"]]  # whether the bar comes or goes there
        assert all(row[f"word_{e}"] == 1.0 for e in ends)
        assert 0.0 <= row["pooled"] <= 1.0
    ways = bar_word_probe.main(["--captions=240", "--wording=ways"])
    assert all(set(r) == {"orientation", "captions", "pooled"} for r in ways["rows"])
    spec = {"occluder": {"orientation": "horizontal", "start": 0.9, "end": 0.1}}
    assert bar_word_probe.order_caption("A bar sweeps upward, hiding it.", spec) == (
        "A bar sweeps from bottom to top, hiding it."
    )


@pytest.mark.slow  # four sampling passes compiled: ~30 s of CPU
def test_guide_sweep_grades_each_setting_on_the_same_prompts_and_pairs_them(fake_run):
    """Settings (CFG, autoguidance by an earlier checkpoint) on one generator: the same prompts
    and seeds each pass, a repeated setting the same grades, and bad settings fail before the
    weights load."""
    c = _config("tiny", "micro")
    workdir, _ = fake_run(c, [(2, 11), (4, 12)])
    settings = [{"guidance": 4.0}, {"guidance": 4.0, "autoguidance": 2.0, "autoguide_step": 2},
                {"guidance": 4.0}, {"guidance": 4.0, "factorized": True}]  # fmt: skip
    out = guide_sweep.sweep(c, workdir, settings, num_prompts=2)
    assert out["checkpoint_steps"]["dit"] == 4 and len(out["rows"]) == 4
    first, auto, again, factorized = out["rows"]
    assert factorized["n"] == 2 and "| guidance=4.0, factorized=True |" in guide_sweep.table(
        out["rows"]
    )
    assert first["n"] == auto["n"] == 2 and "shape_vs_first" not in first
    assert again["shape_right"] == first["shape_right"]  # same prompts, seeds and weights
    assert again["shape_vs_first"]["only_first"] == again["shape_vs_first"]["only_second"] == 0
    assert "| guidance=4.0, autoguidance=2.0, autoguide_step=2 |" in guide_sweep.table(out["rows"])
    assert guide_sweep.parse_setting("steps=3,sampler=heun") == {"steps": 3, "sampler": "heun"}
    assert guide_sweep.parse_setting("factorized=true") == {"factorized": True}
    with pytest.raises(ValueError, match="true or false"):
        guide_sweep.parse_setting("factorized=yes")
    with pytest.raises(ValueError, match="key=value"):
        guide_sweep.parse_setting("guidance")
    with pytest.raises(ValueError, match=r"\['gidance'\] are not in config.sample"):
        guide_sweep.sweep(c, workdir, [{"gidance": 4.0}])
    with pytest.raises(ValueError, match="needs autoguide_step"):
        guide_sweep.sweep(c, workdir, [{"autoguidance": 2.0}])


def _config(name: str, arg: str):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_permanence_by_subject_counts_each_scene_once_in_its_group(tmp_path):
    from sora_jax import eval_cases

    c = _config("world", "micro")
    c.eval.occlusion_prompts = 12
    cases = eval_cases.build_suite(c)["t2v_occlusion"]
    specs = permanence_by_subject.suite_specs(c)
    assert sorted(specs) == sorted(x.seed for x in cases)
    seeds = [x.seed for x in cases]
    kept = [i % 2 == 0 for i in range(len(seeds))]
    run = {"seed": seeds, "kept": kept, "vae_kept": [True] * len(seeds)}
    groups = permanence_by_subject.by_subject(run, specs)
    assert sum(g["scenes"] for g in groups.values()) == len(seeds)
    assert sum(g["kept"] for g in groups.values()) == sum(kept)
    assert all(g["vae_kept"] == g["scenes"] for g in groups.values())
    for seed, k in zip(seeds, kept, strict=True):  # one scene alone lands in its spec's group
        alone = permanence_by_subject.by_subject({"seed": [seed], "kept": [k]}, specs)
        name = permanence_by_subject.group(specs[seed])
        assert alone == {name: {"scenes": 1, "kept": int(k), "vae_kept": None}}
    assert "| run |" in permanence_by_subject.table([{"run": "r", "groups": groups}])
    with pytest.raises(ValueError, match="not among the suite's occlusion scenes"):
        permanence_by_subject.by_subject({"seed": [-1], "kept": [True]}, specs)

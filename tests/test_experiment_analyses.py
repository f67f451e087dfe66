"""Analyses of world runs: evaluate.sweeps and tools/experiments/sample_sweeps.py (bars the
prompt did not ask for), tools/experiments/blur_permanence.py (permanence of blurred scenes)."""

import json
import os
import sys

import numpy as np

from sora_jax import evaluate, sample_run
from sora_jax.data import world

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "experiments"))
import blur_permanence  # noqa: E402
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

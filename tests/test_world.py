"""Synthetic world: determinism, coverage, captions, holdout split, layout, occluder, validation."""

import collections
import copy
import json

import numpy as np
import pytest

from sora_jax import evaluate
from sora_jax.data import world, world_captions, world_geometry
from sora_jax.data.world import World, WorldConfig, make_spec, prompt_suite, render


@pytest.fixture(scope="module")
def specs():
    w = World(WorldConfig(seed=1))
    return [w.spec(i) for i in range(400)]


def test_same_index_gives_identical_bytes_and_other_index_differs():
    a, b = World(WorldConfig(seed=3)), World(WorldConfig(seed=3))
    for i in (0, 7, 123_456):
        assert a[i]["video"].tobytes() == b[i]["video"].tobytes()
        assert a[i]["caption"] == b[i]["caption"] and a[i]["spec"] == b[i]["spec"]
    assert a[0]["video"].tobytes() != a[1]["video"].tobytes()
    assert World(WorldConfig(seed=4))[0]["spec"] != a[0]["spec"]
    assert a[-1]["index"] == len(a) - 1 and a[-1]["spec"] == a.spec(len(a) - 1)


def test_every_vocabulary_item_appears(specs):
    seen = collections.defaultdict(set)
    for s in specs:
        subj = s["objects"][0]
        for key in ("color", "shape", "size", "motion"):
            seen[key].add(subj[key])
        seen["background"].add(s["background"]["kind"])
        seen["tone"].add(s["background"]["tone"])
        seen["pattern"].add(s["background"].get("pattern"))
        seen["pan"].add(s["camera"]["pan"])
        seen["objects"].add(len(s["objects"]))
        seen["occluder"].add(s["occluder"] and s["occluder"]["orientation"])
    assert seen["color"] == set(world.ALL_COLORS)
    assert seen["shape"] == set(world.ALL_SHAPES)
    assert seen["size"] == set(world.ALL_SIZES)
    assert seen["motion"] == set(world.ALL_MOTIONS)
    assert seen["background"] == set(world.ALL_BACKGROUNDS)
    assert seen["tone"] == {"dark", "light"}
    assert seen["pattern"] == {None, *world.PATTERNS}
    assert seen["pan"] == {"none", *world.PAN_DIRECTIONS}
    assert seen["objects"] == {1, 2, 3}
    assert seen["occluder"] == {None, "vertical", "horizontal"}


def test_captions_name_the_spec(specs):
    for s in specs:
        subj = s["objects"][0]
        caps = World.captions(s)
        assert set(caps) == set(world.STYLES) and len(set(caps.values())) == 3
        assert caps["short"].endswith(
            f"{subj['color']} {subj['shape']} {world_captions.MOTION_PHRASES[subj['motion']]}"
        )
        assert f"{subj['size']} {subj['color']} {subj['shape']}" in caps["medium"]
        for o in s["objects"]:
            assert f"{o['color']} {o['shape']}" in caps["long"]
        assert ("camera pans" in caps["long"]) == (s["camera"]["pan"] != "none")
        assert ("bar sweeps" in caps["long"]) == (s["occluder"] is not None)
        if s["occluder"] and not s["image"]:  # the way it sweeps on screen, pans included
            video = world.render(s, 64, 64, 17)
            way = "rightward" if s["occluder"]["orientation"] == "vertical" else "downward"
            track = evaluate.occluder_track(video, s)
            shown = np.flatnonzero(np.isfinite(track))
            assert (f" {way}, hiding" in caps["long"]) == (track[shown[-1]] > track[shown[0]])
            travel = abs(s["occluder"]["end"] - s["occluder"]["start"])  # frame lengths a clip
            pace = "slowly" if travel <= 0.8 else "steadily" if travel <= 1.1 else "quickly"
            assert f"bar sweeps {pace} " in caps["long"]
    with pytest.raises(ValueError, match="style"):
        world.describe(specs[0], "haiku")


def test_distractors_are_smaller_and_differently_coloured(specs):
    for s in specs:
        subj, others = s["objects"][0], s["objects"][1:]
        colors = [o["color"] for o in s["objects"]]
        assert len(set(colors)) == len(colors)
        assert all(o["diameter"] < 0.5 * subj["diameter"] for o in others)


def test_holdout_split_is_respected():
    held = ("red:triangle", "blue:circle")
    train = World(WorldConfig(holdout=held, split="train"))
    hold = World(WorldConfig(holdout=held, split="holdout"))
    for i in range(300):
        pairs = {f"{o['color']}:{o['shape']}" for o in train.spec(i)["objects"]}
        assert not pairs & set(held)
    subjects = collections.Counter(
        f"{hold.spec(i)['objects'][0]['color']}:{hold.spec(i)['objects'][0]['shape']}"
        for i in range(100)
    )
    assert set(subjects) == set(held)


def test_variable_resolution_duration_and_aspect():
    cfg = WorldConfig(resolutions=((32, 32), (32, 64), (48, 32)), num_frames=(1, 5, 9))
    w = World(cfg)
    layouts = {w[i]["video"].shape for i in range(60)}
    assert layouts == {(f, h, ww, 3) for f in (1, 5, 9) for h, ww in cfg.resolutions}
    spec = w.spec(3)
    for h, ww, f in ((24, 40, 5), (64, 36, 17)):
        clip = w.clip(3, h, ww, f)
        assert clip["video"].shape == (f, h, ww, 3) and clip["spec"] == spec


def test_image_fraction_yields_one_frame_stills():
    stills = World(WorldConfig(image_fraction=1.0, num_frames=(9,)))
    for i in range(20):
        clip = stills[i]
        assert clip["video"].shape[0] == 1 and clip["spec"]["image"]
        assert clip["prompt"].startswith("an image of ")
        assert all(o["motion"] == "still" for o in clip["spec"]["objects"])
    half = World(WorldConfig(image_fraction=0.5))
    frac = np.mean([half[i]["video"].shape[0] == 1 for i in range(200)])
    assert 0.35 < frac < 0.65


def test_occluder_hides_subject_at_middle_frame_only():
    w = World(WorldConfig(seed=5, occluder_prob=1.0, camera_pan_prob=0.3))
    for i in range(40):
        for h, ww, f in ((64, 64, 9), (32, 48, 5)):
            spec = w.spec(i)
            clear = render(dict(spec, occluder=None), h, ww, f)
            video = render(spec, h, ww, f)
            rgb = np.array(spec["objects"][0]["rgb"], np.uint8)
            subject = np.all(clear == rgb, -1)
            visible = (np.all(video == rgb, -1) & subject).sum((1, 2))
            assert visible[f // 2] == 0, (i, visible)  # fully hidden at t = 0.5
            assert visible[0] == subject[0].sum() and visible[-1] == subject[-1].sum()


def test_camera_pan_shifts_background_and_objects_together():
    spec = make_spec("red", "circle", "still", background="texture", pan="right", seed=2)
    video = render(spec, 64, 64, 9)
    shift = int(round(spec["camera"]["distance"] * 64))
    assert shift >= 3
    np.testing.assert_array_equal(video[-1][:, : 64 - shift], video[0][:, shift:])


def test_spec_is_json_serialisable_and_renders_identically():
    spec = World(WorldConfig(seed=2, occluder_prob=1.0)).spec(11)
    loaded = json.loads(json.dumps(spec))
    assert loaded == spec
    np.testing.assert_array_equal(render(loaded, 40, 56, 9), render(spec, 40, 56, 9))


def test_background_tones_are_far_from_the_palette():
    palette = np.array(list(world.PALETTE.values()), float)
    pair = np.linalg.norm(palette[:, None] - palette[None], axis=-1)
    assert pair[~np.eye(len(palette), dtype=bool)].min() >= 90
    tones = np.array([rgb for t in world.TONES.values() for rgb in t.values()], float)
    extremes = np.concatenate([tones - 12, tones + 12])  # the largest texture amplitude
    assert np.linalg.norm(extremes[:, None] - palette[None], axis=-1).min() >= 100


def test_shapes_have_equal_area():
    o = (np.arange(-400, 401) + 0.5) / 200.0  # r = 200 px
    areas = {
        s: world_geometry.shape_mask(s, o[None, :], o[:, None]).sum() / 200.0**2
        for s in world.ALL_SHAPES
    }
    np.testing.assert_allclose(list(areas.values()), np.pi, rtol=0.01)


def test_prompt_suite_is_balanced_and_deterministic():
    cfg = WorldConfig(motions=("left", "right", "still"), colors=("red", "blue"))
    suite = prompt_suite(cfg, 12, seed=1)
    assert suite == prompt_suite(cfg, 12, seed=1)
    motions = collections.Counter(s["objects"][0]["motion"] for s in suite)
    assert motions == {"left": 4, "right": 4, "still": 4}
    assert all(len(s["objects"]) == 1 and s["occluder"] is None for s in suite)
    assert prompt_suite(cfg, 0) == [] and world.occlusion_suite(cfg, 0) == []
    held = prompt_suite(WorldConfig(holdout=("red:star",), split="holdout"), 5)
    assert {(s["objects"][0]["color"], s["objects"][0]["shape"]) for s in held} == {("red", "star")}


def test_size_weights_set_the_subjects_size_frequencies():
    def sizes(cfg, n):
        return [World(cfg).spec(i)["objects"][0]["size"] for i in range(n)]

    counts = collections.Counter(sizes(WorldConfig(size_weights=(6, 3, 1)), 3000))
    freqs = [counts[s] / 3000 for s in world.ALL_SIZES]
    np.testing.assert_allclose(freqs, (0.6, 0.3, 0.1), atol=0.03)
    assert (
        counts["large"] > 0
        and 0 == collections.Counter(sizes(WorldConfig(size_weights=(1, 1, 0)), 600))["large"]
    )
    # Equal weights are the unweighted world, clip for clip (the size takes one uniform either
    # way, so no later draw of a clip moves), and the evaluation prompts ignore the weights.
    plain, equal = World(WorldConfig()), World(WorldConfig(size_weights=(2.0, 2.0, 2.0)))
    assert all(plain.spec(i) == equal.spec(i) for i in range(300))
    assert prompt_suite(WorldConfig(size_weights=(1, 0, 0)), 9) == prompt_suite(WorldConfig(), 9)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size_weights": (1.0, 1.0)},
        {"size_weights": (1.0, -1.0, 1.0)},
        {"size_weights": (0, 0, 0)},
        {"size_weights": (1.0, float("nan"), 1.0)},
        {"seed": -1},
        {"colors": ("red", "mauve")},
        {"shapes": ()},
        {"motions": ("left", "left")},
        {"resolutions": ((64,),)},
        {"resolutions": ((4, 64),)},
        {"num_frames": (0,)},
        {"image_fraction": 1.5},
        {"camera_pan_prob": -0.1},
        {"max_objects": 0},
        {"num_clips": 0},
        {"split": "test"},
        {"holdout": ("red-triangle",)},
        {"holdout": ("red:hexagon",)},
        {"split": "holdout"},  # no held-out pairs to draw from
    ],
)
def test_bad_config_raises_value_error(kwargs):
    with pytest.raises(ValueError):
        World(WorldConfig(**kwargs))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="motion"):
        make_spec("red", "circle", "teleport")
    with pytest.raises(ValueError, match="distractor"):
        make_spec("red", "circle", "left", distractors=[("red", "square", "up")])
    with pytest.raises(ValueError):
        render(make_spec("red", "circle", "left"), 4, 64, 9)
    with pytest.raises(IndexError):
        World(WorldConfig(num_clips=10))[10]
    spec = copy.deepcopy(make_spec("red", "circle", "left"))
    spec["objects"][0]["shape"] = "blob"
    with pytest.raises(ValueError, match="shape"):
        render(spec, 32, 32, 5)

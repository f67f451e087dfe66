"""The evaluation suite's sampler variants (`eval.t2v_variants`): the sets again under other
settings (guidance and its interval, steps, autoguidance by a kept checkpoint, text -> image ->
video), each reaching the sampler, and bad variants failing before any weights load."""

import json

import numpy as np
import pytest
from test_eval_suite import _micro_generator, load_world_config

from sora_jax import eval_cases, eval_suite, modes
from sora_jax import sample as sample_lib


def test_t2v_variants_resample_the_t2v_set_under_other_settings(tmp_path):
    c = load_world_config("micro")
    c.eval.update(num_prompts=2, num_per_set=1, batch_size=2, val_clips=1, vae=False,
                  sweep_shapes=("9x32x32",),
                  t2v_variants=({"guidance": c.eval.guidance}, {"steps": 1},
                                {"guidance_interval": (0.0, 1.0)},
                                {"guidance_interval": (0.2, 0.85)}))  # fmt: skip
    summary = eval_suite.run(c, str(tmp_path), generator=_micro_generator(c))
    same, fewer = f"t2v@guidance={c.eval.guidance}", "t2v@steps=1"
    whole, middle = "t2v@guidance_interval=0.0-1.0", "t2v@guidance_interval=0.2-0.85"
    assert list(summary["t2v_variants"]) == [same, fewer, whole, middle]
    assert summary["seed"] == c.eval.seed == 200  # the prompts' seed, for comparing runs
    assert summary["t2v_variants"][fewer]["settings"]["steps"] == 1
    assert summary["t2v_variants"][middle]["settings"]["guidance_interval"] == [0.2, 0.85]
    # The suite's own settings again: the very same samples and grades as the t2v set (guidance
    # over the whole trajectory is the suite's default interval).
    base = json.loads((tmp_path / "eval" / "t2v.json").read_text())["samples"]
    for label in (same, whole):
        again = json.loads((tmp_path / "eval" / f"{label}.json").read_text())["samples"]
        assert again == base and len(base) == 2
    assert len(json.loads((tmp_path / "eval" / f"{fewer}.json").read_text())["samples"]) == 2
    assert all(t["set"] != same for t in summary["targets"])  # reported, not a target


def test_guidance_interval_reaches_the_sampler():
    """A variant's guidance_interval changes the samples: guidance over part of the trajectory
    is neither the whole (the suite's default) nor none (guidance 1)."""
    c = load_world_config("micro")
    gen = _micro_generator(c, random_dit=True)
    cases = eval_cases.build_suite(c)["t2v"][:1]
    base = eval_suite._settings(c, guidance=4.0)
    run = lambda **kw: eval_suite.generate(gen, cases, {**base, **kw}, 1)[0]  # noqa: E731
    whole, part, off = run(), run(guidance_interval=(0.3, 0.7)), run(guidance=1.0)
    np.testing.assert_array_equal(whole, run(guidance_interval=(0.0, 1.0)))
    assert np.abs(part.astype(int) - whole).max() > 0 and np.abs(part.astype(int) - off).max() > 0


def test_autoguidance_reaches_the_sampler_with_the_guide_of_its_step():
    """A variant's autoguidance samples with the DiT of its autoguide_step as the weaker model:
    another model changes the samples, the model itself as its own guide does not (c - w = 0),
    and a step without a guide fails in one sentence."""
    c = load_world_config("micro")
    gen = _micro_generator(c, random_dit=True)
    gen.add_guide(5, _micro_generator(c, random_dit=True, noise_seed=3).dit)
    gen.add_guide(6, gen.dit)
    cases = eval_cases.build_suite(c)["t2v"][:1]
    run = lambda **kw: eval_suite.generate(  # noqa: E731
        gen, cases, eval_suite._settings(c, guidance=4.0, **kw), 1
    )[0]
    plain = run()
    assert eval_suite._settings(c, autoguidance=2.0, autoguide_step=5)["autoguide_step"] == 5
    assert "autoguidance" not in eval_suite._settings(c)  # runs without it read as before
    other = run(autoguidance=2.0, autoguide_step=5)
    itself = run(autoguidance=2.0, autoguide_step=6)
    assert np.abs(other.astype(int) - plain).max() > 8
    assert np.abs(itself.astype(int) - plain).max() <= 1  # another program: rounding at most
    with pytest.raises(ValueError, match="autoguide_step=7: no guide"):
        run(autoguidance=2.0, autoguide_step=7)
    # The conditioned modes too (configs/world.py's suite guides every set): image -> video's
    # generated frames change, its given first frame stays as it was.
    i2v = eval_cases.build_suite(c)["i2v"][:1]
    plain, other = (eval_suite.generate(gen, i2v, eval_suite._settings(c, guidance=4.0, **kw), 1)[0]
                    for kw in ({}, {"autoguidance": 2.0, "autoguide_step": 5}))  # fmt: skip
    assert np.abs(other[1:].astype(int) - plain[1:]).max() > 8
    assert np.abs(other[0].astype(int) - plain[0]).max() <= 2
    with pytest.raises(ValueError, match="needs autoguide_step"):
        sample_lib.check_settings(**eval_suite._settings(c, autoguidance=2.0))


def test_factorized_variant_samples_text_to_video_sets_through_an_image():
    """A factorized variant samples text -> video cases as text -> image -> video (their first
    frame the text -> image sample of the prompt and seed) and leaves images and conditioned
    cases as they are; its settings say so only when it is on."""
    c = load_world_config("micro")
    gen = _micro_generator(c, random_dit=True)
    suite = eval_cases.build_suite(c)
    t2v, t2i, i2v = suite["t2v"][:1], suite["t2i"][:1], suite["i2v"][:1]
    on = eval_suite._settings(c, guidance=4.0, factorized=True)
    off = eval_suite._settings(c, guidance=4.0, factorized=False)  # the recipe's suite has it
    assert on["factorized"] is True and "factorized" not in off
    video = eval_suite.generate(gen, t2v, on, 1)[0]
    case = t2v[0]
    image = modes.text_to_video(1, case.plan.height, case.plan.width, tf=gen.temporal_factor)
    first = gen.sample([case.prompt], image, seed=case.seed, **off).videos[0, 0]
    assert np.abs(video[0].astype(int) - first).max() <= 1
    assert np.abs(video.astype(int) - eval_suite.generate(gen, t2v, off, 1)[0]).max() > 8
    for cases in (t2i, i2v):  # sampled as without it
        np.testing.assert_array_equal(eval_suite.generate(gen, cases, on, 1)[0],
                                      eval_suite.generate(gen, cases, off, 1)[0])  # fmt: skip
    c.eval.t2v_variants = ({"factorized": "yes"},)
    with pytest.raises(ValueError, match="factorized must be True or False"):
        eval_suite.t2v_variants(c, list(suite))
    c.eval.t2v_variants = ({"factorized": True},)
    assert list(eval_suite.t2v_variants(c, list(suite))) == [
        f"{name}@factorized=True" for name in c.eval.variant_sets
    ]


def test_generator_loads_the_guide_from_its_runs_checkpoint_of_that_step(fake_run):
    """A workdir's generator takes autoguidance's weaker model from the DiT checkpoint of
    autoguide_step (EMA weights), the sampled model from the newest; a step not kept fails
    naming the steps that are."""
    import jax
    from flax import nnx

    c = load_world_config("micro")
    workdir, saved = fake_run(c, [(5, 11), (10, 12)])
    gen = sample_lib.Generator(c, workdir)
    assert gen.checkpoint_steps["dit"] == 10
    for step, state in ((10, nnx.state(gen.dit)), (5, gen._guide_state(5))):
        got = jax.tree.leaves(nnx.state(nnx.merge(gen._dit_def, state), nnx.Param))
        assert len(got) == len(saved[step])
        for a, b in zip(got, saved[step], strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert gen._guide_state(5) is gen._guide_state(5)  # loaded once
    with pytest.raises(FileNotFoundError, match=r"step 7 .*kept: \[5, 10\]"):
        gen._guide_state(7)


def test_variants_resample_every_set_of_variant_sets(tmp_path):
    c = load_world_config("micro")
    c.eval.update(num_prompts=1, num_per_set=2, occlusion_prompts=2, batch_size=2, val_clips=1,
                  vae=False, sweep_shapes=("9x32x32",),
                  t2v_variants=({"guidance": c.eval.guidance},),
                  variant_sets=("t2v", "t2v_occlusion"))  # fmt: skip
    summary = eval_suite.run(c, str(tmp_path), generator=_micro_generator(c))
    label = f"t2v_occlusion@guidance={c.eval.guidance}"
    assert list(summary["t2v_variants"]) == [f"t2v@guidance={c.eval.guidance}", label]
    # The suite's settings again: the occlusion set's samples, grades and permanence exactly.
    base = json.loads((tmp_path / "eval" / "t2v_occlusion.json").read_text())["samples"]
    again = json.loads((tmp_path / "eval" / f"{label}.json").read_text())["samples"]
    # (the suite's own set also grades each scene's VAE round trip: its ceiling)
    assert all("permanence_vae_round_trip" in r for r in base)
    base = [{k: v for k, v in r.items() if k != "permanence_vae_round_trip"} for r in base]
    assert again == base and len(base) == 2 and "permanence" in base[0]
    occlusion = summary["sets"]["t2v_occlusion"]
    assert summary["t2v_variants"][label]["permanence"] == occlusion["permanence"]
    # Per subject motion: the spec's motions of the two scenes, each a mean of 0/1 grades.
    motions = {r["spec"]["objects"][0]["motion"] for r in base}
    assert set(occlusion["permanence_by_motion"]) == motions
    assert all(v in (0.0, 0.5, 1.0) for v in occlusion["permanence_by_motion"].values())
    sizes = {r["spec"]["objects"][0]["size"] for r in base}
    assert set(occlusion["permanence_by_size"]) == sizes
    assert all(v in (0.0, 0.5, 1.0) for v in occlusion["permanence_by_size"].values())


def test_bad_t2v_variant_fails_before_any_weights_load(tmp_path):
    c = load_world_config("micro")
    c.eval.t2v_variants = ({"stepz": 60},)
    with pytest.raises(ValueError, match=r"eval.t2v_variants: \{'stepz': 60\} must override"):
        eval_suite.run(c, str(tmp_path), generator=object())
    c.eval.t2v_variants = ({"steps": 1},)
    c.eval.variant_sets = ("t2v", "t2v_ocluded")
    with pytest.raises(ValueError, match=r"eval.variant_sets=\('t2v', 't2v_ocluded'\) must name"):
        eval_suite.run(c, str(tmp_path), generator=object())
    c.eval.variant_sets = ("t2v",)
    c.eval.t2v_variants = ({"sampler": "rk4"},)
    with pytest.raises(ValueError, match="sampler must be one of"):
        eval_suite.run(c, str(tmp_path), generator=object())
    c.eval.t2v_variants = ({"guidance_interval": (0.9, 0.1)},)
    with pytest.raises(ValueError, match="guidance_interval must be 0 <= lo <= hi <= 1"):
        eval_suite.run(c, str(tmp_path), generator=object())
    c.eval.t2v_variants = ({"autoguidance": 2.0},)
    with pytest.raises(ValueError, match="needs autoguide_step"):
        eval_suite.run(c, str(tmp_path), generator=object())
    c.dit_train.update(steps=100, checkpoint_every_steps=25, keep_every_steps=50)
    for step in (25, 60, 100):  # not kept, not a checkpoint, the last step (that is the model)
        c.eval.t2v_variants = ({"autoguidance": 2.0, "autoguide_step": step},)
        with pytest.raises(ValueError, match=f"autoguide_step={step} is not a DiT checkpoint"):
            eval_suite.run(c, str(tmp_path), generator=object())
    c.eval.t2v_variants = ({"autoguidance": 2.0, "autoguide_step": 50},)
    assert list(eval_suite.t2v_variants(c, ["t2v"])) == ["t2v@autoguidance=2.0,autoguide_step=50"]
    c.eval.update(autoguidance=2.0, autoguide_step=60)  # the suite's own setting, checked too
    with pytest.raises(ValueError, match="autoguide_step=60 is not a DiT checkpoint"):
        eval_suite.run(c, str(tmp_path), generator=object())


def test_conditioned_clips_share_calls_and_sample_as_they_would_alone():
    """`generate` samples runs of a conditioned mode's clips (each with its own given frames or
    SDEdit input) in calls of up to `batch_size`: the same videos, up to float rounding, as one
    clip per call, with fewer calls."""
    c = load_world_config("micro")
    c.eval.update(num_prompts=1, num_per_set=1, modes_per_set=3)
    gen = _micro_generator(c, random_dit=True)
    calls = []
    real_sample = gen.sample

    def sample(prompts, plan, **kw):
        calls.append(len(prompts))
        return real_sample(prompts, plan, **kw)

    gen.sample = sample
    suite = eval_cases.build_suite(c)
    settings = eval_suite._settings(c)
    for name in ("extend_forward", "edit"):
        cases = suite[name]
        assert len(cases) == 3 and len({c_.truth.tobytes() for c_ in cases}) == 3
        calls.clear()
        together = eval_suite.generate(gen, cases, settings, batch_size=2)
        assert calls == [2, 1]
        calls.clear()
        alone = eval_suite.generate(gen, cases, settings, batch_size=1)
        assert calls == [1, 1, 1]
        for a, b in zip(together, alone, strict=True):
            assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1
        assert np.abs(together[0].astype(int) - together[1].astype(int)).max() > 10


def test_a_variant_may_name_its_own_sets(tmp_path):
    """A variant with "sets" re-samples those sets (conditioned modes too), not variant_sets';
    the suite's settings again give the same samples as the set's own."""
    c = load_world_config("micro")
    c.eval.update(num_prompts=1, num_per_set=1, batch_size=2, val_clips=1, vae=False,
                  sweep_shapes=("9x32x32",), sets=("t2v", "i2v", "extend_forward"),
                  t2v_variants=({"steps": 1},
                                {"guidance": c.eval.guidance, "sets": ("i2v", "extend_forward")}),
                  variant_sets=("t2v",))  # fmt: skip
    summary = eval_suite.run(c, str(tmp_path), generator=_micro_generator(c))
    g = f"guidance={c.eval.guidance}"
    assert list(summary["t2v_variants"]) == ["t2v@steps=1", f"i2v@{g}", f"extend_forward@{g}"]
    for name in ("i2v", "extend_forward"):
        base = json.loads((tmp_path / "eval" / f"{name}.json").read_text())["samples"]
        again = json.loads((tmp_path / "eval" / f"{name}@{g}.json").read_text())["samples"]
        assert again == base and "boundary_mad" in base[0]
        assert summary["t2v_variants"][f"{name}@{g}"]["continuity_ratio"] == pytest.approx(
            summary["sets"][name]["continuity_ratio"]
        )
    for bad in (("i2v", "i2w"), "i2v", ()):
        c.eval.t2v_variants = ({"steps": 1, "sets": bad},)
        with pytest.raises(ValueError, match="sets=.* must name some of the suite's sets"):
            eval_suite.t2v_variants(c, ["t2v", "i2v"])

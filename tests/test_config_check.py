"""sora_jax/config_check.py: a bad setting fails at start-up in one sentence, before any work."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sora_jax import config_check, recipe

ROOT = Path(__file__).resolve().parents[1]


def _config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize(
    "name,arg",
    [("tiny", None), ("tiny", "micro"), ("world", None), ("world", "micro"), ("world", "res=64"),
     ("vae", None),
     ("s", None), ("b", None), ("l", None), ("xl", None), ("l", "runlocal")],
)  # fmt: skip
def test_every_shipped_config_passes(name, arg):
    config_check.check(_config(name, arg))


@pytest.mark.parametrize(
    "field,value,expected",
    [
        ("dit_train.steps", -5, "an int >= 1"),
        ("dit_train.log_every_steps", 0, "an int >= 1"),
        ("vae_train.lr", 0.0, "a finite number > 0"),
        ("vae_train.lr", float("nan"), "a finite number > 0"),
        ("dit_train.lr_schedule", "cosin", "'cosine' or 'constant'"),
        ("vae_train.ema_decay", 1.5, "a number in [0, 1)"),
        ("dit_train.b2", 1.0, "a number in [0, 1)"),
        ("dit_train.caption_dropout", 1.2, "a number in [0, 1]"),
        ("dit_train.checkpoint_every_steps", 0, "an int >= 1"),
        ("dit_train.keep_checkpoints", 0, "an int >= 1"),
        ("dit_train.profile_steps", (5, 5), "() or (a, b) with 0 < a < b"),
        ("dit_train.grad_clip_norm", -1.0, "a finite number >= 0"),
        ("vae_train.kl_weight", -1e-6, "a finite number >= 0"),
        ("flow.shift", 0.0, "a finite number > 0"),  # t -> 0 for every step
        ("data.source", "folder", "one of ('world', 'array_record', 'tfds')"),
        ("data.max_crop_fraction", 1.5, "a number in [0, 1]"),
        ("text.max_length", 0, "an int >= 1"),
        ("flow.logit_std", -1.0, "a finite number > 0"),
        ("sample.steps", 0, "an int >= 1"),
        ("sample.sampler", "ddim", "one of ('euler', 'heun', 'dpmpp_2m')"),
        ("sample.autoguidance", -1.0, "a finite number >= 0"),
        ("eval.autoguide_step", -5, "an int >= 0"),
        ("eval.edit_strength", 0.0, "a number in (0, 1]"),
        ("eval.val_timesteps", (0.1, 1.5), "times in (0, 1]"),
        ("eval.batch_size", 0, "an int >= 1"),
    ],
)
def test_bad_value_fails_in_one_sentence_naming_it(field, value, expected):
    config = _config("world", "micro")
    section, key = field.split(".")
    config[section][key] = value
    with pytest.raises(ValueError) as e:
        config_check.check(config)
    msg = str(e.value)
    assert msg == f"config.{field}={value!r} is not valid; expected {expected}."
    assert msg.count(". ") == 0  # one sentence


@pytest.mark.parametrize(
    "section,key,value",
    [("dit_train", "caption_probs", {"prompt": -1.0}), ("dit_train", "caption_probs", {}),
     ("flow", "cond_mixture", {"t2v": 0.0, "i2v_head": 0.0})],
)  # fmt: skip
def test_weights_must_be_nonnegative_with_a_positive_sum(section, key, value):
    config = _config("world", "micro")
    config[section][key] = value
    with pytest.raises(ValueError, match=rf"config\.{section}\.{key}=.*positive sum\.$"):
        config_check.check(config)


def test_occlusion_samples_need_frames_before_and_after_the_bar():
    config = _config("tiny", "micro")
    config.dit_train.sample_num_occlusion = 2
    assert config.sample.num_frames == 5
    with pytest.raises(ValueError) as e:
        config_check.check(config)
    assert str(e.value) == (
        "config.dit_train.sample_num_occlusion=2 needs config.sample.num_frames >= 9 (frames "
        "before and after the bar), got 5."
    )
    config.sample.num_frames = 9
    config_check.check(config)
    config.dit_train.sample_num_occlusion = -1
    with pytest.raises(ValueError, match=r"sample_num_occlusion=-1 is not valid; expected an int"):
        config_check.check(config)


@pytest.mark.parametrize("section, value", [("eval", 1), ("sample", "yes")])
def test_factorized_must_be_a_bool(section, value):
    """ConfigDict keeps a bool field a bool; a config (or override) that adds the field anew
    with another type fails here."""
    config = _config("world", "micro")
    del config[section]["factorized"]
    config[section]["factorized"] = value
    with pytest.raises(ValueError, match=f"^config.{section}.factorized={value!r} is not valid; "
                                         "expected True or False.$"):  # fmt: skip
        config_check.check(config)


def test_sample_autoguidance_needs_the_step_that_guides():
    config = _config("tiny", None)
    config.sample.autoguidance = 2.0
    words = r"^config\.sample\.autoguidance=2\.0 needs config\.sample\.autoguide_step, .*> 0\.$"
    with pytest.raises(ValueError, match=words):
        config_check.check(config)
    config.sample.autoguide_step = 1000
    config_check.check(config)


def test_sections_a_config_lacks_are_skipped():
    config = _config("tiny", "micro")  # no eval section
    assert "eval" not in config
    config_check.check(config)


def test_recipe_checks_before_it_makes_the_workdir(tmp_path):
    config = _config("tiny", "micro")
    config.flow.shift = -1.0
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"config\.flow\.shift=-1\.0"):
        recipe.run(config, str(workdir))
    assert not workdir.exists()


def test_command_line_fails_at_start_up_without_a_trace(tmp_path):
    workdir = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "sora_jax.main", "--config=configs/tiny.py:micro",
         f"--workdir={workdir}", "--config.dit_train.steps=-5"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        "error: config.dit_train.steps=-5 is not valid; expected an int >= 1."
    )
    assert "Traceback" not in res.stderr
    assert not workdir.exists()  # nothing made, nothing lost


def test_image_text_length_is_at_most_the_text_encoders():
    config = _config("tiny", "micro")
    config.dit_train.image_text_length = 9
    with pytest.raises(ValueError) as e:
        config_check.check(config)
    assert str(e.value) == (
        "config.dit_train.image_text_length=9 is longer than config.text.max_length=8; "
        "expected 0 or at most that."
    )
    config.dit_train.image_text_length = 8
    config_check.check(config)
    config.dit_train.image_text_length = -2
    with pytest.raises(ValueError, match=r"image_text_length=-2 is not valid; expected an int"):
        config_check.check(config)

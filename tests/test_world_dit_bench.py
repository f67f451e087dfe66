"""tools/bench/world_dit.py: rows per (bucket, batch), config overrides, a bad override fails."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "bench"))
import world_dit  # noqa: E402


def test_rows_per_bucket_and_batch_with_overrides(tmp_path, capsys):
    out = tmp_path / "world_dit.json"
    world_dit.main(["--tiny", f"--out={out}", "--buckets=9x32x32,9x64x64", "--batches=2",
                    "--attention=xla", "--steps=1", "--override=dit.num_layers=1"])  # fmt: skip
    result = json.loads(out.read_text())
    assert result["overrides"] == ["dit.num_layers=1"]
    rows = result["rows"]
    assert [(r["bucket"], r["batch"]) for r in rows] == [("9x32x32", 2), ("9x64x64", 2)]
    assert all("error" not in r and r["step_s"] > 0 for r in rows)
    # Twice the height and width: four times the tokens of a clip (the micro VAE's 4x4x4 latents).
    assert rows[1]["tokens_per_step"] == 4 * rows[0]["tokens_per_step"]
    assert rows[0]["clips_per_s_vs_first"] == 1.0
    assert "9x64x64" in capsys.readouterr().out


def test_a_bad_override_fails_with_one_sentence(tmp_path):
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        world_dit.main(["--tiny", f"--out={tmp_path / 'x.json'}", "--override=dit.dim"])


@pytest.mark.slow  # two bf16 DiT steps compiled: ~35 s of CPU
def test_upcast_attention_row_differs_only_in_the_backward(tmp_path):
    """--attention=xla,xla_upcast: the XLA attention against its pre-2026-12-05 form (fp32
    backward products) on a bf16 DiT; the same forward, so the losses agree closely."""
    import jax

    from sora_jax.models import attention as attention_lib

    out = tmp_path / "world_dit.json"
    world_dit.main(["--tiny", f"--out={out}", "--batches=2", "--attention=xla,xla_upcast",
                    "--steps=1", "--override=dit.dtype=bfloat16"])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [r["attention"] for r in rows] == ["xla", "xla_upcast"]
    assert all("error" not in r for r in rows)
    assert abs(rows[0]["loss"] - rows[1]["loss"]) <= 0.02 * abs(rows[0]["loss"])

    def grad_text(name):
        q = jax.numpy.ones((1, 4, 2, 8), jax.numpy.bfloat16)

        def loss(q):
            return attention_lib.attention(q, q, q, implementation=name).sum()

        return jax.jit(jax.grad(loss)).lower(q).as_text()

    assert "xf32>, tensor<1x4x2x8xf32>" in grad_text("xla_upcast")  # upcast operands
    assert "xf32>, tensor<1x4x2x8xf32>" not in grad_text("xla")


@pytest.mark.slow  # three DiT steps compiled: ~35 s of CPU
def test_buckets_at_their_own_batches_compiled_side_by_side(tmp_path):
    """SHAPE:BATCH entries keep their batch; "recipe" measures the config's buckets at their
    batches and weights (--tiny: one bucket), the rows compiled two at a time."""
    out = tmp_path / "world_dit.json"
    world_dit.main(["--tiny", f"--out={out}", "--buckets=9x32x32:3,9x32x48", "--batches=2",
                    "--attention=xla", "--steps=1", "--compile_threads=2",
                    "--override=dit.num_layers=1"])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [(r["bucket"], r["batch"]) for r in rows] == [("9x32x32", 3), ("9x32x48", 2)]
    assert all("error" not in r and "weight" not in r for r in rows)
    world_dit.main(["--tiny", f"--out={out}", "--buckets=recipe", "--attention=xla",
                    "--steps=1", "--override=dit.num_layers=1"])  # fmt: skip
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert (row["bucket"], row["batch"], row["weight"]) == ("9x32x32", 2, 1.0)
    assert row["text_dtype"] == "float32"  # the micro DiT computes in float32
    assert result["recipe_mean_step_s"] == {"xla": row["step_s"]}


def test_recipe_means_weigh_each_settings_buckets():
    rows = [
        {"attention": "xla", "scan_layers": False, "weight": 0.75, "step_s": 0.04},
        {"attention": "xla", "scan_layers": False, "weight": 0.25, "step_s": 0.08},
        {"attention": "xla", "scan_layers": True, "weight": 0.5, "step_s": 0.06},
        {"attention": "xla", "scan_layers": True, "weight": 0.5, "error": "boom"},
        {"attention": "cudnn", "scan_layers": False, "step_s": 0.01},  # not a recipe row
    ]
    assert world_dit.recipe_means(rows) == {"xla_unscanned": 0.75 * 0.04 + 0.25 * 0.08}


def test_image_rows_carry_image_text_length_tokens(tmp_path):
    """--override=dit_train.image_text_length=N: image buckets' rows have N text tokens a clip
    (the micro text encoder's 16 otherwise), video rows all of them."""
    out = tmp_path / "world_dit.json"
    world_dit.main(["--tiny", f"--out={out}", "--buckets=1x32x32:2,9x32x32:2", "--attention=xla",
                    "--steps=1", "--override=dit.num_layers=1",
                    "--override=dit_train.image_text_length=5"])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [r["text_tokens"] for r in rows] == [5, 16]


def test_wait_for_file_returns_once_it_exists_or_after_its_timeout(tmp_path, capsys):
    flag = tmp_path / "done"
    world_dit.wait_for_file("")  # nothing to wait for
    world_dit.wait_for_file(str(flag), timeout_s=0.1)
    assert "did not appear" in capsys.readouterr().out
    flag.touch()
    world_dit.wait_for_file(str(flag), timeout_s=0.0)
    assert capsys.readouterr().out == ""


@pytest.mark.slow  # ~45 s of CPU
def test_feeds_time_one_program_with_moving_batches_and_loop_reads(tmp_path):
    """--feeds=same,fresh,loop: three rows of one compiled step (one batch buffer; a new buffer
    each step; and each step's loss read once the next is queued), each continuing the state."""
    out = tmp_path / "world_dit.json"
    world_dit.main(["--tiny", f"--out={out}", "--batches=2", "--attention=xla", "--steps=2",
                    "--feeds=same,fresh,loop", "--override=dit.num_layers=1"])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [r["feed"] for r in rows] == ["same", "fresh", "loop"]
    assert all("error" not in r and 0 < r["dispatch_ms"] <= 1e3 * r["step_s"] for r in rows)
    assert len({r["compile_s"] for r in rows}) == 1  # compiled once
    assert len({r["loss"] for r in rows}) == 3  # each row trained on from the last
    with pytest.raises(SystemExit, match="feeds"):
        world_dit.main(["--tiny", f"--out={out}", "--feeds=same,random"])


def test_a_failed_feed_leaves_the_later_feeds_of_its_program_untimed(tmp_path, monkeypatch):
    """A step that fails (e.g. out of memory) has taken the donated state with it: the row
    records its error and the later feeds of that program say why they were not timed."""
    out = tmp_path / "world_dit.json"
    measure = world_dit.measure

    def failing(prepared, steps, trace_dir="", feed="same"):
        if feed == "same":
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")
        return measure(prepared, steps, trace_dir, feed)

    monkeypatch.setattr(world_dit, "measure", failing)
    world_dit.main(["--tiny", f"--out={out}", "--batches=2", "--attention=xla", "--steps=1",
                    "--feeds=same,fresh", "--override=dit.num_layers=1"])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert "RESOURCE_EXHAUSTED" in rows[0]["error"] and "step_s" not in rows[0]
    assert rows[1]["error"].startswith("RuntimeError: not timed: an earlier feed's step failed")

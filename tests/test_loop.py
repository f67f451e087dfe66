"""The generic train loop: loss falls, resume equals an uninterrupted run, the non-finite guard,
optimizer settings from the config, metrics (aux averages, timestep bins, time split), hooks,
profiling and the model-shape check on resume."""

import glob
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from sora_jax.train import checkpoint as ckpt_lib
from sora_jax.train import guards, loop, precompile
from sora_jax.train import metrics as metrics_lib
from sora_jax.train import state as state_lib


class ToyTask:
    """Linear regression y = x W* with batches a pure function of the step.

    `nan_steps`: NaN targets (a bad batch). `blowup_steps`: a finite batch whose `scale` makes
    the loss and only the bias gradient overflow to inf (a diverging parameter).
    """

    name = "toy"

    def __init__(self, nan_steps=(), blowup_steps=(), width=4):
        self.w_true = np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32)
        self.nan_steps, self.blowup_steps = set(nan_steps), set(blowup_steps)
        self.width = width

    def create_model(self, rngs):
        return nnx.Linear(self.width, 2, rngs=rngs)

    def frozen(self):
        return None

    def loss(self, model, frozen, batch, rng):
        x = batch["x"][:, : self.width]
        per_sample = jnp.mean(jnp.square(model(x) - batch["y"]), axis=-1)
        overflow = batch["scale"] * batch["scale"] * jnp.sum(model.bias[...] + 1.0)
        t = jnp.arange(per_sample.shape[0]) / per_sample.shape[0]
        aux = metrics_lib.timestep_binned(per_sample, t, num_bins=4)
        return jnp.mean(per_sample) + overflow, aux

    def batches(self, start_step):
        step = start_step
        while True:
            x = np.random.default_rng(step).normal(size=(8, 4)).astype(np.float32)
            y = x @ self.w_true
            if step in self.nan_steps:
                y = y * np.nan
            scale = np.float32(1e30 if step in self.blowup_steps else 0.0)
            yield {"x": x, "y": y, "scale": scale}
            step += 1


def _cfg(steps, **kw):
    base = dict(
        steps=steps,
        lr=0.05,
        lr_warmup_steps=2,
        log_every_steps=1,
        checkpoint_every_steps=5,
        ema_decay=0.9,
    )
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _config(**kw):
    return ml_collections.ConfigDict(
        dict(seed=0, mesh=dict(data=1, fsdp=-1, context=1, tensor=1), **kw)
    )


def _restore(workdir, task, cfg, step=None):
    _, abstract, _, _, shardings, _ = state_lib.abstract_train_state(
        task, cfg, jax.sharding.Mesh(np.array(jax.devices()[:1]), ("fsdp",)), 0
    )
    ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    restored = ck.restore(ckpt_lib.abstract_like(abstract), step)
    ck.close()
    return restored


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_loss_falls_on_fixed_seed(tmp_path):
    result = loop.train(ToyTask(), _config(), _cfg(40), str(tmp_path))
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.2 * losses[0]
    rows = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert {"loss", "grad_norm", "param_norm", "update_norm", "lr", "eta_s"} <= set(rows[0])
    # Aux metrics are averaged: four timestep bins of the per-sample loss average to the loss.
    bins = [rows[-1][f"loss_t{i}"] for i in range(4)]
    np.testing.assert_allclose(np.mean(bins), rows[-1]["loss"], rtol=1e-5)


def test_interrupted_resume_is_bit_identical(tmp_path):
    """Exception in step 12 (last checkpoint 10), restart, run to 15 == straight 15 steps."""
    cfg = _cfg(15)
    straight = loop.train(ToyTask(), _config(), cfg, str(tmp_path / "a"))

    class Interrupt(Exception):
        pass

    class Dying(ToyTask):
        def batches(self, start_step):
            for i, b in enumerate(super().batches(start_step)):
                if start_step + i == 11:
                    raise Interrupt()
                yield b

    with pytest.raises(Interrupt):
        loop.train(Dying(), _config(), cfg, str(tmp_path / "b"))
    resumed = loop.train(ToyTask(), _config(), cfg, str(tmp_path / "b"))
    _assert_trees_equal(straight.state, resumed.state)
    assert [h["loss"] for h in straight.history if h["step"] > 10] == [
        h["loss"] for h in resumed.history
    ]
    # metrics.jsonl of the resumed run: step 11 (logged before the crash) is not duplicated.
    rows_a = metrics_lib.read_jsonl(str(tmp_path / "a" / "metrics.jsonl"))
    rows_b = metrics_lib.read_jsonl(str(tmp_path / "b" / "metrics.jsonl"))
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]


def test_time_budget_stops_at_a_log_step_and_a_rerun_finishes_identically(tmp_path):
    """max_train_seconds: the stage saves and ends at the first log step past the budget; the
    next invocation resumes, so budgeted pieces add up to the uninterrupted run."""
    cfg = _cfg(20, log_every_steps=4, checkpoint_every_steps=100)
    straight = loop.train(ToyTask(), _config(), cfg, str(tmp_path / "a"))

    class Slow(ToyTask):
        def batches(self, start_step):
            for b in super().batches(start_step):
                time.sleep(0.02)
                yield b

    budget = _cfg(20, log_every_steps=4, checkpoint_every_steps=100, max_train_seconds=1e-9)
    first = loop.train(Slow(), _config(), budget, str(tmp_path / "b"))
    assert first.stopped_early and int(first.state.step) == 4  # the first log step
    assert ckpt_lib.Checkpointer(str(tmp_path / "b" / "checkpoints")).latest_step() == 4
    rest = loop.train(ToyTask(), _config(), cfg, str(tmp_path / "b"))
    assert not rest.stopped_early and int(rest.state.step) == 20
    _assert_trees_equal(straight.state, rest.state)
    with pytest.raises(ValueError, match="max_train_seconds"):
        guards.TimeBudget(-1.0)


def test_training_closes_the_batch_generator(tmp_path):
    """The pipeline's cleanup (prefetch worker processes) runs when training ends, also when
    a step raises."""
    events = []

    class Tracked(ToyTask):
        def batches(self, start_step):
            try:
                yield from super().batches(start_step)
            finally:
                events.append("closed")

    loop.train(Tracked(), _config(), _cfg(3), str(tmp_path / "a"))
    assert events == ["closed"]

    class Failing(Tracked):
        def loss(self, model, frozen, batch, rng):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        loop.train(Failing(), _config(), _cfg(3), str(tmp_path / "b"))
    assert events == ["closed", "closed"]


def test_nan_at_step_5_is_skipped_and_counted(tmp_path):
    result = loop.train(ToyTask(nan_steps={4}), _config(), _cfg(8), str(tmp_path))
    assert int(result.state.skipped) == 1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(result.state.params))
    rows = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["nonfinite"] for r in rows] == [0, 0, 0, 0, 1, 0, 0, 0]
    assert [r["skipped"] for r in rows] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_three_nonfinite_in_a_row_stop_with_diagnostic(tmp_path):
    """Bad batches at steps 5-7 stop the run at 7 with a checkpoint of step 4's parameters."""
    cfg = _cfg(20, lr_schedule="constant")  # the same lr at step 4 of a 4- and a 20-step run
    good = loop.train(ToyTask(), _config(), _cfg(4, lr_schedule="constant"), str(tmp_path / "a"))
    with pytest.raises(loop.NonFiniteError) as err:
        loop.train(ToyTask(nan_steps={4, 5, 6}), _config(), cfg, str(tmp_path / "b"))
    msg = str(err.value)
    assert msg.startswith("3 consecutive steps had a non-finite loss or gradient")
    assert "step 5: the batch has non-finite values in ['y']" in msg
    assert "step 7:" in msg
    restored = _restore(str(tmp_path / "b"), ToyTask(), cfg)
    assert restored.step == 7 and int(restored.state.skipped) == 3
    _assert_trees_equal(good.state.params, restored.state.params)
    _assert_trees_equal(good.state.opt_state, restored.state.opt_state)


def test_diagnostic_names_parameter_with_non_finite_gradient(tmp_path):
    with pytest.raises(loop.NonFiniteError) as err:
        loop.train(
            ToyTask(blowup_steps={2, 3}), _config(), _cfg(9, nonfinite_stop_steps=2), str(tmp_path)
        )
    msg = str(err.value)
    assert msg.startswith("2 consecutive steps")
    assert "step 3: the loss is non-finite with a finite batch; " in msg
    assert "non-finite gradients in 1 parameters (bias)" in msg


def test_lr_schedule_warmup_then_cosine():
    sched = loop.make_schedule(_cfg(100, lr=1.0, lr_warmup_steps=10, lr_min_ratio=0.1))
    np.testing.assert_allclose(
        [sched(0), sched(5), sched(10), sched(55), sched(100)],
        [0.0, 0.5, 1.0, 0.55, 0.1],
        atol=1e-6,
    )
    const = loop.make_schedule(_cfg(100, lr=2.0, lr_warmup_steps=4, lr_schedule="constant"))
    np.testing.assert_allclose([const(2), const(4), const(90)], [1.0, 2.0, 2.0], atol=1e-6)
    with pytest.raises(ValueError, match="lr_schedule 'linear' is unknown"):
        loop.make_schedule(_cfg(10, lr_schedule="linear"))


def test_weight_decay_mask_from_config():
    _, params, _ = nnx.split(nnx.Linear(4, 2, rngs=nnx.Rngs(0)), nnx.Param, ...)

    def mask(**kw):
        m = loop.weight_decay_mask(params, _cfg(1, **kw))
        return dict(zip(loop.param_names(params), jax.tree.leaves(m)))

    assert mask() == {"bias": False, "kernel": True}
    assert mask(weight_decay_exclude=("ker",)) == {"bias": False, "kernel": False}
    assert mask(weight_decay_min_ndim=1) == {"bias": True, "kernel": True}


def test_grad_clip_bounds_the_gradient():
    """With a huge Adam eps the update is -lr * g / eps, so its norm shows the clipped g."""
    params = {"w": jnp.zeros((3,))}
    grads = {"w": jnp.array([30.0, 40.0, 0.0])}  # norm 50
    for clip, expected in ((0.5, 0.5), (0.0, 50.0)):
        tx = loop.make_optimizer(
            _cfg(
                10,
                lr=1.0,
                lr_warmup_steps=0,
                lr_schedule="constant",
                grad_clip_norm=clip,
                adam_eps=1e6,
                b1=0.0,
            )
        )
        updates, _ = tx.update(grads, tx.init(params), params)
        np.testing.assert_allclose(optax.tree.norm(updates) * 1e6, expected, rtol=1e-3)


def test_binned_loss_ignores_empty_bins_over_an_interval():
    b = metrics_lib.timestep_binned(jnp.array([1.0, 3.0, 5.0]), jnp.array([0.1, 0.2, 0.9]), 2)
    assert float(b["loss_t0"]) == 2.0 and float(b["loss_t1"]) == 5.0
    empty = metrics_lib.timestep_binned(jnp.array([4.0]), jnp.array([0.1]), 2)
    assert np.isnan(float(empty["loss_t1"]))
    rows = [{k: float(v) for k, v in d.items()} for d in (b, empty)]
    assert metrics_lib.mean_rows(rows) == {"loss_t0": 3.0, "loss_t1": 5.0}


def test_time_split_adds_up_and_profile_trace_is_written(tmp_path):
    cfg = _cfg(6, log_every_steps=3, profile_steps=(2, 4))
    loop.train(ToyTask(), _config(), cfg, str(tmp_path))
    rows = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [3, 6]
    for r in rows:
        parts = sum(r[f"time_{k}"] for k in ("data_s", "compute_s", "checkpoint_s", "hooks_s"))
        np.testing.assert_allclose(parts, 1.0 / r["steps_per_s"], rtol=1e-6)
    assert glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    # The kernels of the 2 traced steps, summed: small enough to come back from a GPU machine.
    with open(tmp_path / "profile" / "summary.json") as f:
        summary = json.load(f)
    assert summary["steps"] == [2, 4] and summary["backend"] == "cpu"
    assert summary["total_ms"] > 0 and summary["kernels"] >= 1
    np.testing.assert_allclose(sum(r["ms_per_iter"] for r in summary["rows"]),
                               summary["total_ms"], rtol=1e-6)  # fmt: skip
    # Each finished step's wall time by batch shape (the first step has no previous one).
    with open(tmp_path / "step_times.json") as f:
        step_times = json.load(f)
    assert list(step_times) == ["x 8x4, y 8x2"] and step_times["x 8x4, y 8x2"]["steps"] == 5
    # and the host's share of them: all but the first step (it compiles) were dispatched
    t = step_times["x 8x4, y 8x2"]
    assert {"mean_ms", "data_ms", "dispatch_ms", "wait_ms"} <= set(t)
    assert 0 < t["dispatch_ms"] and 0 <= t["wait_ms"] and 0 <= t["data_ms"]


def test_step_times_are_the_intervals_between_finished_steps_per_shape(monkeypatch, tmp_path):
    """The median and 90th percentile per shape of the time since the previous finished step."""
    clock = iter([0.0, 0.05, 0.10, 0.30, 0.35, 0.40, 0.46, 2.46])
    monkeypatch.setattr(metrics_lib.time, "perf_counter", lambda: next(clock))
    times = metrics_lib.StepTimes()
    for label in ["a", "a", "b", "a", "a", "a", "a", "b"]:
        times.finished(label)
    assert times.summary() == {  # a: 50, 200, 50, 50, 60 ms; b: 50 ms and 2 s (a pause)
        "a": {"steps": 5, "median_ms": 50.0, "p90_ms": 144.0, "mean_ms": 82.0},
        "b": {"steps": 2, "median_ms": 1025.0, "p90_ms": 1805.0, "mean_ms": 1025.0},
    }
    assert list(times.summary()) == ["a", "b"]  # the most frequent first
    times.dispatched("a", data_s=0.002, dispatch_s=0.004)
    times.dispatched("a", data_s=0.004, dispatch_s=0.006)
    clock = iter([3.0])
    times.finished("a", wait_s=0.03)
    assert times.summary()["a"] == {
        "steps": 6,
        "median_ms": 55.0,
        "p90_ms": 370.0,
        "mean_ms": 158.33,
        "data_ms": 3.0,
        "dispatch_ms": 5.0,
        "wait_ms": 30.0,
    }  # + 540 ms since the last
    key = (("latents", (256, 5, 8, 8, 16), "float32"), ("skipped", (), "int32"))
    assert precompile.shapes_text(key) == "latents 256x5x8x8x16"
    times.write(str(tmp_path / "t.json"))
    with open(tmp_path / "t.json") as f:
        assert json.load(f) == times.summary()


def test_a_trace_that_cannot_start_costs_a_warning_not_the_run(tmp_path, caplog):
    jax.profiler.start_trace(str(tmp_path / "other"))  # one trace at a time per process
    try:
        loop.train(ToyTask(), _config(), _cfg(4, log_every_steps=2, profile_steps=(2, 3)),
                   str(tmp_path / "run"))  # fmt: skip
    finally:
        jax.profiler.stop_trace()
    rows = metrics_lib.read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [2, 4]  # every step trained
    assert "did not start" in caplog.text
    assert not (tmp_path / "run" / "profile" / "summary.json").exists()


def test_periodic_hook_runs_after_every_step_with_the_model(tmp_path):
    seen = []

    class Hooked(ToyTask):
        def periodic(self, step, ctx):
            assert ctx.is_main_process and ctx.workdir == str(tmp_path)
            out = ctx.model(use_ema=False)(jnp.ones((1, 4)))
            seen.append((step, int(ctx.state.step), out.shape))

    loop.train(Hooked(), _config(), _cfg(3), str(tmp_path))
    assert seen == [(1, 1, (1, 2)), (2, 2, (1, 2)), (3, 3, (1, 2))]


def test_preemption_saves_before_running_hooks(tmp_path):
    seen = []

    class Hooked(ToyTask):
        def periodic(self, step, ctx):
            seen.append(step)
            if step == 2:  # the notice arrives now: step 3 runs, then saves and stops
                os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(loop.Preempted):
        loop.train(Hooked(), _config(), _cfg(10), str(tmp_path))
    assert seen == [1, 2]  # no hooks at the step that stops: the save does not wait for them
    saved = os.listdir(tmp_path / "checkpoints")
    assert sorted(int(d) for d in saved if d.isdigit()) == [3]


def test_resume_with_changed_model_shape_names_the_fields(tmp_path):
    class Wide(ToyTask):
        def __init__(self, config):
            super().__init__(width=config.toy.width)

    loop.train(Wide(_config(toy=dict(width=4))), _config(toy=dict(width=4)), _cfg(5), str(tmp_path))
    config = _config(toy=dict(width=3))
    with pytest.raises(ValueError, match=r"\(toy.width is 4 in the checkpoint but 3 now\)"):
        loop.train(Wide(config), config, _cfg(10), str(tmp_path))

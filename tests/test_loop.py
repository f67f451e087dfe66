"""The generic train loop: loss falls, resume equals an uninterrupted run, NaNs are skipped."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from sora_jax.train import loop
from sora_jax.train import metrics as metrics_lib


class ToyTask:
    """Linear regression y = x W* with batches a pure function of the step."""

    name = "toy"

    def __init__(self, nan_steps=()):
        self.w_true = np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32)
        self.nan_steps = set(nan_steps)

    def create_model(self, rngs):
        return nnx.Linear(4, 2, rngs=rngs)

    def frozen(self):
        return None

    def loss(self, model, frozen, batch, rng):
        pred = model(batch["x"])
        return jnp.mean(jnp.square(pred - batch["y"])), {}

    def batches(self, start_step):
        step = start_step
        while True:
            x = np.random.default_rng(step).normal(size=(8, 4)).astype(np.float32)
            y = x @ self.w_true
            if step in self.nan_steps:
                y = y * np.nan
            yield {"x": x, "y": y}
            step += 1


def _cfg(steps, **kw):
    return ml_collections.ConfigDict(
        dict(steps=steps, lr=0.05, lr_warmup_steps=2, log_every_steps=1,
             checkpoint_every_steps=5, ema_decay=0.9, **kw)
    )


def _config():
    return ml_collections.ConfigDict(dict(seed=0, mesh=dict(data=1, fsdp=-1, context=1, tensor=1)))


def test_loss_falls_on_fixed_seed(tmp_path):
    result = loop.train(ToyTask(), _config(), _cfg(40), str(tmp_path))
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.2 * losses[0]
    rows = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert len(rows) == 40 and {"loss", "grad_norm", "steps_per_s"} <= set(rows[0])


def test_interrupted_resume_is_bit_identical(tmp_path):
    """Kill after step 10 (checkpoint), restart, run to 15 == straight 15 steps."""
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
    for x, y in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    losses_a = [h["loss"] for h in straight.history if h["step"] > 10]
    losses_b = [h["loss"] for h in resumed.history]
    assert losses_a == losses_b


def test_non_finite_update_is_skipped_and_counted(tmp_path):
    result = loop.train(ToyTask(nan_steps={3}), _config(), _cfg(6), str(tmp_path))
    assert int(result.state.skipped) == 1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(result.state.params))

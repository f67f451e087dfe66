"""The step is compiled for every bucket at once before training (loop.py `precompile`) and the
DiT latent caches are encoded in the order the steps first need them (dit_latent_cache.py): the
same numbers as compiling at each bucket's first step, and no shape compiled twice."""

import contextlib
import importlib.util
import pathlib
import time

import jax
import ml_collections
import numpy as np
import pytest
from jax import monitoring
from test_loop import ToyTask, _assert_trees_equal, _cfg, _config
from test_train_samples import _task

from sora_jax.data import buckets as buckets_lib
from sora_jax.train import loop
from sora_jax.train.precompile import batch_key

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class TwoShapeTask(ToyTask):
    """ToyTask with batches of 8 rows on even steps and 4 rows on odd steps: two compiles."""

    def batches(self, start_step):
        for i, b in enumerate(super().batches(start_step)):
            n = 8 if (start_step + i) % 2 == 0 else 4
            yield {"x": b["x"][:n], "y": b["y"][:n], "scale": b["scale"]}

    def batch_specs(self, start, end):
        def spec(n):
            return {
                "x": jax.ShapeDtypeStruct((n, 4), np.float32),
                "y": jax.ShapeDtypeStruct((n, 2), np.float32),
                "scale": jax.ShapeDtypeStruct((), np.float32),
            }

        return [spec(8), spec(4)]


@contextlib.contextmanager
def count_backend_compiles():
    counts = []

    def listener(event, duration, **kwargs):
        if event == COMPILE_EVENT:
            counts.append(duration)

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        monitoring.unregister_event_duration_listener(listener)


def test_precompiled_run_equals_compiling_at_first_use_and_compiles_nothing_twice(tmp_path):
    jax.clear_caches()
    with count_backend_compiles() as lazy:
        a = loop.train(TwoShapeTask(), _config(), _cfg(6, precompile=False), str(tmp_path / "a"))
    jax.clear_caches()
    with count_backend_compiles() as ahead:
        b = loop.train(TwoShapeTask(), _config(), _cfg(6, precompile=True), str(tmp_path / "b"))
    _assert_trees_equal(a.state, b.state)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert len(ahead) == len(lazy) > 0


def test_without_overlap_the_first_step_waits_for_every_compile(tmp_path):
    """precompile_overlap="no" (the GPU default): nothing runs next to a compile; same numbers."""
    from sora_jax.train import precompile as precompile_lib

    waited = []

    class Recorder(precompile_lib.Precompiler):
        def wait(self, key):
            super().wait(key)
            waited.append(all(f.done() for f in self.all) and not self.futures)

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.all = list(self.futures.values())

    real = precompile_lib.Precompiler
    precompile_lib.Precompiler = Recorder
    try:
        a = loop.train(TwoShapeTask(), _config(), _cfg(4, precompile_overlap="no"),
                       str(tmp_path / "a"))  # fmt: skip
    finally:
        precompile_lib.Precompiler = real
    b = loop.train(TwoShapeTask(), _config(), _cfg(4, precompile=False), str(tmp_path / "b"))
    _assert_trees_equal(a.state, b.state)
    assert waited and all(waited)  # every compile had finished before the first step ran
    assert precompile_lib.overlap_setting(_cfg(1)) is (jax.default_backend() != "gpu")  # auto


def test_a_bad_precompile_overlap_fails_before_training(tmp_path):
    import pytest

    with pytest.raises(ValueError, match=r"precompile_overlap='maybe'; expected one of"):
        loop.train(TwoShapeTask(), _config(), _cfg(2, precompile_overlap="maybe"), str(tmp_path))
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_a_spec_no_batch_has_is_compiled_but_never_waited_for(tmp_path):
    """A shape that never comes (a run shorter than its first step) costs a compile, no wait."""

    class ExtraSpec(TwoShapeTask):
        def batch_specs(self, start, end):
            first = super().batch_specs(start, end)
            extra = {k: jax.ShapeDtypeStruct((16, *v.shape[1:]) if v.shape else (), v.dtype)
                     for k, v in first[0].items()}  # fmt: skip
            return [*first, extra]

    base = loop.train(TwoShapeTask(), _config(), _cfg(4), str(tmp_path / "a"))
    extra = loop.train(ExtraSpec(), _config(), _cfg(4), str(tmp_path / "b"))
    _assert_trees_equal(base.state, extra.state)


def _tiny_micro() -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("cfg_tiny_precompile", ROOT / "configs/tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("micro")
    config.dit_train.buckets = (("5x16x16", 2, 0.5), ("1x16x16", 4, 0.3), ("5x16x24", 2, 0.2))
    return config


@pytest.mark.parametrize("image_text_length", [0, 4])
def test_dit_batch_specs_are_the_shapes_of_its_cached_batches(tmp_path, image_text_length):
    config = _tiny_micro()
    config.dit_train.image_text_length = image_text_length  # 4: images carry 4 text tokens
    task = _task(config, str(tmp_path))
    specs = task.batch_specs(0, 40)
    assert len(specs) == 3
    order = task.first_use_order(0)
    assert sorted(order) == [0, 1, 2]
    drawn = buckets_lib.bucket_of_steps(task.buckets, config.seed, np.arange(40))
    firsts = [int(b) for b in dict.fromkeys(drawn.tolist())]
    assert order[: len(firsts)] == firsts
    # The first batch of each bucket has exactly its spec's shapes and dtypes (one compile).
    seen = {}
    gen = task.batches(0)
    for step in range(40):
        batch = next(gen)
        seen.setdefault(int(drawn[step]), batch_key(batch))
    gen.close()
    assert set(seen) == {0, 1, 2}
    assert [batch_key(s) for s in specs] == [seen[b] for b in order]  # first-use order
    text_length = {b: dict((k, shape) for k, shape, _ in key)["text"][1] for b, key in seen.items()}
    assert text_length == {0: 8, 1: image_text_length or 8, 2: 8}  # bucket 1 holds the images
    # A run of one step compiles only the bucket that step draws.
    (only,) = task.batch_specs(0, 1)
    assert batch_key(only) == seen[int(drawn[0])]


def test_dit_cached_batches_do_not_depend_on_the_encoding_order(tmp_path):
    """Streaming (caches built ahead in first-use order) == the caches built one by one."""
    config = _tiny_micro()
    task = _task(config, str(tmp_path))
    caches = task.build_latent_cache()  # bucket index order
    drawn = buckets_lib.bucket_of_steps(task.buckets, config.seed, np.arange(12))
    gen = task.batches(0)
    for step in range(12):
        batch = next(gen)
        latents, _ = caches[int(drawn[step])]
        n = task.buckets[int(drawn[step])].batch_size
        u = buckets_lib.hash_uniform(config.seed, step * 4096 + np.arange(n), 11)
        np.testing.assert_array_equal(batch["latents"], latents[(u * len(latents)).astype(int)])
    gen.close()


def test_without_overlap_every_latent_cache_is_built_before_the_first_batch(tmp_path, monkeypatch):
    """precompile_overlap=no (the GPU default): no VAE encode runs beside a step's first run."""
    from sora_jax.train import dit_latent_cache

    built = []
    bucket = dit_latent_cache.Builder.bucket

    def recording(self, b_idx, step=0):
        out = bucket(self, b_idx, step)
        if built:  # later buckets take long, so an overlapping first batch would come first
            time.sleep(1.0)
        built.append(b_idx)
        return out

    monkeypatch.setattr(dit_latent_cache.Builder, "bucket", recording)
    config = _tiny_micro()
    config.dit_train.precompile_overlap = "no"
    task = _task(config, str(tmp_path))
    gen = task.batches(0)
    first = next(gen)
    assert sorted(built) == [0, 1, 2]
    gen.close()
    # The same first batch as with overlap (the order of encoding changes no number).
    config.dit_train.precompile_overlap = "yes"
    gen = _task(config, str(tmp_path)).batches(0)
    np.testing.assert_array_equal(next(gen)["latents"], first["latents"])
    gen.close()

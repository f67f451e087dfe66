"""The DiT's refreshed latent cache (dit_train.latent_cache_refresh_steps, dit_latent_cache.py):
every K steps each bucket swaps one group of its cache for clips it has not seen; the cache at a
step is a function of the step alone, so a resumed run sees exactly the batches of an
uninterrupted one."""

import os
import pathlib

import numpy as np
import pytest
from test_precompile import _tiny_micro
from test_train_samples import _task

from sora_jax.data import buckets as buckets_lib
from sora_jax.train import dit_latent_cache, dit_task


def test_layout_replaces_groups_round_robin_with_unseen_batches():
    layout = dit_latent_cache.CacheLayout(n=5, r=2, every=10)  # groups: batches 0-1, 2-3, 4
    assert [layout.group(g) for g in range(3)] == [(0, 2), (2, 2), (4, 1)]
    assert layout.sources_at(0) == layout.sources_at(9) == [0, 2, 4]
    assert layout.sources_at(10) == [5, 2, 4]  # refresh 1: group 0 <- stream batches 5, 6
    assert layout.sources_at(29) == [5, 7, 4]
    assert layout.sources_at(30) == [5, 7, 9]
    assert layout.sources_at(40) == [11, 7, 9]  # round robin: group 0 again
    # Against applying the refreshes one by one.
    held = [0, 2, 4]
    for step in range(1, 200):
        if step % 10 == 0:
            g, first = layout.refresh(step // 10)
            held[g] = first
        assert layout.sources_at(step) == held
    assert dit_latent_cache.CacheLayout(n=4, r=2, every=0).sources_at(1000) == [0]  # off: one group


def _refreshing_config(every=3):
    config = _tiny_micro()
    config.dit_train.latent_cache_clips = 4  # 2 batches of the 2-clip buckets, 1 of the images
    config.dit_train.latent_cache_refresh_steps = every
    config.dit_train.latent_cache_refresh_clips = 2
    return config


def _take(gen, n):
    out = [next(gen)["latents"] for _ in range(n)]
    gen.close()
    return out


def test_resumed_batches_equal_the_uninterrupted_ones_and_refresh_brings_new_clips(tmp_path):
    config = _refreshing_config(every=3)
    task = _task(config, str(tmp_path))
    full = _take(task.batches(0), 14)
    resumed = _take(task.batches(7), 7)  # mid-interval: rebuilt from refreshes 1 and 2
    for a, b in zip(full[7:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    resumed = _take(task.batches(9), 5)  # at a refresh step
    for a, b in zip(full[9:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    # Without refresh the cache never changes; with it, later steps draw clips it did not hold.
    first_cache = [latents for latents, _ in task.build_latent_cache()]
    drawn = buckets_lib.bucket_of_steps(task.buckets, config.seed, np.arange(14))

    def in_first_cache(step):
        held = first_cache[int(drawn[step])].reshape(len(first_cache[int(drawn[step])]), -1)
        return [bool((np.abs(held - x.reshape(1, -1)).max(1) == 0).any()) for x in full[step]]

    assert all(all(in_first_cache(s)) for s in range(3))  # before the first refresh
    assert not all(all(in_first_cache(s)) for s in range(3, 14))


def test_refresh_off_is_the_fixed_cache(tmp_path):
    on = _take(_task(_refreshing_config(every=1000), str(tmp_path)).batches(0), 6)
    config = _refreshing_config()
    config.dit_train.latent_cache_refresh_steps = 0
    off = _take(_task(config, str(tmp_path)).batches(0), 6)
    for a, b in zip(on, off, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("spill_bytes", [None, 1])
def test_clips_rendered_in_worker_processes_give_the_same_batches(tmp_path, monkeypatch,
                                                                  spill_bytes):  # fmt: skip
    """latent_cache_render_workers: the first caches and the refreshes rendered by spawned
    processes (pipeline.RenderPool) instead of a thread: the same latents at every step, whether
    the clips come back pickled (these are far below SPILL_BYTES) or through files (1)."""
    from sora_jax.data import pipeline

    if spill_bytes is not None:
        monkeypatch.setattr(pipeline, "SPILL_BYTES", spill_bytes)
    thread = _take(_task(_refreshing_config(every=3), str(tmp_path)).batches(0), 10)
    config = _refreshing_config(every=3)
    config.dit_train.latent_cache_render_workers = 2
    task = _task(config, str(tmp_path))
    builder = dit_latent_cache.Builder(task)
    latents, _ = builder.bucket(0)
    workers = list(builder.render.pool._processes.values())  # started by the first batches
    builder.close()
    assert workers and not any(p.is_alive() for p in workers)  # close ends them
    procs = _take(task.batches(0), 10)
    for a, b in zip(thread, procs, strict=True):
        np.testing.assert_array_equal(a, b)
    in_thread = dit_latent_cache.Builder(_task(_refreshing_config(every=3), str(tmp_path)))
    np.testing.assert_array_equal(latents, in_thread.bucket(0)[0])
    in_thread.close()


def test_a_dead_render_worker_leaves_the_rendering_to_the_trainer(tmp_path, caplog):
    import signal

    config = _refreshing_config(every=3)
    config.dit_train.latent_cache_render_workers = 1
    builder = dit_latent_cache.Builder(_task(config, str(tmp_path)))
    try:
        first, texts = builder.bucket(0)
        for p in builder.render.pool._processes.values():
            os.kill(p.pid, signal.SIGKILL)
            p.join()
        again, again_texts = builder.bucket(0)
    finally:
        builder.close()
    assert builder.render is None and "render workers failed" in caplog.text
    np.testing.assert_array_equal(first, again)
    assert texts == again_texts


def test_render_pool_yields_the_batches_in_order(tmp_path):
    from sora_jax.data import pipeline

    config = _refreshing_config()
    stream = _task(config, str(tmp_path))._stream()
    pool = pipeline.RenderPool(stream, 2, ahead=3)
    try:
        ks = [4, 0, 5, 1, 1]
        for k, batch in zip(ks, pool.batches(0, ks), strict=True):
            want = stream.batch(0, k)
            np.testing.assert_array_equal(batch["video"], want["video"])
            assert batch["text"] == want["text"]
        gen = pool.batches(0, range(100))
        next(gen)
        gen.close()  # stopped early: the batches still queued are dropped
    finally:
        pool.close()
    with pytest.raises(ValueError, match=">= 1 worker"):
        pipeline.RenderPool(stream, 0)


def test_render_pool_returns_large_arrays_through_files_it_cleans_up(tmp_path):
    """Arrays of at least spill_bytes come back mapped from a file of the pool's folder (unlinked
    once mapped), not through the result pipe: the same values; no file outlives its batch, and
    closing the pool removes the folder with the files of batches never received."""
    from sora_jax.data import pipeline

    stream = _task(_refreshing_config(), str(tmp_path))._stream()
    pool = pipeline.RenderPool(stream, 2, ahead=3, spill_bytes=1, spill_dir=str(tmp_path))
    try:
        for k, batch in zip([2, 0, 3], pool.batches(0, [2, 0, 3]), strict=True):
            want = stream.batch(0, k)
            assert isinstance(batch["video"], np.memmap) and not batch["video"].flags.writeable
            np.testing.assert_array_equal(batch["video"], want["video"])
            np.testing.assert_array_equal(batch["skipped"], want["skipped"])
            assert batch["text"] == want["text"]
        assert os.listdir(pool.spill_dir) == []  # every received file unlinked
        gen = pool.batches(0, range(6))
        next(gen)
        gen.close()  # the ones in flight may have written their files
    finally:
        pool.close()
    assert not os.path.exists(pool.spill_dir)
    assert os.path.dirname(pool.spill_dir) == str(tmp_path)


def test_an_array_that_cannot_be_written_to_a_file_goes_through_the_pipe(tmp_path):
    from sora_jax.data import pipeline

    a = np.arange(12, dtype=np.uint8)
    spilled = pipeline._spill(a, str(tmp_path))
    assert isinstance(spilled, pipeline._Spilled)
    np.testing.assert_array_equal(pipeline._unspill(spilled), a)
    assert not (tmp_path / pathlib.Path(spilled).name).exists()  # unlinked once mapped
    gone = str(tmp_path / "no such folder")  # as a full disk would, mkstemp fails
    assert pipeline._spill(a, gone) is a and not os.path.exists(gone)


def test_bad_refresh_settings_fail_at_start_up_with_one_sentence(tmp_path):
    config = _refreshing_config()
    config.dit_train.latent_cache_refresh_clips = 0
    with pytest.raises(ValueError, match=r"latent_cache_refresh_clips=0 must be in \(0, "):
        _task(config, str(tmp_path))
    config.dit_train.latent_cache_refresh_steps = -1
    with pytest.raises(ValueError, match=r"latent_cache_refresh_steps=-1 must be >= 0"):
        _task(config, str(tmp_path))


def test_refresh_on_one_host_of_two_writes_its_own_slice(tmp_path, monkeypatch):
    """Each host caches its slice of every batch (batch_size / hosts clips): a refresh lands on
    the same slots as a rebuilt cache, host 1 of 2 here."""
    from sora_jax.data import pipeline

    def host_1_of_2(config, source, buckets, *, seed, caption_probs=None):
        return pipeline.BucketedBatches(
            source, buckets, seed=seed, caption_probs=caption_probs, num_threads=1,
            process_index=1, process_count=2,
        )  # fmt: skip

    monkeypatch.setattr(dit_task.pipeline, "from_config", host_1_of_2)
    config = _refreshing_config(every=3)
    config.dit_train.latent_cache_clips = 8  # 4 batches of the 2-clip buckets: 1 clip each here
    config.dit_train.latent_cache_refresh_clips = 4  # groups of 2 batches
    task = _task(config, str(tmp_path))
    full = _take(task.batches(0), 14)
    drawn = buckets_lib.bucket_of_steps(task.buckets, config.seed, np.arange(14))
    assert [len(x) for x in full] == [task.buckets[b].batch_size // 2 for b in drawn]
    for a, b in zip(full[8:], _take(task.batches(8), 6), strict=True):
        np.testing.assert_array_equal(a, b)


def _batches_and_encodes(tmp_path, name: str, ahead: int, monkeypatch):
    """14 steps of batches with captions requested `ahead` steps early, and the encoder's calls."""
    monkeypatch.setattr(dit_latent_cache, "TEXT_AHEAD", ahead)
    config = _refreshing_config(every=3)
    config.dit_train.caption_dropout = 0.3  # empty captions in the requests too
    task = _task(config, str(tmp_path / name))
    calls = []
    encode = task.embedder.encoder.encode
    task.embedder.encoder.encode = lambda texts: calls.append(list(texts)) or encode(texts)
    gen = task.batches(0)
    batches = [next(gen) for _ in range(14)]
    gen.close()
    return batches, calls


def test_captions_requested_ahead_give_the_same_batches_and_encoder_calls(tmp_path, monkeypatch):
    ahead, calls = _batches_and_encodes(tmp_path, "ahead", 8, monkeypatch)
    plain, plain_calls = _batches_and_encodes(tmp_path, "plain", 0, monkeypatch)
    # The same texts in the same calls (steps 14-21, drawn ahead, made more calls after them).
    assert calls[: len(plain_calls)] == plain_calls and len(plain_calls) > 3
    for a, b in zip(ahead, plain, strict=True):
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert any((b["text_mask"].sum(1) <= 2).any() for b in plain)  # dropped: the empty caption

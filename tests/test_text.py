"""MiniLM text encoder: parity with Hugging Face (tokens and hidden states), masking, errors."""

import functools
import json
import logging
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from sora_jax.models import text as text_lib  # noqa: E402
from sora_jax.models.bert import BertEncoder, load_safetensors_into  # noqa: E402
from sora_jax.models.layers import mean_pool  # noqa: E402
from sora_jax.models.text import TextConfig, TextEncoder  # noqa: E402

MAX_LEN = 32
PROMPTS = [
    "a red cube slides to the left",
    "",
    "Ünïcödé café naïve — 日本語のテキスト 🙂",
    "a small blue sphere bounces over a striped floor while the camera pans " * 6,  # truncated
    "   leading and trailing whitespace   ",
    "UPPER case AND Punctuation!!! (yes), 3.14 & #tags",
    "\ttabs\nnewlines\r\n and a control \x00 char",
    "supercalifragilisticexpialidocious xyzzy",
]


@pytest.fixture(scope="module")
def enc() -> TextEncoder:
    return TextEncoder(TextConfig(max_length=MAX_LEN))


@pytest.fixture(scope="module")
def hf_model(enc):
    transformers = pytest.importorskip("transformers")
    return transformers.BertModel.from_pretrained(str(enc.folder)).eval()


def _hf_hidden(hf_model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = hf_model(
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
        )
    return out.last_hidden_state.numpy()


@nnx.jit
def _forward(model: BertEncoder, ids: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    # One compiled program instead of op-by-op dispatch (seconds faster on CPU).
    return model(ids, mask)


def test_tokenize_matches_hf_tokenizer(enc):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(enc.folder))
    ref = tok(PROMPTS, truncation=True, max_length=MAX_LEN, padding="max_length")
    ids, mask = enc.tokenize(PROMPTS)
    assert ids.dtype == np.int32 and mask.dtype == np.bool_
    assert ids.shape == mask.shape == (len(PROMPTS), MAX_LEN)
    np.testing.assert_array_equal(ids, np.asarray(ref["input_ids"]))
    np.testing.assert_array_equal(mask, np.asarray(ref["attention_mask"], dtype=bool))
    assert mask[1].sum() == 2  # empty prompt -> [CLS] [SEP]
    assert mask[3].all()  # the long prompt fills every slot


def test_hidden_states_match_hf_bert(enc, hf_model):
    hidden, mask = enc.encode(PROMPTS)
    assert hidden.dtype == jnp.float32 and mask.dtype == jnp.bool_
    assert hidden.shape == (len(PROMPTS), MAX_LEN, enc.dim) and enc.dim == 384
    ids, mask_np = enc.tokenize(PROMPTS)
    ref = _hf_hidden(hf_model, ids, mask_np)
    err = np.abs(np.asarray(hidden) - ref)[mask_np].max()
    assert err <= 1e-5, err


def test_encoding_unchanged_when_batched_with_longer_prompt(enc):
    short = "a green triangle"
    alone, m_alone = enc.encode([short])
    batched, m_batched = enc.encode([short, PROMPTS[3]])
    np.testing.assert_array_equal(m_alone[0], m_batched[0])
    valid = np.asarray(m_alone[0])
    # Not bit-equal: XLA tiles reductions differently per batch size (seen ~1e-6).
    err = np.abs(np.asarray(alone[0]) - np.asarray(batched[0]))[valid].max()
    assert err <= 1e-5, err


def test_padding_length_and_pad_ids_do_not_change_valid_tokens(enc):
    ids, mask = enc.tokenize(["a yellow star rotates slowly"])
    n = int(mask.sum())
    short = _forward(enc.model, jnp.asarray(ids[:, :8]), jnp.asarray(mask[:, :8]))
    # Non-zero garbage in padded slots: masking must not rely on pad embeddings being zero.
    garbage = np.where(mask, ids, 1999).astype(np.int32)
    full = _forward(enc.model, jnp.asarray(garbage), jnp.asarray(mask))
    err = np.abs(np.asarray(short[0, :n]) - np.asarray(full[0, :n])).max()
    assert err <= 1e-5, err


def test_jitted_forward_compiled_once_per_length_bucket(enc):
    enc.encode(["one prompt", "two"])
    before = enc._forward._cache_size()
    enc.encode(["different words here", "and a much longer second prompt than before"])
    assert enc._forward._cache_size() == before  # both chunks' longest text fits 16 tokens


def test_padded_length_buckets():
    assert [text_lib.padded_length(n, 96) for n in (1, 16, 17, 33, 64, 65, 96)] == [
        16, 16, 32, 64, 64, 96, 96]  # fmt: skip
    assert [text_lib.padded_length(n, 12) for n in (1, 12)] == [12, 12]
    for bad in (0, 97):
        with pytest.raises(ValueError, match="1 to 96 tokens"):
            text_lib.padded_length(bad, 96)


def test_encode_shapes_are_every_chunk_shape_encode_runs(enc, monkeypatch):
    """`encode_shapes` (what stage dit_compile compiles) holds each shape `encode` runs."""
    assert text_lib.encode_shapes(96) == [
        (b, n) for n in (16, 32, 64, 96) for b in (1, 2, 4, 8, 16, 32, 64)]  # fmt: skip
    assert text_lib.encode_shapes(12) == [(b, 12) for b in (1, 2, 4, 8, 16, 32, 64)]
    shapes, forward = set(), enc._forward
    monkeypatch.setattr(enc, "_forward", lambda st, i, m: shapes.add(i.shape) or forward(st, i, m))
    for n in (1, 3, 64, 70):
        enc.encode([f"a red circle number {i}" for i in range(n)] + [PROMPTS[5]])
    assert shapes and shapes <= set(text_lib.encode_shapes(MAX_LEN))


def test_chunks_run_at_their_length_and_equal_the_full_length_forward(enc, monkeypatch):
    """Texts in order of length: the short chunk runs at 16 tokens, the long one at MAX_LEN;
    every valid token equals the model at MAX_LEN (1e-5) and padded tokens are zero."""
    texts = [f"a red circle number {i}" for i in range(64)] + [PROMPTS[3], PROMPTS[5]]
    shapes, forward = [], enc._forward
    monkeypatch.setattr(
        enc, "_forward", lambda st, i, m: shapes.append(i.shape) or forward(st, i, m)
    )
    hidden, mask = enc.encode(texts)
    assert shapes == [(64, 16), (2, MAX_LEN)]
    ids, mask_np = enc.tokenize(texts)
    full = np.asarray(_forward(enc.model, jnp.asarray(ids), jnp.asarray(mask_np)))
    hidden = np.asarray(hidden)
    assert hidden.shape == full.shape and np.asarray(mask).tolist() == mask_np.tolist()
    err = np.abs(hidden - full)[mask_np].max()
    assert err <= 1e-5, err
    assert not hidden[~mask_np].any() and np.abs(full[~mask_np]).max() > 0.1


def test_batch_sizes_share_padded_compiles_and_match_unbatched(enc):
    assert [text_lib.padded_batch_size(n) for n in (1, 2, 3, 5, 33, 64)] == [1, 2, 4, 8, 64, 64]
    with pytest.raises(ValueError, match="1 to 64 texts"):
        text_lib.padded_batch_size(65)
    texts = ["a red circle", "a blue square moving left", "green"]
    three = np.asarray(enc.encode(texts)[0])
    enc.encode(texts + ["four"])  # 3 and 4 texts run the same compiled batch of 4
    before = enc._forward._cache_size()
    enc.encode(["x", "y", "z"])
    assert enc._forward._cache_size() == before
    assert three.shape[0] == 3
    for i, t in enumerate(texts):
        np.testing.assert_allclose(three[i], np.asarray(enc.encode([t])[0][0]), atol=1e-4)
    # More than a chunk: 64 + 4 texts reuse the compiled batches of 64 and 4, in order.
    many = [f"a red circle number {i}" for i in range(68)]
    enc.encode(many[:64])
    before = enc._forward._cache_size()
    hidden, mask = enc.encode(many)
    assert enc._forward._cache_size() == before and hidden.shape[0] == mask.shape[0] == 68
    np.testing.assert_allclose(
        np.asarray(hidden[66]), np.asarray(enc.encode([many[66]])[0][0]), atol=1e-4
    )


def test_long_prompt_truncated_with_warning(enc, caplog):
    with caplog.at_level(logging.WARNING, logger="sora_jax.models.text"):
        enc.tokenize(["short prompt"])
        assert not caplog.records
        _, mask = enc.tokenize([PROMPTS[3]])
    assert mask.sum() == MAX_LEN
    assert any("truncated" in r.getMessage() for r in caplog.records)


def test_bfloat16_compute_close_to_fp32(enc):
    tensors = load_file(str(enc.folder / "model.safetensors"))
    cfg = json.loads((enc.folder / "config.json").read_text())
    abstract = nnx.eval_shape(lambda: BertEncoder(cfg, dtype="bfloat16", rngs=nnx.Rngs(0)))
    bf16 = load_safetensors_into(abstract, tensors)
    ids, mask = enc.tokenize(PROMPTS[:3])
    ref = np.asarray(_forward(enc.model, jnp.asarray(ids), jnp.asarray(mask)))
    out = _forward(bf16, jnp.asarray(ids), jnp.asarray(mask))
    assert out.dtype == jnp.float32
    assert bf16.layers[0].query.kernel.get_value().dtype == jnp.float32  # params stay fp32
    err = np.abs(np.asarray(out) - ref)[mask].max()
    assert err <= 0.1, err


@pytest.mark.slow
def test_mean_pooled_embedding_matches_sentence_transformers(enc):
    st_mod = pytest.importorskip("sentence_transformers")
    st = st_mod.SentenceTransformer(str(enc.folder), device="cpu")
    st.max_seq_length = MAX_LEN
    ref = st.encode(PROMPTS, convert_to_numpy=True)  # the pipeline ends in Normalize
    hidden, mask = enc.encode(PROMPTS)
    err = np.abs(np.asarray(mean_pool(hidden, mask)) - ref).max()
    assert err <= 1e-5, err


# ----------------------------------------------------------------------------- errors


def test_missing_folder_error_names_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model.*config.json"):
        TextEncoder(TextConfig(path=str(missing)))


def test_missing_file_error_names_file(enc, tmp_path):
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(enc.folder / name, tmp_path / name)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        TextEncoder(TextConfig(path=str(tmp_path)))


def test_non_string_prompt_rejected(enc):
    with pytest.raises(ValueError, match=r"texts\[1\] is int"):
        enc.encode(["fine", 3])
    with pytest.raises(ValueError, match="single str"):
        enc.tokenize("not a list")
    with pytest.raises(ValueError, match="empty"):
        enc.encode([])


def test_bad_config_values_rejected():
    with pytest.raises(ValueError, match="encoder='t9'"):
        TextEncoder(TextConfig(encoder="t9"))
    with pytest.raises(ValueError, match="dtype='int8'"):
        TextEncoder(TextConfig(dtype="int8"))
    with pytest.raises(ValueError, match="max_position_embeddings=512"):
        TextEncoder(TextConfig(max_length=1000))


def test_weight_mapping_rejects_missing_and_misshaped(enc):
    tensors = dict(load_file(str(enc.folder / "model.safetensors")))
    model = enc.model
    key = "encoder.layer.2.attention.self.key.weight"
    with pytest.raises(ValueError, match="layer.2.attention.self.key.weight.*missing"):
        load_safetensors_into(model, {k: v for k, v in tensors.items() if k != key})
    with pytest.raises(ValueError, match="shape"):
        load_safetensors_into(model, {**tensors, key: tensors[key][:, :10]})
    # "bert."-prefixed names (BertFor* checkpoints) load to the same weights.
    prefixed = {"bert." + k: v for k, v in tensors.items()}
    load_safetensors_into(model, prefixed)
    loaded = np.asarray(model.layers[2].key.kernel.get_value())
    np.testing.assert_array_equal(loaded, tensors[key].T)


# ----------------------------------------------------------------------------- embedding cache


def _embedder_config(**text):
    import ml_collections

    return ml_collections.ConfigDict(
        dict(encoder="minilm", path="", max_length=MAX_LEN, dtype="float32", **text)
    )


def test_embedding_cache_second_run_reads_identical_arrays(tmp_path):
    from sora_jax.train.caption_embedder import CaptionEmbedder

    texts = PROMPTS[:5] + [PROMPTS[0]]  # a repeat within the batch
    first = CaptionEmbedder(_embedder_config(cache_dir=str(tmp_path)))
    emb1, mask1 = first(texts)
    first.disk.close()
    assert len(list(tmp_path.glob("*.keys.npy"))) == 1
    second = CaptionEmbedder(_embedder_config(cache_dir=str(tmp_path)))
    emb2, mask2 = second(texts)
    assert second._encoder is None  # everything came from the disk cache
    np.testing.assert_array_equal(emb1, emb2)
    np.testing.assert_array_equal(mask1, mask2)
    assert emb2.dtype == np.float32 and emb2.shape == (6, MAX_LEN, 384)
    # A new caption is a miss: encoded, returned alongside the cached ones, and stored.
    emb3, _ = second([PROMPTS[0], "a brand new caption"])
    assert second._encoder is not None
    np.testing.assert_array_equal(emb3[0], emb1[0])
    assert len(second.disk) == 6


@pytest.mark.parametrize("backend", ["array_record", "npy"])
def test_cache_shards_round_trip_and_ignore_unfinished_writes(tmp_path, backend):
    from sora_jax.data import text_cache

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((3, 4, 8), np.float32)
    mask = rng.random((3, 4)) > 0.5
    cache = text_cache.TextEmbeddingCache(tmp_path, ("enc", "/w", 4), backend=backend)
    cache.put_many(["a", "b", "c"], emb, mask)
    (tmp_path / ".tmp-killed.keys.npy").write_bytes(b"torn")  # a writer killed mid-flush
    cache.close()
    reread = text_cache.TextEmbeddingCache(tmp_path, ("enc", "/w", 4), backend=backend)
    got = reread.get_many(["c", "missing", "a"])
    assert sorted(got) == ["a", "c"]
    np.testing.assert_array_equal(got["c"][0], emb[2])
    np.testing.assert_array_equal(got["a"][1], mask[0])
    other = text_cache.TextEmbeddingCache(tmp_path, ("enc", "/w", 8), backend=backend)
    assert other.get_many(["a"]) == {}  # another max_length is another key


def test_caption_key_separates_fields():
    from sora_jax.data.text_cache import caption_key

    assert caption_key("t5", "/p", 8, "ab") != caption_key("t5", "/p", 8, "ab ")
    assert caption_key("t5", "/pa", 8, "b") != caption_key("t5", "/p", 8, "ab")
    assert caption_key("t5", "/p", 8, "x") != caption_key("umt5", "/p", 8, "x")
    assert len(caption_key("t5", "/p", 8, "x")) == 20


def test_requested_captions_are_read_later_as_plain_calls_give_them():
    from sora_jax.train.caption_embedder import CaptionEmbedder, _Pending

    def recording(embedder):
        calls, encode = [], embedder.encoder.encode
        embedder.encoder.encode = lambda texts: calls.append(list(texts)) or encode(texts)
        return calls

    steps = [PROMPTS[:3], PROMPTS[2:5], [PROMPTS[0], PROMPTS[7]]]
    plain, ahead = CaptionEmbedder(_embedder_config()), CaptionEmbedder(_embedder_config())
    plain_calls, ahead_calls = recording(plain), recording(ahead)
    want = [plain(texts) for texts in steps]
    for texts in steps:  # every step requested before any is read
        ahead.request(texts)
    assert isinstance(ahead.cache[PROMPTS[4]], _Pending)  # queued, not yet read
    got = [ahead(texts) for texts in steps]
    by_length = functools.partial(sorted, key=lambda t: (len(t), t))  # the encoder's chunks
    assert ahead_calls == plain_calls == [by_length(PROMPTS[:3]), by_length(PROMPTS[3:5]),
                                          PROMPTS[7:]]  # fmt: skip
    for (e1, m1), (e2, m2) in zip(want, got, strict=True):
        np.testing.assert_array_equal(e1, e2)
        np.testing.assert_array_equal(m1, m2)
    # A second embedder over the same encoder keeps its own cache (training samples).
    other = ahead.sharing_encoder()
    assert other.encoder is ahead.encoder and other.cache == {} and other.disk is None
    assert other._encode_lock is ahead._encode_lock and other._lock is not ahead._lock
    # (Encoded alone, not in a batch of three: the same numbers to rounding, not bit for bit.)
    np.testing.assert_allclose(other([PROMPTS[1]])[0], want[0][0][1:2], rtol=1e-4, atol=1e-4)
    assert PROMPTS[1] in ahead.cache and len(ahead_calls) == 4  # its call, not ahead's cache
    # Over max_cache the cache starts again but keeps what the call needs.
    small = CaptionEmbedder(_embedder_config(), max_cache=3)
    small(PROMPTS[:3])
    emb, _ = small(PROMPTS[2:4])
    np.testing.assert_allclose(emb, np.concatenate([want[0][0][2:3], want[1][0][1:2]]), atol=1e-4)
    assert set(small.cache) == set(PROMPTS[2:4])

"""T5 v1.1 / umT5 encoders: parity with Hugging Face (tokens, hidden states), loading, sharding."""

import functools
import json
import logging
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from sora_jax import parallel  # noqa: E402
from sora_jax.data import world  # noqa: E402
from sora_jax.models import t5  # noqa: E402
from sora_jax.models.text import TextConfig, TextEncoder, load_tokenizer  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MAX_LEN = 48
# Small but exercising every path: 16 buckets with max_distance 20 puts most of the 48 x 48
# relative positions in the logarithmic buckets; d_model != heads * d_kv; gated GELU.
TINY = dict(
    vocab_size=220,
    d_model=40,
    d_kv=12,
    d_ff=56,
    num_layers=3,
    num_heads=4,
    relative_attention_num_buckets=16,
    relative_attention_max_distance=20,
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
)


def _strings() -> list[str]:
    """50 varied prompts: world captions, unicode, empty, whitespace, special tokens, long."""
    w = world.World(world.WorldConfig(seed=3))
    caps = [w.captions(w.spec(i))[s] for i in range(10) for s in ("short", "long")]
    odd = [
        "", " ", "\t\n", "Ünïcödé café naïve — 日本語のテキスト 🙂", "Здравствуй, мир!",
        "مرحبا بالعالم", "emoji only 🚀🔥🌈", "UPPER case AND Punctuation!!! (yes), 3.14 & #tags",
        "x </s> y <extra_id_0> z", "<pad><unk>", "   leading and trailing   ",
        "a\u200bzero\u200bwidth",
        "tabs\tand\nnewlines\r\n", "control \x00 char", "1234567890" * 3, "é" * 30, "ß ø å æ œ",
        "a" * 200, "supercalifragilisticexpialidocious", "mixed 中文 and english words",
        "a red circle moving left " * 10, "!!!???...", "‘curly’ “quotes”", "a—b–c-d", "ﬁ ligature",
        "ＦＵＬＬＷＩＤＴＨ", "naïve cafe\u0301", "x" * 2 + " y" * 60, "one", "two words",
    ]  # fmt: skip
    out = caps + odd
    assert len(out) == 50
    return out


STRINGS = _strings()


def _train_vocab() -> list[tuple[str, float]]:
    """A tiny Unigram (sentencepiece-style) vocab with T5's <pad>=0, </s>=1, <unk>=2 layout."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # single-threaded training: same vocab
    w = world.World(world.WorldConfig())
    corpus = [c for i in range(200) for c in w.captions(w.spec(i)).values()] + STRINGS
    corpus += ["why?? what?? ok!!"] * 20  # "?" and "??" pieces: "???" splits at an exact tie
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    special = ["<pad>", "</s>", "<unk>"]
    trainer = trainers.UnigramTrainer(vocab_size=217, special_tokens=special, unk_token="<unk>")
    tok.train_from_iterator(corpus, trainer)
    return [tuple(v) for v in json.loads(tok.to_str())["model"]["vocab"]]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5tok")
    transformers.T5Tokenizer(vocab=_train_vocab(), extra_ids=3).save_pretrained(folder)
    return folder


def _save_model(folder, umt5: bool, tokenizer_dir, **save_kw):
    cfg_cls = transformers.UMT5Config if umt5 else transformers.T5Config
    model_cls = transformers.UMT5EncoderModel if umt5 else transformers.T5EncoderModel
    torch.manual_seed(1 + umt5)
    hf = model_cls(cfg_cls(**TINY)).eval()
    hf.save_pretrained(folder, **save_kw)
    for name in os.listdir(tokenizer_dir):
        (folder / name).write_bytes((tokenizer_dir / name).read_bytes())
    return hf


@pytest.fixture(scope="module", params=["t5", "umt5"])
def pair(request, tmp_path_factory, tokenizer_dir):
    """(HF model, our TextEncoder) with the same weights; umT5 saved as sharded safetensors."""
    folder = tmp_path_factory.mktemp(request.param)
    umt5 = request.param == "umt5"
    hf = _save_model(folder, umt5, tokenizer_dir, **({"max_shard_size": "40KB"} if umt5 else {}))
    if umt5:
        assert (folder / "model.safetensors.index.json").is_file()
    enc = TextEncoder(TextConfig(encoder=request.param, path=str(folder), max_length=MAX_LEN))
    return hf, enc


def _hf_hidden(hf, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = hf(
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
        )
    return out.last_hidden_state.float().numpy()


def test_tokenize_matches_hf_t5_tokenizer_on_50_strings(tokenizer_dir, caplog):
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert type(hf_tok).__name__ == "T5Tokenizer"
    ref = hf_tok(STRINGS, truncation=True, max_length=MAX_LEN, padding="max_length")
    tok = load_tokenizer(tokenizer_dir, MAX_LEN)
    enc = tok.encode_batch(STRINGS)
    np.testing.assert_array_equal([e.ids for e in enc], ref["input_ids"])
    np.testing.assert_array_equal([e.attention_mask for e in enc], ref["attention_mask"])
    ids = np.asarray(ref["input_ids"])
    assert ids[STRINGS.index(""), 0] == 1 and (ids[STRINGS.index(""), 1:] == 0).all()  # "</s>"
    last = np.asarray(ref["attention_mask"]).sum(1) - 1
    assert (ids[np.arange(len(STRINGS)), last] == 1).all()  # ends in </s>, even when truncated
    assert np.asarray(ref["attention_mask"]).all(1).sum() >= 3  # some strings were truncated


def test_long_prompt_truncated_with_warning(pair, caplog):
    _, enc = pair
    with caplog.at_level(logging.WARNING, logger="sora_jax.models.text"):
        enc.tokenize(["a short one"])
        assert not caplog.records
        ids, mask = enc.tokenize(["a red circle moving left " * 10])
    assert mask.all() and ids[0, -1] == 1
    assert any("truncated" in r.getMessage() for r in caplog.records)


def test_hidden_states_match_hf_encoder(pair):
    hf, enc = pair
    hidden, mask = enc.encode(STRINGS)
    assert hidden.dtype == jnp.float32 and hidden.shape == (50, MAX_LEN, TINY["d_model"])
    ids, mask_np = enc.tokenize(STRINGS)
    ref = _hf_hidden(hf, ids, mask_np)
    err = np.abs(np.asarray(hidden) - ref)[mask_np].max()
    assert err <= 1e-5, err
    assert np.abs(ref).max() > 1.0  # a meaningful comparison, not near-zero outputs
    assert not np.asarray(hidden)[~mask_np].any()  # `encode` zeroes padded tokens
    # The model itself, every position, padded queries included: both mask keys only.
    full = np.asarray(enc.model(jnp.asarray(ids), jnp.asarray(mask_np)))
    assert np.abs(full - ref).max() <= 1e-5


def test_bf16_checkpoint_loads_exactly(tmp_path, tokenizer_dir):
    hf = _save_model(tmp_path, False, tokenizer_dir)
    hf.to(torch.bfloat16).save_pretrained(tmp_path)  # overwrite with a bf16 safetensors file
    enc = TextEncoder(TextConfig(encoder="t5", path=str(tmp_path), max_length=MAX_LEN))
    ids, mask = enc.tokenize(STRINGS[:8])
    ref = _hf_hidden(hf.to(torch.float32), ids, mask)  # bf16-rounded weights, fp32 compute
    err = np.abs(np.asarray(enc.encode(STRINGS[:8])[0]) - ref)[mask].max()
    assert err <= 1e-5, err


def test_bfloat16_compute_close_to_float32(pair):
    hf, enc = pair
    if enc.cfg.encoder == "t5":
        pytest.skip("the dtype path is shared; checked on umT5")
    cfg = TextConfig(
        encoder=enc.cfg.encoder, path=str(enc.folder), max_length=MAX_LEN, dtype="bfloat16",
        param_dtype="bfloat16",
    )  # fmt: skip
    bf16 = TextEncoder(cfg)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(bf16._state))
    ref, mask = enc.encode(STRINGS[:8])
    out, _ = bf16.encode(STRINGS[:8])
    assert out.dtype == jnp.float32
    rel = np.abs(np.asarray(out) - np.asarray(ref)).max() / np.abs(np.asarray(ref)).max()
    assert rel <= 0.05, rel


def test_relative_position_buckets_match_hf():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(600)[None] - torch.arange(600)[:, None]
    for buckets, dist in ((32, 128), (16, 20), (256, 128), (8, 8)):
        ref = T5Attention._relative_position_bucket(
            rel, bidirectional=True, num_buckets=buckets, max_distance=dist
        ).numpy()
        np.testing.assert_array_equal(t5.relative_position_buckets(600, 600, buckets, dist), ref)


@pytest.mark.parametrize("umt5", [False, True])
def test_scanned_equals_unrolled(umt5):
    shapes = {k: v for k, v in TINY.items() if k in ("d_model", "d_kv", "num_heads")}
    cfg = t5.T5Config(**shapes, num_layers=3, vocab_size=50, d_ff=24, per_layer_position_bias=umt5)
    # Abstract builds + numpy weights: eager random init of a scanned stack takes seconds.
    scanned = nnx.eval_shape(lambda: t5.T5Encoder(cfg, rngs=nnx.Rngs(0)))
    unrolled_cfg = t5.T5Config(**{**cfg.__dict__, "scan_layers": False})
    unrolled = nnx.eval_shape(lambda: t5.T5Encoder(unrolled_cfg, rngs=nnx.Rngs(1)))
    rng = np.random.default_rng(0)
    for name, var in nnx.iter_graph(scanned):
        if isinstance(var, nnx.Param):
            noise = 0.3 * rng.standard_normal(var.shape, np.float32)
            var.set_value(noise + 1.0 if "norm" in name[-1] else noise)
    for name, var in nnx.iter_graph(unrolled):
        if isinstance(var, nnx.Param) and name[0] == "blocks":
            var.set_value(getattr(scanned.blocks, name[-1])[...][name[1]])
        elif isinstance(var, nnx.Param):
            var.set_value(getattr(scanned, name[-1])[...])
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 50, (2, 20)))
    mask = jnp.arange(20)[None] < jnp.asarray([[20], [9]])
    run = nnx.jit(lambda m, i, k: m(i, k))
    a, b = np.asarray(run(scanned, ids, mask)), np.asarray(run(unrolled, ids, mask))
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.abs(a).max() > 0.5


def test_umt5_xxl_shapes_and_logical_axes_without_memory():
    """Full-size umT5-XXL (Wan 2.1's encoder) built abstractly: parameter count and shardings."""
    cfg = t5.T5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                      num_heads=64, per_layer_position_bias=True, dtype="bfloat16")  # fmt: skip
    model = nnx.eval_shape(lambda: t5.T5Encoder(cfg, rngs=nnx.Rngs(0)))
    state = nnx.state(model)
    count = sum(x.size for x in jax.tree.leaves(state))
    assert count == 5_680_910_336  # HF UMT5EncoderModel(google/umt5-xxl) num_parameters()
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1, 1), parallel.MESH_AXES)
    specs = parallel.param_shardings(state, mesh)

    def spec(*path):
        return tuple(functools.reduce(lambda tree, key: tree[key], path, specs).get_value().spec)

    assert spec("embed") == ("tensor", "fsdp")
    assert spec("blocks", "q") == (None, "fsdp", "tensor")
    assert spec("blocks", "wo") == (None, "tensor", "fsdp")
    assert spec("blocks", "rel_bias") == (None, None, "tensor")
    out = jax.eval_shape(
        lambda m: m(jnp.zeros((2, 512), jnp.int32), jnp.ones((2, 512), bool)), model
    )
    assert out.shape == (2, 512, 4096) and out.dtype == jnp.float32


def test_sharded_encoder_matches_single_device(pair):
    """On 4 fake CPU devices (fsdp=2 x tensor=2) the sharded encoder gives the same output."""
    _, enc = pair
    if enc.cfg.encoder == "t5":
        pytest.skip("one family is enough for the (slow) subprocess; umT5 has more params")
    out = enc.folder / "sharded_out.npy"
    script = textwrap.dedent(f"""
        import numpy as np
        from sora_jax import parallel
        from sora_jax.models.text import TextConfig, TextEncoder
        cfg = TextConfig(
            encoder={enc.cfg.encoder!r}, path={str(enc.folder)!r}, max_length={MAX_LEN}
        )
        enc = TextEncoder(cfg, mesh=parallel.make_mesh(dict(fsdp=2, tensor=2)))
        assert len(enc._state["embed"].get_value().sharding.device_set) == 4
        np.save({str(out)!r}, np.asarray(enc.encode({STRINGS[:4]!r})[0]))
    """)
    env = {
        **os.environ, "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
    }  # fmt: skip
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    err = np.abs(np.load(out) - np.asarray(enc.encode(STRINGS[:4])[0])).max()
    assert err <= 1e-5, err


# ----------------------------------------------------------------------------- errors


def test_folder_without_weights_or_tokenizer_is_named(tmp_path, tokenizer_dir):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        TextEncoder(TextConfig(encoder="t5", path=str(tmp_path)))
    model_dir = tmp_path / "m"
    _save_model(model_dir, False, tokenizer_dir)
    os.remove(model_dir / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        TextEncoder(TextConfig(encoder="t5", path=str(model_dir)))


def test_t5_without_path_asks_for_one():
    with pytest.raises(FileNotFoundError, match="text.path"):
        TextEncoder(TextConfig(encoder="umt5"))


def test_wrong_family_for_folder_is_rejected(pair):
    _, enc = pair
    other = {"t5": "umt5", "umt5": "t5"}[enc.cfg.encoder]
    with pytest.raises(ValueError, match=f"text.encoder='{enc.cfg.encoder}'"):
        TextEncoder(TextConfig(encoder=other, path=str(enc.folder)))


def test_diffusers_pipeline_layout_is_found(tmp_path, tokenizer_dir):
    hf = _save_model(tmp_path / "text_encoder", False, tokenizer_dir)
    (tmp_path / "tokenizer").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        os.replace(tmp_path / "text_encoder" / name, tmp_path / "tokenizer" / name)
    enc = TextEncoder(TextConfig(encoder="t5", path=str(tmp_path), max_length=MAX_LEN))
    ids, mask = enc.tokenize(STRINGS[:3])
    err = np.abs(np.asarray(enc.encode(STRINGS[:3])[0]) - _hf_hidden(hf, ids, mask))[mask].max()
    assert err <= 1e-5, err


def test_missing_weight_and_bad_shape_are_named(pair):
    _, enc = pair
    tensors = dict(t5.SafetensorsFolder(enc.folder))
    key = "encoder.block.2.layer.1.DenseReluDense.wi_1.weight"
    abstract = lambda: nnx.eval_shape(lambda: t5.T5Encoder(enc.model.cfg, rngs=nnx.Rngs(0)))  # noqa: E731
    with pytest.raises(ValueError, match="block.2.layer.1.DenseReluDense.wi_1.weight.*missing"):
        t5.load_hf_weights(abstract(), {k: v for k, v in tensors.items() if k != key})
    with pytest.raises(ValueError, match="shape"):
        t5.load_hf_weights(abstract(), {**tensors, key: tensors[key][:, :5]})


def test_bad_feed_forward_proj_rejected():
    with pytest.raises(ValueError, match="feed_forward_proj='gated-tanh'"):
        t5.T5Config(feed_forward_proj="gated-tanh")


def test_sentencepiece_only_folder_explains_what_to_install(tmp_path):
    from sora_jax.models.text import load_tokenizer as load

    (tmp_path / "spiece.model").write_bytes(b"not a real sentencepiece model")
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "T5Tokenizer"}')
    with pytest.raises(
        FileNotFoundError, match="spiece.model but no tokenizer.json.*sentencepiece"
    ):
        load(tmp_path, 8)

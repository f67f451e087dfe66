"""Recaptioning: world describer and a tiny random VLM end to end, resume, ArrayRecord datasets."""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sora_jax.data import recaption, sources, world  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import recaption as recaption_tool  # noqa: E402

WORLD = world.WorldConfig(seed=5, resolutions=((32, 32),), num_frames=(5,))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return recaption.export_world(tmp_path_factory.mktemp("world"), WORLD, 7)


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


class Counting:
    """Wraps a backend, records which indices it captioned, optionally dies after n batches."""

    def __init__(self, inner, die_after: int | None = None):
        self.inner, self.die_after, self.seen, self.batches = inner, die_after, [], 0

    def __call__(self, dataset, indices):
        if self.die_after is not None and self.batches == self.die_after:
            raise KeyboardInterrupt("killed")
        self.batches += 1
        self.seen += list(indices)
        return self.inner(dataset, indices)


def test_world_backend_end_to_end_through_the_tool(manifest, tmp_path):
    out = tmp_path / "recaptioned.jsonl"
    summary = recaption_tool.main(
        [f"--input={manifest}", f"--output={out}", "--backend=world", "--batch_size=3", "--quiet"]
    )
    assert summary == {"records": 7, "captioned": 7, "resumed": 0, "output": str(out)}
    rows, w = _rows(out), world.World(WORLD)
    assert len(rows) == 7
    for i, row in enumerate(rows):
        spec = w.spec(i)
        assert row["spec"] == json.loads(json.dumps(spec))
        assert row["captions"] == {s: world.describe(spec, s) for s in world.STYLES}
        assert (out.parent / row["path"]).is_file()  # paths re-based to the new manifest
    long, short = rows[0]["captions"]["long"], rows[0]["captions"]["short"]
    assert len(long) > 2 * len(short)


def test_resume_after_kill_redoes_no_finished_record(manifest, tmp_path):
    cfg = recaption.RecaptionConfig(backend="world", styles=("short", "long"), batch_size=2)
    data = recaption.open_dataset(str(manifest))
    out = str(tmp_path / "out.jsonl")
    first = Counting(recaption.WorldBackend(cfg.styles), die_after=2)
    with pytest.raises(KeyboardInterrupt):
        recaption.recaption(data, first, out, cfg, show_progress=False)
    assert first.seen == [0, 1, 2, 3] and not os.path.exists(out)
    with open(out + ".progress.jsonl", "a") as f:
        f.write('{"index": 4, "capt')  # torn line: the kill hit mid-write
    second = Counting(recaption.WorldBackend(cfg.styles))
    summary = recaption.recaption(data, second, out, cfg, show_progress=False)
    assert second.seen == [4, 5, 6]
    assert summary["resumed"] == 4 and summary["captioned"] == 3
    reference = str(tmp_path / "ref.jsonl")
    recaption.recaption(
        data, recaption.WorldBackend(cfg.styles), reference, cfg, show_progress=False
    )
    assert _rows(out) == _rows(reference)
    third = Counting(recaption.WorldBackend(cfg.styles))  # a finished run is a no-op to redo
    recaption.recaption(data, third, out, cfg, show_progress=False)
    assert third.seen == []


def test_progress_from_other_settings_is_rejected(manifest, tmp_path):
    data = recaption.open_dataset(str(manifest))
    out = str(tmp_path / "out.jsonl")
    cfg = recaption.RecaptionConfig(styles=("long",))
    recaption.recaption(data, recaption.WorldBackend(cfg.styles), out, cfg, show_progress=False)
    other = recaption.RecaptionConfig(styles=("short",))
    with pytest.raises(ValueError, match="other settings"):
        recaption.recaption(data, recaption.WorldBackend(("short",)), out, other)


def test_world_backend_needs_specs_and_known_styles(tmp_path):
    with pytest.raises(ValueError, match="world styles"):
        recaption.WorldBackend(("poem",))
    (tmp_path / "m.jsonl").write_text('{"path": "x.mp4", "captions": {"short": "a"}}\n')
    data = recaption.open_dataset(str(tmp_path / "m.jsonl"))
    with pytest.raises(ValueError, match="record 0 has no scene spec"):
        recaption.WorldBackend()(data, [0])


def test_sample_frames_spreads_evenly():
    frames = np.arange(9)[:, None, None, None] * np.ones((9, 2, 2, 3), np.uint8)
    np.testing.assert_array_equal(recaption.sample_frames(frames, 3)[:, 0, 0, 0], [0, 4, 8])
    assert len(recaption.sample_frames(frames[:2], 4)) == 2  # never more frames than exist


# ----------------------------------------------------------------------------- tiny VLM


def tiny_tokenizer(transformers):
    """A word-level tokenizer with <image> and a chat template, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    words = [w for s in world.STYLES for w in world.describe(world.make_spec(
        "red", "circle", "left"), s).replace(".", " ").split()]  # fmt: skip
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
    tok.train_from_iterator([" ".join(words)], trainers.WordLevelTrainer(special_tokens=special))
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"},
    )  # fmt: skip
    hf.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}"
        "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}"
        "<image> {% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    return hf


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    """A random LLaVA (CLIP vision tower + Llama) saved with its processor: no download."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = tiny_tokenizer(transformers)
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor = transformers.LlavaProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=8, image_token="<image>",
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=tok.chat_template,
    )  # fmt: skip
    cfg = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=8,
        ),
        text_config=transformers.LlamaConfig(
            vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, bos_token_id=2,
            eos_token_id=3,
        ),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_llava")
    transformers.LlavaForConditionalGeneration(cfg).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_vlm_backend_captions_every_clip_batched_and_resumes(manifest, tiny_vlm, tmp_path):
    cfg = recaption.RecaptionConfig(
        backend="vlm", model_dir=tiny_vlm, num_frames=3, max_new_tokens=6, batch_size=3
    )
    backend = recaption.make_backend(cfg)
    assert backend.prompt(3).count("<image>") == 3  # one image token per sampled frame
    data = recaption.open_dataset(str(manifest))
    out = str(tmp_path / "vlm.jsonl")
    killed = Counting(backend, die_after=1)
    with pytest.raises(KeyboardInterrupt):
        recaption.recaption(data, killed, out, cfg, show_progress=False)
    rest = Counting(backend)
    recaption.recaption(data, rest, out, cfg, show_progress=False)
    assert killed.seen == [0, 1, 2] and rest.seen == [3, 4, 5, 6]
    rows = _rows(out)
    for row in rows:
        assert set(row["captions"]) == {"short", "vlm"}
        words = row["captions"]["vlm"].split()
        assert 1 <= len(words) <= 6  # greedy decoding stops at max_new_tokens
    # Batched generation with left padding equals captioning one clip alone.
    alone = backend(data, [4])[0]["vlm"]
    assert alone == rows[4]["captions"]["vlm"]


def test_vlm_backend_missing_folder_is_named(tmp_path):
    cfg = recaption.RecaptionConfig(backend="vlm", model_dir=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="nope"):
        recaption.make_backend(cfg)


# ----------------------------------------------------------------------------- ArrayRecord


def test_array_record_dataset_gets_new_caption_and_sidecar(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    src = tmp_path / "in"
    src.mkdir()
    w = world.World(WORLD)
    for shard in range(2):
        writer = ArrayRecordWriter(str(src / f"d-train.array_record-0000{shard}-of-00002"), "")
        for k in range(2):
            item = w[2 * shard + k]
            writer.write(sources.encode_record({
                "video": b"", "image": b"png?", "format": "png", "prompt": item["prompt"],
                "caption": item["prompt"], "fps": 0.0, "num_frames": 1, "width": 32,
                "height": 32, "duration_s": 0.0, "source_id": f"world:{2 * shard + k}",
            }))  # fmt: skip
        writer.close()
    (src / "dataset_info.json").write_text("{}")
    data = recaption.open_dataset(str(src))
    assert len(data) == 4 and data.captions(3)["prompt"] == w[3]["prompt"]

    def describe_by_id(dataset, indices):  # ground truth through the record's source id
        return [{"long": world.describe(w.spec(i), "long"), "medium": "m"} for i in indices]

    out = tmp_path / "out"
    cfg = recaption.RecaptionConfig(backend="world", styles=("long", "medium"))
    recaption.recaption(data, describe_by_id, str(out), cfg, show_progress=False)
    assert (out / "dataset_info.json").is_file()
    redone = recaption.open_dataset(str(out))
    for i in range(4):
        rec = redone.record(i)
        assert rec["caption"] == world.describe(w.spec(i), "long")  # the longest style
        assert rec["prompt"] == w[i]["prompt"] and rec["source_id"] == f"world:{i}"
    side = _rows(out / "captions.jsonl")
    assert [s["index"] for s in side] == [0, 1, 2, 3] and side[2]["captions"]["medium"] == "m"

"""Prompt expansion: world parser round trip, deterministic expansion, local LLM plumbing."""

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from sora_jax import prompt_expansion as pe  # noqa: E402
from sora_jax.data import world  # noqa: E402


def _subject(spec):
    o = spec["objects"][0]
    return o["color"], o["shape"], o["motion"]


def test_every_world_caption_parses_back_to_its_subject():
    wrong = []
    for c in world.ALL_COLORS:
        for s in world.ALL_SHAPES:
            for m in world.ALL_MOTIONS:
                spec = world.make_spec(c, s, m, size="small", background="texture", tone="light")
                for style in world.STYLES:
                    got = pe.parse_world_prompt(world.describe(spec, style))
                    ok = _subject(got) == (c, s, m)
                    if style != "short":  # medium and long also name size and background
                        o, bg = got["objects"][0], got["background"]
                        ok &= (o["size"], bg["kind"], bg["tone"]) == ("small", "texture", "light")
                    if not ok:
                        wrong.append(world.describe(spec, style))
    assert not wrong, wrong[:5]  # 8 colours x 7 shapes x 12 motions x 3 styles = 2016


def test_world_expansion_is_the_describers_long_caption_of_the_parsed_spec():
    for spec in world.prompt_suite(world.WorldConfig(), 24, seed=1):
        short = world.describe(spec, "short")
        long = pe.expand_prompt(short, "world")
        assert long == world.describe(pe.parse_world_prompt(short), "long")
        assert _subject(pe.parse_world_prompt(long)) == _subject(spec)  # nothing contradicted
        assert len(long) > 2 * len(short)
        assert pe.expand_prompt(short, "world") == long  # deterministic


def test_free_wording_and_images_and_pans():
    spec = pe.parse_world_prompt("A big BLUE ball going up and to the right, camera pans left")
    assert (
        _subject(spec) == ("blue", "circle", "up-right") and spec["objects"][0]["size"] == "large"
    )
    assert spec["camera"]["pan"] == "left"
    still = pe.parse_world_prompt("an image of a small green star")
    assert still["image"] and _subject(still) == ("green", "star", "still")
    assert pe.expand_prompt("an image of a small green star").startswith("A still image of a small")


def test_unparseable_prompt_is_kept_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="sora_jax.prompt_expansion"):
        out = pe.PromptExpander("world")(["a dog on the beach", "a red cube"])
    assert out[0] == "a dog on the beach" and out[1].startswith("A ")
    assert sum("could not be expanded" in r.getMessage() for r in caplog.records) == 1


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="backend='gpt'"):
        pe.expand_prompt("x", "gpt")
    with pytest.raises(ValueError, match="must be a str"):
        pe.expand_prompt(["x"])
    with pytest.raises(ValueError, match="list of strings"):
        pe.PromptExpander()("a red circle")
    with pytest.raises(FileNotFoundError, match="no_model"):
        pe.PromptExpander("llm", model_dir=str(tmp_path / "no_model"))


# ----------------------------------------------------------------------------- tiny LLM


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    """A random Llama with a word-level tokenizer and a chat template, saved offline."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = " ".join(
        world.describe(world.make_spec("red", "circle", "left"), s) for s in world.STYLES
    )
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["<pad>", "<unk>", "<s>", "</s>"]
    tok.train_from_iterator([text], trainers.WordLevelTrainer(special_tokens=special))
    tok.decoder = decoders.WordPiece()
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>",
    )  # fmt: skip
    hf_tok.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}"
    )
    cfg = transformers.LlamaConfig(
        vocab_size=len(hf_tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, bos_token_id=2,
        eos_token_id=3,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_llm")
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    hf_tok.save_pretrained(folder)
    return str(folder)


def test_llm_backend_uses_chat_template_and_is_deterministic_and_batch_invariant(tiny_llm):
    exp = pe.PromptExpander("llm", model_dir=tiny_llm, max_new_tokens=5)
    text = exp.llm_input("a red circle moving left")
    assert text.startswith("<s>system: You expand short video prompts")
    assert "user: a red circle moving left" in text and text.endswith("assistant:")
    prompts = ["a red circle moving left", "a blue star"]
    batched = exp(prompts)
    assert all(isinstance(e, str) and 1 <= len(e.split()) <= 5 for e in batched)
    assert exp(prompts) == batched  # greedy: the same every time
    assert exp([prompts[1]]) == [batched[1]]  # left padding does not change the expansion
    assert pe.expand_prompt(prompts[0], "llm", model_dir=tiny_llm, max_new_tokens=5) == batched[0]


def test_details_the_prompt_leaves_open_come_from_the_training_distribution():
    cfg = world.WorldConfig(backgrounds=("flat",), sizes=("medium",))
    for spec in world.prompt_suite(cfg, 16):
        got = pe.parse_world_prompt(world.describe(spec, "short"), cfg)
        assert got["background"]["kind"] == "flat" and got["objects"][0]["size"] == "medium"
    long = pe.PromptExpander("world", world_cfg=cfg)(["a red ring bouncing"])[0]
    assert long.startswith("A medium red ring bounces") and "plain" in long

"""Prompt expansion at sampling: a short user prompt -> the descriptive style the model trained on.

The Sora report (after DALL·E 3) trains on long descriptive recaptions and, at sampling time,
turns short user prompts into the same style with a language model, so the prompt a model sees
at inference looks like its training captions. Two backends:

  world  on the synthetic world: the prompt is parsed against the world vocabulary (colour,
         shape, size, motion, background kind and tone, camera pan, occluding bar) into a scene
         spec, whose details the prompt leaves open (start position, background colour, ...) are
         drawn deterministically from a hash of the prompt; the world describer then writes the
         spec's long caption, exactly the style of the world's training recaptions.
  llm    a local instruction-tuned causal LM folder through `transformers` (no download): the
         prompt goes into the model's chat template after a system instruction, and greedy
         decoding makes expansion deterministic.

Expansion never fails a sampling run: a prompt the world parser cannot place (no colour or no
shape) or an LLM reply that is empty comes back unchanged, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence

from sora_jax.data import world, world_captions

logger = logging.getLogger(__name__)

BACKENDS = ("world", "llm")
SYSTEM_PROMPT = (
    "You expand short video prompts into detailed descriptions for a text-to-video model. "
    "Describe the main object's size, colour and shape, how it moves and where it starts, any "
    "other objects, the background, and any camera motion, in two to four plain sentences. "
    "Keep every detail of the user's prompt and never contradict it. Reply with the "
    "description only."
)
# Words users type for world shapes/motions, beyond the world's own vocabulary.
_SHAPE_WORDS = {
    **{s: s for s in world.ALL_SHAPES},
    **{s + "s": s for s in world.ALL_SHAPES},
    "ball": "circle", "disc": "circle", "disk": "circle", "dot": "circle", "box": "square",
    "cube": "square", "rhombus": "diamond", "plus": "cross", "donut": "ring", "annulus": "ring",
}  # fmt: skip
_VERBS = ("moving", "moves", "going", "goes", "heading", "heads", "sliding", "slides",
          "drifting", "drifts", "travelling", "traveling", "flying", "flies")  # fmt: skip


def _direction_forms(d: str) -> list[str]:
    if "-" not in d:
        return [d, f"to the {d}"] if d in ("left", "right") else [d, f"{d}wards", f"{d}ward"]
    v, h = d.split("-")
    return [d, f"{v} and to the {h}", f"{v} and {h}", f"{v} {h}"]


_MOTION_WORDS = {  # the earliest, then longest, phrase in a prompt wins
    **{f"{verb} {form}": d for d in world.DIRECTIONS for form in _direction_forms(d)
       for verb in _VERBS},
    **{phrase: m for m, phrase in world_captions.MOTION_PHRASES.items()},
    "bounces": "bounce", "bouncing": "bounce", "bounce": "bounce", "jumping": "bounce",
    "grows": "grow", "growing": "grow", "getting bigger": "grow", "expanding": "grow",
    "shrinks": "shrink", "shrinking": "shrink", "getting smaller": "shrink",
    "still": "still", "static": "still", "stationary": "still", "not moving": "still",
}  # fmt: skip
_BACKGROUND_WORDS = {"plain": "flat", "flat": "flat", "gradient": "gradient",
                     "textured": "texture", "texture": "texture"}  # fmt: skip


def _words(text: str) -> str:
    return " " + re.sub(r"[^a-z\- ]+", " ", text.lower().replace("-", " - ")).strip() + " "


def _find(text: str, table: dict[str, str]) -> tuple[str | None, int]:
    """(value, position) of the earliest, then longest, table phrase found in `text`."""
    hits = []
    for phrase, value in table.items():
        pos = text.find(" " + phrase.replace("-", " - ") + " ")
        if pos >= 0:
            hits.append((pos, -len(phrase), value))
    if not hits:
        return None, -1
    pos, _, value = min(hits)
    return value, pos


def parse_world_prompt(prompt: str, cfg: world.WorldConfig | None = None) -> dict | None:
    """A scene spec for a free-text prompt in the world vocabulary, or None if it names no
    colour or no shape. The subject is the first colour + shape named; unnamed details (size,
    background) are drawn from `cfg`'s choices (the training distribution; default: all) by the
    prompt's hash, so the same prompt always gives the same spec."""
    cfg = cfg or world.WorldConfig()
    text = _words(prompt)
    color, _ = _find(text, {c: c for c in world.ALL_COLORS})
    shape, _ = _find(text, _SHAPE_WORDS)
    if color is None or shape is None:
        return None
    image = any(w in text for w in (" image ", " photo ", " picture ", " still image "))
    motion, _ = _find(text, _MOTION_WORDS)
    size, _ = _find(text, {s: s for s in world.ALL_SIZES} | {"big": "large", "tiny": "small"})
    background, _ = _find(text, _BACKGROUND_WORDS)
    tones = {name: tone for tone, names in world.TONES.items() for name in names}
    tone, _ = _find(text, tones | {"dark": "dark", "light": "light", "bright": "light"})
    pan, _ = _find(text, {f"pans {d}": d for d in world.PAN_DIRECTIONS}
                   | {f"panning {d}": d for d in world.PAN_DIRECTIONS})  # fmt: skip
    seed = int.from_bytes(hashlib.sha1(prompt.encode("utf-8")).digest()[:4], "little")
    draw = lambda options: options[seed % len(options)]  # noqa: E731
    return world.make_spec(
        color, shape, "still" if image else (motion or "still"),
        size=size or draw(cfg.sizes), background=background or draw(cfg.backgrounds),
        tone=tone or draw(("dark", "light")), pan="none" if image else (pan or "none"),
        occluder=not image and any(w in text for w in (" bar ", " occluder ", " hidden ")),
        image=image, seed=seed,
    )  # fmt: skip


class PromptExpander:
    """Expands prompts with one backend; the LLM (if any) is loaded once and reused."""

    def __init__(
        self,
        backend: str = "world",
        *,
        model_dir: str = "",
        system_prompt: str = SYSTEM_PROMPT,
        max_new_tokens: int = 120,
        style: str = "long",
        world_cfg: world.WorldConfig | None = None,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"expand_prompt backend={backend!r}; expected one of {BACKENDS}.")
        if style not in world.STYLES:
            raise ValueError(f"expansion style={style!r}; expected one of {world.STYLES}.")
        self.backend, self.style, self.world_cfg = backend, style, world_cfg
        self.system_prompt, self.max_new_tokens = system_prompt, int(max_new_tokens)
        self.model = self.tokenizer = None
        if backend == "llm":
            self._load_llm(model_dir)

    def _load_llm(self, model_dir: str) -> None:
        import os

        import transformers

        if not model_dir or not os.path.isfile(os.path.join(model_dir, "config.json")):
            raise FileNotFoundError(
                f"expand_model={model_dir!r} is not a model folder; expected a local "
                f"transformers causal-LM checkpoint (config.json, weights, tokenizer)."
            )
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"  # generation continues at the right end
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()

    def llm_input(self, prompt: str) -> str:
        """The text the LLM continues: its chat template with the system prompt, if it has one."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            messages = [{"role": "system", "content": self.system_prompt},
                        {"role": "user", "content": prompt}]  # fmt: skip
            return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return f"{self.system_prompt}\n\nPrompt: {prompt}\nDescription:"

    def _llm(self, prompts: Sequence[str]) -> list[str]:
        import torch

        inputs = self.tokenizer(
            [self.llm_input(p) for p in prompts], return_tensors="pt", padding=True,
            add_special_tokens=False,
        )  # fmt: skip
        with torch.no_grad():
            out = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )  # fmt: skip
        new = out[:, inputs["input_ids"].shape[1] :]
        return [
            " ".join(t.split()) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)
        ]

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        """Expanded prompts, one per input (a prompt that cannot be expanded is kept)."""
        if isinstance(prompts, str):
            raise ValueError(f"prompts must be a list of strings, got the str {prompts[:40]!r}.")
        if self.backend == "world":
            specs = [parse_world_prompt(p, self.world_cfg) for p in prompts]
            out = [
                p if s is None else world.describe(s, self.style) for p, s in zip(prompts, specs)
            ]
        else:
            out = self._llm(prompts)
        for i, (p, e) in enumerate(zip(prompts, out)):
            if not e or (self.backend == "world" and e == p):
                logger.warning("prompt %d could not be expanded (%s); kept as is: %.60r",
                               i, self.backend, p)  # fmt: skip
        return [e or p for p, e in zip(prompts, out)]


def expand_prompt(prompt: str, backend: str = "world", *, model_dir: str = "", **kwargs) -> str:
    """One prompt expanded by `backend` ('world' | 'llm'); see `PromptExpander` for options.

    For many prompts build one `PromptExpander` so the LLM is loaded once.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__} {prompt!r:.60}.")
    return PromptExpander(backend, model_dir=model_dir, **kwargs)([prompt])[0]

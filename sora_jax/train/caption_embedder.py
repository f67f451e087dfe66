"""The DiT stage's frozen text encoder behind a per-caption cache, with encodes started ahead.

`CaptionEmbedder(texts)` returns (embeddings [B, L, D], masks [B, L]) of the captions, encoding
only the ones it has not seen (in one encoder call, sorted by length and text: the same captions
in the same order give the same call, so the same numbers; the encoder runs each chunk at its
longest caption's length, so short captions cost a fraction of max_length's). `request(texts)`
starts that encode without waiting for it: the encoder's program is queued on the device and
the caption's entry holds its pending output, read when a later call needs it. The DiT stage
requests each batch's captions several steps before the batch is due (dit_latent_cache.py), so
reading them no longer waits behind the train steps already queued on the device (the fourth
world run on the H200 stepped 11.9 ms and waited 31.6 ms per step for its batch: a new caption's
encode, in 59% of its steps, queued behind up to two train steps). Requests made in step order
make exactly the encoder calls that plain calls in step order make, so the embeddings are the
same bit for bit.
"""

from __future__ import annotations

import threading

import ml_collections
import numpy as np

from sora_jax.data import text_cache
from sora_jax.models import text as text_lib
from sora_jax.train import device_gate


class _Pending:
    """One encoder call still on the device: (hidden [n, L, D], mask [n, L]) of `texts`."""

    def __init__(self, texts: list[str], hidden, mask):
        self.texts, self.hidden, self.mask = texts, hidden, mask

    def rows(self, store_dtype: np.dtype) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        emb, mask = np.asarray(self.hidden), np.asarray(self.mask)  # waits for the device
        return {t: (emb[i].astype(store_dtype), mask[i]) for i, t in enumerate(self.texts)}


class CaptionEmbedder:
    """Frozen text encoder behind per-caption caches of (embedding, mask): in memory and, when
    `text.cache_dir` is set, on disk (sora_jax.data.text_cache; misses are written there). The
    encoder itself is loaded only when a caption is in neither cache."""

    def __init__(self, cfg: ml_collections.ConfigDict, max_cache: int = 200_000,
                 store_dtype: np.dtype = np.float32):  # fmt: skip
        """store_dtype: of the embeddings it keeps in memory and returns (the disk cache keeps
        the encoder's float32)."""
        self.store_dtype = np.dtype(store_dtype)
        self.text_cfg = text_lib.TextConfig(**cfg.to_dict())
        self.dim = text_lib.encoder_dim(self.text_cfg)
        self._encoder: text_lib.TextEncoder | None = None
        # caption -> (embedding, mask), or the _Pending encode that will give them
        self.cache: dict[str, tuple[np.ndarray, np.ndarray] | _Pending] = {}
        self.max_cache = max_cache
        self.disk = None
        self._lock = threading.Lock()  # callers in several threads (the eval suite's sets)
        self._encode_lock = threading.Lock()  # shared with `sharing_encoder` embedders
        if self.text_cfg.cache_dir:
            namespace = text_lib.cache_namespace(self.text_cfg)
            self.disk = text_cache.TextEmbeddingCache(self.text_cfg.cache_dir, namespace)

    @property
    def encoder(self) -> text_lib.TextEncoder:
        if self._encoder is None:
            self._encoder = text_lib.TextEncoder(self.text_cfg)
        return self._encoder

    def sharing_encoder(self) -> CaptionEmbedder:
        """A second embedder with its own cache over this one's encoder (weights loaded once):
        callers outside the training data path (training samples) then leave the encoder calls
        of the training captions, and so their numbers, alone."""
        other = CaptionEmbedder.__new__(CaptionEmbedder)
        other.__dict__.update(self.__dict__)
        other.cache, other._lock, other.disk = {}, threading.Lock(), None
        other._encoder = self.encoder  # one encoder: its calls (tokenizer, dispatch) one at a time
        return other

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            self._request(texts)
            return self._gather(texts)

    def request(self, texts: list[str]) -> None:
        """Starts encoding the captions of `texts` not yet cached; returns without waiting."""
        with self._lock:
            self._request(texts)

    def _request(self, texts: list[str]) -> None:
        # In order of length: the encoder runs each chunk at its longest caption's length.
        missing = sorted({t for t in texts if t not in self.cache}, key=lambda t: (len(t), t))
        if not missing:
            return
        found = self.disk.get_many(missing) if self.disk is not None else {}
        todo = [t for t in missing if t not in found]
        if len(self.cache) + len(missing) > self.max_cache:  # keep the ones `texts` needs
            keep = {t: self.cache[t] for t in texts if t in self.cache}
            self.cache = keep
        self.cache.update({t: (e.astype(self.store_dtype), m) for t, (e, m) in found.items()})
        if not todo:
            return
        # Returns once the encode is queued on the device; not while the training loop runs a
        # program's first step alone (device_gate.py).
        with self._encode_lock, device_gate.GATE.shared():
            pending = _Pending(todo, *self.encoder.encode(todo))
        if self.disk is None:
            self.cache.update(dict.fromkeys(todo, pending))
            return
        rows = pending.rows(np.dtype(np.float32))  # the disk cache writes now: no reason to wait
        self.disk.put_many(todo, np.stack([rows[t][0] for t in todo]),
                           np.stack([rows[t][1] for t in todo]))  # fmt: skip
        self.cache.update({t: (e.astype(self.store_dtype), m) for t, (e, m) in rows.items()})

    def _gather(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        for t in texts:
            entry = self.cache[t]
            if isinstance(entry, _Pending):
                self.cache.update(entry.rows(self.store_dtype))
        return (
            np.stack([self.cache[t][0] for t in texts]),
            np.stack([self.cache[t][1] for t in texts]),
        )

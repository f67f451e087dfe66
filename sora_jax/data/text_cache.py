"""Disk cache of frozen text-encoder outputs: each caption is encoded once, ever.

A frozen encoder gives the same (embedding, mask) for a caption every time, and umT5-XXL costs
more per caption than a small DiT step, so training and sampling look captions up here first
and only encode (then store) the misses. Keys are `sha1(encoder, path, max_length, text)`, so
one folder can hold the outputs of several encoders without mixing them.

Layout of `cache_dir` (append-only; any number of writers, e.g. one per host):

    <shard>.array_record   one record per caption: np.save(embedding) + np.save(mask) bytes
    <shard>.keys.npy       uint8 [n, 20]: the sha1 digests of the shard's records, in order

or, where `array_record` is not installed, `<shard>.emb.npy` float [n, L, D] + `<shard>.mask.npy`
bool [n, L] (memory-mapped on read) instead of the .array_record file. A shard's keys file is
renamed into place last, so a shard is visible only once complete: a writer killed mid-flush
leaves a stray temporary file, never a corrupt entry. Shards written by other processes after
this one opened the cache are seen after `refresh()`.

Shapes: L tokens (the encoder's max_length), D embedding width.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

try:  # ArrayRecord is the default format; a plain-numpy layout is the fallback.
    from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
except ImportError:  # pragma: no cover - exercised only where array_record is absent
    ArrayRecordReader = ArrayRecordWriter = None

BACKENDS = ("auto", "array_record", "npy")
_DIGEST = 20  # bytes of a sha1


def caption_key(encoder: str, path: str, max_length: int, text: str) -> bytes:
    """The 20-byte sha1 digest that names one caption's embedding under one encoder setup."""
    h = hashlib.sha1()
    for part in (encoder, path, str(max_length), text):
        h.update(part.encode("utf-8"))
        h.update(b"\0")  # separator: ("ab", "c") and ("a", "bc") must not collide
    return h.digest()


def _to_bytes(emb: np.ndarray, mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, emb, allow_pickle=False)
    np.save(buf, mask, allow_pickle=False)
    return buf.getvalue()


def _from_bytes(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    buf = io.BytesIO(data)
    return np.load(buf, allow_pickle=False), np.load(buf, allow_pickle=False)


class TextEmbeddingCache:
    """Caption -> (embedding [L, D], mask [L] bool) store in `directory` for one encoder setup.

    `namespace` is (encoder name, weights path, max_length): part of every key. Writes are
    buffered and flushed as one shard every `flush_every` captions, on `flush()`/`close()`, and at
    interpreter exit.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        namespace: tuple[str, str, int],
        *,
        flush_every: int = 1024,
        backend: str = "auto",
    ):
        if backend not in BACKENDS:
            raise ValueError(f"cache backend={backend!r}; expected one of {BACKENDS}.")
        if backend == "array_record" and ArrayRecordWriter is None:
            raise ValueError("cache backend='array_record' needs the array_record package.")
        if backend == "auto":
            backend = "npy" if ArrayRecordWriter is None else "array_record"
        self.dir = Path(directory).expanduser()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.namespace, self.backend, self.flush_every = namespace, backend, int(flush_every)
        self._index: dict[bytes, tuple[str, int]] = {}  # digest -> (shard stem, row)
        self._readers: dict[str, object] = {}
        self._pending: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        self._seen: set[str] = set()
        self.refresh()
        atexit.register(self.flush)

    def key(self, text: str) -> bytes:
        return caption_key(*self.namespace, text)

    def __len__(self) -> int:
        return len(self._index) + len(self._pending)

    def refresh(self) -> None:
        """Indexes shards that appeared since the last call (e.g. written by other hosts)."""
        for keys_file in sorted(self.dir.glob("*.keys.npy")):
            stem = keys_file.name.removesuffix(".keys.npy")
            if stem in self._seen or stem.startswith(".tmp-"):  # unfinished write
                continue
            self._seen.add(stem)
            for row, digest in enumerate(np.load(keys_file)):
                self._index.setdefault(digest.tobytes(), (stem, row))

    def get_many(self, texts: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The cached (embedding, mask) of each text that is cached; misses are left out."""
        found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        by_shard: dict[str, list[tuple[int, str]]] = {}
        for text in dict.fromkeys(texts):
            digest = self.key(text)
            if digest in self._pending:
                found[text] = self._pending[digest]
            elif digest in self._index:
                stem, row = self._index[digest]
                by_shard.setdefault(stem, []).append((row, text))
        for stem, rows in by_shard.items():
            for (_, text), item in zip(rows, self._read(stem, [r for r, _ in rows])):
                found[text] = item
        return found

    def put_many(self, texts: Sequence[str], emb: np.ndarray, mask: np.ndarray) -> None:
        """Stores texts[i] -> (emb[i] [L, D], mask[i] [L]); already cached texts are skipped."""
        if len(texts) != len(emb) or len(texts) != len(mask):
            raise ValueError(
                f"put_many got {len(texts)} texts but {len(emb)} embeddings and {len(mask)} masks."
            )
        for text, e, m in zip(texts, np.asarray(emb), np.asarray(mask)):
            digest = self.key(text)
            if digest not in self._index:
                self._pending[digest] = (e, m.astype(bool))
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Writes the buffered captions as one new shard (no-op when nothing is buffered)."""
        if not self._pending:
            return
        digests = list(self._pending)
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        tmp = f".tmp-{stem}"
        if self.backend == "array_record":
            writer = ArrayRecordWriter(str(self.dir / f"{tmp}.array_record"), "group_size:1")
            for d in digests:
                writer.write(_to_bytes(*self._pending[d]))
            writer.close()
            os.replace(self.dir / f"{tmp}.array_record", self.dir / f"{stem}.array_record")
        else:
            for part, i in (("emb", 0), ("mask", 1)):
                stacked = np.stack([self._pending[d][i] for d in digests])
                with open(self.dir / f"{tmp}.{part}.npy", "wb") as f:
                    np.save(f, stacked, allow_pickle=False)
                os.replace(self.dir / f"{tmp}.{part}.npy", self.dir / f"{stem}.{part}.npy")
        keys = np.frombuffer(b"".join(digests), np.uint8).reshape(-1, _DIGEST)
        with open(self.dir / f"{tmp}.keys.npy", "wb") as f:
            np.save(f, keys, allow_pickle=False)
        os.replace(self.dir / f"{tmp}.keys.npy", self.dir / f"{stem}.keys.npy")  # now visible
        self._seen.add(stem)
        for row, d in enumerate(digests):
            self._index.setdefault(d, (stem, row))
        logger.info("text cache: wrote %d embeddings to shard %s", len(digests), stem)
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        atexit.unregister(self.flush)
        self._readers.clear()

    def _read(self, stem: str, rows: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        if (self.dir / f"{stem}.array_record").is_file():
            if ArrayRecordReader is None:
                raise ValueError(
                    f"text cache shard {stem}.array_record needs the array_record package."
                )
            if stem not in self._readers:
                self._readers[stem] = ArrayRecordReader(str(self.dir / f"{stem}.array_record"))
            return [_from_bytes(b) for b in self._readers[stem].read(rows)]
        if stem not in self._readers:
            self._readers[stem] = tuple(
                np.load(self.dir / f"{stem}.{part}.npy", mmap_mode="r") for part in ("emb", "mask")
            )
        emb, mask = self._readers[stem]
        return [(np.array(emb[r]), np.array(mask[r])) for r in rows]

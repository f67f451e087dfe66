"""Per-bucket ArrayRecord cache of VAE latents and caption embeddings (format only, no model).

`tools/cache_latents.py` fills it with a trained VAE and the text encoder; the DiT stage trains
from it (`config.dit_train.latent_cache_dir`) through the same bucketed pipeline, with no VAE
in the step. Layout:

  <cache_dir>/meta.json                         buckets, shapes, dtypes, latent stats, captions
  <cache_dir>/<FxHxW>/latents-0000k-of-0000n.array_record

One record = one clip of one bucket: a little-endian uint32 header length, a JSON header
({"arrays": {name: [dtype, shape, offset]}, "fields": {...}}) and the raw array buffers:

  latents      [T, h, w, z]  unit-scale latents ((mean - latent_mean) / latent_std), as the
                             DiT consumes them
  emb_<key>    [n, D]        text embeddings of caption <key> ("prompt", "caption"), only the
                             n valid tokens (padded back to max_length with a False mask on read)
  fields       prompt, caption, index (in the source), source_id

Shapes: T latent frames, h w latent height/width, z latent channels, D text dim, L max_length.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np

from sora_jax.data import sources

META = "meta.json"
_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def _dtype(name: str):
    if name not in _DTYPES:
        raise ValueError(f"cache dtype {name!r}; expected one of {sorted(_DTYPES)}.")
    return _DTYPES[name]


def encode_entry(arrays: Mapping[str, np.ndarray], fields: Mapping[str, Any]) -> bytes:
    """Arrays + JSON fields -> one record (see the module docstring)."""
    table, offset, chunks = {}, 0, []
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        table[name] = [a.dtype.name, list(a.shape), offset]
        chunks.append(a.tobytes())
        offset += a.nbytes
    header = json.dumps({"arrays": table, "fields": dict(fields)}).encode()
    return struct.pack("<I", len(header)) + header + b"".join(chunks)


def decode_entry(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    (n,) = struct.unpack_from("<I", data)
    header = json.loads(data[4 : 4 + n])
    body = memoryview(data)[4 + n :]
    arrays = {}
    for name, (dtype, shape, offset) in header["arrays"].items():
        dt = np.dtype(_DTYPES.get(dtype, dtype))
        count = int(np.prod(shape))
        arrays[name] = np.frombuffer(body, dt, count, offset).reshape(shape)
    return arrays, header["fields"]


class LatentCacheWriter:
    """Writes records per bucket (round-robin over `num_shards` files) and then meta.json."""

    def __init__(self, cache_dir: str, *, num_shards: int = 1, latent_dtype: str = "float32",
                 emb_dtype: str = "float32"):  # fmt: skip
        self.cache_dir, self.num_shards = cache_dir, int(num_shards)
        self.latent_dtype, self.emb_dtype = _dtype(latent_dtype), _dtype(emb_dtype)
        self.meta: dict[str, Any] = {"latent_dtype": latent_dtype, "emb_dtype": emb_dtype,
                                     "buckets": {}}  # fmt: skip
        self._writers: dict[str, list] = {}
        os.makedirs(cache_dir, exist_ok=True)

    def _bucket(self, name: str, latent_shape: Sequence[int]) -> list:
        if name not in self._writers:
            from array_record.python import array_record_module

            os.makedirs(os.path.join(self.cache_dir, name), exist_ok=True)
            files = [f"{name}/latents-{i:05d}-of-{self.num_shards:05d}.array_record"
                     for i in range(self.num_shards)]  # fmt: skip
            self._writers[name] = [
                array_record_module.ArrayRecordWriter(os.path.join(self.cache_dir, f),
                                                      "group_size:1")
                for f in files
            ]  # fmt: skip
            self.meta["buckets"][name] = {"shards": files, "shard_lengths": [0] * self.num_shards,
                                          "latent_shape": list(latent_shape)}  # fmt: skip
        return self._writers[name]

    def write(
        self,
        bucket: str,
        latents: np.ndarray,
        embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]],
        fields: Mapping[str, Any],
    ) -> None:
        """latents [T,h,w,z]; embeddings {key: (emb [L, D], mask bool [L])}; fields JSON-able."""
        writers = self._bucket(bucket, latents.shape)
        info = self.meta["buckets"][bucket]
        if list(latents.shape) != info["latent_shape"]:
            raise ValueError(f"bucket {bucket} latents {latents.shape} != {info['latent_shape']}.")
        arrays = {"latents": np.asarray(latents, self.latent_dtype)}
        for key, (emb, mask) in embeddings.items():
            arrays[f"emb_{key}"] = np.asarray(emb, self.emb_dtype)[np.asarray(mask, bool)]
        count = sum(info["shard_lengths"])
        shard = count % self.num_shards
        writers[shard].write(encode_entry(arrays, fields))
        info["shard_lengths"][shard] += 1

    def close(self, **meta) -> dict:
        """Closes the shards and writes meta.json with `meta` (stats, max_length, text_dim...)."""
        for ws in self._writers.values():
            for w in ws:
                w.close()
        self.meta.update(meta)
        with open(os.path.join(self.cache_dir, META), "w") as f:
            json.dump(self.meta, f, indent=1)
        return self.meta


def read_meta(cache_dir: str) -> dict:
    path = os.path.join(cache_dir, META)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing; build the cache with tools/cache_latents.py.")
    with open(path) as f:
        return json.load(f)


class LatentCacheSource:
    """Pipeline source over a latent cache: record i of bucket b fills only bucket b.

    `clip(index, h, w, f)` returns {"latents" float32 [T,h,w,z], "emb_<key>" [L, D],
    "mask_<key>" bool [L], "prompt", "caption", "index" (in the original source), ...}.
    """

    def __init__(self, cache_dir: str):
        import grain

        self.cache_dir = cache_dir
        self.info = read_meta(cache_dir)
        self.max_length = int(self.info["max_length"])
        self.names = list(self.info["buckets"])
        paths, self._bucket_of = [], []
        for i, name in enumerate(self.names):
            b = self.info["buckets"][name]
            paths += [os.path.join(cache_dir, f) for f, n in zip(b["shards"], b["shard_lengths"])
                      if n]  # fmt: skip
            self._bucket_of += [i] * sum(b["shard_lengths"])
        self._bucket_of = np.asarray(self._bucket_of, np.int64)
        self.records = grain.sources.ArrayRecordDataSource(paths)

    def __len__(self) -> int:
        return len(self.records)

    def eligible(self, buckets) -> list[np.ndarray]:
        """Per pipeline bucket, the cache records of that bucket (missing buckets are errors)."""
        out = []
        for b in buckets:
            if b.name not in self.names:
                raise ValueError(
                    f"bucket {b.name} is not in the latent cache {self.cache_dir} (it has "
                    f"{self.names}); rebuild it with tools/cache_latents.py for this bucket table."
                )
            out.append(np.flatnonzero(self._bucket_of == self.names.index(b.name)))
        return out

    def clip(self, index: int, height: int, width: int, num_frames: int) -> dict[str, Any]:
        name = self.names[int(self._bucket_of[index])]
        if name != f"{num_frames}x{height}x{width}":
            raise sources.ClipError(f"cache record {index} belongs to bucket {name}.")
        arrays, fields = decode_entry(self.records[int(index)])
        item = {**fields, "latents": arrays.pop("latents").astype(np.float32)}
        for key, emb in arrays.items():  # "emb_prompt" -> padded emb + mask
            n, d = emb.shape
            padded = np.zeros((self.max_length, d), np.float32)
            padded[:n] = emb
            item[key] = padded
            item[key.replace("emb_", "mask_")] = np.arange(self.max_length) < n
        return item

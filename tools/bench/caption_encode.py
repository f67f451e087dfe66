"""Benchmark: the DiT stage's caption encodes on the world's caption stream, every new caption
padded to `max_length` (as before) against each chunk run at its longest caption's length
bucket, captions in order of length (`TextEncoder.encode` and the caption cache now).

    python tools/bench/caption_encode.py [--config_arg=res=64] [--steps 12] [--json OUT]

The stream is the recipe's: each step draws `batch` clips of the world (`configs/world.py`, its
main bucket's batch), takes each clip's short prompt or long recaption with the stage's
probabilities (`dit_train.caption_probs`, `caption_dropout`; draws of its own), and encodes
the captions not seen before, in chunks of `text.ENCODE_CHUNK`. Both arms encode the same new
captions with the same weights through `encode`; "before" sorts them by text and runs every
chunk at `max_length` (`padded_length` patched: what `encode` did until 2026-12-05), "now"
sorts them by length as the caption cache does. Tokens are counted from the encoder's calls.
Every shape is compiled in an untimed pass first; then the arms alternate step by step.
Prints a table (time, tokens the encoder ran, ratio) and writes JSON with the device, versions
and date.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from unittest import mock

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tools" / "bench"))
import aot_compile  # noqa: E402  (tools/aot_compile.py: a config file by path)
import report  # noqa: E402  (tools/bench/report.py)


def caption_stream(cfg, steps: int, seed: int) -> list[list[str]]:
    """Per step, the captions of the step not seen in an earlier step (the cache's misses)."""
    from sora_jax.data import sources

    w = sources.make_world(cfg)
    train = cfg.dit_train
    batch = train.buckets[0][1]
    keys, probs = zip(*dict(train.caption_probs).items(), strict=True)
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    out = []
    for step in range(steps):
        texts = set()
        for j in range(batch):
            item = w[step * batch + j]
            text = item[str(rng.choice(keys, p=np.asarray(probs) / sum(probs)))]
            texts.add("" if rng.uniform() < train.caption_dropout else text)
        out.append(sorted(texts - seen))
        seen |= texts
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config_arg", default="res=64", help="configs/world.py's argument")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text_path", default="", help="MiniLM folder ('' = the packaged one)")
    p.add_argument("--json", default="tools/bench/results/caption_encode.json")
    args = p.parse_args(argv)

    from sora_jax.models import text as text_lib

    cfg = aot_compile.load_config(str(ROOT / "configs" / f"world.py:{args.config_arg}"), [])
    text_cfg = text_lib.TextConfig(**{**cfg.text.to_dict(), "path": args.text_path})
    enc = text_lib.TextEncoder(text_cfg)
    stream = caption_stream(cfg, args.steps, args.seed)

    shapes: list[tuple[int, int]] = []  # (batch, length) of every encoder call
    forward = enc._forward
    enc._forward = lambda state, ids, mask: shapes.append(ids.shape) or forward(state, ids, mask)

    def tokens_of(encode) -> int:  # the tokens the encoder's calls in `encode` ran
        shapes.clear()
        encode()
        return sum(b * n for b, n in shapes)

    def before(texts: list[str]) -> int:  # sorted by text, every chunk at max_length
        with mock.patch.object(text_lib, "padded_length", lambda n, max_length: max_length):
            return tokens_of(lambda: enc.encode(sorted(texts))[0].block_until_ready())

    def now(texts: list[str]) -> int:  # as the caption cache calls it: in order of length
        texts = sorted(texts, key=lambda t: (len(t), t))
        return tokens_of(lambda: enc.encode(texts)[0].block_until_ready())

    arms = {"before: every chunk at max_length": before, "now: chunks at their length": now}
    for texts in stream:  # compile every shape, untimed
        for fn in arms.values():
            fn(texts)
    seconds = dict.fromkeys(arms, 0.0)
    tokens = dict.fromkeys(arms, 0)
    for texts in stream:
        for name, fn in arms.items():
            t0 = time.perf_counter()
            tokens[name] += fn(texts)
            seconds[name] += time.perf_counter() - t0
    new = sum(len(t) for t in stream)
    valid = sum(int(enc.tokenize(t)[1].sum()) for t in stream if t)
    result = report.jax_header(
        "caption_encode", config=f"configs/world.py:{args.config_arg}", steps=args.steps,
        batch=cfg.dit_train.buckets[0][1], new_captions=new, valid_tokens=valid,
        max_length=text_cfg.max_length, encoder=text_cfg.encoder, dtype=text_cfg.dtype,
    )  # fmt: skip
    base = seconds[next(iter(arms))]
    for name in arms:
        result["rows"].append({
            "arm": name, "seconds": round(seconds[name], 4),
            "ms_per_step": round(1e3 * seconds[name] / args.steps, 2),
            "encoded_tokens": tokens[name], "speedup": round(base / seconds[name], 3),
        })  # fmt: skip
    print(f"{new} new captions in {args.steps} steps of {result['batch']} clips, "
          f"{valid} valid tokens; {result['device']}")  # fmt: skip
    report.print_table(result["rows"], ["arm", "ms_per_step", "encoded_tokens", "speedup"], 36)
    report.write_json(args.json, result)


if __name__ == "__main__":
    main()

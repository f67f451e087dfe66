"""Does the frozen text encoder tell which way a world caption's bar sweeps?

    python tools/experiments/bar_word_probe.py [--captions=1600] [--out=probe.json]

The eighteenth GPU run's DiT moved the occlusion scenes' bars the captioned way in 49 of 96
scenes (chance), while it follows the subject's motion words (0.91). The captions of the time
said "sweeps from top to bottom" or "from bottom to top": the same words either way, in another
order. This encodes world long captions of occluded scenes with the recipe's MiniLM
(configs/world.py's text settings) and fits a linear probe (ridge regression onto +-1, on 3/4
of the captions, scored on the rest) for the bar's way, per bar orientation, on:

  pooled   the mean of the caption's token features: what a reader that ignores which token
           says what (as a cross-attention without text positions may) has;
  word     the feature of one direction word ("top", "bottom", "left" or "right") of the bar
           sentence: whether the word is where the bar comes from or where it goes.

`--wording=ways` probes the wording `sora_jax.data.world_captions` uses since ("sweeps slowly
downward", ...) instead, where the pooled features see a different word per way. Prints the
accuracies and writes them as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

ENDS = {"vertical": ("left", "right"), "horizontal": ("top", "bottom")}


def order_caption(caption: str, spec: dict) -> str:
    """The caption with its bar sentence in the order wording ("sweeps from top to bottom")."""
    occ = spec["occluder"]
    a, b = ENDS[occ["orientation"]][:: 1 if occ["end"] > occ["start"] else -1]
    return re.sub(r"sweeps (\w+ )?\w+,", f"sweeps from {a} to {b},", caption)


def ridge_accuracy(x: np.ndarray, y: np.ndarray, lam: float = 1.0) -> float:
    """Held-out accuracy of a ridge-regression linear probe: fit on the first 3/4 of (x, y),
    y in {-1, +1}, score the sign of its prediction on the rest."""
    n = len(y)
    cut = (3 * n) // 4
    xa = np.concatenate([x, np.ones((n, 1))], 1)
    tr, te = slice(0, cut), slice(cut, n)
    a = xa[tr].T @ xa[tr] + lam * np.eye(xa.shape[1])
    w = np.linalg.solve(a, xa[tr].T @ y[tr])
    return float(np.mean(np.sign(xa[te] @ w) == y[te]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=1600)
    parser.add_argument("--wording", choices=("order", "ways"), default="order")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)

    from sora_jax.data import world, world_captions
    from sora_jax.models import text as text_lib

    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import world as world_recipe  # configs/world.py: the recipe's text settings

    text_cfg = world_recipe.get_config().text
    encoder = text_lib.TextEncoder(text_lib.TextConfig(
        encoder=text_cfg.encoder, path=text_cfg.path, max_length=text_cfg.max_length))  # fmt: skip
    cfg = world.WorldConfig(occluder_prob=1.0, image_fraction=0.0, resolutions=((64, 64),),
                            num_frames=(17,))  # fmt: skip
    scenes = (world.World(cfg).spec(i) for i in range(10 * args.captions))
    specs = [s for s in scenes if s["occluder"]][: args.captions]
    captions = [world_captions.describe(s, "long") for s in specs]
    if args.wording == "order":
        captions = [order_caption(c, s) for c, s in zip(captions, specs)]
    feats, masks = [], []
    for i in range(0, len(captions), 64):
        e, m = encoder.encode(captions[i : i + 64])
        feats.append(np.asarray(e, np.float64))
        masks.append(np.asarray(m, bool))
    feats, masks = np.concatenate(feats), np.concatenate(masks)
    ids, _ = encoder.tokenize(captions)
    sweeps = encoder.tokenizer.token_to_id("sweeps")
    y = np.array([1.0 if s["occluder"]["end"] > s["occluder"]["start"] else -1.0 for s in specs])
    out = {"captions": len(specs), "wording": args.wording, "rows": []}
    for orientation in ("vertical", "horizontal"):
        pick = np.array([s["occluder"]["orientation"] == orientation for s in specs])
        pooled = np.stack([f[m].mean(0) for f, m in zip(feats[pick], masks[pick])])
        row = {"orientation": orientation, "captions": int(pick.sum()),
               "pooled": ridge_accuracy(pooled, y[pick])}  # fmt: skip
        if args.wording == "order":  # "sweeps from A to B": the end words' features
            src_at = np.array([list(r).index(sweeps) + 2 for r in ids[pick]])  # A
            rows = np.arange(int(pick.sum()))
            f, t = feats[pick], ids[pick]
            src, src_tok = f[rows, src_at], t[rows, src_at]
            dst, dst_tok = f[rows, src_at + 2], t[rows, src_at + 2]  # B
            # Per end word: is it where the bar comes from (+1) or where it goes (-1)?
            for end in ENDS[orientation]:
                tok = encoder.tokenizer.token_to_id(end)
                x = np.concatenate([src[src_tok == tok], dst[dst_tok == tok]])
                lab = np.repeat([1.0, -1.0], [(src_tok == tok).sum(), (dst_tok == tok).sum()])
                order = np.random.default_rng(0).permutation(len(lab))
                row[f"word_{end}"] = ridge_accuracy(x[order], lab[order])
        out["rows"].append(row)
    for row in out["rows"]:
        print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in row.items()))  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()

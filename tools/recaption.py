r"""Add descriptive captions to a prepared dataset (resumable; see sora_jax/data/recaption.py).

    # ground truth on the synthetic world (records carrying a scene `spec`):
    python tools/recaption.py --input=/data/world/manifest.jsonl \
        --output=/data/world/recaptioned.jsonl --backend=world --styles=short,medium,long
    # a local vision-language model on prepared ArrayRecord shards:
    python tools/recaption.py --input=/data/tfds/sora_videos/1.0.0 --output=/data/recap \
        --backend=vlm --model_dir=/models/llava-onevision-0.5b --num_frames=4 --batch_size=8 \
        --dtype=bfloat16
    # settings from a config's `recaption` section (flags given explicitly still win):
    python tools/recaption.py --config=configs/tiny.py --input=... --output=...

A killed run restarted with the same flags continues after the last finished batch
(`<output>.progress.jsonl`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sora_jax.data import recaption  # noqa: E402


def config_defaults(spec: str) -> dict:
    """The `recaption` section of `path.py[:arg]`'s get_config(arg), as a dict ({} if absent)."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("recaption_config", path)
    if module_spec is None or not os.path.isfile(path):
        raise FileNotFoundError(f"--config={spec!r}: {path!r} is not a config file.")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    section = config.get("recaption", None)
    return dict(section.to_dict() if hasattr(section, "to_dict") else section or {})


def parse_args(
    argv: list[str] | None = None,
) -> tuple[argparse.Namespace, recaption.RecaptionConfig]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True, help="manifest .jsonl, or ArrayRecord shards")
    p.add_argument("--output", required=True, help="output .jsonl (manifest) or folder (shards)")
    p.add_argument("--config", default="", help="configs/x.py[:arg] with a `recaption` section")
    fields = {f.name: f for f in dataclasses.fields(recaption.RecaptionConfig)}
    for name, f in fields.items():
        p.add_argument(f"--{name}", default=None, help=f"default: {f.default!r}")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    values = config_defaults(args.config) if args.config else {}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"config recaption section has unknown keys {sorted(unknown)}.")
    for name, f in fields.items():
        given = getattr(args, name)
        if given is not None:
            default = f.default
            if isinstance(default, tuple):
                values[name] = tuple(s for s in given.split(",") if s)
            else:
                values[name] = type(default)(given)
        elif isinstance(values.get(name), list):
            values[name] = tuple(values[name])
    return args, recaption.RecaptionConfig(**values)


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args, cfg = parse_args(argv)
    dataset = recaption.open_dataset(args.input)
    backend = recaption.make_backend(cfg)
    summary = recaption.recaption(dataset, backend, args.output, cfg, show_progress=not args.quiet)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

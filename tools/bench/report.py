"""What every benchmark records beside its numbers: package versions, and the JSON file itself."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform


def versions(*packages: str) -> dict[str, str | None]:
    """Python's version and each installed package's (None where it is not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_json(path: str, result: dict, **dump_kw) -> None:
    """Writes `result` to `path` (creating its folder) and says where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1, **dump_kw)
    print(f"wrote {path}")

"""What the benchmarks share: the JSON they write (device, versions, date, rows), their rows
measured one by one (a failing row kept, a time budget) and those rows' flags, ratios to the
first row, the table."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Callable, Iterable


def versions(*packages: str) -> dict[str, str | None]:
    """Python's version and each installed package's (None where it is not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def read_json(path: str) -> dict | None:
    """The JSON object at `path`, or None when there is no such file."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_json(path: str, result: dict, **dump_kw) -> None:
    """Writes `result` to `path` (creating its folder) and says where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1, **dump_kw)
    print(f"wrote {path}")


def print_table(rows: list[dict], cols: list[str], width: int = 12) -> None:
    """One line per row under a header of `cols`: floats to 4 significant digits, and a failed
    row's error (its first `width` characters) in the column `step_s`."""
    print(" ".join(f"{c:>{width}}" for c in cols))
    for r in rows:
        cells = [r.get(c, r.get("error", "")[:width] if c == "step_s" else "") for c in cols]
        print(" ".join(f"{x:>{width}.4g}" if isinstance(x, float) else f"{x!s:>{width}}"
                       for x in cells))  # fmt: skip


def jax_header(benchmark: str, **fields) -> dict:
    """The start of a JAX benchmark's JSON: name, UTC date, device, versions, `fields`, rows."""
    import jax

    return {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
        "versions": versions("jax", "jaxlib", "flax", "optax"),
        **fields,
        "rows": [],
    }


def rows_parser(tiny_help: str) -> argparse.ArgumentParser:
    """The flags of a benchmark measured row by row (measure_rows): --out (the JSON), --tiny
    (sizes for a check on any backend; `tiny_help` says which), --steps and --budget_s."""
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help=tiny_help)
    p.add_argument("--steps", type=int, default=30, help="timed steps per row")
    p.add_argument("--budget_s", type=float, default=0.0, help="skip rows after this (0: none)")
    return p


def measure_rows(out: dict, path: str, rows: Iterable[tuple[dict, Callable[[], dict]]],
                 budget_s: float = 0.0) -> None:  # fmt: skip
    """Appends each (keys, measure) row's `{**keys, **measure()}` to out["rows"] and rewrites
    the JSON after every row, so a run cut short keeps what it measured. A row that raises keeps
    the others (its error is recorded); rows after `budget_s` seconds (0: none) are skipped."""
    start = time.perf_counter()
    for keys, run in rows:
        if budget_s and time.perf_counter() - start > budget_s:
            out["rows"].append({**keys, "error": "budget"})
            continue
        try:
            row = run()
        except Exception as e:  # e.g. cuDNN attention on a CPU
            row = {"error": f"{type(e).__name__}: {e}"[:300]}
        out["rows"].append({**keys, **row})
        write_json(path, out)


def ratios_to_first(rows: list[dict], key: str, name: str) -> None:
    """Sets row[name] = row[key] / the first measured row's (rows that failed get none)."""
    base = next((r for r in rows if "error" not in r), None)
    for r in rows:
        if base and "error" not in r:
            r[name] = r[key] / base[key]

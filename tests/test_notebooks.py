"""The notebooks run top to bottom (micro size: the parameters cell is overridden)."""

import os

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")


def _execute(name: str, params: str, tmp_path) -> nbformat.NotebookNode:
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = params
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": NOTEBOOKS}})
    client.execute()
    return nb


def test_quickstart_runs_top_to_bottom(tmp_path):
    nb = _execute("quickstart.ipynb", f'CONFIG_ARG = "micro"\nWORKDIR = "{tmp_path}"\n', tmp_path)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "tokens per clip:" in text and "color_acc" in text

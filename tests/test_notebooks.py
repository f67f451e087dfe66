"""The notebooks run top to bottom (micro size: the test's values follow the parameters cell)."""

import os

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")


def _execute(name: str, params: str) -> nbformat.NotebookNode:
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\n" + params  # like papermill's injected cell: overrides, keeps the rest
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}}
    )
    client.execute()
    return nb


def _text(nb: nbformat.NotebookNode) -> str:
    return "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )


def _images(nb: nbformat.NotebookNode) -> int:
    return sum(
        "image/gif" in o.get("data", {})
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The quickstart at micro size; its workdir is the base the second notebook fine-tunes."""
    workdir = tmp_path_factory.mktemp("quickstart")
    return _execute("quickstart.ipynb", f'CONFIG_ARG = "micro"\nWORKDIR = "{workdir}"\n'), workdir


def test_quickstart_runs_top_to_bottom(quickstart):
    nb, _ = quickstart
    text = _text(nb)
    assert "tokens per clip:" in text and "color_acc" in text
    # image -> video: 5 frames, latent frame 0 given; extension: 9 kept + 8 new frames.
    i2v = "i2v: given latent frames [0] of 2; latents (2, 2, 4, 4, 8) -> videos (2, 5, 16, 16, 3)"
    ext = "extend_forward: given latent frames [0, 1, 2] of 5; latents (1, 5, 4, 4, 8) -> videos"
    assert i2v in text and ext + " (1, 17, 16, 16, 3)" in text
    assert _images(nb) >= 1 + 2 + 2 + 1 + 1  # world clip, t2v, i2v, input clip, extension


def test_train_on_your_videos_runs_top_to_bottom(quickstart, tmp_path):
    _, base = quickstart
    params = (f'CONFIG_ARG = "micro"\nBASE_WORKDIR = "{base}"\nWORKDIR = "{tmp_path}"\n'
              "NUM_DEMO_CLIPS = 6\nFINETUNE_STEPS = 2\n")  # fmt: skip
    nb = _execute("train_on_your_videos.ipynb", params)
    text = _text(nb)
    assert '"files": 6, "records": 6' in text and '"bad": {}' in text  # prepared
    assert "'records': 6, 'captioned': 6" in text  # recaptioned
    assert '"clips": {"5x16x16": 6}' in text  # cached
    steps = sorted(int(d) for d in os.listdir(tmp_path / "dit" / "checkpoints") if d.isdigit())
    base_steps = [int(d) for d in os.listdir(base / "dit" / "checkpoints") if d.isdigit()]
    assert steps[-1] == max(base_steps) + 2  # fine-tuned from the base's last step
    samples = [f for f in os.listdir(tmp_path / "samples") if f.endswith(".gif")]
    assert len(samples) == 2 and _images(nb) == 1 + 2  # a clip of the folder, two samples

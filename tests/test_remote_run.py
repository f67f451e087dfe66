"""tools/experiments/remote_run.sh poll: what comes back from a long GPU run."""

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "experiments" / "remote_run.sh"


def _write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))  # incompressible: the archive is as large as the files


def _poll(workdir: Path, out: Path) -> list[str]:
    out.mkdir()
    subprocess.run(["bash", str(SCRIPT), "poll", str(workdir), "5", "eval done", str(out)],
                   check=True, capture_output=True)  # fmt: skip
    with tarfile.open(out / "results.tgz") as tar:
        return sorted(n.removeprefix("./") for n in tar.getnames())


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    w = tmp_path / "run"
    w.mkdir()
    (w / "timeline.log").write_text("[00:00:00] eval done\n")
    (w / "eval").mkdir()
    (w / "eval" / "summary.json").write_text("{}")
    _write(w / "eval" / "t2v_0.gif", 1_400_000)
    # A set's videos (96 generated occlusion clips: ~8.6 MB): kept, not a picture.
    _write(w / "eval" / "t2v_occlusion_videos.npz", 9_000_000)
    _write(w / "checkpoints" / "1" / "state.json", 100)  # never packed (by name)
    return w


def test_small_run_comes_back_whole(workdir, tmp_path):
    _write(workdir / "dit" / "samples" / "step_4000" / "000.gif", 1000)
    names = _poll(workdir, tmp_path / "out")
    assert names == ["dit/samples/step_4000/000.gif", "eval/summary.json", "eval/t2v_0.gif",
                     "eval/t2v_occlusion_videos.npz", "timeline.log"]  # fmt: skip


def test_over_the_limit_training_sample_pictures_go_first(workdir, tmp_path):
    for i in range(12):  # 16.8 MB of training-sample GIFs: over the 15 MB limit with them
        _write(workdir / "dit" / "samples" / "step_4000" / f"{i:03d}.gif", 1_400_000)
    (workdir / "dit" / "samples" / "step_4000" / "000.json").write_text("{}")
    names = _poll(workdir, tmp_path / "out")
    assert names == ["dit/samples/step_4000/000.json", "eval/summary.json", "eval/t2v_0.gif",
                     "eval/t2v_occlusion_videos.npz", "timeline.log"]  # fmt: skip


def test_over_the_limit_without_them_every_picture_goes(workdir, tmp_path):
    for i in range(12):
        _write(workdir / "eval" / f"set{i}.png", 1_400_000)
    names = _poll(workdir, tmp_path / "out")
    assert names == ["eval/summary.json", "eval/t2v_occlusion_videos.npz", "timeline.log"]


def test_large_compile_cache_comes_back_in_parts_and_unpacks_whole(workdir, tmp_path):
    _write(workdir / "xla_cache" / "jit_step-cache", 20_000_000)  # over one 15 MB file
    _poll(workdir, tmp_path / "out")
    parts = sorted(p.name for p in (tmp_path / "out").glob("xla_cache.tgz*"))
    assert parts == ["xla_cache.tgz.00", "xla_cache.tgz.01"]
    rerun = tmp_path / "rerun"
    env = {**os.environ, "XLA_CACHE_TGZ": str(tmp_path / "out" / "xla_cache.tgz")}
    subprocess.run(["bash", str(SCRIPT), "start", str(rerun), "true"], check=True, env=env,
                   cwd=SCRIPT.parents[2], capture_output=True)  # fmt: skip
    unpacked = rerun / "xla_cache" / "jit_step-cache"
    assert unpacked.read_bytes() == (workdir / "xla_cache" / "jit_step-cache").read_bytes()

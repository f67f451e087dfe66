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


def _poll(workdir: Path, out: Path, limit: int = 15_000_000) -> list[str]:
    """Polls a finished run with RESULTS_LIMIT `limit`; the names in its results, parts joined."""
    out.mkdir()
    env = {**os.environ, "RESULTS_LIMIT": str(limit)}
    subprocess.run(["bash", str(SCRIPT), "poll", str(workdir), "5", "eval done", str(out)],
                   check=True, capture_output=True, env=env)  # fmt: skip
    parts = sorted(out.glob("results.tgz*"))
    assert all(p.stat().st_size <= 15_000_000 for p in parts)  # a call returns 16 MiB files
    joined = out.parent / f"{out.name}_joined.tgz"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(joined) as tar:
        return sorted(n.removeprefix("./") for n in tar.getnames())


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    w = tmp_path / "run"
    w.mkdir()
    (w / "timeline.log").write_text("[00:00:00] eval done\n")
    (w / "eval").mkdir()
    (w / "eval" / "summary.json").write_text("{}")
    _write(w / "eval" / "t2v_0.gif", 1_400_000)
    # A set's videos (96 generated occlusion clips: 7.3 MB at 64x64): kept, not a picture.
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


def test_results_over_one_file_come_back_in_parts(workdir, tmp_path):
    # 17x128x128 runs: the occlusion videos ~29 MB, contact sheets ~1.2 MB each.
    _write(workdir / "eval" / "t2v_occlusion_videos.npz", 25_000_000)
    for i in range(4):
        _write(workdir / "eval" / f"set{i}.png", 1_400_000)
    names = _poll(workdir, tmp_path / "out", limit=45_000_000)
    assert sorted(p.name for p in (tmp_path / "out").glob("results.tgz*")) == [
        "results.tgz.00", "results.tgz.01", "results.tgz.02"]  # 32 MB  # fmt: skip
    assert names == ["eval/set0.png", "eval/set1.png", "eval/set2.png", "eval/set3.png",
                     "eval/summary.json", "eval/t2v_0.gif", "eval/t2v_occlusion_videos.npz",
                     "timeline.log"]  # fmt: skip


def test_compile_cache_stays_behind_when_the_results_fill_the_call(workdir, tmp_path):
    _write(workdir / "eval" / "t2v_occlusion_videos.npz", 29_000_000)
    _write(workdir / "eval" / "more_videos.npz", 29_000_000)
    _write(workdir / "xla_cache" / "jit_step-cache", 20_000_000)  # 58 + 20 MB: over 64 MiB
    _poll(workdir, tmp_path / "out", limit=60_000_000)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["results.tgz.00", "results.tgz.01", "results.tgz.02", "results.tgz.03"]


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

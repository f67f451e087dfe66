"""tools/experiments/remote_run.sh poll: what comes back from a long GPU run."""

import os
import subprocess
import tarfile
import time
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


def _poll_all(workdirs: list[Path], out: Path, limit: int, wait_s: int = 5) -> dict[str, list]:
    """Polls runs made side by side; per run, the names in its results (parts joined)."""
    out.mkdir()
    env = {**os.environ, "RESULTS_LIMIT": str(limit)}
    subprocess.run(["bash", str(SCRIPT), "poll_all", str(wait_s), "eval done", str(out),
                    *map(str, workdirs)], check=True, capture_output=True, env=env)  # fmt: skip
    got = {}
    for run in sorted(p for p in out.iterdir()):
        parts = sorted(run.glob("results.tgz*"))
        joined = out.parent / f"{run.name}_joined.tgz"
        joined.write_bytes(b"".join(p.read_bytes() for p in parts))
        with tarfile.open(joined) as tar:
            got[run.name] = sorted(n.removeprefix("./") for n in tar.getnames())
    return got


def _run_copy(root: Path, name: str) -> Path:
    """A finished world run as a multi-GPU machine leaves one per GPU."""
    w = root / name
    (w / "eval").mkdir(parents=True)
    (w / "timeline.log").write_text("[00:00:00] eval done\n")
    (w / "eval" / "summary.json").write_text("{}")
    _write(w / "eval" / "t2v_0.gif", 1_400_000)
    _write(w / "autotune" / "fusion.textproto", 100)
    _write(w / "xla_cache" / "jit_step-cache", 1_000)  # runs side by side need no cache
    return w


def test_poll_all_packs_each_run_in_its_own_folder_with_its_autotune(tmp_path):
    runs = [_run_copy(tmp_path, "world0"), _run_copy(tmp_path, "world1")]
    got = _poll_all(runs, tmp_path / "out", limit=62_000_000)
    expected = ["autotune", "autotune/fusion.textproto", "eval/summary.json", "eval/t2v_0.gif",
                "timeline.log"]  # fmt: skip
    assert got == {"world0": expected, "world1": expected}
    assert not list((tmp_path / "out").rglob("xla_cache*"))


def test_poll_all_shares_one_calls_limits_among_the_runs(tmp_path):
    # Two 17x128x128 runs, each with ~30 MB of occlusion videos; one call returns 64 MiB and 8
    # files, so each run gets 31 MB: the training samples' pictures go, then the videos (in the
    # first run only: the second's fit).
    runs = [_run_copy(tmp_path, f"world{i}") for i in range(2)]
    for w, videos in zip(runs, (30_000_000, 27_500_000)):
        _write(w / "eval" / "t2v_occlusion_videos.npz", videos)
        _write(w / "dit" / "samples" / "step_5000" / "000.gif", 3_000_000)
    got = _poll_all(runs, tmp_path / "out", limit=62_000_000)
    assert "eval/t2v_occlusion_videos.npz" not in got["world0"]
    assert "eval/t2v_occlusion_videos.npz" in got["world1"]
    for name in ("world0", "world1"):
        assert "dit/samples/step_5000/000.gif" not in got[name]
        assert "eval/t2v_0.gif" in got[name]  # the evaluation's pictures stay
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(files) <= 8 and sum(p.stat().st_size for p in files) <= 62_000_000
    assert all(p.stat().st_size <= 15_000_000 for p in files)


def test_poll_all_waits_for_every_run(tmp_path):
    done, running = _run_copy(tmp_path, "world0"), _run_copy(tmp_path, "world1")
    (running / "timeline.log").write_text("[00:00:00] dit done\n")
    t0 = time.monotonic()
    got = _poll_all([done, running], tmp_path / "out", limit=62_000_000, wait_s=3)
    assert time.monotonic() - t0 >= 3  # it waited its limit for the unfinished run
    assert set(got) == {"world0", "world1"}  # and packed both all the same


def test_poll_all_refuses_workdirs_of_one_name(tmp_path):
    a, b = _run_copy(tmp_path / "a", "world"), _run_copy(tmp_path / "b", "world")
    res = subprocess.run(["bash", str(SCRIPT), "poll_all", "1", "eval done", str(tmp_path),
                          str(a), str(b)], capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2 and "must differ" in res.stderr


DEADLINE_SH = SCRIPT.parent / "deadline.sh"


def _cap(fraction: str, deadline_in: int | None, reserve: str = "") -> str:
    """`cap_flag vae_train FRACTION` with DEADLINE `deadline_in` seconds from now (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DEADLINE", "EVAL_RESERVE")}
    if deadline_in is not None:
        env["DEADLINE"] = str(int(time.time()) + deadline_in)
    if reserve:
        env["EVAL_RESERVE"] = reserve
    cmd = f"source {DEADLINE_SH}; cap_flag vae_train {fraction}"
    return subprocess.run(["bash", "-c", cmd], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()  # fmt: skip


def test_stage_caps_share_what_is_left_before_the_deadline():
    """world_gpu.sh's caps: a fraction of (deadline - now - the evaluation's reserve), >= 60 s,
    and no flag at all without a deadline (the config's own cap stands)."""
    assert _cap("0.33", None) == ""
    flag = "--config.vae_train.max_train_seconds="
    # 1,150 s left, 150 reserved: a third of 1,000 (a second may tick between the two clocks).
    assert _cap("0.33", 1150) in (f"{flag}330", f"{flag}329")
    assert _cap("1.0", 1150, reserve="400") in (f"{flag}750", f"{flag}749")
    assert _cap("1.0", 100) == f"{flag}60"  # past the reserve: a minute, not 0 (= no limit)

"""tools/experiments/world_gpu.sh's order of stages, run with a stand-in `python` that only
logs each stage's start and end: the DiT stage starts once stage dit_compile has written
dit_compile.ready (its steps and encodes are cached), while dit_compile's training-sample round
still compiles; the eval stage starts after dit_compile has ended; a dit_compile that fails
before the file lets the DiT start when it ends; an earlier call's file does not count;
eval_compile, beside the DiT stage, runs at a lower CPU priority; REPLAY_SEEDS evaluates the
occlusion set again at earlier eval seeds, each in a folder of its own beside the run's stages."""

import os
import pathlib
import stat
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Stage X logs "start X" and "end X"; dit_compile logs "ready" when it writes the file, then
# takes 2 s more (the training-sample round), or with FAKE_FAIL=1 fails before the file.
FAKE_PYTHON = """#!/usr/bin/env bash
[[ "$1" == "-m" ]] || exit 0
for a in "$@"; do
  case $a in --stages=*) stage=${a#--stages=};; --workdir=*) wd=${a#--workdir=};;
    --config.eval.seed=*) seed=${a#--config.eval.seed=};; --config.eval.sets=*) sets=${a#*=};;
  esac
done
echo "start $stage" >>"$FAKE_LOG"
echo "nice $stage $(nice)" >>"$FAKE_LOG"
echo "where $stage ${wd#$FAKE_ROOT/} ${seed:--} ${sets:--}" >>"$FAKE_LOG"
case $stage in
  dit_compile)
    sleep 1
    if [[ "${FAKE_FAIL:-0}" == 1 ]]; then echo "end $stage" >>"$FAKE_LOG"; exit 1; fi
    touch "$wd/dit_compile.ready"; echo ready >>"$FAKE_LOG"; sleep 2;;
  vae) sleep 0.2;;
  dit) sleep 0.5;;
esac
echo "end $stage" >>"$FAKE_LOG"
"""


def _run(tmp_path, fail: bool = False, stale: bool = False, **env_vars) -> tuple[list[str], str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "python3"):
        path = bin_dir / name
        path.write_text(FAKE_PYTHON)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    workdir, log = tmp_path / "run", tmp_path / "events.log"
    workdir.mkdir()
    if stale:
        (workdir / "dit_compile.ready").write_text("{}")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_LOG=str(log),
               FAKE_FAIL=str(int(fail)), DETERMINISTIC="0", FAKE_ROOT=str(tmp_path),
               **env_vars)  # fmt: skip
    env.pop("DEADLINE", None)
    script = ROOT / "tools/experiments/world_gpu.sh"
    out = subprocess.run(["bash", str(script), str(workdir)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = log.read_text().split("\n")[:-1]
    events = [e for e in lines if not e.startswith(("nice ", "where "))]
    return events, (workdir / "timeline.log").read_text()


def test_eval_compile_runs_at_a_lower_cpu_priority_than_the_training_stages(tmp_path):
    _run(tmp_path)
    nice = dict(e.split()[1:] for e in (tmp_path / "events.log").read_text().split("\n")
                if e.startswith("nice "))  # fmt: skip
    assert int(nice["eval_compile"]) >= min(int(nice["dit"]) + 10, 19)
    assert nice["dit"] == nice["vae"] == nice["eval"]


def test_dit_starts_at_the_ready_file_and_eval_after_dit_compile_ends(tmp_path):
    events, timeline = _run(tmp_path)
    at = {e: i for i, e in enumerate(events)}
    assert at["end vae"] < at["start dit"]
    assert at["ready"] < at["start dit"] < at["end dit_compile"]  # the round compiles beside it
    assert at["end dit_compile"] < at["start eval"]
    assert at["end dit"] < at["start eval"]
    lines = [line.split("] ", 1)[1] for line in timeline.splitlines()]
    assert lines.index("dit_compile steps ready") < lines.index("dit done")
    assert lines.index("dit done") < lines.index("dit_compile done") < lines.index("eval done")


def test_an_earlier_calls_ready_file_does_not_start_the_dit(tmp_path):
    events, _ = _run(tmp_path, stale=True)
    assert events.index("ready") < events.index("start dit")


def test_dit_compile_failing_before_the_file_lets_the_dit_start_when_it_ends(tmp_path):
    events, timeline = _run(tmp_path, fail=True)
    assert "ready" not in events
    assert events.index("end dit_compile") < events.index("start dit")
    assert "dit_compile failed (see dit_compile.log)" in timeline
    assert events[-1] == "end eval"
    assert "replay" not in timeline  # REPLAY_SEEDS unset: the run's own evaluation alone


def test_replay_seeds_evaluate_the_occlusion_set_at_earlier_seeds_beside_the_run(tmp_path):
    events, timeline = _run(tmp_path, REPLAY_SEEDS="0 7")
    where = [e.split()[2:] for e in (tmp_path / "events.log").read_text().split("\n")
             if e.startswith("where eval ")]  # fmt: skip
    assert where == [["run", "-", "-"], ["run/seed0", "0", "('t2v_occlusion',)"],
                     ["run/seed7", "7", "('t2v_occlusion',)"]]  # fmt: skip
    assert events[-6:] == ["start eval", "end eval"] * 3
    for seed in ("seed0", "seed7"):  # the run's stages and compile cache, linked
        for d in ("vae", "dit", "xla_cache"):
            assert os.readlink(tmp_path / "run" / seed / d) == f"../{d}"
    lines = [line.split("] ", 1)[1] for line in timeline.splitlines()]
    assert lines[-3:] == ["replay of eval seed 0 done", "replay of eval seed 7 done", "eval done"]

"""A real training process killed mid-step resumes bit-identically (params and per-step losses).

Run as a script this file is the worker: a toy MLP trained by `sora_jax.train.loop` whose step
can hang (inside the jitted step, through a host callback) at a chosen step, so the test can
kill it *during* that step. `tests/test_multihost_train.py` starts it as two processes.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.abspath(__file__)
STEPS = 30
HIDDEN = 16


# ----------------------------------------------------------------------------- the worker


def _hang(step, at: int, seconds: float, marker: str) -> None:
    if int(step) + 1 == at:  # `step` is the 0-based index of step number `at`
        with open(f"{marker}{at}.{os.getpid()}", "w") as f:
            f.write(str(at))
        time.sleep(seconds)


def make_task(hang_at: int, hang_s: float, marker: str):
    import functools

    import jax
    import jax.numpy as jnp
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            init = jax.nn.initializers.normal(0.5)
            self.w1 = nnx.Param(init(rngs.params(), (8, HIDDEN)), logical_axes=("conv_in", "embed"))
            self.w2 = nnx.Param(init(rngs.params(), (HIDDEN, 4)), logical_axes=("embed", None))

        def __call__(self, x):
            return jnp.tanh(x @ self.w1[...]) @ self.w2[...]

    class ToyTask:
        """Regression onto a fixed random MLP; the global batch of 8 is split over processes."""

        name = "toy"

        def create_model(self, rngs):
            return MLP(rngs)

        def frozen(self):
            return None

        def loss(self, model, frozen, batch, rng):
            # Always in the graph (the same program hangs or not), sleeps only at `hang_at`.
            jax.debug.callback(
                functools.partial(_hang, at=hang_at, seconds=hang_s, marker=marker), batch["step"]
            )
            noise = 0.01 * jax.random.normal(rng, batch["y"].shape)
            return jnp.mean(jnp.square(model(batch["x"]) - batch["y"] - noise)), {}

        def batches(self, start_step):
            n, i = jax.process_count(), jax.process_index()
            rows = slice(i * 8 // n, (i + 1) * 8 // n)
            w = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
            for step in range(start_step, 10**9):
                x = np.random.default_rng(step + 1).normal(size=(8, 8)).astype(np.float32)
                yield {"x": x[rows], "y": np.sin(x @ w)[rows], "step": np.int32(step)}

    return ToyTask()


def worker(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--hang_at", type=int, default=-1)
    p.add_argument("--hang_s", type=float, default=0.0)
    p.add_argument("--coordinator_address", default=None)
    p.add_argument("--num_processes", type=int, default=None)
    p.add_argument("--process_id", type=int, default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    from sora_jax.train import loop, runtime

    runtime.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    jax.config.update("jax_default_matmul_precision", "highest")
    import ml_collections
    from jax.experimental import multihost_utils

    config = ml_collections.ConfigDict(
        dict(seed=0, mesh=dict(data=1, fsdp=-1, context=1, tensor=1))
    )
    cfg = ml_collections.ConfigDict(
        dict(
            steps=args.steps,
            lr=0.02,
            lr_warmup_steps=3,
            log_every_steps=1,
            checkpoint_every_steps=4,
            keep_checkpoints=2,
            ema_decay=0.9,
            weight_decay=0.01,
        )
    )
    marker = os.path.join(args.workdir, "hang")
    task = make_task(args.hang_at, args.hang_s, marker)
    result = loop.train(task, config, cfg, args.workdir)
    leaves = jax.tree.leaves(result.state)
    full = [np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in leaves]
    np.savez(os.path.join(args.workdir, f"state_{jax.process_index()}.npz"), *full)


# ----------------------------------------------------------------------------- the tests


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def kill_leftover_workers():
    """A failing test must not leave its worker processes running (each killed by its pid)."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start(workdir, *args, env=None) -> subprocess.Popen:
    os.makedirs(workdir, exist_ok=True)
    log = open(os.path.join(workdir, f"log_{time.monotonic_ns()}.txt"), "w")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, HERE, "--workdir", str(workdir), *map(str, args)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    _STARTED.append(proc)
    return proc


def logs(workdir) -> str:
    out = []
    for name in sorted(os.listdir(workdir)):
        if name.startswith("log_"):
            with open(os.path.join(workdir, name)) as f:
                out.append(f"--- {name}\n" + f.read()[-3000:])
    return "\n".join(out)


def wait_ok(proc: subprocess.Popen, workdir, rc=0, timeout=120) -> None:
    assert proc.wait(timeout=timeout) == rc, logs(workdir)


def wait_for_hang(workdir, step: int, timeout: float = 120) -> None:
    """Until a worker is inside step `step` (with several processes the callback runs on one
    device; the others wait for it in the step's collectives)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(f.startswith(f"hang{step}.") for f in os.listdir(workdir)):
            return
        time.sleep(0.05)
    raise AssertionError("the worker never reached the hanging step:\n" + logs(workdir))


def complete_steps(workdir) -> list[int]:
    d = os.path.join(workdir, "checkpoints")
    return sorted(
        int(s)
        for s in os.listdir(d)
        if s.isdigit() and os.path.exists(os.path.join(d, s, "_CHECKPOINT_METADATA"))
    )


def wait_for_checkpoint(workdir, step: int, timeout: float = 60) -> None:
    """The async save of `step` runs while the next step hangs; let it land before the kill."""
    deadline = time.time() + timeout
    while step not in complete_steps(workdir):
        assert time.time() < deadline, f"checkpoint {step} never completed:\n" + logs(workdir)
        time.sleep(0.05)


def losses(workdir) -> list[tuple[int, float]]:
    from sora_jax.train import metrics as metrics_lib

    return [(r["step"], r["loss"]) for r in metrics_lib.read_jsonl(f"{workdir}/metrics.jsonl")]


def assert_same_run(a, b) -> None:
    """Final state (params, optimizer, EMA, rng, counters) and every logged loss bit-identical."""
    sa, sb = np.load(f"{a}/state_0.npz"), np.load(f"{b}/state_0.npz")
    assert len(sa.files) == len(sb.files)
    for k in sa.files:
        np.testing.assert_array_equal(sa[k], sb[k])
    la, lb = losses(a), losses(b)
    assert [s for s, _ in la] == list(range(1, STEPS + 1))
    assert la == lb


class Background:
    """A run started at once and waited for when its result is first needed."""

    def __init__(self, workdir, procs):
        self.workdir, self.procs, self.done = workdir, procs, False

    def __fspath__(self) -> str:
        if not self.done:
            for proc in self.procs:
                wait_ok(proc, self.workdir)
            self.done = True
        return str(self.workdir)

    def __str__(self) -> str:
        return os.fspath(self)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    return Background(workdir, [start(workdir)])


def test_sigkill_during_step_13_resumes_bit_identical(straight, tmp_path):
    proc = start(tmp_path, "--hang_at", 13, "--hang_s", 300)
    wait_for_hang(tmp_path, 13)
    wait_for_checkpoint(tmp_path, 12)
    proc.kill()  # SIGKILL inside step 13
    proc.wait()
    assert [s for s, _ in losses(tmp_path)] == list(range(1, 13))
    assert complete_steps(tmp_path)[-1] == 12
    wait_ok(start(tmp_path), tmp_path)
    assert_same_run(straight, tmp_path)


def test_sigterm_saves_the_step_it_stopped_at_and_resumes_bit_identical(straight, tmp_path):
    proc = start(tmp_path, "--hang_at", 13, "--hang_s", 2)
    wait_for_hang(tmp_path, 13)
    proc.send_signal(signal.SIGTERM)  # step 13 finishes, is saved, the process exits 143
    wait_ok(proc, tmp_path, rc=143)
    assert [s for s, _ in losses(tmp_path)] == list(range(1, 14))
    assert complete_steps(tmp_path)[-1] == 13
    wait_ok(start(tmp_path), tmp_path)
    assert_same_run(straight, tmp_path)


if __name__ == "__main__":
    worker()

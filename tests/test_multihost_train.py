"""Two processes on this machine (jax.distributed, gloo CPU collectives), one device each, train
one fsdp=2 model: SIGTERM to one process makes both save the same step and exit; SIGKILL of both
during a step, restart, and the result is bit-identical to an uninterrupted two-process run.
Only process 0 writes metrics."""

from __future__ import annotations

import signal
import socket

import numpy as np
import pytest
from test_preemption import (
    STEPS,
    Background,
    assert_same_run,
    complete_steps,
    kill_leftover_workers,  # noqa: F401 - autouse fixture
    losses,
    start,
    wait_for_checkpoint,
    wait_for_hang,
    wait_ok,
)

ENV = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def start_pair(workdir, *args):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    return [
        start(
            workdir,
            "--coordinator_address",
            f"localhost:{port}",
            "--num_processes",
            2,
            "--process_id",
            i,
            *args,
            env=ENV,
        )
        for i in range(2)
    ]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight2")
    return Background(workdir, start_pair(workdir))


@pytest.mark.slow  # 8 process launches: ~40 s of CPU, 100 s of wall time on a busy 2-core box
def test_two_process_sigterm_then_sigkill_resume_bit_identical(straight, tmp_path):
    # 1) SIGTERM to process 1 only, inside step 13: both processes agree on a step, save it
    #    and exit 143.
    procs = start_pair(tmp_path, "--hang_at", 13, "--hang_s", 2)
    wait_for_hang(tmp_path, 13)
    procs[1].send_signal(signal.SIGTERM)
    for p in procs:
        wait_ok(p, tmp_path, rc=143)
    stopped = losses(tmp_path)[-1][0]
    assert stopped >= 13 and complete_steps(tmp_path)[-1] == stopped
    # 2) Restart, SIGKILL both processes inside step 22 (after checkpoint 20 landed).
    procs = start_pair(tmp_path, "--hang_at", 22, "--hang_s", 300)
    wait_for_hang(tmp_path, 22)
    wait_for_checkpoint(tmp_path, 20)
    for p in procs:
        p.kill()
        p.wait()
    assert [s for s, _ in losses(tmp_path)] == list(range(1, 22))
    # 3) Restart and finish: the same parameters and losses as the uninterrupted run.
    for p in start_pair(tmp_path):
        wait_ok(p, tmp_path)
    assert_same_run(straight, tmp_path)
    # Both processes hold the same (gathered) state; only process 0 wrote metrics.
    s0, s1 = np.load(f"{tmp_path}/state_0.npz"), np.load(f"{tmp_path}/state_1.npz")
    for k in s0.files:
        np.testing.assert_array_equal(s0[k], s1[k])
    assert len(losses(straight)) == STEPS

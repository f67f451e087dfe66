"""A gate between a program's first run and the device work of a stage's other threads.

On GPUs the first run of a program with cuDNN attention (and XLA's command buffers) captures a
CUDA graph on the device's compute stream. The DiT stage launches other programs on that stream
from other threads while it trains: the caption encoder (caption_embedder.py, requests made
steps ahead) and the latent cache's VAE encodes (dit_latent_cache.py). Four world runs with
cuDNN attention died at a bucket's first step with "capturing stream has unjoined work" while
such work was in flight (README, "World model"), and a micro run whose background work had
finished did not; a launch from another thread into a stream that is being captured is one
way to get that error. So the background threads dispatch inside `GATE.shared()`, and the
training loop runs each program's first step (and the DiT stage its training-sample rounds,
whose sampler programs run for the first time in the first round) inside `GATE.exclusive()`
where steps do not overlap compiles (`precompile_overlap`, GPUs): it waits for the shared
sections to end, then for the work already queued on every local device (`drain`), and lets
no other thread's shared section start until the section has finished.

Single-process runs only (`alone`): with several processes a background thread's program may
be a collective, and a process draining its devices would wait for a peer that waits in turn
for its own first step.

Not yet checked on a GPU: whether this is the whole cause of the failure. The gate's own
behaviour is tested (tests/test_device_gate.py).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import jax
import numpy as np


def drain() -> None:
    """Returns once the work queued on every local device before the call has run: a tiny
    program on each device runs after it, in order, on the device's compute stream."""
    for device in jax.local_devices():
        (jax.device_put(np.zeros((), np.float32), device) + 1).block_until_ready()


class DeviceGate:
    """A readers-writer gate: any number of `shared()` sections at once, or one `exclusive()`
    section, which new shared sections wait behind as soon as it is asked for. The thread in the
    exclusive section passes its own shared sections (a training-sample round encodes its
    prompts)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._owner: int | None = None  # the thread in the exclusive section
        self._asking = 0  # exclusive sections waiting: new shared ones queue behind them

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        if self._owner == threading.get_ident():
            yield
            return
        with self._cond:
            self._cond.wait_for(lambda: not (self._exclusive or self._asking))
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self, drain_devices: bool = True) -> Iterator[None]:
        with self._cond:
            self._asking += 1
            self._cond.wait_for(lambda: not (self._exclusive or self._shared))
            self._asking -= 1
            self._exclusive, self._owner = True, threading.get_ident()
        try:
            if drain_devices:
                drain()
            yield
        finally:
            with self._cond:
                self._exclusive, self._owner = False, None
                self._cond.notify_all()


GATE = DeviceGate()  # one per process: the devices are the process's


def alone(overlap: bool) -> contextlib.AbstractContextManager:
    """`GATE.exclusive()` where steps do not overlap compiles (`precompile_overlap`: GPUs) in a
    single-process run; elsewhere a section that does nothing."""
    if overlap or jax.process_count() > 1:
        return contextlib.nullcontext()
    return GATE.exclusive()

"""device_gate.py: shared sections never overlap an exclusive one; the training loop runs each
program's first step exclusively where steps do not overlap compiles, and only there."""

import contextlib
import os
import threading
import time

from test_loop import _assert_trees_equal, _cfg, _config
from test_precompile import TwoShapeTask

from sora_jax.train import device_gate, loop


class RecordingGate(device_gate.DeviceGate):
    """Logs section entries and exits in order; counts other threads' shared sections inside
    exclusive ones."""

    def __init__(self):
        super().__init__()
        self.log: list[str] = []
        self.inside_exclusive = False
        self.overlaps = 0
        self._log_lock = threading.Lock()

    def _note(self, event: str) -> None:
        with self._log_lock:
            self.log.append(event)
            if event == "x+":
                self.inside_exclusive = True
            elif event == "x-":
                self.inside_exclusive = False
            elif event == "s+" and self.inside_exclusive and self._owner != threading.get_ident():
                self.overlaps += 1  # another thread's: the exclusive thread's own may pass

    @contextlib.contextmanager
    def shared(self):
        with super().shared():
            self._note("s+")
            try:
                yield
            finally:
                self._note("s-")

    @contextlib.contextmanager
    def exclusive(self, drain_devices: bool = True):
        with super().exclusive(drain_devices):
            self._note("x+")
            try:
                yield
            finally:
                self._note("x-")


@contextlib.contextmanager
def busy_background(gate: device_gate.DeviceGate):
    """A thread entering shared sections back to back (the caption encoder, the latent cache)."""
    stop = threading.Event()

    def work():
        while not stop.is_set():
            with gate.shared():
                time.sleep(0.0005)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_exclusive_waits_for_shared_sections_and_holds_new_ones_back():
    gate = RecordingGate()
    inside, release = threading.Event(), threading.Event()

    def holder():
        with gate.shared():
            inside.set()
            release.wait()

    t = threading.Thread(target=holder)
    t.start()
    inside.wait()
    got = threading.Event()

    def exclusive():
        with gate.exclusive():
            got.set()

    x = threading.Thread(target=exclusive)
    x.start()
    time.sleep(0.05)
    assert not got.is_set()  # a shared section is open
    late = threading.Event()

    def late_shared():  # asked for after the exclusive section: waits behind it
        with gate.shared():
            late.set()

    s = threading.Thread(target=late_shared)
    s.start()
    time.sleep(0.05)
    assert not late.is_set()
    release.set()
    for thread in (t, x, s):
        thread.join(5)
    assert got.is_set() and late.is_set()
    assert gate.log == ["s+", "s-", "x+", "x-", "s+", "s-"]


def test_many_shared_sections_at_once_and_drain_returns():
    gate = device_gate.DeviceGate()
    with gate.shared(), gate.shared():  # not exclusive of each other
        pass
    device_gate.drain()  # a program on every local device, run to its end
    with gate.exclusive():  # drains, then the section
        pass


def test_loop_runs_each_first_step_alone_without_overlap(tmp_path, monkeypatch):
    gate = RecordingGate()
    monkeypatch.setattr(device_gate, "GATE", gate)
    with busy_background(gate):
        a = loop.train(TwoShapeTask(), _config(), _cfg(6, precompile_overlap="no"),
                       str(tmp_path / "a"))  # fmt: skip
    assert gate.log.count("x+") == 2  # two shapes: two first runs, each exclusive
    assert gate.log.count("s+") > 10 and gate.overlaps == 0  # background ran, never beside them
    # Steps that overlap compiles (CPUs, TPUs): no exclusive section; the same numbers.
    gate = RecordingGate()
    monkeypatch.setattr(device_gate, "GATE", gate)
    b = loop.train(TwoShapeTask(), _config(), _cfg(6, precompile_overlap="yes"),
                   str(tmp_path / "b"))  # fmt: skip
    assert gate.log.count("x+") == 0
    _assert_trees_equal(a.state, b.state)


def test_the_exclusive_thread_passes_its_own_shared_sections():
    gate = RecordingGate()
    with gate.exclusive(drain_devices=False), gate.shared():  # no deadlock
        pass
    assert gate.log == ["x+", "s+", "s-", "x-"]


def test_dit_sample_rounds_run_alone_without_overlap(tmp_path, monkeypatch):
    """The training-sample rounds (steps 2 and 4) and the step's first run are exclusive; the
    rounds' own prompt encodes pass; a busy background thread never overlaps them."""
    from test_train_samples import _micro_config, _task

    gate = RecordingGate()
    monkeypatch.setattr(device_gate, "GATE", gate)
    config = _micro_config()
    config.dit_train.precompile_overlap = "no"
    task = _task(config, str(tmp_path))
    with busy_background(gate):
        loop.train(task, config, config.dit_train, str(tmp_path / "dit"))
    assert sorted(os.listdir(tmp_path / "dit" / "samples")) == ["step_2", "step_4"]
    assert gate.log.count("x+") == 3 and gate.overlaps == 0  # first step + two rounds
    inside = gate.log[gate.log.index("x+", gate.log.index("x+") + 1) :]  # from the first round
    assert inside[: inside.index("x-")].count("s+") >= 1  # its prompts' encode passed


def test_alone_only_without_overlap_in_a_single_process(monkeypatch):
    """Several processes: a background program may be a collective, so no exclusive section
    (a process draining its devices could wait for a peer waiting on its own first step)."""
    gate = RecordingGate()
    monkeypatch.setattr(device_gate, "GATE", gate)
    for overlap, processes, exclusive in ((False, 1, 1), (True, 1, 0), (False, 2, 0)):
        monkeypatch.setattr(device_gate.jax, "process_count", lambda n=processes: n)
        gate.log.clear()
        with device_gate.alone(overlap):
            pass
        assert gate.log.count("x+") == exclusive, (overlap, processes)

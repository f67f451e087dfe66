"""The generic training loop shared by the VAE and DiT tasks.

A task supplies a model constructor, a loss, frozen inputs (e.g. the VAE and text encoder of the
DiT stage) and host batches as a pure function of the step. The loop owns everything else:
sharded initialisation on the mesh, the jitted and donated train step (AdamW with clipping,
warmup + cosine, weight-decay mask, EMA, a non-finite guard), Orbax checkpoints with automatic
resume and preemption saves, metrics, progress and profiling. The step is a pure function:

    step(state, frozen, batch) -> (state, metrics, diagnostics)

Because batches and the step's rng are functions of the step only, a run resumed from a
checkpoint at step s reproduces an uninterrupted run bit for bit. The host stays one step
ahead of the device: after dispatching step s it reads the (small) metrics of step s-1, so the
non-finite guard reacts within a step without stalling the device.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from sora_jax import flops as flops_lib
from sora_jax import parallel
from sora_jax.train import checkpoint as ckpt_lib
from sora_jax.train import device_gate, guards
from sora_jax.train import metrics as metrics_lib
from sora_jax.train import precompile as precompile_lib
from sora_jax.train import state as state_lib
from sora_jax.train.optimizer import (  # noqa: F401 - re-exported for callers of loop
    make_optimizer,
    make_schedule,
    param_names,
    weight_decay_mask,
)


class NonFiniteError(RuntimeError):
    """K consecutive steps had a non-finite loss or gradient; the message says where."""


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is written; exits with 143 (128 + SIGTERM)."""

    def __init__(self, step: int):
        super().__init__(143)
        self.step = step


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class TrainResult:
    graphdef: Any
    state: state_lib.TrainState
    rest: Any
    history: list[dict]
    stopped_early: bool = False  # max_train_seconds ended the stage before cfg.steps
    # The mesh it trained on: functions the task jitted during training (evaluations) hit
    # their compile cache only under the same `jax.set_mesh` context.
    mesh: Any = None


@dataclasses.dataclass
class PeriodicContext:
    """What `task.periodic(step, ctx)` sees after a step."""

    step: int
    state: state_lib.TrainState
    graphdef: Any
    rest: Any
    workdir: str
    mesh: Any
    # The thread compiling the task's `periodic_programs` (None: none): a periodic call that
    # runs them waits for it (`programs_compiled`) rather than compiling them a second time.
    compiling: threading.Thread | None = None

    @property
    def is_main_process(self) -> bool:
        return jax.process_index() == 0

    def programs_compiled(self) -> None:
        """Returns once the task's periodic programs, if any, have been compiled (or failed)."""
        if self.compiling is not None:
            self.compiling.join()

    def model(self, use_ema: bool = True) -> nnx.Module:
        return nnx.merge(self.graphdef, self.state.ema if use_ema else self.state.params, self.rest)


class _Prefetch:
    """Runs the host data iterator one or two batches ahead in a thread.

    `close()` stops the thread and closes the task's batch generator in it, so the pipeline's
    own cleanup (Grain prefetch worker processes, decode threads) runs when training ends
    instead of leaving processes that keep the interpreter from exiting.
    """

    _DONE = object()

    def __init__(self, gen: Iterator, limit: int, size: int = 2):
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, args=(gen, limit), daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, gen: Iterator, limit: int) -> None:
        try:
            for item in itertools.islice(gen, limit):
                if not self._put(item):
                    break
            self._put(self._DONE)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer.
            self._put(e)
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> _Prefetch:
        return self

    def __next__(self):
        item = self.queue.get()
        if item is self._DONE:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self, timeout: float = 10.0) -> None:
        self.stop.set()
        self.thread.join(timeout)


class _Trainer:
    """State and bookkeeping of one `train` call (see `train`)."""

    def __init__(self, task, config, cfg, workdir, mesh):
        self.task, self.config, self.cfg, self.workdir, self.mesh = task, config, cfg, workdir, mesh
        self.total = int(cfg.steps)
        self.log_every = int(cfg.get("log_every_steps", 50))
        self.ckpt_every = int(cfg.get("checkpoint_every_steps", 500))
        graphdef, abstract, _, tx, shardings, create = state_lib.abstract_train_state(
            task, cfg, mesh, config.seed
        )
        self.graphdef, self.shardings, self.abstract = graphdef, shardings, abstract
        self.checkpointer = ckpt_lib.Checkpointer(
            os.path.join(workdir, "checkpoints"),
            max_to_keep=cfg.get("keep_checkpoints", 2),
            keep_every_steps=cfg.get("keep_every_steps", None),
        )
        self.meta = ckpt_lib.run_metadata(mesh, cfg.get("buckets", None), task=task.name)
        self.metrics_path = os.path.join(workdir, "metrics.jsonl")
        with jax.set_mesh(mesh):
            if not self._resume():
                self.state, self.rest = jax.jit(create, out_shardings=shardings)()
            else:  # only the non-parameter module state (e.g. rng counters) is built fresh
                self.rest = jax.jit(lambda: create()[1], out_shardings=shardings[1])()
        self.start = int(self.state.step)
        replicated = parallel.named_sharding(mesh, None)
        ema_decay = cfg.get("ema_decay", 0.999)
        self.step_fn = jax.jit(
            state_lib.build_step(task, graphdef, self.rest, tx, ema_decay, make_schedule(cfg)),
            donate_argnums=(0,),
            out_shardings=(shardings[0], replicated, replicated),
        )
        limit = cfg.get("nonfinite_stop_steps", 3)
        self.guard = guards.NonFiniteGuard(limit, param_names(abstract.params))
        self.progress = metrics_lib.Progress(self.total, self.start)
        self.periodic_compile: threading.Thread | None = None  # compile_periodic
        self.meter = flops_lib.ThroughputMeter.for_task(  # tokens/s and MFU (sora_jax/flops.py)
            task, metrics_lib.peak_flops(), jax.device_count()
        )
        self.profiler = metrics_lib.Profiler(workdir, cfg.get("profile_steps", ()))
        self.step_times = metrics_lib.StepTimes()  # -> <workdir>/step_times.json at the end
        self.budget = guards.TimeBudget(float(cfg.get("max_train_seconds", 0) or 0))
        self.overlap = precompile_lib.overlap_setting(cfg)  # a bad value fails before compiles
        self.writer = metrics_lib.create_writer(workdir, prefix=f"{task.name} ")
        self.rows: list[dict] = []
        self.history: list[dict] = []
        self.seen_shapes: set = set()  # batch shapes stepped so far (one compile each)

    def _resume(self) -> bool:
        if self.checkpointer.latest_step() is None:
            return False
        restored = self.checkpointer.restore(
            ckpt_lib.abstract_like(self.abstract, self.shardings[0]),
            config=self.config.to_dict(),
            model_sections=getattr(self.task, "model_sections", None),
        )
        self.state = restored.state
        dropped = metrics_lib.truncate_jsonl(self.metrics_path, restored.step)
        logging.info(
            "%s: resumed from step %d in %s (%d later metric rows dropped)",
            self.task.name,
            restored.step,
            self.workdir,
            dropped,
        )
        return True

    def observe(self, number: int, metrics: dict, diag: Any, label: str) -> None:
        """Blocks on step `number`'s metrics (it has finished) and feeds the guard and the step
        times (`label`: the step's batch shapes, precompile.shapes_text)."""
        t = time.perf_counter()
        host = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
        self.step_times.finished(label, wait_s=time.perf_counter() - t)
        self.rows.append(host)
        self.guard.observe(number, host["nonfinite"] > 0, diag)

    def flush(self, number: int, pending) -> None:
        """Observes the step still in flight (if any) and logs the interval up to `number`."""
        if pending is not None:
            self.observe(*pending)
        if self.rows:
            self.log(number)

    def log(self, number: int) -> None:
        scalars = metrics_lib.mean_rows(self.rows)
        scalars["skipped"] = self.rows[-1]["skipped"]  # a running count, not a rate
        self.rows.clear()
        scalars.update(self.progress.report(number))
        scalars.update(self.meter.report(scalars["steps_per_s"]))
        self.writer.write_scalars(number, scalars)
        self.history.append({"step": number, **scalars})

    def save(self, number: int) -> None:
        t = time.perf_counter()
        self.checkpointer.save(number, self.state, self.config.to_dict(), self.meta)
        self.progress.add("checkpoint_s", time.perf_counter() - t)

    def context(self, number: int) -> PeriodicContext:
        """What a task's periodic work sees after step `number`: the current state."""
        return PeriodicContext(number, self.state, self.graphdef, self.rest, self.workdir,
                               self.mesh, self.periodic_compile)  # fmt: skip

    def hooks(self, number: int) -> None:
        periodic = getattr(self.task, "periodic", None)
        if periodic is None:
            return
        t = time.perf_counter()
        periodic(number, self.context(number))
        self.progress.add("hooks_s", time.perf_counter() - t)

    def precompile(self, frozen) -> precompile_lib.Precompiler | None:
        """Starts compiling the step for the batch shapes the task lists (`batch_specs`)."""
        specs = getattr(self.task, "batch_specs", None)
        if not self.cfg.get("precompile", True) or specs is None:
            return None
        specs = specs(self.start, self.total)
        if not specs:
            return None
        state = precompile_lib.sharded_abstract(self.abstract, self.shardings[0])
        threads = int(self.cfg.get("precompile_threads", 8))
        return precompile_lib.Precompiler(
            self.task.name, self.step_fn, state, frozen, specs, self.mesh, threads,
            overlap=self.overlap,
        )  # fmt: skip

    def first_run(self, frozen, batch: dict):
        """A program's first step, run to its end. Where steps do not overlap compiles (GPUs)
        in a single-process run, alone on the devices: no other thread's device work is queued
        or starts meanwhile (device_gate.py: CUDA graph captures)."""
        with device_gate.alone(self.overlap):
            jax.block_until_ready(batch)
            out = self.step_fn(self.state, frozen, batch)
            jax.block_until_ready(out[1])
        return out

    def compile_periodic(self, number: int) -> threading.Thread | None:
        """Starts compiling the programs of the task's periodic work (`periodic_programs(ctx)`:
        thunks that lower and compile them, e.g. the VAE's held-out evaluation) in a thread,
        after the run's first step, so that its first periodic call finds them compiled instead
        of compiling while the steps wait (the VAE's first evaluation: ~40 s on an H100)."""
        programs = getattr(self.task, "periodic_programs", None)
        if programs is None or not self.cfg.get("precompile", True):
            return None
        thunks = programs(self.context(number))
        if not thunks:
            return None
        return precompile_lib.compile_beside(self.task.name, thunks, self.mesh)

    def run(self) -> None:
        frozen = self.task.frozen()
        compiling = self.precompile(frozen)
        batches = _Prefetch(self.task.batches(self.start), self.total - self.start)
        watcher = ckpt_lib.PreemptionWatcher(self.checkpointer)
        pending = None
        logging.info("%s: training steps %d -> %d", self.task.name, self.start, self.total)
        try:
            for number in range(self.start + 1, self.total + 1):
                t0 = time.perf_counter()
                host_batch = next(batches)
                self.meter.add(host_batch)
                batch = parallel.host_to_global(host_batch, self.mesh)
                data_s = time.perf_counter() - t0
                self.progress.add("data_s", data_s)
                self.profiler.before(number)
                shapes = precompile_lib.batch_key(batch)
                if compiling is not None:
                    compiling.wait(shapes)
                label = precompile_lib.shapes_text(shapes)
                t1 = time.perf_counter()
                if shapes in self.seen_shapes:
                    self.state, metrics, diag = self.step_fn(self.state, frozen, batch)
                    self.step_times.dispatched(label, data_s, time.perf_counter() - t1)
                else:  # a new bucket: compiles; say how long
                    self.seen_shapes.add(shapes)
                    self.state, metrics, diag = self.first_run(frozen, batch)
                    logging.info(
                        "%s: step %d: first batch of shapes %s compiled and ran in %.1f s",
                        self.task.name, number, label, time.perf_counter() - t1,
                    )  # fmt: skip
                if number == self.start + 1:
                    self.periodic_compile = self.compile_periodic(number)
                if pending is not None:  # the previous step; this one is queued behind it
                    self.observe(*pending)
                pending = (number, metrics, diag, label)
                if number % self.log_every == 0 or number == self.total:
                    self.flush(number, pending)
                    pending = None
                self.profiler.after(number, self.state)
                stop = watcher.should_stop(number)  # every process, every step, same order
                if stop or self.guard.tripped:  # log the partial interval before stopping
                    self.flush(number, pending)
                    pending = None
                if self.guard.tripped:
                    self.save(number)
                    self.checkpointer.wait()
                    raise NonFiniteError(self.guard.message())
                if not stop:  # a pending preemption saves first; hooks (sampling) can wait
                    self.hooks(number)
                out_of_time = (
                    number < self.total and number % self.log_every == 0 and self.budget.spent()
                )
                if out_of_time:
                    logging.warning(
                        "%s: max_train_seconds=%g spent; stopping at step %d of %d "
                        "(rerun the stage to resume)", self.task.name, self.budget.seconds,
                        number, self.total,
                    )  # fmt: skip
                if number % self.ckpt_every == 0 or number == self.total or stop or out_of_time:
                    self.save(number)
                if out_of_time:
                    break
                if stop:
                    self.checkpointer.wait()
                    logging.warning("%s: preempted; checkpoint at step %d", self.task.name, number)
                    raise Preempted(number)
            # The stage's own end may run the periodic programs (the VAE's last evaluation); a
            # preemption or an error does not wait for their compile (a daemon thread).
            if self.periodic_compile is not None:
                self.periodic_compile.join()
        finally:
            if compiling is not None:
                compiling.close()
            batches.close()
            watcher.close()
            self.profiler.stop()
            self.step_times.write(os.path.join(self.workdir, "step_times.json"))
            self.checkpointer.close()
            self.writer.close()


def train(
    task: state_lib.Task,
    config: ml_collections.ConfigDict,
    cfg: ml_collections.ConfigDict,
    workdir: str,
    mesh=None,
) -> TrainResult:
    """Trains `task` for `cfg.steps` steps in `workdir`, resuming from its newest checkpoint.

    Raises `Preempted` (a SystemExit with status 143) after saving on SIGTERM / a preemption
    notice, and `NonFiniteError` after `cfg.nonfinite_stop_steps` non-finite steps in a row.
    """
    mesh = mesh or parallel.make_mesh(config.get("mesh", None) and config.mesh.to_dict())
    os.makedirs(workdir, exist_ok=True)
    trainer = _Trainer(task, config, cfg, workdir, mesh)
    with jax.set_mesh(mesh):
        trainer.run()
    stopped_early = int(trainer.state.step) < trainer.total  # only the time budget returns early
    return TrainResult(
        trainer.graphdef, trainer.state, trainer.rest, trainer.history, stopped_early, mesh
    )


def compile_steps(
    task: state_lib.Task,
    config: ml_collections.ConfigDict,
    cfg: ml_collections.ConfigDict,
    workdir: str,
    mesh=None,
    then: Callable[[dict], None] | None = None,
) -> dict:
    """Compiles `task`'s train step for every batch shape it lists (`batch_specs`) and trains
    nothing: with the persistent compile cache on (`config.compile_cache`), a later `train` of
    the same task and stage config loads these programs instead of compiling them. `workdir` is
    scratch (a fresh state; no checkpoint is written). `then(result)`, if given, runs once the
    steps are compiled, in the mesh context (it may add to `result`). A task with
    `precompile_periodic(ctx)` then runs its periodic work once on the fresh state (the DiT's
    training-sample round), so that those programs are cached too. Returns {"programs": n,
    "compile_s": s}, what `then` added and, when the periodic work ran, "periodic_s".
    """
    mesh = mesh or parallel.make_mesh(config.get("mesh", None) and config.mesh.to_dict())
    os.makedirs(workdir, exist_ok=True)
    trainer = _Trainer(task, config, cfg, workdir, mesh)
    t = time.perf_counter()
    result = {}
    with jax.set_mesh(mesh):  # as in `train`: a program's cache key includes the mesh context
        compiling = trainer.precompile(task.frozen())
        programs = 0 if compiling is None else len(compiling.futures)
        for key in [] if compiling is None else list(compiling.futures):
            compiling.wait(key)
        result.update(programs=programs, compile_s=round(time.perf_counter() - t, 1))
        if then is not None:
            then(result)
        warm = getattr(task, "precompile_periodic", None)
        if warm is not None:
            t = time.perf_counter()
            if warm(trainer.context(trainer.start)):
                result["periodic_s"] = round(time.perf_counter() - t, 1)
    trainer.checkpointer.close()
    trainer.writer.close()
    return result

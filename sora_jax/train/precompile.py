"""Compile a jitted train step ahead of time for every batch shape a run will feed it (and,
`compile_beside`, a task's periodic programs in a thread beside its steps).

Each bucket of a bucketed run is one compile of the step. Compiled at each bucket's first step,
they run one after another inside the training time: a 30M-parameter DiT on an H200 spent
5 x ~75 s of a 400 s budget there (issue 9). `Precompiler` lowers and compiles the step for
every shape at once in threads (XLA compiles outside the GIL) while the host builds data. The
programs land in JAX's in-memory cache, where the step's own first call of each shape finds
them (it re-traces and lowers: seconds). The loop waits for a shape's compile before its first
step, so no shape is compiled twice; a failed compile is logged and left to the step.

On GPUs the first step waits for every compile (`overlap=False`): the first run of a program
with cuDNN attention deserializes its cuDNN graphs, which captures a CUDA graph, and on the
H200 that capture failed ("capturing stream has unjoined work") while other threads compiled,
killing the run (twice). With the wait it died a third time (2026-12-03) after three buckets'
first steps had run, while the DiT's latent-cache thread was compiling and running the VAE
encoder for a later bucket; so without overlap the DiT's latent caches are also all built
before the first step (dit_latent_cache.py). That did not cure it: a fourth run died at its very
first step with every compile and cache done (2026-12-03); the world config trains with XLA
attention. Without overlap the loop now also runs each program's first step alone on the
devices (device_gate.py), a candidate cure not yet checked on a GPU. Steps overlap compiles and
cache encoding on CPU and TPU.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Sequence

import jax

from sora_jax import parallel
from sora_jax.train import device_gate


def batch_key(batch: dict) -> tuple:
    """((name, global shape, dtype), ...) of a batch of arrays or ShapeDtypeStructs: one compile."""
    return tuple((k, tuple(v.shape), str(v.dtype)) for k, v in sorted(batch.items()))


def shapes_text(key: tuple) -> str:
    """A batch key as "latents 256x5x8x8x16, text 256x96x384, ..." (arrays, not scalars): its
    first array names the bucket (tools/world_costs.py reads it so)."""
    return ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape, _ in key if shape)


def sharded_abstract(tree, shardings):
    """ShapeDtypeStructs of `tree`'s leaves that carry `shardings` (a matching tree)."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
    )


def abstract_batch(spec: dict, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """{name: (shape, dtype)-like} -> ShapeDtypeStructs sharded over the mesh's batch axes."""
    return {
        k: jax.ShapeDtypeStruct(
            v.shape, v.dtype, sharding=parallel.batch_sharding(mesh, len(v.shape))
        )
        for k, v in spec.items()
    }


OVERLAP_VALUES = ("auto", "yes", "no")


def overlap_setting(cfg) -> bool:
    """Whether steps may run while other shapes compile (and, in the DiT stage, while later
    buckets' latent caches are encoded): the stage config's `precompile_overlap` (auto =
    everywhere but on GPUs, see above)."""
    value = str(cfg.get("precompile_overlap", "auto"))
    if value not in OVERLAP_VALUES:
        raise ValueError(f"precompile_overlap={value!r}; expected one of {OVERLAP_VALUES}.")
    if value == "auto":
        return jax.default_backend() not in ("gpu", "cuda", "rocm")
    return value == "yes"


class Precompiler:
    """Compiles `step_fn(state, frozen, batch)` for each batch spec, `threads` at once.

    Each compile holds its own host memory (GBs for a large model), so at most `threads` run
    together, taken in the order of `specs` (put the first needed first). `overlap=False`: the
    first `wait` waits for every compile, so no step runs while one is in flight.
    """

    def __init__(self, name: str, step_fn: Callable, state, frozen, specs: Sequence[dict],
                 mesh, threads: int = 8, overlap: bool = True):  # fmt: skip
        self.name = name
        self.overlap = bool(overlap)
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max(1, min(len(specs), threads)), thread_name_prefix="precompile"
        )

        def compile_one(spec: dict) -> float:
            t = time.perf_counter()
            with jax.set_mesh(mesh):  # the mesh context is per thread
                step_fn.lower(state, frozen, abstract_batch(spec, mesh)).compile()
            return time.perf_counter() - t

        self.futures = {batch_key(spec): self.pool.submit(compile_one, spec) for spec in specs}
        logging.info("%s: compiling the step for %d batch shapes ahead of training", name,
                     len(self.futures))  # fmt: skip

    def wait(self, key: tuple) -> None:
        """Blocks until the compile of batch `key` (if it was submitted) has finished; without
        `overlap`, until every compile has."""
        for k in [key] if self.overlap else list(self.futures):
            self._finish(k)

    def _finish(self, key: tuple) -> None:
        future = self.futures.pop(key, None)
        if future is None:
            return
        try:
            logging.info("%s: step of shapes %s compiled in %.1f s (ahead of its first step)",
                         self.name, shapes_text(key), future.result())  # fmt: skip
        except Exception as e:  # noqa: BLE001 - the step's own call compiles (and raises) again
            logging.warning(
                "%s: ahead-of-time compile of %s failed (%s: %s); the step compiles it",
                self.name, shapes_text(key), type(e).__name__, e,
            )  # fmt: skip

    def close(self) -> None:
        """Drops compiles not started (shapes a short run never stepped)."""
        self.pool.shutdown(wait=False, cancel_futures=True)


def compile_beside(name: str, thunks: Sequence[Callable[[], None]], mesh) -> threading.Thread:
    """Runs `thunks` (each lowers and compiles a program, e.g. a task's periodic evaluation)
    in a daemon thread beside the steps, in `mesh`'s context and outside a program's first run
    (device_gate). A failure is logged: the program's own first call compiles it again."""

    def compile_all() -> None:
        t = time.perf_counter()
        try:
            with jax.set_mesh(mesh), device_gate.GATE.shared():  # the mesh context is per thread
                for thunk in thunks:
                    thunk()
        except Exception as e:  # noqa: BLE001
            logging.warning("%s: compiling the periodic programs failed (%s: %s)",
                            name, type(e).__name__, e)  # fmt: skip
            return
        logging.info("%s: %d periodic programs compiled beside the steps in %.1f s",
                     name, len(thunks), time.perf_counter() - t)  # fmt: skip

    thread = threading.Thread(target=compile_all, name="periodic-compile", daemon=True)
    thread.start()
    return thread

"""Process set-up before the first JAX computation: joining a multi-process run, and the
persistent compilation cache. `sora_jax.main` calls both; so do multi-process test scripts."""

from __future__ import annotations

import logging
import os

import jax
import ml_collections

from sora_jax import parallel


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins a multi-process run (one process per host; or several on one machine, on CPU).

    A no-op when no argument is given. CPU collectives go through gloo so the multi-process
    path is testable on a laptop. Must run before any other JAX call. The joining itself (and
    its checks) is `parallel.maybe_initialize_distributed`.
    """
    if coordinator_address is None and num_processes is None and process_id is None:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if parallel.maybe_initialize_distributed(coordinator_address, num_processes, process_id):
        logging.info("process %d of %d joined", jax.process_index(), jax.process_count())


COMPILE_CACHE_MIN_SECONDS = 1.0  # programs that compile faster than this are not worth a file


def use_compile_cache(config: ml_collections.ConfigDict, workdir: str) -> None:
    """With `config.compile_cache`, keeps compiled XLA programs under <workdir>/xla_cache.

    A stage resumed in a new process (a new call on a lent GPU, a restarted job) then loads its
    train steps instead of compiling them again (the world DiT's first step took 67 s to compile
    on an H200). Must run before the first compile; multi-process CPU runs turn it back off
    (`parallel._no_cache_for_cpu_collectives` says why).
    """
    if not config.get("compile_cache", False):
        return
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", COMPILE_CACHE_MIN_SECONDS)
    jax.config.update("jax_enable_compilation_cache", True)

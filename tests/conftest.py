"""Shared pytest setup: CPU, fp32 matmuls, quiet logs, one compilation cache per test session."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Compiling dominates the suite on a CPU, and many tests compile the same programs: the micro
# train steps in the CLI job, the notebooks and their subprocesses; a sampler in every sample
# command. A persistent cache in a fresh directory per session (never a warm one from an earlier
# run) is shared by the xdist workers and every subprocess and notebook kernel they start, which
# inherit these variables. The controller (or a run without xdist) sets them up before any
# worker starts; the workers find them set.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="sora_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # cache every compile
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")  # of any size

# Tests run programs at micro size, so compiling them costs far more than running them: XLA's
# fast-compile settings (the compiler_options test_dit and test_sharding pass to their steps)
# halve the compile time of the micro train steps. Subprocesses that set XLA_FLAGS append to it.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    _fast = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_fast}".strip()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


# The slowest modules first (measured with --durations): with `--dist loadfile` each module runs
# on one worker, so its module fixtures are built once, and the two workers take the next module
# off this order as they free up, so the long ones do not collide at the end. The CLI job runs
# before the notebooks, which then find its micro train steps in the compilation cache.
SLOWEST_FIRST = (
    "test_cli.py",
    "test_sharding.py",
    "test_notebooks.py",
    "test_vae.py",
    "test_dit.py",
    "test_vae_sharding.py",
    "test_preemption.py",
    "test_train_samples.py",
    "test_eval_suite.py",
    "test_vae_task.py",
)


def pytest_collection_modifyitems(items):
    def rank(item):
        name = os.path.basename(item.nodeid.split("::")[0])
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: the order within a module and among the rest is kept

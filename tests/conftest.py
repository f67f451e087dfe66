"""Shared pytest setup: CPU, fp32 matmuls, quiet logs, one compilation cache per test session."""

import atexit
import json
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
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def fake_run(tmp_path):
    """A function (config, dit_steps_seeds) -> a workdir as the VAE and DiT stages leave it, with
    freshly initialised weights: a VAE checkpoint, flat latent statistics, and a DiT checkpoint
    at each (step, init seed); returns the workdir and each DiT step's EMA leaves."""

    def build(config, dit_steps_seeds):
        from sora_jax import parallel
        from sora_jax import sample as sample_lib
        from sora_jax.models import dit, vae
        from sora_jax.train import checkpoint, vae_task
        from sora_jax.train import state as state_lib

        mesh = parallel.make_mesh()
        dit_task = sample_lib._creator(
            lambda rngs: dit.DiT(dit.DiTConfig(**config.dit.to_dict()), rngs=rngs)
        )
        vae_creator = sample_lib._creator(
            lambda rngs: vae.CausalVAE(vae.VAEConfig(**config.vae.to_dict()), rngs=rngs)
        )

        def save(stage, task, cfg, steps_seeds):
            ckpt = checkpoint.Checkpointer(str(tmp_path / stage / "checkpoints"), async_save=False)
            leaves = {}
            for step, seed in steps_seeds:
                _, state, _, _, _ = state_lib.init_state(task, cfg, mesh, seed)
                ckpt.save(step, state, {})
                leaves[step] = jax.tree.leaves(state.ema)
            ckpt.close()
            return leaves

        save("vae", vae_creator, config.vae_train, [(1, 0)])
        z = config.vae.z_channels
        (tmp_path / "vae" / vae_task.LATENT_STATS).write_text(
            json.dumps({"mean": [0.0] * z, "std": [1.0] * z})
        )
        return str(tmp_path), save("dit", dit_task, config.dit_train, dit_steps_seeds)

    return build


# The slowest modules first (measured with --durations): with `--dist loadfile` each module runs
# on one worker, so its module fixtures are built once, and the two workers take the next module
# off this order as they free up, so the long ones do not collide at the end. The CLI job runs
# before the notebooks, which then find its micro train steps in the compilation cache. The
# first two are one long test each (174 s and 165 s at 7350955): started last, either was the
# suite's tail while the other worker sat idle.
SLOWEST_FIRST = (
    "test_compile_stages.py",
    "test_recipe_reproducible.py",
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

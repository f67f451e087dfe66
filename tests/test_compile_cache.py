"""config.compile_cache: compiled programs land in <workdir>/xla_cache and are loaded back."""

import os
import subprocess
import sys

PROGRAM = """
import sys
import jax, jax.numpy as jnp, ml_collections
from sora_jax.train import runtime
runtime.COMPILE_CACHE_MIN_SECONDS = 0.0
config = ml_collections.ConfigDict({"compile_cache": sys.argv[2] == "on"})
runtime.use_compile_cache(config, sys.argv[1])
jax.jit(lambda x: jnp.cumsum(jnp.sin(x) @ x.T, axis=0)).lower(jnp.ones((64, 64))).compile()
print(jax.config.jax_compilation_cache_dir)
"""


def _run(workdir: str, on: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, workdir, on],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return out.stdout.strip()


def test_compile_cache_writes_under_the_workdir(tmp_path):
    cache = tmp_path / "xla_cache"
    assert _run(str(tmp_path), "off") != str(cache)
    assert not cache.exists()
    assert _run(str(tmp_path), "on") == str(cache)
    entries = sorted(p.name for p in cache.iterdir())
    assert entries  # the compiled program was written
    assert _run(str(tmp_path), "on") == str(cache)
    assert sorted(p.name for p in cache.iterdir()) == entries  # loaded, not written again

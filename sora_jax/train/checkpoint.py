"""Orbax checkpoints of a training run: train state, config JSON and run metadata.

Layout: `<workdir>/checkpoints/<step>/{state,config,meta}`. The state is restored onto whatever
shardings the caller's abstract target carries, so a run saved on one mesh restores on another.
The data position needs no separate item: batches are a pure function of (seed, step), see
`sora_jax.data.pipeline`, so the step in the state is the data position.
"""

from __future__ import annotations

import logging
import os
import platform
from typing import Any

import jax
import orbax.checkpoint as ocp


def _versions() -> dict[str, str]:
    import flax
    import optax

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax": getattr(ocp, "__version__", "?"),
    }


class Checkpointer:
    """Async `CheckpointManager` with keep-last-K and keep-every-M."""

    def __init__(
        self,
        directory: str,
        *,
        max_to_keep: int = 3,
        keep_every_steps: int | None = None,
        async_save: bool = True,
    ):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            keep_period=keep_every_steps,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "config", "meta")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, config: dict, meta: dict | None = None) -> None:
        meta = dict(meta or {})
        meta.setdefault("versions", _versions())
        meta.setdefault("num_devices", jax.device_count())
        meta["step"] = int(step)
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                config=ocp.args.JsonSave(config),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict, dict]:
        """Restores the newest readable checkpoint (or `step`); falls back to older ones."""
        steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}.")
        last_error: Exception | None = None
        for s in steps:
            try:
                restored = self.manager.restore(
                    s,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        config=ocp.args.JsonRestore(),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
                return s, restored.state, restored.config, restored.meta
            except Exception as e:  # noqa: BLE001 - report and try the previous checkpoint.
                logging.warning(
                    "checkpoint %d in %s is unreadable (%s); trying an older one.",
                    s,
                    self.directory,
                    e,
                )
                last_error = e
        raise RuntimeError(f"no readable checkpoint in {self.directory}: {last_error}")

    def restore_config(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        return self.manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        ).config

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any, shardings: Any | None = None) -> Any:
    """ShapeDtypeStructs of a pytree, carrying the target shardings when given."""
    if shardings is None:
        return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )

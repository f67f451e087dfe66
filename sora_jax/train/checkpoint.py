"""Orbax checkpoints of a training run: train state, config JSON and run metadata.

Layout: `<workdir>/checkpoints/<step>/{state,config,meta}`.

- `state`: the `TrainState` pytree (params, optimizer, EMA, step, rng, skipped). It is restored
  onto whatever shardings the caller's abstract target carries, so a run saved on one mesh
  restores on another (saved with fsdp=8, restored on 1 device or fsdp=2 x tensor=2).
- `config`: the whole ml_collections config as JSON; on resume its model sections are compared
  with the current config when the parameter shapes no longer fit.
- `meta`: library versions, mesh, device kind, process count, data position and a hash of the
  bucket table.

No Grain iterator item: batches are a pure function of (seed, step) (`sora_jax.data.pipeline`
draws the k-th batch of a bucket from a shuffled, repeated `MapDataset` by index), so the step
in the state *is* the data position of every host, on any number of hosts. A stateful iterator
(e.g. over a streaming source) would add one `grain.checkpoint` item per process here.

Integrity: Orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames when the save is
complete, so a partial checkpoint never looks like a step; leftover tmp dirs are deleted on
start. A step directory without Orbax's `_CHECKPOINT_METADATA` file is skipped with a warning,
and an unreadable newest checkpoint is reported and the previous one restored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import signal
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

# Top-level config sections that never change parameter shapes (the rest describe models).
NON_MODEL_SECTIONS = ("mesh", "world", "sample", "flow", "stages", "seed")
_COMPLETE_MARKER = "_CHECKPOINT_METADATA"  # written by Orbax when a step is finalised


def versions() -> dict[str, str]:
    import flax
    import optax

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax": getattr(ocp, "__version__", "?"),
    }


def kept_for_good(cfg: Any, step: int) -> bool:
    """Whether a training stage of config `cfg` saves a checkpoint of `step` and never deletes
    it: a multiple of its `checkpoint_every_steps` and of `keep_every_steps` (the Checkpointer's
    keep period, train/loop.py), whatever else it keeps (its last `keep_checkpoints` depend on
    where a run stopped)."""
    every, keep = int(cfg.get("checkpoint_every_steps", 0)), int(cfg.get("keep_every_steps", 0))
    return bool(step > 0 and every and keep and step % every == 0 and step % keep == 0)


def table_hash(table: Any) -> str:
    """Short stable hash of a JSON-able value (e.g. the bucket table of a stage)."""
    text = json.dumps(table, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_metadata(mesh: jax.sharding.Mesh | None, buckets: Any = None, **extra) -> dict:
    """Metadata saved next to every checkpoint (the step is added by `Checkpointer.save`)."""
    meta = {
        "versions": versions(),
        "num_devices": jax.device_count(),
        "process_count": jax.process_count(),
        "device_kind": jax.devices()[0].device_kind,
    }
    if mesh is not None:
        meta["mesh"] = {str(k): int(v) for k, v in mesh.shape.items()}
    if buckets is not None:
        meta["bucket_table"] = table_hash(buckets)
    meta.update(extra)
    return meta


@dataclasses.dataclass
class Restored:
    step: int
    state: Any
    config: dict
    meta: dict


class IncompatibleCheckpointError(ValueError):
    """The checkpoint's parameter shapes do not fit the model built from the current config."""


class Checkpointer:
    """Async `CheckpointManager` with keep-last-K plus keep-every-M and fallback on restore."""

    def __init__(
        self,
        directory: str,
        *,
        max_to_keep: int = 3,
        keep_every_steps: int | None = None,
        async_save: bool = True,
    ):
        # Local paths are made absolute; gs:// and other epath URLs are kept as they are.
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        self._reported: set[int] = set()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            keep_period=keep_every_steps or None,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # partial saves of a killed run
            create=True,
        )
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "config": ocp.JsonCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        }
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def all_steps(self) -> list[int]:
        """Complete checkpoints, oldest first (directories Orbax never finalised are skipped)."""
        steps = []
        for s in sorted(self.manager.all_steps()):
            if (epath.Path(self.directory) / str(s) / _COMPLETE_MARKER).exists():
                steps.append(s)
            elif s not in self._reported:
                self._reported.add(s)
                logging.warning("checkpoint %s/%d is incomplete; ignoring it.", self.directory, s)
        return steps

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, config: dict, meta: dict | None = None) -> None:
        """Starts an (async) save of `state` at `step`; all processes must call it."""
        meta = dict(meta or {})
        meta.setdefault("versions", versions())
        meta["step"] = int(step)
        meta["data_position"] = int(step)  # batches are a pure function of the step
        if int(step) in self.manager.all_steps():
            return  # e.g. a preemption save at a step that was just saved
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                config=ocp.args.JsonSave(config),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def reached_preemption(self, step: int) -> bool:
        """True on every process at the step all agreed to save at after a preemption notice."""
        return self.manager.reached_preemption(int(step))

    def restore(
        self,
        abstract_state: Any,
        step: int | None = None,
        *,
        config: Mapping | None = None,
        model_sections: Iterable[str] | None = None,
    ) -> Restored:
        """Restores the newest readable checkpoint (or `step`) onto `abstract_state`'s shardings.

        An unreadable checkpoint is reported and the previous one tried. When the saved
        parameter shapes differ from `abstract_state`, raises `IncompatibleCheckpointError`
        naming the config fields (of `model_sections`) that differ from `config`.
        """
        steps = [step] if step is not None else self.all_steps()[::-1]
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}.")
        last_error: Exception | None = None
        for s in steps:
            try:
                saved_config = self._read_json(s, "config")
                self._check_shapes(s, abstract_state, saved_config, config, model_sections)
                restored = self.manager.restore(
                    s,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
                return Restored(s, restored.state, saved_config, restored.meta)
            except IncompatibleCheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - report and try the previous checkpoint.
                logging.warning(
                    "checkpoint %d in %s is unreadable (%s: %s); trying an older one.",
                    s,
                    self.directory,
                    type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else "",
                )
                last_error = e
        raise RuntimeError(f"no readable checkpoint in {self.directory}: {last_error}")

    def _read_json(self, step: int, item: str) -> dict:
        restored = self.manager.restore(
            step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()})
        )
        return restored[item]

    def _check_shapes(self, step, abstract_state, saved_config, config, sections) -> None:
        saved = _shapes(self.manager.item_metadata(step)["state"])
        if not saved:  # unreadable metadata: a damaged checkpoint, not a different model
            raise OSError(f"no readable state metadata in checkpoint {step}")
        wanted = _shapes(abstract_state)
        bad = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        if not bad:
            return
        fields = config_diff(saved_config, dict(config or {}), sections)
        if fields:
            what = ", ".join(
                f"{k} is {_short(a)} in the checkpoint but {_short(b)} now" for k, a, b in fields
            )
        else:
            what = "parameters " + ", ".join(
                f"{k} {saved.get(k, 'missing')} vs {wanted.get(k, 'missing')} now" for k in bad[:5]
            )
        raise IncompatibleCheckpointError(
            f"checkpoint {step} in {self.directory} does not fit the model of this config "
            f"({what}); restore those values or train in a new --workdir."
        )

    def read_config(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        return self._read_json(step, "config")

    def read_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        return self._read_json(step, "meta")

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_name(path: tuple) -> str:
    """'params.blocks.attn.q.kernel' for a pytree key path (an nnx Variable's '.value' dropped),
    the same for a live state and for Orbax's metadata of it."""
    name = ".".join(_key_name(k) for k in path)
    return name[: -len(".value")] if name.endswith(".value") else name


def _shapes(tree: Any) -> dict[str, tuple]:
    """Flat {'params.blocks.attn.q.kernel': shape} of a state or its Orbax metadata."""
    tree = getattr(tree, "tree", tree)  # Orbax TreeMetadata wraps the nested dict
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype")
    )[0]
    return {path_name(path): tuple(leaf.shape) for path, leaf in leaves}


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def config_diff(
    saved: Mapping, current: Mapping, sections: Iterable[str] | None = None
) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, current value) of model fields that differ.

    `sections` limits the comparison to those top-level sections; by default every section
    except the stage train configs (`*_train`) and `NON_MODEL_SECTIONS`.
    """
    a, b = (
        _flatten(json.loads(json.dumps(saved, default=list))),
        _flatten(json.loads(json.dumps(current, default=list))),
    )

    def is_model(key: str) -> bool:
        top = key.split(".")[0]
        if sections is not None:
            return top in set(sections)
        return not top.endswith("_train") and top not in NON_MODEL_SECTIONS

    missing = object()
    keys = sorted(k for k in a.keys() | b.keys() if is_model(k))
    return [
        (k, a.get(k, "unset"), b.get(k, "unset"))
        for k in keys
        if a.get(k, missing) != b.get(k, missing)
    ]


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else repr(v)
    return text if len(text) < 60 else text[:57] + "..."


class PreemptionWatcher:
    """Tells the loop when to save and stop: SIGTERM (one process) or the JAX sync point.

    With several processes JAX's preemption service catches SIGTERM on any host and picks a
    step all hosts reach (`reached_preemption_sync_point`), so every host saves the same step.
    A single process has no coordination service, so a Python SIGTERM handler sets a flag that
    is honoured after the current step.
    """

    def __init__(self, checkpointer: Checkpointer):
        self.checkpointer = checkpointer
        self.signalled = False
        self._previous = None
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        logging.warning("SIGTERM received: saving a checkpoint after this step, then stopping.")
        self.signalled = True

    def should_stop(self, step: int) -> bool:
        """Called with the same step on every process after each step."""
        return self.signalled or self.checkpointer.reached_preemption(step)

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def abstract_like(tree: Any, shardings: Any | None = None) -> Any:
    """ShapeDtypeStructs of a pytree, carrying the target shardings when given."""
    if shardings is None:
        return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )

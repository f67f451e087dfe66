"""The train state and the pure train step of the loop (sora_jax/train/loop.py), and models
built from them outside training.

`TrainState` holds step, parameters, optimizer state, EMA, the base rng and the count of skipped
updates; `build_step` is the jitted step `step(state, frozen, batch) -> (state, metrics,
diagnostics)`; `abstract_train_state` gives the state's shapes and shardings on a mesh without
allocating, `init_state` builds it there. `init_model` and `load_model` give a task's model
fresh or from a stage's newest checkpoint, placed as training places it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from sora_jax import parallel
from sora_jax.train import checkpoint as ckpt_lib
from sora_jax.train.optimizer import make_optimizer


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar
    params: Any  # nnx.State of trainable parameters
    opt_state: Any
    ema: Any  # exponential moving average of params (fp32)
    rng: jax.Array  # base key; the key of step s is fold_in(rng, s)
    skipped: jax.Array  # int32 count of updates skipped for non-finite loss/grads


class Task(Protocol):
    """What the loop needs from a stage. Optional extras, used when present:

    `periodic(step, ctx: PeriodicContext)` runs after every step on every process (e.g. sample
    videos every N steps; only `ctx.is_main_process` writes files); `model_sections` names the
    config sections describing the model, for the resume shape check; `batch_specs(start,
    end)` lists the global shapes ({name: jax.ShapeDtypeStruct}) of the batches `batches` will
    yield in steps [start, end), one per bucket, so the loop compiles the step for all of them
    at once before the first step (`precompile` in the stage config; sora_jax/train/precompile.py).
    """

    name: str

    def create_model(self, rngs: nnx.Rngs) -> nnx.Module: ...

    def frozen(self) -> Any: ...

    def loss(self, model: nnx.Module, frozen: Any, batch: dict, rng: jax.Array) -> tuple: ...

    def batches(self, start_step: int) -> Iterator[dict[str, np.ndarray]]: ...


def build_step(task: Task, graphdef, rest, tx, ema_decay: float, schedule=None) -> Callable:
    """The pure train step. Non-finite loss or gradients leave params/opt/EMA untouched.

    Diagnostics (read only when the guard trips): finiteness of the loss, of each float batch
    entry and of each parameter's gradient.
    """

    def step_fn(state: TrainState, frozen, batch):
        rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, rest)
            return task.loss(model, frozen, batch, rng)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        leaf_sq = jnp.stack(
            [jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads)]
        )
        grad_norm = jnp.sqrt(jnp.sum(leaf_sq))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema, params)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = state.replace(
            step=state.step + 1,
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            ema=keep(ema, state.ema),
            skipped=state.skipped + (~finite).astype(jnp.int32),
        )
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "param_norm": optax.tree.norm(state.params),
            "update_norm": optax.tree.norm(updates),
            "nonfinite": (~finite).astype(jnp.float32),
            "skipped": new_state.skipped.astype(jnp.float32),
            **aux,
        }
        if schedule is not None:  # applied updates so far = the optimizer's count
            metrics["lr"] = schedule(state.step - state.skipped)
        diag = {
            "loss_finite": jnp.isfinite(loss),
            "grads_finite": jnp.isfinite(leaf_sq),
            "batch_finite": {
                k: jnp.isfinite(v).all()
                for k, v in batch.items()
                if jnp.issubdtype(v.dtype, jnp.floating)
            },
        }
        return new_state, metrics, diag

    return step_fn


def _create_fn(task: Task, tx: optax.GradientTransformation, seed: int) -> Callable:
    def create():
        model = task.create_model(nnx.Rngs(seed))
        _, params, rest = nnx.split(model, nnx.Param, ...)
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            ema=jax.tree.map(jnp.copy, params),
            rng=jax.random.key_data(jax.random.key(seed + 1)),
            skipped=jnp.zeros((), jnp.int32),
        )
        return state, rest

    return create


def abstract_train_state(task: Task, cfg, mesh, seed: int):
    """(graphdef, abstract state, abstract rest, optimizer, shardings, create); no allocation."""
    tx = make_optimizer(cfg)
    create = _create_fn(task, tx, seed)
    abstract_state, abstract_rest = jax.eval_shape(create)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: task.create_model(nnx.Rngs(seed))))
    rules = cfg.get("sharding_rules", None) or parallel.DEFAULT_RULES
    state_shardings = parallel.param_shardings(abstract_state, mesh, rules)
    rest_shardings = jax.tree.map(lambda _: parallel.named_sharding(mesh, None), abstract_rest)
    shardings = (state_shardings, rest_shardings)
    return graphdef, abstract_state, abstract_rest, tx, shardings, create


def init_state(task: Task, cfg, mesh, seed: int):
    """Builds the model and optimizer state directly in their shardings on the mesh."""
    graphdef, _, _, tx, shardings, create = abstract_train_state(task, cfg, mesh, seed)
    with jax.set_mesh(mesh):
        state, rest = jax.jit(create, out_shardings=shardings)()
    return graphdef, state, rest, tx, shardings


def init_model(task: Task, cfg: ml_collections.ConfigDict, *, seed: int = 0, mesh=None):
    """A freshly initialised model placed as `load_model` places a trained one (the same
    shardings, hence the same compiled programs for functions that take its state)."""
    graphdef, state, rest, _, _ = init_state(task, cfg, mesh or parallel.make_mesh(), seed)
    return nnx.merge(graphdef, state.params, rest)


def load_model(
    task: Task,
    cfg: ml_collections.ConfigDict,
    workdir: str,
    *,
    seed: int = 0,
    use_ema: bool = True,
    mesh=None,
    step: int | None = None,
) -> nnx.Module:
    """Rebuilds a trained model from the newest checkpoint in `<workdir>/checkpoints`, or from
    the one of `step` (a FileNotFoundError names the steps kept if it is not among them)."""
    mesh = mesh or parallel.make_mesh()
    graphdef, abstract_state, _, _, shardings, create = abstract_train_state(task, cfg, mesh, seed)
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    kept = checkpointer.all_steps()
    if not kept:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; train this stage first.")
    if step is not None and step not in kept:
        checkpointer.close()
        raise FileNotFoundError(f"no checkpoint of step {step} in {workdir}/checkpoints (kept: "
                                f"{kept}; keep_every_steps keeps earlier ones).")  # fmt: skip
    restored = checkpointer.restore(ckpt_lib.abstract_like(abstract_state, shardings[0]), step)
    checkpointer.close()
    with jax.set_mesh(mesh):
        rest = jax.jit(lambda: create()[1], out_shardings=shardings[1])()
    state = restored.state
    return nnx.merge(graphdef, state.ema if use_ema else state.params, rest)

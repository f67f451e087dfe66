"""The generic training loop shared by the VAE and DiT tasks.

A task supplies a model constructor, a loss, frozen inputs (e.g. the VAE and text encoder of the
DiT stage) and host batches as a pure function of the step. The loop owns everything else:
sharded initialisation on the mesh, the jitted and donated train step (AdamW with clipping,
warmup + cosine, EMA, a non-finite guard), Orbax checkpoints with automatic resume, metrics and
progress. The step is a pure function of pytrees:

    step(state, frozen, batch) -> (state, metrics)
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
from sora_jax.train import metrics as metrics_lib


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar
    params: Any  # nnx.State of trainable parameters
    opt_state: Any
    ema: Any  # exponential moving average of params (fp32)
    rng: jax.Array  # base key; the key of step s is fold_in(rng, s)
    skipped: jax.Array  # int32 count of updates skipped for non-finite loss/grads


class Task(Protocol):
    name: str

    def create_model(self, rngs: nnx.Rngs) -> nnx.Module: ...

    def frozen(self) -> Any: ...

    def loss(self, model: nnx.Module, frozen: Any, batch: dict, rng: jax.Array) -> tuple: ...

    def batches(self, start_step: int) -> Iterator[dict[str, np.ndarray]]: ...


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with global-norm clipping, linear warmup then cosine (or constant) decay."""
    warmup = int(cfg.get("lr_warmup_steps", 0))
    if cfg.get("lr_schedule", "cosine") == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            0.0,
            cfg.lr,
            max(warmup, 1),
            max(int(cfg.steps), warmup + 1),
            end_value=cfg.lr * cfg.get("lr_min_ratio", 0.1),
        )
    else:
        schedule = optax.linear_schedule(0.0, cfg.lr, max(warmup, 1))

    def decay_mask(params):  # no weight decay on biases, norms, modulation tables (ndim < 2).
        return jax.tree.map(lambda p: p.ndim >= 2, params)

    return optax.chain(
        optax.clip_by_global_norm(cfg.get("grad_clip_norm", 1.0)),
        optax.adamw(
            schedule,
            b1=cfg.get("b1", 0.9),
            b2=cfg.get("b2", 0.999),
            weight_decay=cfg.get("weight_decay", 0.0),
            mask=decay_mask,
        ),
    )


@dataclasses.dataclass
class TrainResult:
    graphdef: Any
    state: TrainState
    rest: Any
    history: list[dict]


def _prefetch(it: Iterator, size: int = 2) -> Iterator:
    """Runs the host data iterator one or two batches ahead in a thread."""
    q: queue.Queue = queue.Queue(maxsize=size)
    sentinel = object()

    def work():
        try:
            for item in it:
                q.put(item)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer.
            q.put(e)
        q.put(sentinel)

    threading.Thread(target=work, daemon=True).start()
    while True:
        item = q.get()
        if item is sentinel:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def build_step(task: Task, graphdef, rest, tx, ema_decay: float) -> Callable:
    def step_fn(state: TrainState, frozen, batch):
        rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, rest)
            return task.loss(model, frozen, batch, rng)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optax.tree.norm(grads)
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
            "skipped": new_state.skipped.astype(jnp.float32),
            **aux,
        }
        return new_state, metrics

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
    """(graphdef, abstract state, abstract rest, optimizer, shardings) without allocating."""
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


def train(
    task: Task,
    config: ml_collections.ConfigDict,
    cfg: ml_collections.ConfigDict,
    workdir: str,
    mesh=None,
) -> TrainResult:
    """Trains `task` for `cfg.steps` steps in `workdir`, resuming from its newest checkpoint."""
    mesh = mesh or parallel.make_mesh(config.get("mesh", None) and config.mesh.to_dict())
    os.makedirs(workdir, exist_ok=True)
    graphdef, state, rest, tx, shardings = init_state(task, cfg, mesh, config.seed)
    checkpointer = ckpt_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=cfg.get("keep_checkpoints", 2),
        keep_every_steps=cfg.get("keep_every_steps", None),
    )
    if checkpointer.latest_step() is not None:
        abstract = ckpt_lib.abstract_like(state, shardings[0])
        step, state, _, _ = checkpointer.restore(abstract)
        logging.info("%s: resumed from step %d in %s", task.name, step, workdir)
    start = int(state.step)
    writer = metrics_lib.create_writer(workdir, prefix=f"{task.name} ")
    frozen = task.frozen()
    step_fn = jax.jit(
        build_step(task, graphdef, rest, tx, cfg.get("ema_decay", 0.999)),
        donate_argnums=(0,),
    )
    total = int(cfg.steps)
    log_every = int(cfg.get("log_every_steps", 50))
    ckpt_every = int(cfg.get("checkpoint_every_steps", 500))
    progress = metrics_lib.Progress(total, start)
    history: list[dict] = []
    pending: list[tuple[int, dict]] = []
    batches = _prefetch(itertools.islice(task.batches(start), total - start))
    logging.info("%s: training steps %d -> %d", task.name, start, total)
    with jax.set_mesh(mesh):
        for step in range(start, total):
            t0 = time.perf_counter()
            host_batch = next(batches)
            batch = parallel.host_to_global(host_batch, mesh)
            t1 = time.perf_counter()
            state, metrics = step_fn(state, frozen, batch)
            pending.append((step + 1, metrics))
            done = step + 1
            if done % log_every == 0 or done == total:
                rows = [(s, jax.device_get(m)) for s, m in pending]
                pending.clear()
                progress.add("data_s", t1 - t0)
                progress.add("compute_s", time.perf_counter() - t1)
                mean = {k: float(np.mean([r[k] for _, r in rows])) for k in rows[-1][1]}
                mean.update(progress.report(done))
                writer.write_scalars(done, mean)
                history.append({"step": done, **mean})
            else:
                progress.add("data_s", t1 - t0)
                progress.add("compute_s", time.perf_counter() - t1)
            if done % ckpt_every == 0 or done == total:
                t2 = time.perf_counter()
                checkpointer.save(done, state, config.to_dict(), {"task": task.name})
                progress.add("checkpoint_s", time.perf_counter() - t2)
    checkpointer.close()
    writer.close()
    return TrainResult(graphdef=graphdef, state=state, rest=rest, history=history)


def load_model(
    task: Task,
    cfg: ml_collections.ConfigDict,
    workdir: str,
    *,
    seed: int = 0,
    use_ema: bool = True,
    mesh=None,
) -> nnx.Module:
    """Rebuilds a trained model from the newest checkpoint in `<workdir>/checkpoints`."""
    mesh = mesh or parallel.make_mesh()
    graphdef, abstract_state, abstract_rest, _, shardings, create = abstract_train_state(
        task, cfg, mesh, seed
    )
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    if checkpointer.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; train this stage first.")
    _, state, _, _ = checkpointer.restore(ckpt_lib.abstract_like(abstract_state, shardings[0]))
    checkpointer.close()
    with jax.set_mesh(mesh):
        _, rest = jax.jit(create, out_shardings=shardings)()
    return nnx.merge(graphdef, state.ema if use_ema else state.params, rest)

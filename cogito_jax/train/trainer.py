"""The training loop: sharded state, compiled step, metrics, checkpoints, exact resume, preemption.

``run(cfg, workdir, model_factory, train_data, ...)`` trains until ``cfg.train.steps`` and returns the
last logged metrics plus ``preempted`` (True when SIGTERM stopped it early). It restarts
from the newest checkpoint in ``workdir`` by itself (parameters, optimizer, step, RNG and the input
iterator's position), so a killed run continues with the next unseen batch and produces the same
losses it would have without the interruption. SIGTERM (preemption) saves the current step and
returns normally.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
from etils import epath
from flax import nnx

from cogito_jax import config as cfglib, metrics as metricslib, sharding
from cogito_jax.data.pipeline import global_batch
from cogito_jax.log import logger
from cogito_jax.train import optim
from cogito_jax.train.checkpoint import Checkpointer, abstract_like
from cogito_jax.train.step import LossFn, TrainState, lm_loss, make_eval_step, make_train_step


class _Preemption:
    """Turns SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler
            self._previous = None
        return self

    def _handle(self, signum, frame):
        logger.warning("SIGTERM received: saving a checkpoint and stopping")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _replicated(mesh):
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def run(
    cfg: Any,
    workdir: str,
    model_factory: Callable[[], nnx.Module],
    train_data: Any,
    *,
    eval_data: Callable[[], Iterable[dict]] | None = None,
    loss_fn: LossFn = lm_loss,
    mesh: jax.sharding.Mesh | None = None,
    model: nnx.Module | None = None,
) -> dict[str, Any]:
    """Trains; returns the last logged metrics. ``train_data`` is a checkpointable Grain IterDataset."""
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = mesh or sharding.make_mesh(cfg.mesh)
    rules = sharding.resolve_rules(cfg.sharding.rules)
    if jax.process_index() == 0:
        cfglib.dump(cfg, workdir / "config.json")
    logger.info("mesh %s, rules %s", sharding.describe(mesh), cfg.sharding.rules)

    with sharding.use_rules(rules):
        if model is None:
            model = sharding.create_sharded(model_factory, mesh, rules)
        else:
            model = sharding.place(model, mesh, rules)
    graphdef, params, frozen = nnx.split(model, optim.trainable_filter(cfg.train.trainable), ...)
    n_train = sum(x.size for x in jax.tree.leaves(params))
    n_all = n_train + sum(x.size for x in jax.tree.leaves(frozen))
    logger.info("parameters: %s trainable of %s", f"{n_train:,}", f"{n_all:,}")

    tx, schedule = optim.make_tx(cfg.optim, cfg.train.steps)
    params_sh = jax.tree.map(lambda x: x.sharding, params)
    frozen_sh = jax.tree.map(lambda x: x.sharding, frozen)
    with jax.set_mesh(mesh):
        opt_state = jax.jit(tx.init)(params)
    opt_sh = jax.tree.map(lambda x: x.sharding, opt_state)
    rep = _replicated(mesh)
    state = TrainState(params, opt_state, jax.device_put(jnp.int32(0), rep),
                       jax.device_put(jax.random.key_data(jax.random.key(cfg.seed)), rep))
    state_sh = TrainState(params_sh, opt_sh, rep, rep)

    ckpt = Checkpointer(workdir, cfg.checkpoint.keep_last, cfg.checkpoint.keep_every, cfg.checkpoint.async_save)
    data_iter = iter(train_data)
    restored = ckpt.restore(abstract_like(state))
    if restored is not None:
        step0, state, data_state, _ = restored
        state = TrainState(*state)
        if data_state is not None:
            data_iter.set_state(data_state)
        logger.info("resumed from step %d in %s", step0, ckpt.directory)
    start = int(state.step)

    step_fn = make_train_step(graphdef, tx, loss_fn, cfg.train.grad_accum)
    writer = metricslib.from_config(workdir, cfg)
    last: dict[str, Any] = {}
    compiled = None
    t_last = time.time()
    try:
        with _Preemption() as preempt, jax.set_mesh(mesh), sharding.use_rules(rules):
            for step in range(start, cfg.train.steps):
                local = next(data_iter)
                # Which examples this step consumed (this process's rows), to audit resumption.
                consumed = int(local["index"].sum()) if "index" in local else -1
                batch = global_batch(_model_inputs(local), mesh)
                if compiled is None:
                    batch_sh = jax.tree.map(lambda x: x.sharding, batch)
                    jitted = jax.jit(step_fn, in_shardings=(state_sh, frozen_sh, batch_sh),
                                     out_shardings=(state_sh, rep), donate_argnums=0)
                    compiled = jitted.lower(state, frozen, batch).compile()
                    _log_memory(compiled)
                state, metrics = compiled(state, frozen, batch)
                done = step + 1
                if done % cfg.train.log_every == 0 or done == cfg.train.steps:
                    now = time.time()
                    writer.write(done, {**metrics, "lr": schedule(step), "step_time": (now - t_last),
                                        "data_index_sum": consumed})
                    t_last = now
                    last = {"step": done, **metrics}
                if cfg.train.eval_every and eval_data is not None and done % cfg.train.eval_every == 0:
                    writer.write_now(done, evaluate(graphdef, state.params, frozen, eval_data(), mesh, loss_fn))
                if done % cfg.checkpoint.every == 0 or done == cfg.train.steps or preempt.requested:
                    ckpt.save(done, state, data_iter.get_state(), {"config": cfg.to_dict()}, force=True)
                if preempt.requested:
                    break
    finally:  # a crash still records the steps that ran and finishes any async save
        writer.close()
        ckpt.close()
    out = {k: (float(v) if hasattr(v, "item") else v) for k, v in last.items()}
    out["preempted"] = preempt.requested  # stopped early by SIGTERM: the run is not finished
    return out


def evaluate(graphdef, params, frozen, batches: Iterable[dict], mesh, loss_fn: LossFn = lm_loss) -> dict:
    """Token-mean loss over all ``batches`` (host-side sums of a jitted per-batch step)."""
    fn = jax.jit(make_eval_step(graphdef, loss_fn))
    total, count = 0.0, 0.0
    for local in batches:
        out = fn(params, frozen, global_batch(_model_inputs(local), mesh))
        total += float(out["loss_sum"])
        count += float(out["tokens"])
    return {"eval_loss": total / max(count, 1.0), "eval_tokens": count}


def _model_inputs(local: dict) -> dict:
    """A pipeline batch without its bookkeeping fields."""
    return {k: v for k, v in local.items() if k != "index"}


def _log_memory(compiled) -> None:
    try:
        mem = compiled.memory_analysis()
    except Exception:  # some backends do not report
        return
    if mem is None:
        return
    gib = 1 / 2**30
    logger.info(
        "train step memory per device: args %.3f GiB, outputs %.3f GiB, temps %.3f GiB, code %.3f GiB",
        mem.argument_size_in_bytes * gib, mem.output_size_in_bytes * gib, mem.temp_size_in_bytes * gib,
        mem.generated_code_size_in_bytes * gib,
    )

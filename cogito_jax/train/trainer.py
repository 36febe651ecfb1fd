"""The training loop: sharded state, compiled step, metrics, checkpoints, exact resume, preemption.

``run(cfg, workdir, model_factory, train_data, ...)`` trains until ``cfg.train.steps`` and returns the
last logged metrics plus ``preempted`` (True when SIGTERM stopped it early). It restarts
from the newest checkpoint in ``workdir`` by itself (parameters, optimizer, step and the input
iterator's position), so a killed run continues with the next unseen batch and produces the same
losses it would have without the interruption. SIGTERM (preemption) saves the current step and
returns normally.

Logged every ``train.log_every`` steps (``metrics.jsonl``, TensorBoard): the step's loss, token and
answer-token accuracy, grad/param norms and learning rate, and over the interval since the last log
``step_time`` (seconds per step, compilation excluded), ``data_wait`` (seconds per step spent waiting
for the input pipeline) and its fraction ``data_wait_frac``, ``tokens_per_s`` (attended LLM tokens),
``model_tflops_per_s`` (``models.flops.step_flops``) and ``mfu`` against the devices' bf16 peak
(``train.peak_tflops``, else the known peak of the device kind; not reported for CPUs), and
``placeholder_frac``, the share of rows that held no example (longer than ``data.max_len``). A run whose
steps have no supervised token at all stops with :class:`NoSupervisedTokens` (a one-line config error)
before it saves a checkpoint. ``train.eval_every`` evaluates the held-out set with one compiled step of
explicit shardings (:class:`Evaluator`). The progress bar counts steps finished on the device.

The compiled step comes from :func:`compile_train_step` over a :func:`prepare`d model (what trains, what
stays frozen, the optimizer state and every sharding); ``launch/aot_compile.py`` compiles the same step
for a TPU topology from an abstract model. With ``train.trainable="lora"`` the model is wrapped in
``cogito_jax.models.lora.LoRA`` (:func:`for_training`): only the adapters train and are checkpointed.
"""

from __future__ import annotations

import collections
import math
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx
from tqdm.auto import tqdm

from cogito_jax import config as cfglib, errors, metrics as metricslib, sharding
from cogito_jax.data.pipeline import BOOKKEEPING, global_batch
from cogito_jax.errors import ConfigError, check_choice, check_number
from cogito_jax.log import is_main_process, logger
from cogito_jax.models import flops as flopslib
from cogito_jax.models.lora import LoRA
from cogito_jax.train import optim
from cogito_jax.train.checkpoint import Checkpointer, IncompatibleCheckpoint, abstract_like, check_writable, error_line
from cogito_jax.train.step import LossFn, TrainState, lm_loss, make_eval_step, make_train_step, model_config


class Preemption:
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


# ----------------------------------------------------------------------------- what trains and how it is laid out


def for_training(cfg: Any, model: nnx.Module) -> nnx.Module:
    """The module that trains: ``model`` wrapped in LoRA adapters (``cfg.lora``) when ``train.trainable="lora"``.

    Works on a real or an abstract (``nnx.eval_shape``) model; the adapters carry logical-axis metadata, so
    they are sharded like the kernels they adapt.
    """
    if cfg.train.trainable != "lora" or isinstance(model, LoRA):
        return model
    lc = cfg.lora
    with nnx.use_eager_sharding(False):
        return LoRA(model, rank=lc.rank, alpha=lc.alpha, targets=lc.targets, dropout=lc.dropout,
                    rngs=nnx.Rngs(params=cfg.seed + 1))


def unwrap(model: nnx.Module) -> nnx.Module:
    """The plain model of a trained one (LoRA adapters folded into the base kernels), for sampling and export."""
    return model.merge() if isinstance(model, LoRA) else model


def abstract_sharded(factory: Callable[[], nnx.Module], mesh: jax.sharding.Mesh,
                     rules: sharding.Rules | None = None) -> nnx.Module:
    """``factory()``'s shapes and dtypes with the shardings ``sharding.create_sharded`` would give it (no arrays)."""
    graphdef, abs_state = nnx.split(sharding.abstract_model(factory))
    shardings = sharding.state_shardings(abs_state, mesh, rules)
    state = jax.tree.map(
        lambda v, s: v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s.get_value()))
        if isinstance(v, nnx.Variable) else v,
        abs_state, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    return nnx.merge(graphdef, state)


class Prepared(NamedTuple):
    """A model split for training, its first state and every sharding the compiled step uses.

    ``state`` and ``frozen`` hold arrays, or ``jax.ShapeDtypeStruct``s with shardings when prepared from an
    abstract model (ahead-of-time compilation).
    """

    graphdef: nnx.GraphDef
    state: TrainState
    frozen: Any
    state_sh: TrainState
    frozen_sh: Any
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    mesh: jax.sharding.Mesh
    rules: sharding.Rules


def prepare(cfg: Any, model: nnx.Module, mesh: jax.sharding.Mesh, rules: sharding.Rules) -> Prepared:
    """Splits ``model`` (already wrapped by :func:`for_training` and sharded, or abstract with shardings) into
    what trains and what stays frozen, and builds the optimizer state at step 0 with its shardings."""
    graphdef, params, frozen = nnx.split(model, optim.trainable_filter(cfg.train.trainable), ...)
    abstract = any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))
    tx, schedule = optim.make_tx(cfg.optim, cfg.train.steps)
    params_sh = jax.tree.map(lambda x: x.sharding, params)
    frozen_sh = jax.tree.map(lambda x: x.sharding, frozen)
    rep = _replicated(mesh)
    # Moments are laid out like their parameters, scalars replicated (a plain jit(tx.init) would replicate the
    # zeros it creates on every device).
    abstract_opt = jax.eval_shape(tx.init, params)
    opt_sh = optax.tree_map_params(tx, lambda _, sh: sh, abstract_opt, params_sh,
                                   transform_non_params=lambda node: jax.tree.map(lambda _: rep, node))
    if abstract:
        opt_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract_opt,
                                 opt_sh)
        state = TrainState(params, opt_state, jax.ShapeDtypeStruct((), jnp.int32, sharding=rep))
    else:
        with jax.set_mesh(mesh):
            opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
        state = TrainState(params, opt_state, jax.device_put(jnp.int32(0), rep))
    return Prepared(graphdef, state, frozen, TrainState(params_sh, opt_sh, rep), frozen_sh, tx, schedule, mesh,
                    rules)


def batch_shardings(batch: Mapping[str, Any], mesh: jax.sharding.Mesh, rules: sharding.Rules) -> dict:
    """The layout of a global batch (rows over the data-parallel axes), as ``pipeline.global_batch`` makes it."""
    return {k: jax.sharding.NamedSharding(
        mesh, sharding.logical_to_spec(("batch",) + (None,) * (len(v.shape) - 1), rules, mesh))
        for k, v in batch.items()}


def compile_train_step(p: Prepared, batch: Mapping[str, Any], loss_fn: LossFn = lm_loss, grad_accum: int = 1):
    """The train step jitted with explicit in/out shardings (state donated), lowered for ``batch`` (arrays or
    ShapeDtypeStructs) and compiled: the one place the trainer and ``launch/aot_compile.py`` get it from."""
    batch_sh = batch_shardings(batch, p.mesh, p.rules)
    step_fn = make_train_step(p.graphdef, p.tx, loss_fn, grad_accum)
    jitted = jax.jit(step_fn, in_shardings=(p.state_sh, p.frozen_sh, batch_sh),
                     out_shardings=(p.state_sh, _replicated(p.mesh)), donate_argnums=0)
    with jax.set_mesh(p.mesh), sharding.use_rules(p.rules):
        abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh[k]) for k, v in batch.items()}
        return jitted.lower(p.state, p.frozen, abstract_batch).compile()


# ----------------------------------------------------------------------------- the loop


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
    """Trains; returns the last logged metrics. ``train_data`` is a checkpointable Grain IterDataset.

    ``model`` (or ``model_factory()``) is the base model; with ``train.trainable="lora"`` it is wrapped in
    adapters here (:func:`for_training`), so only the adapters train and are checkpointed.
    """
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    check_writable(workdir)  # before any work: an unwritable checkpoint folder is a one-line error
    mesh = mesh or sharding.make_mesh(cfg.mesh)
    rules = sharding.resolve_rules(cfg.sharding.rules)
    if jax.process_index() == 0:
        cfglib.dump(cfg, workdir / "config.json")
    logger.info("mesh %s, rules %s", sharding.describe(mesh), cfg.sharding.rules)

    with sharding.use_rules(rules):
        if model is None:
            model = sharding.create_sharded(lambda: for_training(cfg, model_factory()), mesh, rules)
        else:
            model = sharding.place(for_training(cfg, model), mesh, rules)
    p = prepare(cfg, model, mesh, rules)
    state, frozen = p.state, p.frozen
    n_train = sum(x.size for x in jax.tree.leaves(state.params))
    n_all = n_train + sum(x.size for x in jax.tree.leaves(frozen))
    logger.info("parameters: %s trainable of %s", f"{n_train:,}", f"{n_all:,}")
    meta = {"config": cfg.to_dict(), "trainable_parameters": n_train}
    if isinstance(model, LoRA):
        meta["lora_targets"] = list(model.names)

    ckpt = Checkpointer(workdir, cfg.checkpoint.keep_last, cfg.checkpoint.keep_every, cfg.checkpoint.async_save)
    data_iter = iter(train_data)
    restored = ckpt.restore(abstract_like(state))
    if restored is not None:
        step0, state, data_state, _ = restored
        state = TrainState(*state)
        if data_state is not None:
            _resume_iterator(data_iter, data_state, step0, ckpt)
        logger.info("resumed from step %d in %s", step0, ckpt.directory)
    start = int(state.step)

    writer = metricslib.from_config(workdir, cfg, resume_step=start)  # drops lines of steps about to be rerun
    index_sum = jax.jit(jnp.sum, out_shardings=_replicated(mesh))
    last: dict[str, Any] = {}
    compiled_by_shape: dict[tuple, Any] = {}  # one executable per batch shape (audio buckets)
    meter = Throughput(model_config(model), mesh.devices.size,
                       flopslib.peak_flops(mesh.devices.flat[0].device_kind, cfg.train.get("peak_tflops", 0.0)))
    bar = tqdm(total=cfg.train.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
               disable=not is_main_process())
    progress = CompletedSteps(bar)
    supervision = SupervisionCheck(cfg.data.get("max_len") if "data" in cfg else None)
    evaluator = Evaluator(p, loss_fn)
    try:
        with Preemption() as preempt, jax.set_mesh(mesh), sharding.use_rules(rules):
            for step in range(start, cfg.train.steps):
                t_wait = time.perf_counter()
                local = next(data_iter)
                supervision.batch(local)
                batch = global_batch(_model_inputs(local), mesh)
                meter.waited(time.perf_counter() - t_wait)
                # Which examples this step consumed (all processes' rows, summed on device), to audit resumption.
                positions = _positions(local)
                consumed = -1 if positions is None else index_sum(global_batch({"index": positions}, mesh)["index"])
                key = tuple((k, v.shape, str(v.dtype)) for k, v in sorted(batch.items()))
                compiled = compiled_by_shape.get(key)
                if compiled is None:
                    t_compile = time.perf_counter()
                    compiled = compiled_by_shape[key] = compile_train_step(p, batch, loss_fn, cfg.train.grad_accum)
                    meter.compiled(time.perf_counter() - t_compile)
                    _log_memory(compiled)
                state, metrics = compiled(state, frozen, batch)
                ckpt.check()  # a background save that failed (disk full, ...) stops the run here
                meter.stepped(metrics, batch["input_ids"].shape[1])
                supervision.stepped(metrics["tokens"])
                progress.dispatched(metrics["loss"])
                done = step + 1
                if done % cfg.train.log_every == 0 or done == cfg.train.steps:
                    _check_finite(metrics["loss"], done, ckpt)
                    progress.drain()  # this step's loss is on the host: every step before it is done
                    supervision.check(at_end=done == cfg.train.steps)
                    rates = meter.interval()
                    writer.write(done, {**metrics, "lr": p.schedule(step), **rates, "data_index_sum": consumed,
                                        **supervision.interval()})
                    bar.set_postfix(loss=f"{float(metrics['loss']):.4f}", step_time=f"{rates['step_time']:.3g}s",
                                    refresh=False)
                    last = {"step": done, **metrics}
                if cfg.train.eval_every and eval_data is not None and done % cfg.train.eval_every == 0:
                    writer.write_now(done, evaluator(state.params, frozen, eval_data()))
                if done % cfg.checkpoint.every == 0 or done == cfg.train.steps or preempt.requested:
                    _check_finite(metrics["loss"], done, ckpt)  # a NaN state is never saved
                    supervision.check(at_end=True)  # nor one that has learnt from nothing
                    writer.flush(durable=True)  # metrics.jsonl holds every step up to a checkpoint before it
                    ckpt.save(done, state, data_iter.get_state(), meta, force=True)
                if preempt.requested:
                    break
        progress.drain()
        supervision.warn_placeholders()
    finally:  # a crash still records the steps that ran and finishes any async save
        bar.close()
        writer.close()
        ckpt.close()
    out = {k: (float(v) if hasattr(v, "item") else v) for k, v in last.items()}
    out["preempted"] = preempt.requested  # stopped early by SIGTERM: the run is not finished
    return out


class Throughput:
    """Time, tokens and model FLOPs of the steps since the last log (see the module docstring)."""

    def __init__(self, model_cfg: Any, num_devices: int, peak_flops: float | None):
        self.model_cfg, self.num_devices, self.peak = model_cfg, num_devices, peak_flops
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.start, self.wait, self.compile, self.counts = now, 0.0, 0.0, []

    def waited(self, seconds: float) -> None:
        self.wait += seconds

    def compiled(self, seconds: float) -> None:
        self.compile += seconds

    def stepped(self, metrics: Mapping[str, Any], seq_len: int) -> None:
        self.counts.append((metrics["seq_tokens"], metrics["clips"], seq_len))  # device scalars, read at log time

    def interval(self) -> dict[str, float]:
        """The interval's rates (after the step's values are on the host); starts the next interval."""
        now = time.perf_counter()
        steps = max(len(self.counts), 1)
        elapsed = max(now - self.start - self.compile, 1e-9)
        tokens = sum(float(t) for t, _, _ in self.counts)
        out = {"step_time": elapsed / steps, "data_wait": self.wait / steps, "data_wait_frac": self.wait / elapsed,
               "tokens_per_s": tokens / elapsed}
        if self.compile:
            out["compile_time"] = self.compile
        if self.model_cfg is not None and hasattr(self.model_cfg, "text"):
            model_flops = sum(flopslib.step_flops(self.model_cfg, float(t), n, clips=float(c))
                              for t, c, n in self.counts)
            out["model_tflops_per_s"] = model_flops / elapsed / 1e12
            if self.peak:
                out["mfu"] = model_flops / elapsed / (self.peak * self.num_devices)
        self._reset(now)
        return out


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite; the run stops without saving that state."""


def _resume_iterator(data_iter: Any, data_state: Any, step: int, ckpt: Checkpointer) -> None:
    """Puts the input iterator where checkpoint ``step`` left it; a state that does not fit this run's pipeline
    (intact, but saved by other data settings) is :class:`IncompatibleCheckpoint`."""
    try:
        data_iter.set_state(data_state)
    except Exception as e:
        raise IncompatibleCheckpoint(
            f"checkpoint step {step} in {ckpt.directory}: its input-iterator state does not fit this run's data "
            f"pipeline ({error_line(e)}); resume with the data settings it was saved with, or use a new workdir"
        ) from None


def _check_finite(loss: Any, step: int, ckpt: Any) -> None:
    value = float(loss)
    if not math.isfinite(value):
        last = ckpt.latest_step()
        kept = f"the last good checkpoint (step {last}) is kept" if last is not None else "no checkpoint was saved"
        raise NonFiniteLoss(f"loss is {value} at step {step}: training stopped; {kept}")


def compile_eval_step(p: Prepared, batch: Mapping[str, Any], loss_fn: LossFn = lm_loss):
    """The evaluation step (loss and accuracy sums of one batch) jitted with explicit in/out shardings like
    :func:`compile_train_step`, lowered for ``batch`` and compiled."""
    batch_sh = batch_shardings(batch, p.mesh, p.rules)
    jitted = jax.jit(make_eval_step(p.graphdef, loss_fn), in_shardings=(p.state_sh.params, p.frozen_sh, batch_sh),
                     out_shardings=_replicated(p.mesh))
    shaped = lambda tree, sh: jax.tree.map(  # noqa: E731  (the arrays may have been donated: shapes only)
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sh)
    with jax.set_mesh(p.mesh), sharding.use_rules(p.rules):
        return jitted.lower(shaped(p.state.params, p.state_sh.params), shaped(p.frozen, p.frozen_sh),
                            shaped(batch, batch_sh)).compile()


class Evaluator:
    """Token-mean loss, next-token accuracy and answer-token accuracy over a stream of held-out batches: one
    compiled step per batch shape for the whole run, host-side sums of its per-batch outputs."""

    def __init__(self, p: Prepared, loss_fn: LossFn = lm_loss):
        self.p, self.loss_fn = p, loss_fn
        self.compiled: dict[tuple, Any] = {}

    def __call__(self, params: Any, frozen: Any, batches: Iterable[dict]) -> dict[str, float]:
        sums: dict[str, float] = {}
        for local in batches:
            batch = global_batch(_model_inputs(local), self.p.mesh)
            key = tuple((k, v.shape, str(v.dtype)) for k, v in sorted(batch.items()))
            if key not in self.compiled:
                self.compiled[key] = compile_eval_step(self.p, batch, self.loss_fn)
            for k, v in self.compiled[key](params, frozen, batch).items():
                sums[k] = sums.get(k, 0.0) + float(v)
        count = sums.get("tokens", 0.0)
        return {"eval_loss": sums.get("loss_sum", 0.0) / max(count, 1.0), "eval_tokens": count,
                "eval_accuracy": sums.get("correct", 0.0) / max(count, 1.0),
                "eval_answer_accuracy": sums.get("answer_correct", 0.0) / max(sums.get("answer_tokens", 0.0), 1.0)}


class CompletedSteps:
    """Advances a progress bar when a step has finished on the device, not when it was dispatched (dispatch
    runs ahead of the device and then waits), so the bar's count and step time are the real ones."""

    def __init__(self, bar: Any):
        self.bar = bar
        self.pending: collections.deque = collections.deque()

    def dispatched(self, loss: jax.Array) -> None:
        self.pending.append(loss)
        done = 0
        while self.pending and self.pending[0].is_ready():
            self.pending.popleft()
            done += 1
        if done:
            self.bar.update(done)

    def drain(self) -> None:
        """Waits for every dispatched step and counts it."""
        if self.pending:
            jax.block_until_ready(list(self.pending))
            self.bar.update(len(self.pending))
            self.pending.clear()


class NoSupervisedTokens(errors.ConfigError):
    """No batch of the run had a token with loss weight: the run would train on nothing."""


class SupervisionCheck:
    """Counts placeholder rows (examples longer than ``data.max_len``, kept as rows without loss so the stream
    keeps its positions) and supervised tokens. Training on nothing is an error; many placeholders a warning."""

    MIN_STEPS = 8  # steps without a supervised token before the run is stopped (or all of a shorter run)
    WARN_FRACTION = 0.1

    def __init__(self, max_len: int | None):
        self.max_len = max_len
        self.rows = self.placeholders = self.steps = 0
        self.tokens = 0.0
        self.pending: list[jax.Array] = []
        self._interval = [0, 0]  # rows, placeholders since the last log

    def batch(self, local: Mapping[str, Any]) -> None:
        """Counts one local batch's rows; a row with ``index`` -1 (unpacked batches) holds no example."""
        index = local.get("index")
        if index is None or np.ndim(index) != 1:
            return
        n, empty = len(index), int(np.sum(np.asarray(index) < 0))
        self.rows += n
        self.placeholders += empty
        self._interval[0] += n
        self._interval[1] += empty

    def stepped(self, tokens: jax.Array) -> None:
        self.pending.append(tokens)
        self.steps += 1

    def check(self, at_end: bool = False) -> None:
        """Raises :class:`NoSupervisedTokens` when this run's steps had no supervised token, once ``MIN_STEPS``
        steps ran or ``at_end`` (the run's end, or a checkpoint about to be saved)."""
        self.tokens += sum(float(t) for t in self.pending)
        self.pending.clear()
        if self.tokens == 0 and self.steps and (at_end or self.steps >= self.MIN_STEPS):
            why = (f"{self.placeholders} of {self.rows} rows on this process were examples longer than "
                   f"data.max_len={self.max_len} tokens" if self.placeholders else "no example has a loss mask")
            raise NoSupervisedTokens(f"no supervised token in the {self.steps} steps run: {why}; raise "
                                     "data.max_len or check the dataset")

    def interval(self) -> dict[str, float]:
        """``placeholder_frac`` over the rows since the last call (unpacked batches only)."""
        rows, empty = self._interval
        self._interval = [0, 0]
        return {"placeholder_frac": empty / rows} if rows else {}

    def warn_placeholders(self) -> None:
        if self.rows and self.placeholders > self.WARN_FRACTION * self.rows:
            logger.warning("%d of %d rows (%.0f%%) on this process were placeholders for examples longer than "
                           "data.max_len=%s tokens (rows without loss); raise data.max_len to train on them",
                           self.placeholders, self.rows, 100 * self.placeholders / self.rows, self.max_len)


def _model_inputs(local: dict) -> dict:
    """A pipeline batch without its bookkeeping fields."""
    return {k: v for k, v in local.items() if k not in BOOKKEEPING}


def _positions(local: dict) -> np.ndarray | None:
    """The stream positions of a batch's examples (0 for empty packed clip slots, which hold -1); None if unknown."""
    if "index" not in local:
        return None
    index = np.asarray(local["index"])
    return np.where(index >= 0, index, 0).astype(np.int32)


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


def validate(t: Mapping[str, Any]) -> None:
    """Checks the ``train`` section."""
    for key in ("steps", "batch_size", "grad_accum", "log_every"):
        if t[key] < 1:
            raise ConfigError(f"train.{key}={t[key]} must be >= 1")
    if t["eval_every"] < 0:
        raise ConfigError(f"train.eval_every={t['eval_every']} must be >= 0 (0 = no evaluation during training)")
    check_number("train.peak_tflops", t["peak_tflops"], lambda v: v >= 0, ">= 0 (0 = the device's bf16 peak)")
    if t["batch_size"] % t["grad_accum"]:
        raise ConfigError(f"train.batch_size={t['batch_size']} is not divisible by train.grad_accum={t['grad_accum']}")
    check_choice("train.trainable", t["trainable"], tuple(optim.TRAINABLE_PRESETS))

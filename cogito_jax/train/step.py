"""The loss and the jitted train step (explicit in/out shardings, donated state, gradient accumulation).

Parameters are split into the part that trains (``TrainState.params``, updated and donated each step)
and the frozen rest (passed in, never copied). The loss is a token-level mean over the whole global
batch: ``sum(loss * w) / count(w > 0)``, where ``w`` (the batch's ``loss_mask``) is each example's
weight on its supervised tokens, so an example of weight 0.5 counts half as much as one of weight 1
whatever else is in the batch. Gradient accumulation scans over ``grad_accum`` micro-batches and divides
every micro-batch by the *whole* batch's token count, so ``A`` micro-batches of ``B / A`` rows give the
same update as one batch of ``B`` rows.

Step metrics: ``loss``, ``tokens`` (supervised), ``accuracy`` (greedy next-token accuracy on the
supervised tokens), ``answer_accuracy`` (on the answer after ``</think>``), ``grad_norm``,
``param_norm``, and for throughput ``seq_tokens`` (attended tokens) and ``clips`` (audio clips).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cogito_jax.models.moe import balance_loss, load_balancing_loss, routing_stats

Batch = Mapping[str, jax.Array]
# -> (sum of weighted token losses, supervised token count, sums for metrics: see token_cross_entropy)
LossFn = Callable[[nnx.Module, Batch], tuple[jax.Array, jax.Array, dict[str, jax.Array]]]


class TrainState(NamedTuple):
    """What changes every step (and is checkpointed)."""

    params: Any  # nnx.State of the trainable parameters
    opt_state: Any
    step: jax.Array  # int32 scalar


def token_cross_entropy(logits_btv: jax.Array, targets_bt: jax.Array, mask_bt: jax.Array,
                        answer_bt: jax.Array | None = None) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(sum of next-token cross-entropies weighted by ``mask_bt``, number of tokens with weight > 0, sums:
    ``correct`` greedy hits on those tokens, ``answer_correct`` / ``answer_tokens`` on ``answer_bt``); float32."""
    logits_btv = logits_btv.astype(jnp.float32)
    lse_bt = jax.nn.logsumexp(logits_btv, axis=-1)
    target_logit_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
    weight_bt = mask_bt.astype(jnp.float32)
    counted_bt = (weight_bt > 0).astype(jnp.float32)
    hit_bt = (jnp.argmax(logits_btv, axis=-1) == targets_bt).astype(jnp.float32)
    answer_bt = jnp.zeros_like(counted_bt) if answer_bt is None else answer_bt.astype(jnp.float32)
    stats = {"correct": jnp.sum(hit_bt * counted_bt), "answer_correct": jnp.sum(hit_bt * answer_bt),
             "answer_tokens": jnp.sum(answer_bt)}
    return jnp.sum((lse_bt - target_logit_bt) * weight_bt), jnp.sum(counted_bt), stats


def model_inputs(batch: Batch) -> dict[str, Any]:
    """Keyword arguments of the model call for a pipeline batch.

    Packed batches (``cogito_jax.data.pipeline``) hold ``[B, clips, n_mels, frames]`` audio: the clips are
    flattened rows-then-clips, the order in which the model fills audio placeholder tokens, and
    ``positions`` / ``segment_ids`` are passed on. Unpacked batches give the model its four HF arguments.
    """
    feats, fmask = batch.get("input_features"), batch.get("feature_attention_mask")
    if feats is not None and feats.ndim == 4:
        feats = feats.reshape((-1,) + feats.shape[2:])
        fmask = fmask.reshape((-1, fmask.shape[-1]))
    kw = dict(input_features=feats, feature_attention_mask=fmask, attention_mask=batch.get("attention_mask"))
    kw.update({k: batch[k] for k in ("positions", "segment_ids") if k in batch})
    return kw


def lm_logits(model: nnx.Module, batch: Batch) -> jax.Array:
    """Logits ``[B, T, V]`` of an audio LM on a pipeline batch (packed or not)."""
    return model(batch["input_ids"], **model_inputs(batch))


def model_config(model: nnx.Module) -> Any:
    """The ``AudioLMConfig`` of a model (or of the base of a LoRA-wrapped one); None if it has none."""
    return getattr(model, "cfg", None) or getattr(getattr(model, "base", None), "cfg", None)


# Whole-batch routing totals a micro-batch carries when the step accumulates gradients (see make_train_step).
MOE_ASSIGNED, MOE_ROWS, LOSS_TOKENS = "moe_assigned", "moe_rows", "loss_tokens"


def _aux_text(model: nnx.Module) -> Any:
    """The text config of a mixture-of-experts LM whose training loss has a load-balancing term, else None."""
    text = getattr(model_config(model), "text", None)
    return text if text is not None and getattr(text, "num_experts", 0) and text.router_aux_loss_coef else None


def _real_tokens(batch: Batch) -> jax.Array | None:
    return batch["segment_ids"] != 0 if "segment_ids" in batch else batch.get("attention_mask")


def lm_loss(model: nnx.Module, batch: Batch) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Next-token loss of an audio LM on a pipeline batch (see ``cogito_jax.data.pipeline``).

    For a mixture-of-experts LM with ``router_aux_loss_coef > 0`` the load-balancing loss over the real
    tokens is added with that weight, as in HF's training loss (it enters the sum as ``coef * aux *
    count``, so the token mean carries ``coef * aux``). A micro-batch of an accumulated step carries the whole
    batch's top-k assignments, rows and loss tokens: its term is then its share of the whole batch's loss (the
    shares add up to it exactly; a product of per-micro-batch means would not).
    """
    text = _aux_text(model)
    answer = batch.get("answer_mask")
    if text is None:
        return token_cross_entropy(lm_logits(model, batch), batch["targets"], batch["loss_mask"], answer)
    logits, router_logits = model(batch["input_ids"], **model_inputs(batch), return_aux=True)
    total, count, stats = token_cross_entropy(logits, batch["targets"], batch["loss_mask"], answer)
    if MOE_ASSIGNED not in batch:
        aux = load_balancing_loss(router_logits, text.num_experts, text.num_experts_per_tok, _real_tokens(batch))
        return total + text.router_aux_loss_coef * aux * count, count, stats
    _, probs, _ = routing_stats(router_logits, text.num_experts, text.num_experts_per_tok, _real_tokens(batch))
    share = balance_loss(batch[MOE_ASSIGNED], probs, batch[MOE_ROWS], text.num_experts)
    return total + text.router_aux_loss_coef * share * batch[LOSS_TOKENS], count, stats


def routing_totals(graphdef: nnx.GraphDef, params: Any, frozen: Any, micros: Batch) -> dict[str, jax.Array] | None:
    """The whole batch's top-k assignments per expert and rows, from a forward pass over every micro-batch
    (``[n, ...]`` leaves), for a model whose loss has a load-balancing term; None for any other model."""
    text = _aux_text(nnx.merge(graphdef, params, frozen))
    if text is None:
        return None

    def one(carry, micro):
        p, f, assigned, rows = carry  # the parameters ride in the carry: each trace level merges its own
        _, router_logits = nnx.merge(graphdef, p, f)(micro["input_ids"], **model_inputs(micro), return_aux=True)
        a, _, r = routing_stats(router_logits, text.num_experts, text.num_experts_per_tok, _real_tokens(micro))
        return (p, f, assigned + a, rows + r), None

    (_, _, assigned, rows), _ = jax.lax.scan(
        one, (params, frozen, jnp.zeros((text.num_experts,), jnp.float32), jnp.float32(0)), micros)
    return {MOE_ASSIGNED: jax.lax.stop_gradient(assigned), MOE_ROWS: jnp.maximum(rows, 1.0)}


def _split_micro(batch: Batch, n: int) -> Batch:
    return {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}


def throughput_counts(batch: Batch) -> dict[str, jax.Array]:
    """``seq_tokens`` (attended LLM tokens) and ``clips`` (audio clips with any frame) of a batch."""
    out = {"seq_tokens": jnp.sum(batch["attention_mask"].astype(jnp.float32)) if "attention_mask" in batch
           else jnp.float32(batch["input_ids"].size)}
    fmask = batch.get("feature_attention_mask")
    out["clips"] = (jnp.float32(0) if fmask is None
                    else jnp.sum(jnp.any(fmask.reshape(-1, fmask.shape[-1]) > 0, axis=-1).astype(jnp.float32)))
    return out


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossFn = lm_loss,
                    grad_accum: int = 1) -> Callable[[TrainState, Any, Batch], tuple[TrainState, dict]]:
    """``step(state, frozen, batch) -> (state, metrics)``, to be jitted by the caller with shardings."""

    def micro_grads(params, frozen, micro, denom):
        def f(p):
            total, count, stats = loss_fn(nnx.merge(graphdef, p, frozen), micro)
            return total / denom, (total, count, stats)

        return jax.grad(f, has_aux=True)(params)

    def step(state: TrainState, frozen: Any, batch: Batch) -> tuple[TrainState, dict]:
        denom = jnp.maximum(jnp.sum((batch["loss_mask"] > 0).astype(jnp.float32)), 1.0)
        if grad_accum == 1:
            grads, sums = micro_grads(state.params, frozen, batch, denom)
        else:
            micros = _split_micro(batch, grad_accum)
            totals = routing_totals(graphdef, state.params, frozen, micros) if loss_fn is lm_loss else None
            if totals is not None:  # an extra forward pass: the load-balancing loss of the whole batch
                totals[LOSS_TOKENS] = denom
                micros = {**micros, **{k: jnp.broadcast_to(v, (grad_accum,) + v.shape) for k, v in totals.items()}}
            zeros = jax.tree.map(jnp.zeros_like, state.params)
            zero_sums = jax.tree.map(jnp.zeros_like, jax.eval_shape(
                lambda: micro_grads(state.params, frozen, jax.tree.map(lambda v: v[0], micros), denom)[1]))

            def body(carry, micro):
                g, s = micro_grads(state.params, frozen, micro, denom)
                return jax.tree.map(jnp.add, carry, (g, s)), None

            (grads, sums), _ = jax.lax.scan(body, (zeros, zero_sums), micros)
        total, count, stats = sums
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": total / jnp.maximum(count, 1.0),
            "tokens": count,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            **throughput_counts(batch),
        }
        if "correct" in stats:  # the LM loss's sums
            metrics["accuracy"] = stats["correct"] / jnp.maximum(count, 1.0)
            metrics["answer_accuracy"] = stats["answer_correct"] / jnp.maximum(stats["answer_tokens"], 1.0)
        else:  # another loss's sums: their means per counted token
            metrics.update({k: v / jnp.maximum(count, 1.0) for k, v in stats.items()})
        return TrainState(params, opt_state, state.step + 1), metrics

    return step


def make_eval_step(graphdef: nnx.GraphDef, loss_fn: LossFn = lm_loss) -> Callable[[Any, Any, Batch], dict]:
    """``eval(params, frozen, batch) -> {"loss_sum", "tokens", "correct", "answer_correct", "answer_tokens"}``
    (sums, so batches can be added up)."""

    def step(params, frozen, batch):
        total, count, stats = loss_fn(nnx.merge(graphdef, params, frozen), batch)
        return {"loss_sum": total, "tokens": count, **stats}

    return step

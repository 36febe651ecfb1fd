"""The loss and the jitted train step (explicit in/out shardings, donated state, gradient accumulation).

Parameters are split into the part that trains (``TrainState.params``, updated and donated each step)
and the frozen rest (passed in, never copied). The loss is a token-level mean over the whole global
batch: ``sum(loss * mask) / sum(mask)``. Gradient accumulation scans over ``grad_accum`` micro-batches
and divides every micro-batch by the *whole* batch's token count, so ``A`` micro-batches of ``B / A``
rows give the same update as one batch of ``B`` rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

Batch = Mapping[str, jax.Array]
LossFn = Callable[[nnx.Module, Batch], tuple[jax.Array, jax.Array]]  # -> (sum of token losses, token count)


class TrainState(NamedTuple):
    """What changes every step (and is checkpointed)."""

    params: Any  # nnx.State of the trainable parameters
    opt_state: Any
    step: jax.Array  # int32 scalar
    rng: jax.Array  # uint32 key data


def token_cross_entropy(logits_btv: jax.Array, targets_bt: jax.Array, mask_bt: jax.Array
                        ) -> tuple[jax.Array, jax.Array]:
    """(sum of masked next-token cross-entropies, number of masked tokens); float32 math."""
    logits_btv = logits_btv.astype(jnp.float32)
    lse_bt = jax.nn.logsumexp(logits_btv, axis=-1)
    target_logit_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
    mask_bt = mask_bt.astype(jnp.float32)
    return jnp.sum((lse_bt - target_logit_bt) * mask_bt), jnp.sum(mask_bt)


def lm_loss(model: nnx.Module, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Next-token loss of an audio LM on a pipeline batch (see ``cogito_jax.data.pipeline``)."""
    logits = model(
        batch["input_ids"],
        input_features=batch.get("input_features"),
        feature_attention_mask=batch.get("feature_attention_mask"),
        attention_mask=batch.get("attention_mask"),
    )
    return token_cross_entropy(logits, batch["targets"], batch["loss_mask"])


def _split_micro(batch: Batch, n: int) -> Batch:
    return {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossFn = lm_loss,
                    grad_accum: int = 1) -> Callable[[TrainState, Any, Batch], tuple[TrainState, dict]]:
    """``step(state, frozen, batch) -> (state, metrics)``, to be jitted by the caller with shardings."""

    def micro_grads(params, frozen, micro, denom):
        def f(p):
            total, count = loss_fn(nnx.merge(graphdef, p, frozen), micro)
            return total / denom, (total, count)

        return jax.grad(f, has_aux=True)(params)

    def step(state: TrainState, frozen: Any, batch: Batch) -> tuple[TrainState, dict]:
        denom = jnp.maximum(jnp.sum(batch["loss_mask"].astype(jnp.float32)), 1.0)
        if grad_accum == 1:
            grads, (total, count) = micro_grads(state.params, frozen, batch, denom)
        else:
            zeros = jax.tree.map(jnp.zeros_like, state.params)

            def body(carry, micro):
                g_acc, t_acc, c_acc = carry
                g, (t, c) = micro_grads(state.params, frozen, micro, denom)
                return (jax.tree.map(jnp.add, g_acc, g), t_acc + t, c_acc + c), None

            (grads, total, count), _ = jax.lax.scan(
                body, (zeros, jnp.float32(0), jnp.float32(0)), _split_micro(batch, grad_accum)
            )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": total / jnp.maximum(count, 1.0),
            "tokens": count,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
        }
        return TrainState(params, opt_state, state.step + 1, state.rng), metrics

    return step


def make_eval_step(graphdef: nnx.GraphDef, loss_fn: LossFn = lm_loss) -> Callable[[Any, Any, Batch], dict]:
    """``eval(params, frozen, batch) -> {"loss_sum", "tokens"}`` (sums, so batches can be added up)."""

    def step(params, frozen, batch):
        total, count = loss_fn(nnx.merge(graphdef, params, frozen), batch)
        return {"loss_sum": total, "tokens": count}

    return step

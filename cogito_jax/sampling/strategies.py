"""Token selection from logits: greedy, temperature, top-k, top-p, composed, with per-row settings.

All settings are arrays over rows, so one compiled program serves a batch that mixes greedy rows with
sampled ones and different k / p values. The order is that of HF ``generate``: temperature, then
top-k, then top-p. A row with ``temperature == 0`` is greedy (argmax of the raw logits).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class SamplingParams(NamedTuple):
    """Per-row sampling settings, each ``[B]``; ``top_k == 0`` and ``top_p == 1`` disable the filter."""

    temperature_b: jax.Array
    top_k_b: jax.Array
    top_p_b: jax.Array

    @classmethod
    def make(cls, batch: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> SamplingParams:
        if temperature < 0:
            raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
        if top_k < 0:
            raise ValueError(f"top_k={top_k} must be >= 0 (0 = off)")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p={top_p} must be in (0, 1] (1 = off)")
        return cls(
            jnp.full((batch,), temperature, jnp.float32),
            jnp.full((batch,), top_k, jnp.int32),
            jnp.full((batch,), top_p, jnp.float32),
        )


def filtered_logits(logits_bv: jax.Array, params: SamplingParams) -> jax.Array:
    """Logits after temperature, top-k and top-p; removed tokens are ``-inf``. Float32 ``[B, V]``."""
    logits_bv = logits_bv.astype(jnp.float32)
    vocab = logits_bv.shape[-1]
    temp_b = jnp.where(params.temperature_b > 0, params.temperature_b, 1.0)
    scaled_bv = logits_bv / temp_b[:, None]

    def with_filters(scaled_bv):
        order_bv = jnp.argsort(-scaled_bv, axis=-1, stable=True)
        sorted_bv = jnp.take_along_axis(scaled_bv, order_bv, axis=-1)
        rank_v = jnp.arange(vocab)
        k_b = jnp.where(params.top_k_b > 0, jnp.minimum(params.top_k_b, vocab), vocab)
        keep_bv = rank_v[None, :] < k_b[:, None]
        sorted_bv = jnp.where(keep_bv, sorted_bv, -jnp.inf)
        probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        mass_before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv
        keep_bv &= (mass_before_bv < params.top_p_b[:, None]) | (rank_v[None, :] == 0)
        keep_sorted_bv = jnp.where(keep_bv, sorted_bv, -jnp.inf)
        # Scatter back to vocabulary order.
        inverse_bv = jnp.argsort(order_bv, axis=-1)
        return jnp.take_along_axis(keep_sorted_bv, inverse_bv, axis=-1)

    any_filter = jnp.any(params.top_k_b > 0) | jnp.any(params.top_p_b < 1.0)
    return jax.lax.cond(any_filter, with_filters, lambda s: s, scaled_bv)


def select_tokens(
    logits_bv: jax.Array, keys_b: jax.Array, params: SamplingParams
) -> tuple[jax.Array, jax.Array]:
    """Chooses one token per row; returns (tokens ``[B]`` int32, log-prob under the raw model ``[B]``).

    ``keys_b`` holds one PRNG key per row (derive them with ``jax.random.fold_in`` so a row's draws do
    not depend on its batch-mates).
    """
    logits_bv = logits_bv.astype(jnp.float32)
    greedy_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    filtered_bv = filtered_logits(logits_bv, params)
    sampled_b = jax.vmap(sample_categorical)(keys_b, filtered_bv)
    tokens_b = jnp.where(params.temperature_b > 0, sampled_b, greedy_b)
    logprobs_bv = jax.nn.log_softmax(logits_bv, axis=-1)
    return tokens_b, jnp.take_along_axis(logprobs_bv, tokens_b[:, None], axis=-1)[:, 0]


def sample_categorical(key: jax.Array, logits_v: jax.Array) -> jax.Array:
    """One draw from ``softmax(logits_v)`` by inverting the cumulative distribution at one uniform number
    (one random number per row instead of one per vocabulary entry); ``-inf`` logits are never drawn."""
    probs_v = jax.nn.softmax(logits_v.astype(jnp.float32))
    cdf_v = jnp.cumsum(probs_v)
    u = jax.random.uniform(key, (), jnp.float32) * cdf_v[-1]
    idx = jnp.searchsorted(cdf_v, u, side="right")
    last = logits_v.shape[-1] - 1 - jnp.argmax(jnp.flip(probs_v) > 0)  # rounding can push u to the very top
    return jnp.minimum(idx, last).astype(jnp.int32)


def row_keys(seed_key: jax.Array, row_ids_b: jax.Array, step: jax.Array | int) -> jax.Array:
    """One key per row and step: ``fold_in(fold_in(seed, row_id), step)``; independent of batch layout."""
    return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(seed_key, r), step))(row_ids_b)

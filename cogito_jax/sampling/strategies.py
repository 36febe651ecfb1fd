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
    """Logits after temperature, top-k and top-p; removed tokens are ``-inf``. Float32 ``[B, V]``.

    Top-k keeps the tokens whose logit is at least the ``k``-th largest (ties with it stay, as in HF's
    ``TopKLogitsWarper``); top-p then keeps each token whose more probable tokens hold less than ``top_p`` of
    the remaining mass (the most probable token always stays). Both cut-offs are found by bisection over the
    float values (:func:`cutoff`), never by sorting the vocabulary.
    """
    logits_bv = logits_bv.astype(jnp.float32)
    temp_b = jnp.where(params.temperature_b > 0, params.temperature_b, 1.0)
    scaled_bv = logits_bv / temp_b[:, None]

    def with_filters(scaled_bv):
        k_b = params.top_k_b
        kth_b = cutoff(scaled_bv, jnp.ones_like(scaled_bv), jnp.maximum(k_b, 1).astype(jnp.float32))
        scaled_bv = jnp.where((k_b[:, None] > 0) & (scaled_bv < kth_b[:, None]), -jnp.inf, scaled_bv)
        p_bv = jnp.exp(scaled_bv - jnp.max(scaled_bv, axis=-1, keepdims=True))
        nucleus_b = cutoff(scaled_bv, p_bv, params.top_p_b * jnp.sum(p_bv, axis=-1))
        return jnp.where((params.top_p_b[:, None] < 1.0) & (scaled_bv < nucleus_b[:, None]), -jnp.inf, scaled_bv)

    any_filter = jnp.any(params.top_k_b > 0) | jnp.any(params.top_p_b < 1.0)
    return jax.lax.cond(any_filter, with_filters, lambda s: s, scaled_bv)


def cutoff(x_bv: jax.Array, w_bv: jax.Array, limit_b: jax.Array) -> jax.Array:
    """Per row, the smallest float ``t`` with ``sum(w[x > t]) < limit`` (``limit > 0``, ``w >= 0``): the tokens to
    keep are ``x >= t``. Exact: 32 bisection steps over the float32 values in their order as integers."""
    def key(f):  # float32 -> int32 of the same order
        i = jax.lax.bitcast_convert_type(f, jnp.int32)
        return jnp.where(i >= 0, i, i ^ 0x7FFFFFFF)

    def value(i):
        return jax.lax.bitcast_convert_type(jnp.where(i >= 0, i, i ^ 0x7FFFFFFF), jnp.float32)

    def step(_, lo_hi):  # invariant: the answer is in (lo, hi]
        lo, hi = lo_hi
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
        ok = jnp.sum(jnp.where(x_bv > value(mid)[:, None], w_bv, 0.0), axis=-1) < limit_b
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    lo, hi = key(jnp.min(x_bv, axis=-1)) - 1, key(jnp.max(x_bv, axis=-1))
    return value(jax.lax.fori_loop(0, 32, step, (lo, hi))[1])


def select_tokens(
    logits_bv: jax.Array, keys_b: jax.Array, params: SamplingParams
) -> tuple[jax.Array, jax.Array]:
    """Chooses one token per row; returns (tokens ``[B]`` int32, log-prob ``[B]`` under the row's temperature,
    ``log softmax(logits / T)``, before top-k / top-p; the raw model's for greedy rows).

    ``keys_b`` holds one PRNG key per row (derive them with ``jax.random.fold_in`` so a row's draws do
    not depend on its batch-mates); each row uses one uniform number drawn from its key.
    """
    return select_tokens_u(logits_bv, jax.vmap(uniform)(keys_b), params)


def select_tokens_u(logits_bv: jax.Array, u_b: jax.Array, params: SamplingParams) -> tuple[jax.Array, jax.Array]:
    """:func:`select_tokens` given each row's uniform number ``u_b`` in ``[0, 1)`` (see :func:`uniforms`)."""
    logits_bv = logits_bv.astype(jnp.float32)
    max_b = jnp.max(logits_bv, axis=-1)
    greedy_b = first_index(logits_bv == max_b[:, None])
    sampled = params.temperature_b > 0
    tokens_b = jax.lax.cond(
        jnp.any(sampled),
        lambda: jnp.where(sampled, sample_categorical_u(filtered_logits(logits_bv, params), u_b), greedy_b),
        lambda: greedy_b)
    # the log-prob under the distribution the row samples from: softmax(logits / T) (T = 1 for greedy rows),
    # before top-k / top-p
    temp_b = jnp.where(sampled, params.temperature_b, 1.0)
    shifted_bv = (logits_bv - max_b[:, None]) / temp_b[:, None]
    log_norm_b = jnp.log(jnp.sum(jnp.exp(shifted_bv), axis=-1))
    return tokens_b, jnp.take_along_axis(shifted_bv, tokens_b[:, None], axis=-1)[:, 0] - log_norm_b


def first_index(mask_bv: jax.Array) -> jax.Array:
    """Index of the first true entry of each row (the row's length if none), int32 ``[B]``; unlike ``argmax``,
    two plain reductions, which XLA:CPU vectorises."""
    iota_v = jnp.arange(mask_bv.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(mask_bv, iota_v, mask_bv.shape[-1]), axis=-1)


def last_index(mask_bv: jax.Array) -> jax.Array:
    """Index of the last true entry of each row (-1 if none), int32 ``[B]``."""
    return jnp.max(jnp.where(mask_bv, jnp.arange(mask_bv.shape[-1], dtype=jnp.int32), -1), axis=-1)


def sample_categorical_u(logits_bv: jax.Array, u_b: jax.Array, block: int = 128) -> jax.Array:
    """One draw per row from ``softmax(logits_bv)`` by inverting the cumulative distribution at ``u_b``
    (one uniform number per row instead of one per vocabulary entry); ``-inf`` logits are never drawn.

    The distribution function is searched in two levels, over the sums of blocks of ``block`` tokens and then
    within the one block that holds the draw, so no cumulative sum runs over the whole vocabulary. Int32 ``[B]``.
    """
    b, v = logits_bv.shape
    nb = -(-v // block)
    m_b = jnp.max(logits_bv, axis=-1)
    p_bv = jnp.exp(logits_bv - m_b[:, None])
    p_bnc = jnp.pad(p_bv, ((0, 0), (0, nb * block - v))).reshape(b, nb, block)
    mass_bn = jnp.sum(p_bnc, axis=-1)
    cdf_bn = jnp.cumsum(mass_bn, axis=-1)
    target_b = u_b * cdf_bn[:, -1]
    # The block holding the draw: the first whose cumulative mass exceeds the target (it has mass > 0);
    # rounding can push the target to the very top, so cap at the last block with mass.
    j_b = jnp.minimum(jnp.sum(cdf_bn <= target_b[:, None], axis=-1), last_index(mass_bn > 0)).astype(jnp.int32)
    below_b = jnp.where(j_b > 0, jnp.take_along_axis(cdf_bn, jnp.maximum(j_b - 1, 0)[:, None], axis=-1)[:, 0], 0.0)
    p_bc = jnp.take_along_axis(p_bnc, j_b[:, None, None], axis=1)[:, 0]
    rest_b = jnp.maximum(target_b - below_b, 0.0)
    i_b = jnp.minimum(jnp.sum(jnp.cumsum(p_bc, axis=-1) <= rest_b[:, None], axis=-1), last_index(p_bc > 0))
    return (j_b * block + i_b).astype(jnp.int32)


def uniform(key: jax.Array) -> jax.Array:
    """The one uniform number in ``[0, 1)`` a row draws from its key at a step."""
    return jax.random.uniform(key, (), jnp.float32)


def row_keys(seed_key: jax.Array, row_ids_b: jax.Array, step: jax.Array | int) -> jax.Array:
    """One key per row and step: ``fold_in(fold_in(seed, row_id), step)``; independent of batch layout."""
    return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(seed_key, r), step))(row_ids_b)


def uniforms(seed_key: jax.Array, row_ids_b: jax.Array, steps: int) -> jax.Array:
    """``[B, steps]``: the uniform number of each row at each step (from :func:`row_keys`), all drawn at once so a
    decode loop only indexes them."""
    return jax.vmap(lambda s: jax.vmap(uniform)(row_keys(seed_key, row_ids_b, s)), out_axes=1)(jnp.arange(steps))

"""Sampling statistics: empirical frequencies match softmax(logits / T) restricted by top-k / top-p."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from cogito_jax.sampling.strategies import (
    SamplingParams,
    filtered_logits,
    row_keys,
    sample_categorical_u,
    select_tokens,
)

LOGITS_V = np.array([2.0, 1.5, 1.4, 0.3, 0.0, -0.5, -1.0, 1.45, -3.0, 0.9], np.float32)


def reference_probs(logits, temperature, top_k, top_p):
    """HF's order, written independently: temperature, top-k, then nucleus over the renormalised rest."""
    z = logits.astype(np.float64) / temperature
    order = sorted(range(len(z)), key=lambda i: (-z[i], i))
    if top_k:
        order = order[:top_k]
    p = np.exp(z[order] - z[order].max())
    p /= p.sum()
    kept, mass = [], 0.0
    for idx, pi in zip(order, p, strict=True):
        kept.append(idx)
        mass += pi
        if mass >= top_p:
            break
    out = np.zeros_like(z)
    out[kept] = np.exp(z[kept] - z[kept].max())
    return out / out.sum()


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 4, 1.0), (1.3, 0, 0.8), (0.9, 6, 0.75), (2.0, 3, 0.9)],
)
def test_frequencies_match_chi_square(temperature, top_k, top_p):
    n = 40_000
    params = SamplingParams.make(n, temperature, top_k, top_p)
    keys = row_keys(jax.random.key(1234), jnp.arange(n), 0)
    tokens, _ = jax.jit(select_tokens)(jnp.broadcast_to(LOGITS_V, (n, 10)), keys, params)
    counts = np.bincount(np.asarray(tokens), minlength=10)
    expected = reference_probs(LOGITS_V, temperature, top_k, top_p)
    assert np.all(counts[expected == 0] == 0), (counts, expected)  # filtered tokens never drawn
    support = expected > 0
    chi2, pvalue = stats.chisquare(counts[support], expected[support] * n)
    assert pvalue > 1e-3, (counts, expected * n, chi2)


def test_filtered_logits_support_and_mixed_rows():
    logits = jnp.stack([jnp.asarray(LOGITS_V)] * 3)
    params = SamplingParams(jnp.array([1.0, 0.5, 1.0]), jnp.array([0, 2, 0]), jnp.array([1.0, 1.0, 0.5]))
    out = np.asarray(filtered_logits(logits, params))
    assert np.isfinite(out[0]).all()
    assert sorted(np.flatnonzero(np.isfinite(out[1]))) == [0, 1]
    np.testing.assert_allclose(out[1][[0, 1]], LOGITS_V[[0, 1]] / 0.5)
    assert set(np.flatnonzero(np.isfinite(out[2]))) == set(np.flatnonzero(reference_probs(LOGITS_V, 1.0, 0, 0.5)))


def test_filters_match_the_sorting_reference_on_a_large_vocabulary():
    """The bisection cut-offs keep exactly the sorted reference's tokens, row by row, for mixed settings."""
    rng = np.random.default_rng(0)
    rows, vocab = 24, 1000
    logits = (rng.normal(size=(rows, vocab)) * rng.uniform(0.5, 4.0, (rows, 1))).astype(np.float32)
    temps = rng.choice([0.5, 1.0, 1.7], rows).astype(np.float32)
    ks = rng.choice([0, 1, 7, 50, 999, 1000, 5000], rows).astype(np.int32)
    ps = rng.choice([1.0, 0.9, 0.5, 0.05], rows).astype(np.float32)
    out = np.asarray(jax.jit(filtered_logits)(jnp.asarray(logits), SamplingParams(*map(jnp.asarray, (temps, ks, ps)))))
    for r in range(rows):
        want = reference_probs(logits[r], temps[r], min(ks[r], vocab), ps[r]) > 0
        np.testing.assert_array_equal(np.isfinite(out[r]), want, err_msg=f"row {r}: T {temps[r]} k {ks[r]} p {ps[r]}")
        np.testing.assert_allclose(out[r][want], logits[r][want] / temps[r], rtol=1e-6)


def test_top_k_keeps_ties_with_the_kth_logit():
    """As HF's ``TopKLogitsWarper``: every token whose logit equals the k-th largest stays."""
    logits = jnp.array([[3.0, 1.0, 1.0, 0.0, 1.0, -2.0]])
    out = np.asarray(filtered_logits(logits, SamplingParams.make(1, 1.0, top_k=2)))
    assert np.flatnonzero(np.isfinite(out[0])).tolist() == [0, 1, 2, 4]


def test_inverse_cdf_across_blocks_chi_square():
    """Draws spread over several 128-token blocks (most of them empty) follow softmax(logits)."""
    vocab, n = 300, 40_000
    support = np.array([0, 5, 127, 128, 129, 200, 255, 256, 298, 299])
    logits = np.full(vocab, -np.inf, np.float32)
    logits[support] = np.random.default_rng(1).normal(size=support.size)
    u = jax.random.uniform(jax.random.key(5), (n,))
    draws = np.asarray(jax.jit(sample_categorical_u)(jnp.broadcast_to(jnp.asarray(logits), (n, vocab)), u))
    counts = np.bincount(draws, minlength=vocab)
    assert counts.sum() == counts[support].sum()
    p = np.exp(logits[support] - logits[support].max())
    _, pvalue = stats.chisquare(counts[support], p / p.sum() * n)
    assert pvalue > 1e-3
    # The edges of the unit interval land on the first and the last token with mass.
    edges = sample_categorical_u(jnp.asarray(logits)[None].repeat(2, 0), jnp.array([0.0, 1.0 - 2 ** -24]))
    assert np.asarray(edges).tolist() == [0, 299]


def test_greedy_rows_and_logprobs():
    logits = jnp.stack([jnp.asarray(LOGITS_V), -jnp.asarray(LOGITS_V)])
    params = SamplingParams(jnp.array([0.0, 0.0]), jnp.array([0, 0]), jnp.array([1.0, 1.0]))
    tokens, logprobs = select_tokens(logits, row_keys(jax.random.key(0), jnp.arange(2), 0), params)
    assert tokens.tolist() == [0, 8]
    ref = jax.nn.log_softmax(logits, axis=-1)
    np.testing.assert_allclose(np.asarray(logprobs), [ref[0, 0], ref[1, 8]], rtol=1e-6)


def test_same_seed_same_draws_and_rows_independent_of_batch_layout():
    n = 64
    params = SamplingParams.make(n, 1.0)
    logits = jnp.broadcast_to(LOGITS_V, (n, 10))
    a, _ = select_tokens(logits, row_keys(jax.random.key(7), jnp.arange(n), 3), params)
    b, _ = select_tokens(logits, row_keys(jax.random.key(7), jnp.arange(n), 3), params)
    c, _ = select_tokens(logits, row_keys(jax.random.key(7), jnp.arange(n), 4), params)
    assert (a == b).all() and (a != c).any()
    # Row 5 drawn alone gives what it gave inside the batch.
    d, _ = select_tokens(logits[:1], row_keys(jax.random.key(7), jnp.array([5]), 3), SamplingParams.make(1, 1.0))
    assert int(d[0]) == int(a[5])


@pytest.mark.parametrize("kw, message", [({"temperature": -1.0}, "temperature=-1.0"), ({"top_k": -2}, "top_k=-2"),
                                         ({"top_p": 0.0}, "top_p=0.0")])
def test_bad_params(kw, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams.make(2, **kw)

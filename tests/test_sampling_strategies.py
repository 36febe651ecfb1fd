"""Sampling statistics: empirical frequencies match softmax(logits / T) restricted by top-k / top-p."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from cogito_jax.sampling.strategies import SamplingParams, filtered_logits, row_keys, select_tokens

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

"""The generation engine: encode audio and prefill once per prompt, decode N samples in one while_loop.

``prefill`` runs the audio encoder and the prompt through the model once for the ``B`` prompts, then
the KV cache is copied into ``B * N`` slots (rows ``b*N .. b*N+N-1`` belong to prompt ``b``).
``decode`` is one ``lax.while_loop`` that stops when every row has emitted an end token or
``max_new_tokens`` is reached. Each (batch, prompt length, samples, max_new_tokens, audio shape)
compiles once and is cached; the driver buckets shapes so a long job compiles a handful of programs.
Sampling settings are per-row arrays, so greedy and sampled rows share one program. The cache lives
in the loop carry, which XLA updates in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cogito_jax.sampling.strategies import SamplingParams, row_keys, select_tokens


class Output(NamedTuple):
    tokens: jax.Array  # int32 [B, N, max_new_tokens], pad after the end token
    logprobs: jax.Array  # float32 [B, N, max_new_tokens], model log-prob of each emitted token (0 after end)
    lengths: jax.Array  # int32 [B, N], emitted tokens including the end token


class Engine:
    """Compiled prefill / decode programs for one model."""

    def __init__(self, model: nnx.Module):
        self.graphdef, self.state = nnx.split(model)
        self._prefill = {}
        self._decode = {}
        self.trace_counts = {"prefill": 0, "decode": 0}

    def _prefill_fn(self, key):
        if key not in self._prefill:
            graphdef = self.graphdef
            _, _, n, max_new, has_audio = key

            def prefill(state, ids, mask, feats, fmask):
                self.trace_counts["prefill"] += 1
                model = nnx.merge(graphdef, state)
                b, t = ids.shape
                positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
                audio = model.encode_audio(feats, fmask) if has_audio else None
                cache = model.init_cache(b, t + max_new)
                logits, cache = model.prefill(ids, mask, positions, cache, audio)
                return jnp.repeat(logits, n, axis=0), cache.repeat(n), jnp.repeat(positions[:, -1] + 1, n)

            self._prefill[key] = jax.jit(prefill)
        return self._prefill[key]

    def _decode_fn(self, key):
        if key not in self._decode:
            graphdef = self.graphdef
            max_new = key[3]

            def decode(state, logits, cache, pos, params, eos, pad, seed_key):
                self.trace_counts["decode"] += 1
                rows = logits.shape[0]
                row_ids = jnp.arange(rows)
                out = jnp.full((rows, max_new), pad, jnp.int32)
                lps = jnp.zeros((rows, max_new), jnp.float32)
                done = jnp.zeros((rows,), bool)
                lengths = jnp.zeros((rows,), jnp.int32)

                def cond(c):
                    step, _, _, done, *_ = c
                    return (step < max_new) & ~jnp.all(done)

                def body(c):
                    step, out, lps, done, lengths, logits, cache, pos, state = c
                    tok, lp = select_tokens(logits, row_keys(seed_key, row_ids, step), params)
                    tok = jnp.where(done, pad, tok)
                    out = out.at[:, step].set(tok)
                    lps = lps.at[:, step].set(jnp.where(done, 0.0, lp))
                    lengths = lengths + (~done).astype(jnp.int32)
                    done = done | jnp.isin(tok, eos)
                    # The parameters ride in the loop carry so the module is built at the body's trace level.
                    logits, cache = nnx.merge(graphdef, state).decode(tok, pos, cache)
                    return step + 1, out, lps, done, lengths, logits, cache, pos + 1, state

                c = (jnp.int32(0), out, lps, done, lengths, logits, cache, pos, state)
                _, out, lps, _, lengths, *_ = jax.lax.while_loop(cond, body, c)
                return out, lps, lengths

            self._decode[key] = jax.jit(decode)
        return self._decode[key]

    def generate(self, input_ids, *, input_features=None, feature_attention_mask=None, num_samples: int = 1,
                 max_new_tokens: int, params: SamplingParams | None = None, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, eos_token_id: int | Sequence[int], pad_token_id: int,
                 seed: int = 0) -> Output:
        """Samples ``num_samples`` continuations of each left-padded prompt (see module docstring)."""
        ids = jnp.asarray(input_ids, jnp.int32)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
        if num_samples < 1 or max_new_tokens < 1:
            raise ValueError(f"num_samples={num_samples} and max_new_tokens={max_new_tokens} must be >= 1")
        b, t = ids.shape
        mask = (ids != pad_token_id).astype(jnp.int32)
        has_audio = input_features is not None
        feats = jnp.asarray(input_features, jnp.float32) if has_audio else jnp.zeros((b, 1, 1), jnp.float32)
        fmask = (jnp.asarray(feature_attention_mask, jnp.int32) if feature_attention_mask is not None
                 else jnp.ones(feats.shape[::2], jnp.int32))
        key = (b, t, num_samples, max_new_tokens, has_audio)
        logits, cache, pos = self._prefill_fn(key)(self.state, ids, mask, feats, fmask)
        rows = b * num_samples
        if params is None:
            params = SamplingParams.make(rows, temperature, top_k, top_p)
        elif params.temperature_b.shape[0] == b and num_samples > 1:
            params = SamplingParams(*(jnp.repeat(x, num_samples) for x in params))
        eos = jnp.asarray(np.atleast_1d(eos_token_id), jnp.int32)
        out, lps, lengths = self._decode_fn(key)(self.state, logits, cache, pos, params, eos,
                                                 jnp.int32(pad_token_id), jax.random.key(seed))
        shape = (b, num_samples)
        return Output(out.reshape(*shape, max_new_tokens), lps.reshape(*shape, max_new_tokens), lengths.reshape(shape))


_ENGINES: dict[int, tuple[Any, Engine]] = {}


def engine_for(model: nnx.Module) -> Engine:
    """One engine (and its compiled programs) per live model object."""
    entry = _ENGINES.get(id(model))
    if entry is None or entry[0] is not model:
        entry = (model, Engine(model))
        _ENGINES[id(model)] = entry
    return entry[1]


def generate(model: nnx.Module, input_ids, *, input_features=None, feature_attention_mask=None, num_samples: int = 1,
             max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             eos_token_id: int | Sequence[int], pad_token_id: int, seed: int = 0) -> jax.Array:
    """Contract 4: int32 ``[B, num_samples, max_new_tokens]``, padded after the end token."""
    return engine_for(model).generate(
        input_ids, input_features=input_features, feature_attention_mask=feature_attention_mask,
        num_samples=num_samples, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        eos_token_id=eos_token_id, pad_token_id=pad_token_id, seed=seed,
    ).tokens

"""The generation engine: encode audio and prefill once per prompt, decode N samples in one while_loop.

``prefill`` runs the audio encoder and the prompt through the model once for the ``B`` prompts and
returns a :class:`~cogito_jax.models.attention.SampleCache`: the prompt's keys/values once per prompt,
shared by its ``N`` rows (rows ``b*N .. b*N+N-1`` belong to prompt ``b``), plus empty per-row slots
for the generated tokens. ``decode`` is one ``lax.while_loop`` that stops when every row has emitted
an end token or ``max_new_tokens`` is reached. Each (batch, prompt length, samples, max_new_tokens,
audio) shape compiles once and is cached; the driver buckets shapes so a long job compiles a handful
of programs. Sampling settings are per-row arrays, so greedy and sampled rows share one program.

What a decode step does, and nothing more: the decoder layers' weights are sliced out of their stacked
array once per call, before the loop (``unstack_layers``: XLA materialises a slice that feeds a matrix
product, so slicing inside the loop copies every layer's weights at every step; the price is a second copy
of the layer weights for the duration of the call, so by default it is done where that copy takes under a
quarter of a device's memory, always on CPU); each layer's cache is its own buffer in the loop carry,
updated in place; the uniform numbers for every (row, step) are drawn before the loop in one batch.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cogito_jax.models.attention import SampleCache
from cogito_jax.sampling.strategies import SamplingParams, select_tokens_u, uniforms


class Output(NamedTuple):
    tokens: jax.Array  # int32 [B, N, max_new_tokens], pad after the end token
    logprobs: jax.Array  # float32 [B, N, max_new_tokens], log-prob of each emitted token at the sampling
    # temperature (log softmax(logits / T), the raw model's when greedy; 0 after end)
    lengths: jax.Array  # int32 [B, N], emitted tokens including the end token


class Engine:
    """Compiled prefill / decode programs for one model."""

    def __init__(self, model: nnx.Module, unstack_layers: bool | None = None):
        self.graphdef, self.state = nnx.split(model)
        self.unstack_layers = unstack_fits(model) if unstack_layers is None else unstack_layers
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
                logits, cache = model.prefill(ids, mask, positions, model.init_cache(b, t), audio)
                cache = SampleCache.from_prompt(cache, n, max_new)
                return jnp.repeat(logits, n, axis=0), cache, jnp.repeat(positions[:, -1] + 1, n)

            self._prefill[key] = jax.jit(prefill)
        return self._prefill[key]

    def _decode_fn(self, key):
        if key not in self._decode:
            graphdef, unstack = self.graphdef, self.unstack_layers
            max_new = key[3]

            def decode(state, logits, cache, pos, params, eos, pad, seed_key):
                self.trace_counts["decode"] += 1
                rows = logits.shape[0]
                out = jnp.full((rows, max_new), pad, jnp.int32)
                lps = jnp.zeros((rows, max_new), jnp.float32)
                done = jnp.zeros((rows,), bool)
                lengths = jnp.zeros((rows,), jnp.int32)
                u_bs = uniforms(seed_key, jnp.arange(rows), max_new)
                layer_graph = layer_states = None
                if unstack:  # sliced once here, outside the loop
                    layers = nnx.merge(graphdef, state).llm.unstack_layers()
                    layer_graph, layer_states = nnx.graphdef(layers[0]), [nnx.state(x) for x in layers]

                def cond(c):
                    step, _, _, done, *_ = c
                    return (step < max_new) & ~jnp.all(done)

                def body(c):
                    step, out, lps, done, lengths, logits, cache, pos, state, layer_states = c
                    u_b = jax.lax.dynamic_index_in_dim(u_bs, step, axis=1, keepdims=False)
                    tok, lp = select_tokens_u(logits, u_b, params)
                    tok = jnp.where(done, pad, tok)
                    out = jax.lax.dynamic_update_index_in_dim(out, tok, step, axis=1)
                    lps = jax.lax.dynamic_update_index_in_dim(lps, jnp.where(done, 0.0, lp), step, axis=1)
                    lengths = lengths + (~done).astype(jnp.int32)
                    done = done | jnp.isin(tok, eos)
                    # Parameters ride in the loop carry so the modules are built at the body's trace level.
                    llm = nnx.merge(graphdef, state).llm
                    blocks = [nnx.merge(layer_graph, s) for s in layer_states] if unstack else None
                    logits, cache = llm.decode(tok, pos, cache, blocks)
                    return step + 1, out, lps, done, lengths, logits, cache, pos + 1, state, layer_states

                c = (jnp.int32(0), out, lps, done, lengths, logits, cache, pos, state, layer_states)
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


def unstack_fits(model: nnx.Module, fraction: float = 0.25) -> bool:
    """Whether one device's share of the decoder layers' weights is under ``fraction`` of its memory (a device
    that reports no limit, the CPU, always fits)."""
    leaves = jax.tree.leaves(nnx.state(model.llm.layers))
    # This process's own device: on a multi-process job ``jax.devices()[0]`` may belong to another host.
    limit = (leaves[0].addressable_shards[0].device.memory_stats() or {}).get("bytes_limit")
    if limit is None:
        return True
    return sum(x.addressable_shards[0].data.nbytes for x in leaves) < fraction * limit


_ENGINES: dict[int, Engine] = {}


def engine_for(model: nnx.Module) -> Engine:
    """One engine (and its compiled programs) per live model object; it goes when the model is collected, so a
    job that loads model after model (self-distillation rounds) does not keep the old ones' weights."""
    key = id(model)
    if key not in _ENGINES:
        _ENGINES[key] = Engine(model)
        weakref.finalize(model, _ENGINES.pop, key, None)
    return _ENGINES[key]


def generate(model: nnx.Module, input_ids, *, input_features=None, feature_attention_mask=None, num_samples: int = 1,
             max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             eos_token_id: int | Sequence[int], pad_token_id: int, seed: int = 0) -> jax.Array:
    """Contract 4: int32 ``[B, num_samples, max_new_tokens]``, padded after the end token."""
    return engine_for(model).generate(
        input_ids, input_features=input_features, feature_attention_mask=feature_attention_mask,
        num_samples=num_samples, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        eos_token_id=eos_token_id, pad_token_id=pad_token_id, seed=seed,
    ).tokens

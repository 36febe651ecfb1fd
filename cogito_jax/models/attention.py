"""Attention: grouped-query dot-product attention with causal / padding / segment masks and a KV cache.

Implementations (``impl``): ``"xla"`` (reference einsum path, float32 softmax, any backend),
``"dot_product_attention"`` (``jax.nn.dot_product_attention``, XLA) and ``"cudnn"`` (the same call with
cuDNN flash attention on NVIDIA GPUs). ``"splash"`` (Pallas splash attention) is reserved for TPU and
not implemented yet: it raises ``NotImplementedError``. A masked key gets the most negative finite
logit, so a query with no visible key (a left-padding position) yields finite values, as in HF's eager
attention.

Masks are boolean ``[B, T, S]`` (:func:`attention_mask`): padding (``key_valid``), causality by
absolute index, and packed-sequence segment ids (a query sees only keys of its own segment).

KV cache (a plain pytree, carried through ``lax.while_loop`` and repeatable along the batch):
``k, v [layers, B, S, kv_heads, head_dim]`` with a static length ``S``; ``valid [B, S]`` says which
slots hold real tokens, so every row of a left-padded batch has its own length; ``index`` (int32
scalar) is the next slot to write, shared by all rows. Rotary positions are not stored: callers pass
each row's position (``cumsum(attention_mask) - 1`` for a left-padded prompt, then +1 per step).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

IMPLS = ("xla", "dot_product_attention", "cudnn", "splash")


class KVCache(NamedTuple):
    k: jax.Array  # [L, B, S, K, H]
    v: jax.Array  # [L, B, S, K, H]
    valid: jax.Array  # [B, S] bool
    index: jax.Array  # int32 scalar

    @classmethod
    def init(cls, layers: int, batch: int, length: int, kv_heads: int, head_dim: int, dtype=jnp.float32) -> KVCache:
        shape = (layers, batch, length, kv_heads, head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, length), bool),
                   jnp.zeros((), jnp.int32))

    def repeat(self, n: int) -> KVCache:
        """Each row's cache copied ``n`` times (rows ``b*n .. b*n+n-1`` are copies of row ``b``)."""
        return KVCache(jnp.repeat(self.k, n, axis=1), jnp.repeat(self.v, n, axis=1),
                       jnp.repeat(self.valid, n, axis=0), self.index)


def attention_mask(q_index_t: jax.Array, k_index_s: jax.Array, key_valid_bs: jax.Array, causal: bool = True,
                   q_segments_bt: jax.Array | None = None, k_segments_bs: jax.Array | None = None) -> jax.Array:
    """Boolean ``[B, T, S]``: key ``s`` is visible to query ``t``.

    ``q_index_t`` / ``k_index_s`` are absolute positions in the key sequence (cache slots). With
    ``causal``, a query always sees its own slot, so no row is fully masked (a padding query attends
    to itself and stays finite under every ``impl``).
    """
    mask = key_valid_bs[:, None, :]
    if causal:
        mask = mask & (k_index_s[None, None, :] <= q_index_t[None, :, None])
        mask = mask | (k_index_s[None, None, :] == q_index_t[None, :, None])
    if q_segments_bt is not None:
        mask = mask & (q_segments_bt[:, :, None] == k_segments_bs[:, None, :])
    return mask


def dot_product_attention(q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array, mask_bts: jax.Array,
                          scale: float, impl: str = "xla") -> jax.Array:
    """Grouped-query attention; ``n`` query heads share ``k`` key/value heads (``n % k == 0``)."""
    b, t, n, h = q_btnh.shape
    kv = k_bskh.shape[2]
    if n % kv:
        raise ValueError(f"{n} query heads cannot share {kv} key/value heads")
    if impl == "xla":
        q = q_btnh.reshape(b, t, kv, n // kv, h)
        logits = jnp.einsum("btkgh,bskh->bkgts", q, k_bskh, preferred_element_type=jnp.float32) * scale
        logits = jnp.where(mask_bts[:, None, None], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(v_bskh.dtype)
        out = jnp.einsum("bkgts,bskh->btkgh", probs, v_bskh)
        return out.reshape(b, t, n, h)
    if impl in ("dot_product_attention", "cudnn"):
        return jax.nn.dot_product_attention(
            q_btnh, k_bskh, v_bskh, mask=mask_bts[:, None], scale=scale,
            implementation="cudnn" if impl == "cudnn" else None,
        )
    if impl == "splash":
        raise NotImplementedError(
            f"attention impl='splash' (Pallas, TPU) is not implemented (backend: {jax.default_backend()}); "
            "use 'dot_product_attention' or 'xla'")
    raise ValueError(f"attention impl={impl!r} must be one of {IMPLS}")


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"attention impl={impl!r} must be one of {IMPLS}")
    return impl

"""A decoder-only LM (Qwen2 / Qwen3 style) with scanned layers and a KV cache.

Blocks are created with ``nnx.vmap`` (parameters stacked on a leading ``layers`` axis) and applied
with ``nnx.scan``, so compile time does not grow with depth. Per-block options: ``qkv_bias`` (Qwen2),
``qk_norm`` (Qwen3: RMSNorm over each head's q and k before rotary). The MLP is built by
``mlp_factory(cfg, rngs)`` (dense SwiGLU by default; a mixture-of-experts MLP plugs in here).
Remat policy by name: ``none``, ``full`` (recompute everything), ``dots`` (save matmul outputs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from cogito_jax import sharding
from cogito_jax.models.attention import KVCache, attention_mask, dot_product_attention
from cogito_jax.models.layers import RMSNorm, SwiGLU, apply_rope, dense, dtype_of, rope_cos_sin

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float = 1e6
    rms_eps: float = 1e-6
    qkv_bias: bool = True
    qk_norm: bool = False
    tie_embeddings: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    attn_impl: str = "xla"


class Attention(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        kw = dict(rngs=rngs, dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
        self.q_proj = dense(d, n * h, ("embed", "q_proj"), bias=cfg.qkv_bias, **kw)
        self.k_proj = dense(d, k * h, ("embed", "kv_proj"), bias=cfg.qkv_bias, **kw)
        self.v_proj = dense(d, k * h, ("embed", "kv_proj"), bias=cfg.qkv_bias, **kw)
        self.o_proj = dense(n * h, d, ("q_proj", "embed"), bias=False, **kw)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(h, cfg.rms_eps, param_dtype=dtype_of(cfg.param_dtype))
            self.k_norm = RMSNorm(h, cfg.rms_eps, param_dtype=dtype_of(cfg.param_dtype))
        self.cfg = cfg

    def __call__(self, x_btd, cos, sin, mask_bts, cache_kv=None, index=None):
        cfg = self.cfg
        b, t, _ = x_btd.shape
        q = self.q_proj(x_btd).reshape(b, t, cfg.num_heads, cfg.head_dim)
        k = self.k_proj(x_btd).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        v = self.v_proj(x_btd).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache_kv is not None:  # write this step's keys/values at `index`, attend over the whole cache
            ck, cv = cache_kv
            k = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), index, axis=1)
            cache_kv = (k, v)
        q = sharding.constrain(q, ("batch", "length", "heads", "head_dim"))
        out = dot_product_attention(q, k, v, mask_bts, cfg.head_dim ** -0.5, cfg.attn_impl)
        return self.o_proj(out.reshape(b, t, -1)), cache_kv


def dense_mlp(cfg: DecoderConfig, rngs: nnx.Rngs) -> nnx.Module:
    return SwiGLU(cfg.hidden_size, cfg.intermediate_size, rngs=rngs, dtype=dtype_of(cfg.dtype),
                  param_dtype=dtype_of(cfg.param_dtype))


class Block(nnx.Module):
    def __init__(self, cfg: DecoderConfig, mlp_factory: Callable, *, rngs: nnx.Rngs):
        pd = dtype_of(cfg.param_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_eps, param_dtype=pd)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_eps, param_dtype=pd)
        self.mlp = mlp_factory(cfg, rngs)

    def __call__(self, x, cos, sin, mask, cache_kv=None, index=None):
        h, cache_kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache_kv, index)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return sharding.constrain(x, ("batch", "length", "embed")), cache_kv


class Decoder(nnx.Module):
    """Token embedding, ``num_layers`` scanned blocks, final norm, LM head (tied or not)."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs, mlp_factory: Callable = dense_mlp):
        pd, dt = dtype_of(cfg.param_dtype), dtype_of(cfg.dtype)
        self.cfg = cfg
        self.embed_tokens = nnx.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=dt, param_dtype=pd, rngs=rngs,
            embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), ("vocab", "embed")),
        )

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_layers(rngs):
            return Block(cfg, mlp_factory, rngs=rngs)

        self.layers = make_layers(rngs)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_eps, param_dtype=pd)
        if not cfg.tie_embeddings:
            self.lm_head = dense(cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), bias=False, rngs=rngs,
                                 dtype=dt, param_dtype=pd)

    def embed(self, ids_bt: jax.Array) -> jax.Array:
        return self.embed_tokens(ids_bt)

    def logits(self, h_btd: jax.Array) -> jax.Array:
        if self.cfg.tie_embeddings:
            return self.embed_tokens.attend(h_btd)
        return self.lm_head(h_btd)

    def __call__(self, x_btd: jax.Array, positions_bt: jax.Array, *, attention_mask_bt: jax.Array | None = None,
                 segment_ids_bt: jax.Array | None = None, cache: KVCache | None = None
                 ) -> tuple[jax.Array, KVCache | None]:
        """Logits ``[B, T, V]`` for input embeddings; with ``cache`` the T new tokens are appended to it."""
        cfg = self.cfg
        b, t, _ = x_btd.shape
        cos, sin = rope_cos_sin(positions_bt, cfg.head_dim, cfg.rope_theta)
        if cache is None:
            valid = jnp.ones((b, t), bool) if attention_mask_bt is None else attention_mask_bt.astype(bool)
            idx = jnp.arange(t)
            mask = attention_mask(idx, idx, valid, True, segment_ids_bt, segment_ids_bt)
            index = None
        else:
            new_valid = jnp.ones((b, t), bool) if attention_mask_bt is None else attention_mask_bt.astype(bool)
            valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, new_valid, cache.index, axis=1)
            mask = attention_mask(cache.index + jnp.arange(t), jnp.arange(valid.shape[1]), valid, True)
            index = cache.index
        x = sharding.constrain(x_btd.astype(dtype_of(cfg.dtype)), ("batch", "length", "embed"))

        def body(x, block, kv):
            return block(x, cos, sin, mask, kv, index)

        policy = REMAT_POLICIES[cfg.remat]
        if cfg.remat != "none":
            body = nnx.remat(body, policy=policy)
        if cache is None:
            x, _ = nnx.scan(lambda x, block: (body(x, block, None)[0], None),
                            in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))(x, self.layers)
            new_cache = None
        else:
            x, (k, v) = nnx.scan(body, in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0))(
                x, self.layers, (cache.k, cache.v))
            new_cache = KVCache(k, v, valid, cache.index + t)
        return self.logits(self.norm(x)), new_cache

"""A decoder-only LM (Qwen2 / Qwen3 style) with scanned layers and a KV cache.

Blocks are created with ``nnx.vmap`` (parameters stacked on a leading ``layers`` axis) and applied
with ``nnx.scan``, so compile time does not grow with depth. Per-block options: ``qkv_bias`` (Qwen2),
``qk_norm`` (Qwen3: RMSNorm over each head's q and k before rotary), ``head_dim`` independent of
``hidden_size / num_heads``. Parameters are stored in ``param_dtype``, activations run in ``dtype``.
Remat policy by name (``layers.REMAT_POLICIES``): ``none``, ``full``, ``dots``.

Plug-in point for the MLP: ``Decoder(cfg, rngs=..., mlp_factory=f)`` builds each block's MLP as
``f(cfg, rngs)`` (default :func:`default_mlp`: a SwiGLU, or with ``num_experts > 0`` a Qwen3-MoE sparse
block, :class:`cogito_jax.models.moe.SparseMoE`, in every layer). The module is called as ``mlp(x_btd)`` and
returns either ``y_btd`` or ``(y_btd, aux)``; ``aux`` (e.g. a mixture-of-experts router's logits for a
load-balancing loss) is stacked over layers and returned by ``Decoder.__call__(..., return_aux=True)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cogito_jax import sharding
from cogito_jax.models.attention import (
    KVCache,
    PagedKV,
    SampleCache,
    SampleKV,
    attention_mask,
    check_impl,
    dot_product_attention,
    paged_attention,
    self_attention_mask,
    shared_prefix_attention,
)
from cogito_jax.models.layers import (
    RMSNorm,
    SwiGLU,
    apply_rope,
    check_remat,
    dense,
    dtype_of,
    remat,
    rope_cos_sin,
    scan_stack,
)
from cogito_jax.models.moe import DROPLESS, MoEConfig, SparseMoE, check_impl as check_moe_impl


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
    num_experts: int = 0  # > 0: every block's MLP is a sparse MoE of this many experts
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True
    # ragged (dropless: ragged_dot on TPU, padded row tiles as one batched GEMM elsewhere) | capacity (fixed expert
    # buffers) | alltoall (capacity buffers sent to the expert shards by all-to-all) | gmm (a buffer per expert
    # shard, grouped matmuls: megablox on TPU, padded row tiles elsewhere; dropless without an expert mesh axis) |
    # dense (reference)
    moe_impl: str = "ragged"
    # capacity, alltoall: slots per expert = factor x the mean load; gmm: per expert shard, likewise
    moe_capacity_factor: float = 1.25
    router_aux_loss_coef: float = 0.0  # weight of the load-balancing loss in the training loss
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat: str = "none"
    attn_impl: str = "xla"

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        dtype_of(self.dtype), dtype_of(self.param_dtype), check_remat(self.remat), check_impl(self.attn_impl)
        check_moe_impl(self.moe_impl)  # dense decoders too: a misspelt run setting is an error everywhere
        if self.num_experts:
            self.moe_config()  # validates top-k and the capacity factor

    def moe_config(self) -> MoEConfig:
        return MoEConfig(self.hidden_size, self.moe_intermediate_size, self.num_experts, self.num_experts_per_tok,
                         self.norm_topk_prob, dtype=self.dtype, param_dtype=self.param_dtype, impl=self.moe_impl,
                         capacity_factor=self.moe_capacity_factor)


class Attention(nnx.Module):
    """Rotary GQA self-attention; with a cache, this call's keys/values are written at ``index``."""

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
        q = sharding.constrain(q, ("batch", "length", "heads", "head_dim"))
        if isinstance(cache_kv, PagedKV):  # continuous batching: a paged pool shared by every live row
            out, k_pages, v_pages = paged_attention(q, k, v, cache_kv, cfg.head_dim ** -0.5)
            return self.o_proj(out.reshape(b, t, -1)), (k_pages, v_pages)
        if isinstance(cache_kv, SampleKV):  # one new token per row: shared prompt + this row's generated slots
            c = cache_kv
            k_rksh = jax.lax.dynamic_update_slice(c.k, k.swapaxes(1, 2).astype(c.k.dtype), (0, 0, c.index, 0))
            v_rksh = jax.lax.dynamic_update_slice(c.v, v.swapaxes(1, 2).astype(c.v.dtype), (0, 0, c.index, 0))
            out = shared_prefix_attention(q[:, 0], c.prompt_k.astype(q.dtype), c.prompt_v.astype(q.dtype),
                                          c.prompt_valid, k_rksh.astype(q.dtype), v_rksh.astype(q.dtype), c.index,
                                          cfg.head_dim ** -0.5)
            return self.o_proj(out.reshape(b, t, -1)), (k_rksh, v_rksh)
        if cache_kv is not None:  # write this step's keys/values at `index`, attend over the whole cache
            k_all, v_all, layer = cache_kv  # every layer's cache [L, B, S, K, H]: updated in place
            k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), (layer, 0, index, 0, 0))
            v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), (layer, 0, index, 0, 0))
            k = jax.lax.dynamic_index_in_dim(k_all, layer, 0, keepdims=False)
            v = jax.lax.dynamic_index_in_dim(v_all, layer, 0, keepdims=False)
            cache_kv = (k_all, v_all)
        out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask_bts, cfg.head_dim ** -0.5,
                                    cfg.attn_impl)
        return self.o_proj(out.reshape(b, t, -1)), cache_kv


# Generation (a KV cache or a paged pool) runs the experts dropless, whatever ``moe_impl`` training uses: the
# capacity paths (``capacity``, ``alltoall``, ``gmm`` over expert shards) drop a token past its buffer, which would
# change what the model samples. ``moe.dropless_experts`` picks expert buffers of every token for a decode step and
# padded row tiles for a prefill chunk.
GENERATION_MOE_IMPL = DROPLESS


def default_mlp(cfg: DecoderConfig, rngs: nnx.Rngs) -> nnx.Module:
    """The default ``mlp_factory``: a sparse MoE when ``num_experts > 0``, else :func:`dense_mlp`."""
    return SparseMoE(cfg.moe_config(), rngs=rngs) if cfg.num_experts else dense_mlp(cfg, rngs)


def dense_mlp(cfg: DecoderConfig, rngs: nnx.Rngs) -> nnx.Module:
    """A SwiGLU of width ``intermediate_size``."""
    return SwiGLU(cfg.hidden_size, cfg.intermediate_size, rngs=rngs, dtype=dtype_of(cfg.dtype),
                  param_dtype=dtype_of(cfg.param_dtype))


class Block(nnx.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: DecoderConfig, mlp_factory: Callable, *, rngs: nnx.Rngs):
        pd = dtype_of(cfg.param_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_eps, param_dtype=pd)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_eps, param_dtype=pd)
        self.mlp = mlp_factory(cfg, rngs)

    def __call__(self, x, cos, sin, mask, cache_kv=None, index=None):
        h, cache_kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache_kv, index)
        x = x + h
        if cache_kv is not None and isinstance(self.mlp, SparseMoE):  # generating: never drop a token
            y = self.mlp(self.post_attention_layernorm(x), impl=GENERATION_MOE_IMPL)
        else:
            y = self.mlp(self.post_attention_layernorm(x))
        y, aux = y if isinstance(y, tuple) else (y, None)
        x = sharding.constrain(x + y.astype(x.dtype), ("batch", "length", "embed"))
        return x, cache_kv, aux


class Decoder(nnx.Module):
    """Token embedding, ``num_layers`` scanned blocks, final norm, LM head (tied or not)."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs, mlp_factory: Callable = default_mlp):
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

    def unstack_layers(self) -> list[Block]:
        """The stacked blocks as ``num_layers`` modules of their own, each parameter sliced by layer.

        XLA materialises a slice that feeds a matrix product, so a decode loop that slices the stacked parameters
        inside its body copies every layer's weights at every step (seen on CPU and on an H100); slicing once
        before the loop and passing the blocks to :meth:`decode` reads them in place, at the price of a second
        copy of the layer weights while they live."""
        graphdef, state = nnx.split(self.layers)
        return [nnx.merge(graphdef, jax.tree.map(lambda x, i=i: x[i], state)) for i in range(self.cfg.num_layers)]

    def decode(self, tokens_b: jax.Array, positions_b: jax.Array, cache: SampleCache,
               layers: Sequence[Block] | None = None) -> tuple[jax.Array, SampleCache]:
        """Logits ``[R, V]`` for one new token per row (``R = B * N`` rows of a :class:`SampleCache`) at rotary
        ``positions_b``, and the cache with the tokens appended. ``layers``: :meth:`unstack_layers` made once
        outside the decode loop (default: sliced here)."""
        cfg = self.cfg
        layers = self.unstack_layers() if layers is None else layers
        cos, sin = rope_cos_sin(positions_b[:, None], cfg.head_dim, cfg.rope_theta)
        x = sharding.constrain(self.embed(tokens_b[:, None]).astype(dtype_of(cfg.dtype)), ("batch", "length", "embed"))
        ks, vs = [], []
        for i, block in enumerate(layers):  # unrolled: each layer's weights and cache are separate buffers
            x, (k, v), _ = block(x, cos, sin, None, cache.layer(i))
            ks.append(k)
            vs.append(v)
        logits = self.logits(self.norm(x))[:, 0]
        return logits, cache._replace(k=tuple(ks), v=tuple(vs), index=cache.index + 1)

    def paged(self, x_btd: jax.Array, positions_bt: jax.Array, k_pages: Sequence[jax.Array],
              v_pages: Sequence[jax.Array], view: PagedKV, layers: Sequence[Block] | None = None
              ) -> tuple[jax.Array, tuple[jax.Array, ...], tuple[jax.Array, ...]]:
        """Final hidden states ``[B, T, D]`` (normed) for new tokens ``x_btd`` at rotary ``positions_bt``, read from
        and written to a paged KV pool (one ``[pages, page_size, K, H]`` array per layer; ``view`` gives the page
        tables and slots, its ``k``/``v`` unused). Prefill chunks (``T`` tokens of one prompt) and decode steps
        (one token per row) both run here."""
        cfg = self.cfg
        layers = self.unstack_layers() if layers is None else layers
        cos, sin = rope_cos_sin(positions_bt, cfg.head_dim, cfg.rope_theta)
        x = x_btd.astype(dtype_of(cfg.dtype))
        ks, vs = [], []
        for i, block in enumerate(layers):
            x, (k, v), _ = block(x, cos, sin, None, view._replace(k=k_pages[i], v=v_pages[i]))
            ks.append(k)
            vs.append(v)
        return self.norm(x), tuple(ks), tuple(vs)

    def logits(self, h_btd: jax.Array) -> jax.Array:
        if self.cfg.tie_embeddings:
            return self.embed_tokens.attend(h_btd)
        return self.lm_head(h_btd)

    def __call__(self, x_btd: jax.Array, positions_bt: jax.Array, *, attention_mask_bt: jax.Array | None = None,
                 segment_ids_bt: jax.Array | None = None, cache: KVCache | None = None, return_aux: bool = False
                 ) -> tuple[jax.Array, KVCache | None] | tuple[jax.Array, KVCache | None, Any]:
        """Logits ``[B, T, V]`` for input embeddings ``[B, T, D]`` at rotary ``positions_bt``.

        ``attention_mask_bt`` marks real tokens (1) and padding (0); ``segment_ids_bt`` (``>= 1`` per
        packed sequence, 0 for padding) restricts attention to tokens of the same sequence. With
        ``cache``, the ``T`` new tokens are written at ``cache.index`` and attend to everything valid
        before them; the updated cache is returned (else ``None``). ``return_aux`` adds the MLPs'
        stacked auxiliary outputs.
        """
        cfg = self.cfg
        b, t, _ = x_btd.shape
        cos, sin = rope_cos_sin(positions_bt, cfg.head_dim, cfg.rope_theta)
        new_valid = jnp.ones((b, t), bool) if attention_mask_bt is None else attention_mask_bt.astype(bool)
        if cache is None:
            if segment_ids_bt is not None and attention_mask_bt is None:
                new_valid = segment_ids_bt != 0  # segment 0 is padding
            mask = self_attention_mask(new_valid, True, segment_ids_bt)
            index = valid = None
        else:
            if segment_ids_bt is not None:
                raise ValueError("segment_ids are for packed training; they cannot be used with a KV cache")
            valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, new_valid, cache.index, axis=1)
            mask = attention_mask(cache.index + jnp.arange(t), jnp.arange(valid.shape[1]), valid, True)
            index = cache.index
        x = sharding.constrain(x_btd.astype(dtype_of(cfg.dtype)), ("batch", "length", "embed"))

        if cache is None:
            def body(x, block):
                x, _, aux = block(x, cos, sin, mask)
                return x, aux

            x, aux = scan_stack(remat(body, cfg.remat), x, self.layers)
            new_cache = None
        else:
            # The whole cache rides in the carry and each layer writes only its new slots, so a decode
            # step never copies the cache; unrolled, the layer index is static and so are the slices.
            def body(carry, block):
                x, k_all, v_all, layer = carry
                x, (k_all, v_all), aux = block(x, cos, sin, mask, (k_all, v_all, layer), index)
                return (x, k_all, v_all, layer + 1), aux

            (x, k_all, v_all, _), aux = nnx.scan(body, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0), unroll=True)(
                (x, cache.k, cache.v, jnp.int32(0)), self.layers)
            new_cache = KVCache(k_all, v_all, valid, cache.index + t)
        logits = self.logits(self.norm(x))
        return (logits, new_cache, aux) if return_aux else (logits, new_cache)

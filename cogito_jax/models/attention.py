"""Attention: grouped-query dot-product attention with causal / padding / segment masks and a KV cache.

Implementations (``impl``): ``"xla"`` (reference einsum path, float32 softmax, any backend),
``"dot_product_attention"`` (``jax.nn.dot_product_attention``, XLA), ``"cudnn"`` (the same call with
cuDNN flash attention on NVIDIA GPUs) and ``"splash"`` (the Pallas splash-attention kernel for TPU, from
``jax.experimental.pallas.ops.tpu``; a program compiled for another platform runs it in Pallas' interpret
mode, slowly, which is how it is tested on CPU). A masked key gets the most negative finite logit, so a
query with no visible key (a left-padding position) yields finite values, as in HF's eager attention.

Masks are boolean ``[B, T, S]`` (:func:`attention_mask`): padding (``key_valid``), causality by
absolute index, and packed-sequence segment ids (a query sees only keys of its own segment). Splash
takes no dense mask: self-attention without a cache passes a :class:`Mask`, the dense mask together with
the same rule as segment ids plus causality (:func:`self_attention_mask`). Padding queries may then see
other padding keys, so their (unused) outputs differ between implementations; real tokens' do not. With a
KV cache (prefill and decoding) there is only a dense mask and ``"splash"`` uses the XLA path.

KV cache (a plain pytree, carried through ``lax.while_loop`` and repeatable along the batch):
``k, v [layers, B, S, kv_heads, head_dim]`` with a static length ``S``; ``valid [B, S]`` says which
slots hold real tokens, so every row of a left-padded batch has its own length; ``index`` (int32
scalar) is the next slot to write, shared by all rows. Rotary positions are not stored: callers pass
each row's position (``cumsum(attention_mask) - 1`` for a left-padded prompt, then +1 per step).

:class:`SampleCache` is the decode-time cache for ``N`` continuations of each of ``B`` prompts: the
prompt's keys/values are kept once per prompt and read by its ``N`` rows (never copied ``N`` times),
each row's generated tokens get slots of their own, and every layer is a separate array, so a decode
loop carrying it updates each layer in place and reads it without slicing a stacked buffer. The layout
is ``[rows, kv_heads, slots, head_dim]``, which the attention contractions read as they are (XLA:CPU
copies a ``[rows, slots, kv_heads, head_dim]`` operand into that order at every step).
:func:`shared_prefix_attention` attends one new token per row over both parts with one softmax.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from cogito_jax import sharding
from cogito_jax.errors import check_choice

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


class SampleCache(NamedTuple):
    """Keys/values for decoding ``N`` rows per prompt: a shared prompt part and per-row generated slots."""

    prompt_k: tuple[jax.Array, ...]  # per layer [B, K, P, H]
    prompt_v: tuple[jax.Array, ...]  # per layer [B, K, P, H]
    prompt_valid: jax.Array  # [B, P] bool
    k: tuple[jax.Array, ...]  # per layer [B * N, K, S, H]: generated tokens, row b*N + i is sample i of prompt b
    v: tuple[jax.Array, ...]  # per layer [B * N, K, S, H]
    index: jax.Array  # int32 scalar: generated tokens written so far (the next slot)

    @classmethod
    def from_prompt(cls, cache: KVCache, samples: int, length: int) -> SampleCache:
        """A filled prompt ``cache`` (every slot is prompt or padding) shared by ``samples`` rows per prompt,
        with ``length`` empty slots per row for generated tokens."""
        layers, batch, _, kv_heads, head_dim = cache.k.shape

        def per_layer(x):  # [L, B, P, K, H] -> L x [B, K, P, H]
            return tuple(jnp.swapaxes(x[i], 1, 2) for i in range(layers))

        empty = tuple(jnp.zeros((batch * samples, kv_heads, length, head_dim), cache.k.dtype) for _ in range(layers))
        return cls(per_layer(cache.k), per_layer(cache.v), cache.valid, empty, empty, jnp.zeros((), jnp.int32))

    def layer(self, i: int) -> SampleKV:
        return SampleKV(self.prompt_k[i], self.prompt_v[i], self.prompt_valid, self.k[i], self.v[i], self.index)


class SampleKV(NamedTuple):
    """Layer ``i`` of a :class:`SampleCache` (what one attention layer reads; it writes ``k``/``v`` at ``index``)."""

    prompt_k: jax.Array  # [B, K, P, H]
    prompt_v: jax.Array
    prompt_valid: jax.Array  # [B, P]
    k: jax.Array  # [B * N, K, S, H]
    v: jax.Array
    index: jax.Array


def shared_prefix_attention(q_rnh: jax.Array, prompt_k: jax.Array, prompt_v: jax.Array, prompt_valid_bp: jax.Array,
                            k_rksh: jax.Array, v_rksh: jax.Array, index: jax.Array, scale: float) -> jax.Array:
    """One query per row (``[R, n, H]``, ``R = B * N``) over its prompt's keys (``[B, K, P, H]``, visible where
    ``prompt_valid_bp``) and its own generated keys (``[R, K, S, H]``, slots ``0 .. index`` visible), one
    softmax over both; returns ``[R, n, H]``. The prompt part is one matrix product per prompt for its ``N``
    rows together, so the prompt's keys and values are read once per prompt, not once per row."""
    r, n, h = q_rnh.shape
    b, kv, p, _ = prompt_k.shape
    g, s = n // kv, k_rksh.shape[2]
    q_rkgh = q_rnh.reshape(r, kv, g, h)
    q_bkmh = q_rkgh.reshape(b, r // b, kv, g, h).transpose(0, 2, 1, 3, 4).reshape(b, kv, -1, h)  # m = (sample, g)
    lp = jnp.einsum("bkmh,bkph->bkmp", q_bkmh, prompt_k, preferred_element_type=jnp.float32) * scale
    lp = jnp.where(prompt_valid_bp[:, None, None, :], lp, jnp.finfo(jnp.float32).min)
    lp = lp.reshape(b, kv, r // b, g, p).transpose(0, 2, 1, 3, 4).reshape(r, kv, g, p)
    ls = jnp.einsum("rkgh,rksh->rkgs", q_rkgh, k_rksh, preferred_element_type=jnp.float32) * scale
    ls = jnp.where(jnp.arange(s) <= index, ls, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(jnp.concatenate([lp, ls], axis=-1), axis=-1).astype(v_rksh.dtype)
    pp = probs[..., :p].reshape(b, r // b, kv, g, p).transpose(0, 2, 1, 3, 4).reshape(b, kv, -1, p)
    out_p = jnp.einsum("bkmp,bkph->bkmh", pp, prompt_v).reshape(b, kv, r // b, g, h).transpose(0, 2, 1, 3, 4)
    out_s = jnp.einsum("rkgs,rksh->rkgh", probs[..., p:], v_rksh)
    return (out_p.reshape(r, kv, g, h) + out_s).reshape(r, n, h)


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


@functools.partial(jax.tree_util.register_dataclass, data_fields=["dense", "q_segments", "k_segments"],
                   meta_fields=["causal"])
@dataclasses.dataclass(frozen=True)
class Mask:
    """A self-attention mask twice: ``dense [B, T, S]`` bool for the XLA and cuDNN paths, and for splash the
    segment ids (int32 ``[B, T]`` / ``[B, S]``: a query sees the keys of its own segment) plus causality."""

    dense: jax.Array
    q_segments: jax.Array
    k_segments: jax.Array
    causal: bool


def self_attention_mask(key_valid_bs: jax.Array, causal: bool = True, segments_bs: jax.Array | None = None) -> Mask:
    """The :func:`attention_mask` of a sequence attending to itself (positions ``0 .. S-1``) as a :class:`Mask`.

    For splash, real tokens keep their segment (1 without packing) and padding gets segment 0, so a real query
    sees exactly the keys the dense mask shows it. Without causality (the audio encoders) every query is in
    segment 1: a padding query then sees the real keys, as in the dense mask.
    """
    s = key_valid_bs.shape[1]
    idx = jnp.arange(s)
    dense = attention_mask(idx, idx, key_valid_bs, causal, segments_bs, segments_bs)
    seg = jnp.ones_like(key_valid_bs, jnp.int32) if segments_bs is None else segments_bs.astype(jnp.int32)
    k_seg = jnp.where(key_valid_bs, seg, 0)
    return Mask(dense, k_seg if causal else seg, k_seg, causal)


def dot_product_attention(q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array, mask_bts: jax.Array | Mask,
                          scale: float, impl: str = "xla") -> jax.Array:
    """Grouped-query attention; ``n`` query heads share ``k`` key/value heads (``n % k == 0``)."""
    b, t, n, h = q_btnh.shape
    kv = k_bskh.shape[2]
    if n % kv:
        raise ValueError(f"{n} query heads cannot share {kv} key/value heads")
    if impl == "splash":
        if isinstance(mask_bts, Mask):
            return splash_attention(q_btnh, k_bskh, v_bskh, mask_bts, scale)
        impl = "xla"  # a KV cache's mask: no segment form
    if isinstance(mask_bts, Mask):
        mask_bts = mask_bts.dense
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
    raise ValueError(f"attention impl={impl!r} must be one of {IMPLS}")


SPLASH_BLOCK = 128  # sequences are padded to a multiple of this; blocks are the largest of 512/256/128 dividing them


def _block(length: int) -> int:
    return next(b for b in (512, 256, 128) if length % b == 0)


def _splash_kernel(heads: int, q_len: int, kv_len: int, causal: bool, interpret: bool):
    """Built inside each trace: its mask tables become that trace's constants (a kernel cached across traces
    would carry one trace's tracers into another); the mask analysis itself is cached by the splash module."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as sk,
        splash_attention_mask as sm,
    )

    shape = (q_len, kv_len)
    mask = sm.MultiHeadMask([sm.CausalMask(shape) if causal else sm.FullMask(shape) for _ in range(heads)])
    bq, bkv = _block(q_len), _block(kv_len)
    sizes = sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                          block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
    return sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes, interpret=interpret)


def splash_attention(q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array, mask: Mask, scale: float) -> jax.Array:
    """Self-attention through the Pallas splash kernel: sequences padded to a multiple of ``SPLASH_BLOCK`` (padded
    queries and keys get segments of their own and are cut off), one kernel call per example. Under a mesh the
    kernel runs per shard (``shard_map`` over the batch and head axes of the active sharding rules); key/value
    heads sharded unlike the query heads are repeated to one per query head first."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    if jax.default_backend() == "gpu":  # it would run interpreted, orders of magnitude slower
        raise ValueError("attention impl='splash' is the TPU kernel; on GPUs use 'cudnn' or 'dot_product_attention'")
    b, t, n, h = q_btnh.shape
    s, kv = k_bskh.shape[1], k_bskh.shape[2]
    tp, sp = -(-t // SPLASH_BLOCK) * SPLASH_BLOCK, -(-s // SPLASH_BLOCK) * SPLASH_BLOCK
    pad = lambda x, length, value=0: jnp.pad(  # noqa: E731  [B, L, ...] -> [B, length, ...]
        x, ((0, 0), (0, length - x.shape[1])) + ((0, 0),) * (x.ndim - 2), constant_values=value)
    q = pad((q_btnh * jnp.asarray(scale, q_btnh.dtype)), tp).transpose(0, 2, 1, 3)  # [B, N, Tp, H]
    k, v = (pad(x, sp).transpose(0, 2, 1, 3) for x in (k_bskh, v_bskh))  # [B, K, Sp, H]
    q_seg, k_seg = pad(mask.q_segments, tp, -1), pad(mask.k_segments, sp, -2)

    def run(q, k, v, q_seg, k_seg, interpret):
        kernel = _splash_kernel(q.shape[1], tp, sp, mask.causal, interpret)
        return jax.vmap(lambda q, k, v, qs, ks: kernel(q, k, v, segment_ids=sk.SegmentIds(qs, ks)))(
            q, k, v, q_seg, k_seg)

    def local(*args):  # the Mosaic kernel where the program is compiled for TPU (also ahead of time from a CPU)
        return jax.lax.platform_dependent(*args, tpu=functools.partial(run, interpret=False),
                                          default=functools.partial(run, interpret=True))

    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or not mesh.axis_names:
        out = local(q, k, v, q_seg, k_seg)
    else:
        spec = lambda x, names: sharding.fit_spec(sharding.logical_to_spec(names, mesh=mesh), x.shape, mesh)  # noqa: E731
        q_spec, k_spec = spec(q, ("batch", "heads", None, None)), spec(k, ("batch", "kv_heads", None, None))
        if k_spec[1] != q_spec[1]:  # each shard's query heads must find their own key/value heads
            k, v = (jnp.repeat(x, n // kv, axis=1) for x in (k, v))
        k_spec = P(q_spec[0], q_spec[1])
        seg_spec = P(q_spec[0])
        out = jax.shard_map(local, mesh=mesh, in_specs=(q_spec, k_spec, k_spec, seg_spec, seg_spec),
                            out_specs=q_spec, check_vma=False)(q, k, v, q_seg, k_seg)
    return out[:, :, :t].transpose(0, 2, 1, 3)


def check_impl(impl: str, what: str = "attn_impl") -> str:
    return check_choice(what, impl, IMPLS)


class PagedKV(NamedTuple):
    """One layer's view of a paged KV pool (continuous batching): where each row's keys/values live and which of
    them a new token sees.

    A row's tokens are stored by *slot*: slot ``s`` is offset ``s % page_size`` of page ``table[row, s //
    page_size]``. Slots ``0 .. prompt_len - 1`` hold the prompt (pages shared by the prompt's samples); the
    row's generated tokens start at slot ``gen_start`` (the first page boundary after the prompt, so no row
    writes into a shared page). Rotary positions are passed apart and do not depend on slots."""

    k: jax.Array  # [pages, page_size, K, H]
    v: jax.Array  # [pages, page_size, K, H]
    table: jax.Array  # int32 [B, W]: page of each block of page_size slots; W a multiple of block_pages
    slot: jax.Array  # int32 [B, T]: where each new token is written (-1: nowhere, to the null page 0)
    prompt_len: jax.Array  # int32 [B]
    gen_start: jax.Array  # int32 [B]
    block_pages: int  # pages read per step of the attention loop
    shared: SharedPrompts | None = None  # decode only: rows that read one prompt's keys together
    row_group: int = 0  # decode only: rows per own-slot loop group (see _own_slots); 0: all rows, one group


class SharedPrompts(NamedTuple):
    """Which decode rows read a prompt's pages together (cascade attention): entry ``e`` is one prompt (its page
    table and length) and up to ``R`` rows that attend over it; a prompt with more live rows than ``R`` takes
    several entries. Entries ``count ..`` and rows equal to ``B`` (the number of rows) are padding."""

    table: jax.Array  # int32 [E, W]: the entry's prompt pages
    length: jax.Array  # int32 [E]: prompt tokens
    rows: jax.Array  # int32 [E, R]: the rows reading it, B where none
    count: jax.Array  # int32 scalar: entries in use
    chunk: int  # entries read per step of the outer loop


def paged_attention(q_btnh: jax.Array, k_btkh: jax.Array, v_btkh: jax.Array, kv: PagedKV, scale: float
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Writes the new tokens' keys/values at their slots, then attends each query over the slots it sees:
    prompt slots before it (``< min(prompt_len, slot + 1)``) and generated slots ``gen_start .. slot``.

    Only live blocks are read: a loop over ``block_pages`` pages at a time runs up to the block that holds the
    highest slot any row writes, with an online softmax (running max and sum in float32), so the cost follows
    the longest live row, not the pool or the page table. With ``kv.shared`` (decode steps) the prompt part is
    read once per entry for the rows that share it (:func:`_shared_prompt_stats`) and each row's own loop covers
    only its generated slots, up to the longest row of its group of ``kv.row_group`` rows. A row that sees
    nothing (a free slot) gets zeros. Returns (``[B, T, n, H]``, the layer's new k, v)."""
    b, t, n, h = q_btnh.shape
    pages, page, kvh, _ = kv.k.shape
    g = n // kvh
    slot = kv.slot
    page_of = jnp.where(slot >= 0, jnp.take_along_axis(kv.table, jnp.maximum(slot, 0) // page, axis=1), 0)
    off = jnp.where(slot >= 0, slot % page, 0)
    k_pages = kv.k.at[page_of.reshape(-1), off.reshape(-1)].set(k_btkh.reshape(b * t, kvh, h).astype(kv.k.dtype))
    v_pages = kv.v.at[page_of.reshape(-1), off.reshape(-1)].set(v_btkh.reshape(b * t, kvh, h).astype(kv.v.dtype))
    if kv.shared is not None:
        if t != 1:
            raise ValueError(f"shared prompt reads are for decode steps (one token per row), got {t} tokens")
        q = q_btnh.reshape(b, kvh, g, h).astype(jnp.float32)
        m, l, acc = _shared_prompt_stats(q, k_pages, v_pages, kv.shared, kv.block_pages, scale)
        m, l, acc = _own_slots(q, k_pages, v_pages, kv, (m, l, acc), scale)
        # a free slot in a group with nothing to read has l == 0: zeros, not NaN (it writes them to the null
        # page, which other rows' masked blocks multiply by 0)
        out = (acc / jnp.where(l > 0, l, 1.0)[..., None]).reshape(b, t, n, h).astype(q_btnh.dtype)
        return out, k_pages, v_pages

    span = kv.block_pages * page
    n_blocks = (jnp.max(slot) + span) // span  # blocks up to the one holding the highest written slot
    q = q_btnh.reshape(b, t, kvh, g, h).astype(jnp.float32)
    lim = jnp.minimum(kv.prompt_len[:, None], slot + 1)  # [B, T]: prompt slots seen
    neg = jnp.finfo(jnp.float32).min

    def block(j, carry):
        pages_j = jax.lax.dynamic_slice_in_dim(kv.table, j * kv.block_pages, kv.block_pages, axis=1)  # [B, bp]
        k_j = k_pages[pages_j].reshape(b, span, kvh, h).astype(jnp.float32)
        v_j = v_pages[pages_j].reshape(b, span, kvh, h).astype(jnp.float32)
        s_idx = j * span + jnp.arange(span)  # [L]
        seen = ((s_idx[None, None, :] < lim[:, :, None])
                | ((s_idx[None, None, :] >= kv.gen_start[:, None, None]) & (s_idx[None, None, :] <= slot[:, :, None])))
        if t == 1:  # one token per row: products and sums XLA fuses into one pass over the block
            return _online_block(carry, q, k_j, v_j, seen[:, :, None, None, :], scale)
        logits = jnp.einsum("btkgh,blkh->btkgl", q, k_j) * scale
        return _online_update(carry, logits, seen[:, :, None, None, :],
                              lambda p: jnp.einsum("btkgl,blkh->btkgh", p, v_j))

    init = (jnp.full((b, t, kvh, g), neg, jnp.float32), jnp.zeros((b, t, kvh, g), jnp.float32),
            jnp.zeros((b, t, kvh, g, h), jnp.float32))
    _, l, acc = jax.lax.fori_loop(0, n_blocks, block, init)
    out = (acc / l[..., None]).reshape(b, t, n, h).astype(q_btnh.dtype)
    return out, k_pages, v_pages


def _online_update(carry, logits, seen, weighted):
    """The online softmax's state (max, sum, weighted values) after one block of ``logits [..., L]``, masked where
    ``seen`` (broadcast to them) is false; ``weighted(p)`` is the block's values weighted by ``p [..., L]``."""
    m, l, acc = carry
    logits = jnp.where(seen, logits, jnp.finfo(jnp.float32).min)
    m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
    p = jnp.exp(logits - m_new[..., None])
    corr = jnp.exp(m - m_new)
    return m_new, l * corr + jnp.sum(p, axis=-1), acc * corr[..., None] + weighted(p)


def _online_block(carry, q, k_j, v_j, seen, scale):
    """One step of the online softmax over a block: ``q [..., K, g, H]`` against ``k_j, v_j [X, L, K, H]`` (``X``
    the leading axis of ``q``) where ``seen [X, 1.., L]`` broadcasts to the logits ``[..., K, g, L]``. Products
    and sums, no matrix product."""
    extra = q.ndim - 4  # axes between X and K (the tokens of a row, or the rows of an entry)
    k_t = k_j.transpose(0, 2, 1, 3).reshape(k_j.shape[0], *(1,) * extra, k_j.shape[2], 1, k_j.shape[1], k_j.shape[3])
    v_t = v_j.transpose(0, 2, 1, 3).reshape(k_t.shape)
    logits = jnp.sum(q[..., None, :] * k_t, axis=-1) * scale
    return _online_update(carry, logits, seen, lambda p: jnp.sum(p[..., None] * v_t, axis=-2))


def _shared_prompt_stats(q_bkgh, k_pages, v_pages, sp: SharedPrompts, block_pages: int, scale: float):
    """Online-softmax state (max, sum, weighted values) of every row over its prompt's slots, each prompt's pages
    read once per entry for the entry's rows. Loops (trip counts known only on the device): over the entries in
    use, ``sp.chunk`` at a time, and over the prompt blocks of the longest prompt among them."""
    b, kvh, g, h = q_bkgh.shape
    page = k_pages.shape[1]
    e, r = sp.rows.shape
    ec, span = sp.chunk, block_pages * page
    neg = jnp.finfo(jnp.float32).min
    pad_q = jnp.concatenate([q_bkgh, jnp.zeros((1, kvh, g, h), q_bkgh.dtype)])  # row B: padding

    def chunk(c, carry):
        ents = c * ec + jnp.arange(ec)
        in_use = ents < sp.count
        ents = jnp.minimum(ents, e - 1)
        rows = jnp.where(in_use[:, None], sp.rows[ents], b)  # [ec, R]
        table, length = sp.table[ents], jnp.where(in_use, sp.length[ents], 0)
        q = pad_q[rows]  # [ec, R, K, g, H]

        def block(j, st):
            pages_j = jax.lax.dynamic_slice_in_dim(table, j * block_pages, block_pages, axis=1)  # [ec, bp]
            k_j = k_pages[pages_j].reshape(ec, span, kvh, h).astype(jnp.float32)
            v_j = v_pages[pages_j].reshape(ec, span, kvh, h).astype(jnp.float32)
            seen = (j * span + jnp.arange(span))[None, :] < length[:, None]  # [ec, L]
            return _online_block(st, q, k_j, v_j, seen[:, None, None, None, :], scale)

        init = (jnp.full((ec, r, kvh, g), neg, jnp.float32), jnp.zeros((ec, r, kvh, g), jnp.float32),
                jnp.zeros((ec, r, kvh, g, h), jnp.float32))
        m, l, acc = jax.lax.fori_loop(0, (jnp.max(length) + span - 1) // span, block, init)
        m_b, l_b, acc_b = carry
        flat = rows.reshape(-1)
        return (m_b.at[flat].set(m.reshape(-1, kvh, g), mode="drop"),
                l_b.at[flat].set(l.reshape(-1, kvh, g), mode="drop"),
                acc_b.at[flat].set(acc.reshape(-1, kvh, g, h), mode="drop"))

    init = (jnp.full((b, kvh, g), neg, jnp.float32), jnp.zeros((b, kvh, g), jnp.float32),
            jnp.zeros((b, kvh, g, h), jnp.float32))
    return jax.lax.fori_loop(0, (sp.count + ec - 1) // ec, chunk, init)


def _own_slots(q_bkgh, k_pages, v_pages, kv: PagedKV, carry, scale: float):
    """Continues each row's online softmax over its own generated slots ``gen_start .. slot`` (one new token per
    row), ``block_pages`` pages at a time from the row's first generated page.

    Rows go in groups of ``kv.row_group`` consecutive rows (all rows when 0 or when it does not divide them), and
    a group reads only up to its own longest row: one loop over (group, block) pairs, ``sum over groups of
    ceil(longest / span)`` steps of ``row_group`` rows each. With lengths long-tailed and rows ordered by length
    (the continuous engine sorts them at every host check), the short rows no longer read as many blocks as the
    longest row in the batch. Blocks past a row's last slot are masked and leave its state unchanged (the
    weights of masked slots are exactly 0), so a row goes through the same arithmetic in whichever group."""
    b, kvh, g, h = q_bkgh.shape
    page, w = k_pages.shape[1], kv.table.shape[1]
    span = kv.block_pages * page
    rg = kv.row_group if 0 < kv.row_group < b and b % kv.row_group == 0 else b
    slot = kv.slot[:, 0]
    first = kv.gen_start // page
    trips = jnp.maximum((jnp.max((slot - kv.gen_start).reshape(b // rg, rg), axis=1) + span) // span, 0)
    ends = jnp.cumsum(trips)

    def block(t, st):
        grp = jnp.sum(ends <= t).astype(jnp.int32)  # the group of loop step t, and its block j
        j = t - (ends[grp] - trips[grp])

        def rows(x):
            return jax.lax.dynamic_slice_in_dim(x, grp * rg, rg, axis=0)

        idx = jnp.minimum(rows(first)[:, None] + j * kv.block_pages + jnp.arange(kv.block_pages), w - 1)
        pages_j = jnp.take_along_axis(rows(kv.table), idx, axis=1)  # [rg, bp]
        k_j = k_pages[pages_j].reshape(rg, span, kvh, h).astype(jnp.float32)
        v_j = v_pages[pages_j].reshape(rg, span, kvh, h).astype(jnp.float32)
        seen = rows(kv.gen_start)[:, None] + j * span + jnp.arange(span) <= rows(slot)[:, None]  # [rg, L]
        new = _online_block(tuple(rows(x) for x in st), rows(q_bkgh), k_j, v_j, seen[:, None, None, :], scale)
        return tuple(jax.lax.dynamic_update_slice_in_dim(x, y, grp * rg, axis=0) for x, y in zip(st, new, strict=True))

    return jax.lax.fori_loop(0, ends[-1], block, carry)

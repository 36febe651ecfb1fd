"""Qwen3-MoE sparse MoE block (HF ``Qwen3OmniMoeThinkerTextSparseMoeBlock``) and its load-balancing loss.

Router: ``logits = x @ W_r`` -> float32 softmax -> top-k (weights renormalised to sum to 1 when
``norm_topk_prob``) -> cast to the compute dtype. Experts: SwiGLU ``down(silu(gate(x)) * up(x))``,
parameters stacked per expert: ``gate_proj, up_proj [E, D, F]``, ``down_proj [E, F, D]``.

``impl="ragged"`` (default) is dropless: the ``N * k`` (token, expert) assignments are sorted by expert,
run through a grouped matmul with per-expert group sizes (:func:`ragged_matmul`: ``jax.lax.ragged_dot`` on TPU,
the groups padded to row tiles as one batched GEMM elsewhere), unsorted and combined with the router weights.
``impl="capacity"`` gives every expert a fixed buffer of ``C = ceil(capacity_factor * N * k / E)``
slots (rounded up to a multiple of 8): assignments are scattered into ``[E, C, D]`` in token order,
the experts run as one batched matmul (dense GEMMs that every backend runs at full speed, unlike
``ragged_dot`` on GPUs), and the outputs are gathered back; an assignment past its expert's capacity
is dropped (it contributes nothing, as in GShard / Switch). With ``capacity_factor >= E / k`` no
assignment can be dropped and the result equals ``ragged``. ``impl="dense"`` runs every token through
every expert and masks (a reference for tests). Under a mesh the expert axis of the weights may be
sharded (``"experts"`` -> ``expert``); GSPMD then partitions ``ragged`` and ``capacity`` itself.
``impl="alltoall"`` makes the expert parallelism explicit (:func:`alltoall_experts`): capacity buffers of each
shard's own tokens go to the shards that hold their experts and back by ``all_to_all`` inside ``shard_map``,
so the only token traffic is the two all-to-alls; without experts on a mesh axis it is ``capacity``.
``impl="gmm"`` (:func:`gmm_experts`) is the same explicit parallelism with one buffer per expert *shard* (its
experts pool their capacity, so fewer assignments drop) and the shard's experts run as grouped matmuls over the
rows it received, sorted by expert (:func:`grouped_matmul`: the Pallas megablox kernel on TPU, which visits only
filled tiles; elsewhere the groups padded to row tiles and run as one batched GEMM); without experts on a mesh axis
it is dropless, ``ragged`` through that matmul. ``ragged_dot`` itself lowers on GPU and CPU to a masked matmul of
every row per expert, so off TPU ``gmm`` is the dropless path to train with."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental.pallas.ops.tpu import megablox
from jax.sharding import PartitionSpec as P

from cogito_jax import sharding
from cogito_jax.errors import check_choice, check_number
from cogito_jax.models.hf_weights import LINEAR
from cogito_jax.models.layers import dense, dtype_of

IMPLS = ("ragged", "capacity", "alltoall", "gmm", "dense")
DROPLESS = "dropless"  # not a training setting: what generation runs (:func:`dropless_experts`)


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    hidden_size: int  # D
    moe_intermediate_size: int  # F, per expert
    num_experts: int  # E
    num_experts_per_tok: int  # k
    norm_topk_prob: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"
    impl: str = "ragged"
    capacity_factor: float = 1.25  # impl="capacity": expert buffer = factor x the mean load

    def __post_init__(self):
        if not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ValueError(f"num_experts_per_tok={self.num_experts_per_tok} must be in [1, {self.num_experts}]")
        check_impl(self.impl), check_capacity_factor(self.capacity_factor)


def check_impl(impl: str, what: str = "moe_impl") -> str:
    return check_choice(what, impl, IMPLS)


def check_capacity_factor(factor: float, what: str = "moe_capacity_factor") -> float:
    check_number(what, factor, lambda v: v > 0, "> 0")
    return factor


def route(logits_ne: jax.Array, top_k: int, norm_topk_prob: bool) -> tuple[jax.Array, jax.Array]:
    """(weights ``[N, k]`` float32, expert ids ``[N, k]`` int32) from router logits, as HF's router."""
    probs = jax.nn.softmax(logits_ne.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, top_k)
    if norm_topk_prob:
        weights = weights / weights.sum(-1, keepdims=True)
    return weights, experts.astype(jnp.int32)


def _expert_param(shape: tuple[int, ...], axes: tuple[str, ...], param_dtype, rngs: nnx.Rngs) -> nnx.Param:
    init = nnx.with_partitioning(nnx.initializers.normal(0.02), axes)
    return nnx.Param(init(rngs.params(), shape, param_dtype))


class SparseMoE(nnx.Module):
    """Top-k routed SwiGLU experts; ``__call__`` returns the output and the router logits."""

    def __init__(self, cfg: MoEConfig, *, rngs: nnx.Rngs):
        d, f, e = cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts
        pd = dtype_of(cfg.param_dtype)
        self.router = dense(d, e, ("embed", None), bias=False, rngs=rngs, dtype=jnp.float32, param_dtype=pd)
        self.gate_proj = _expert_param((e, d, f), ("experts", "embed", "expert_mlp"), pd, rngs)
        self.up_proj = _expert_param((e, d, f), ("experts", "embed", "expert_mlp"), pd, rngs)
        self.down_proj = _expert_param((e, f, d), ("experts", "expert_mlp", "embed"), pd, rngs)
        self.cfg = cfg

    def __call__(self, x_btd: jax.Array, impl: str | None = None) -> tuple[jax.Array, jax.Array]:
        """(output ``[B, T, D]`` in the compute dtype, router logits ``[B*T, E]`` float32)."""
        cfg = self.cfg
        dt = dtype_of(cfg.dtype)
        *lead, d = x_btd.shape
        x_nd = x_btd.reshape(-1, d).astype(dt)
        logits = (x_nd @ self.router.kernel[...].astype(dt)).astype(jnp.float32)
        weights, experts = route(logits, cfg.num_experts_per_tok, cfg.norm_topk_prob)
        weights = weights.astype(dt)
        w = tuple(p[...].astype(dt) for p in (self.gate_proj, self.up_proj, self.down_proj))
        impl = impl or cfg.impl
        if impl == "ragged":
            y = grouped_experts(x_nd, experts, weights, *w, matmul=ragged_matmul)
        elif impl == "capacity":
            y = capacity_experts(x_nd, experts, weights, *w, capacity_factor=cfg.capacity_factor)
        elif impl == "alltoall":
            y = alltoall_experts(x_nd, experts, weights, *w, capacity_factor=cfg.capacity_factor)
        elif impl == "gmm":
            y = gmm_experts(x_nd, experts, weights, *w, capacity_factor=cfg.capacity_factor)
        elif impl == "dense":
            y = dense_experts(x_nd, experts, weights, *w)
        elif impl == DROPLESS:
            y = dropless_experts(x_nd, experts, weights, *w)
        else:
            raise ValueError(f"moe impl={impl!r} must be one of {IMPLS}")
        return y.reshape(*lead, d), logits


def grouped_experts(x_nd: jax.Array, experts_nk: jax.Array, weights_nk: jax.Array, gate_edf: jax.Array,
                    up_edf: jax.Array, down_efd: jax.Array, *, matmul=jax.lax.ragged_dot) -> jax.Array:
    """Dropless experts: assignments sorted by expert, ``matmul`` per group (``ragged_dot``, or
    :func:`grouped_matmul`), unsorted, weighted sum."""
    n, k = experts_nk.shape
    src = jnp.arange(n * k, dtype=jnp.int32) // k  # assignment m = token m // k, its (m % k)-th choice
    out_md = _sorted_swiglu(x_nd, src, experts_nk.reshape(-1), gate_edf, up_edf, down_efd, matmul)
    return jnp.einsum("nkd,nk->nd", out_md.reshape(n, k, -1), weights_nk.astype(out_md.dtype))


def _sorted_swiglu(rows_rd: jax.Array, src_m: jax.Array | None, ids_m: jax.Array, gate_edf: jax.Array,
                   up_edf: jax.Array, down_efd: jax.Array, matmul) -> jax.Array:
    """Assignment ``i`` is row ``src[i]`` of ``rows`` (row ``i`` when ``src`` is None) for expert ``ids[i]`` (``E``:
    for none). Sorted by expert, the SwiGLU as three grouped matmuls, the outputs back in assignment order
    ``[M, D]`` (zeros for none)."""
    num_experts = gate_edf.shape[0]
    order = jnp.argsort(ids_m, stable=True)  # assignments in expert order, those of no expert last
    inverse = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))
    group_sizes = jnp.zeros((num_experts,), jnp.int32).at[ids_m].add(1, mode="drop")
    xs_md = _permute(rows_rd, order, inverse) if src_m is None else rows_rd[src_m[order]]
    h = jax.nn.silu(matmul(xs_md, gate_edf, group_sizes)) * matmul(xs_md, up_edf, group_sizes)
    return _permute(matmul(h, down_efd, group_sizes), inverse, order)


def _rows(x: jax.Array, idx: jax.Array) -> jax.Array:
    return x.at[idx].get(mode="fill", fill_value=0)


@jax.custom_vjp
def _permute(x: jax.Array, perm: jax.Array, inverse: jax.Array) -> jax.Array:
    """``x[perm]`` (zeros where ``perm`` is out of range) for an index map that takes each row of ``x`` at most
    once, with ``inverse`` the row's position in the result (out of range for a row not taken); its gradient is the
    gather by ``inverse`` (what a gather's transpose, a scatter-add, would compute, without the scatter)."""
    return _rows(x, perm)


def _permute_fwd(x, perm, inverse):
    return _rows(x, perm), (perm, inverse)


def _permute_bwd(res, g):
    perm, inverse = res
    return _rows(g, inverse), None, None


_permute.defvjp(_permute_fwd, _permute_bwd)


GMM_TILE_ROWS = 512  # the megablox kernel's row tile; each tile reads its expert's weights once


def _gmm_tile(dim: int, widest: int) -> int:
    """A megablox tile along a width: the widest of 1024 / 768 / 512 / 384 / 256 / 128 up to ``widest`` that divides
    it, the whole width when it is narrower than 128, else 128 (the kernel masks the remainder)."""
    return next((t for t in (1024, 768, 512, 384, 256, 128) if t <= widest and dim % t == 0), dim if dim < 128 else 128)


def _gmm_tiling(m: int, k: int, n: int) -> tuple[int, int, int]:
    """Tiles for one megablox call, asked per call (the gradients' calls swap the contracting and output widths).
    Rows of 512 and outputs up to 1024 wide: on the recipe's v5p-64 step one layer's experts then cost 24 GB of
    HBM traffic instead of 31 GB at the kernel's default 128 x 128 x 128 (XLA's cost analysis of the compiled
    kernels); 2048-wide outputs overflow the 16 MiB of VMEM a kernel may take."""
    return GMM_TILE_ROWS, _gmm_tile(k, 512), _gmm_tile(n, 1024)


def _megablox(lhs_md: jax.Array, rhs_edf: jax.Array, group_sizes: jax.Array, interpret: bool = False) -> jax.Array:
    """The Pallas TPU grouped matmul (megablox ``gmm``, forward and both gradients as kernels). It needs the rows
    in whole tiles and leaves rows past the groups unwritten: rows are padded, and masked on the way in (their
    gradient, which the kernel does not write either) and out, so the result is ``ragged_dot``'s. ``interpret``
    runs the kernel in Pallas' interpreter (any platform; for tests)."""
    m = lhs_md.shape[0]
    pad = -m % GMM_TILE_ROWS
    valid = (jnp.arange(m + pad) < jnp.sum(group_sizes))[:, None]
    lhs = jnp.where(valid, jnp.pad(lhs_md, ((0, pad), (0, 0))), 0)
    out = megablox.gmm(lhs, rhs_edf, group_sizes, lhs_md.dtype, _gmm_tiling, None, None, False, interpret)
    return jnp.where(valid, out, 0)[:m]


def tile_rows(rows: int, groups: int) -> int:
    """Rows per tile of :func:`tiled_grouped_matmul`: the mean group's size rounded up to a power of two, in
    [8, 512]. Every non-empty group wastes up to a tile of padding, and every tile copies its group's weights, so
    a tile near the mean group balances the two (512 at the recipe's 4 x 2048 tokens x top-8 over 128 experts)."""
    return min(512, max(8, 1 << (-(-rows // groups) - 1).bit_length()))


def tiled_grouped_matmul(lhs_md: jax.Array, rhs_edf: jax.Array, group_sizes: jax.Array,
                         tile: int | None = None) -> jax.Array:
    """``ragged_dot``'s result as one batched GEMM over fixed-size row tiles: each group's rows are padded to whole
    tiles of ``tile`` rows (:func:`tile_rows` by default), every tile takes its group's weights, and the tiles run
    as ``[tiles, tile, D] x [tiles, D, F]``, a dense batched matmul that every backend runs at full speed. Static
    shapes: ``ceil(M / tile) + min(E, M)`` tiles bound the padded groups, whatever the routing; tiles past the
    groups compute on zeros. The rows go in and out by gathers whose gradients are gathers."""
    m, d = lhs_md.shape
    num_groups = rhs_edf.shape[0]
    t = tile or tile_rows(m, num_groups)
    tiles = -(-m // t) + min(num_groups, m)
    sizes = group_sizes.astype(jnp.int32)
    padded = -(-sizes // t) * t
    end, padded_end = jnp.cumsum(sizes), jnp.cumsum(padded)
    start, padded_start = end - sizes, padded_end - padded

    def group_of(ends: jax.Array, idx: jax.Array) -> jax.Array:  # the group holding each index (the last past all)
        return jnp.minimum(jnp.searchsorted(ends, idx, side="right"), num_groups - 1).astype(jnp.int32)

    pos = jnp.arange(tiles * t, dtype=jnp.int32)  # padded positions
    group = group_of(padded_end, pos)
    offset = pos - padded_start[group]
    src = jnp.where((pos < padded_end[-1]) & (offset < sizes[group]), start[group] + offset, m)  # m: padding
    row = jnp.arange(m, dtype=jnp.int32)
    row_group = group_of(end, row)
    back = jnp.where(row < end[-1], padded_start[row_group] + row - start[row_group], tiles * t)  # past the groups
    x = _permute(lhs_md, src, back).reshape(tiles, t, d)
    out = jnp.einsum("tmd,tdf->tmf", x, rhs_edf[group.reshape(tiles, t)[:, 0]])
    return _permute(out.reshape(tiles * t, rhs_edf.shape[-1]), back, src)


def grouped_matmul(lhs_md: jax.Array, rhs_edf: jax.Array, group_sizes: jax.Array) -> jax.Array:
    """``jax.lax.ragged_dot``'s result (rows grouped in order, ``group_sizes[e]`` rows times ``rhs[e]``, zeros past
    the groups), per platform: on TPU the megablox kernel, which visits only the tiles that hold a group's rows;
    elsewhere the padded tiles of :func:`tiled_grouped_matmul` as one batched GEMM. ``ragged_dot`` itself lowers
    on GPU and CPU to one masked matmul of every row per group (``E`` times the FLOPs), which ran out of memory at
    the recipe's 4 x 2048 tokens on an H200 and at 1 x 2048 on an H100. The choice is made when the program is
    lowered for its platform."""
    return jax.lax.platform_dependent(lhs_md, rhs_edf, group_sizes, tpu=_megablox, default=tiled_grouped_matmul)


# Generation's expert buffers (every token in every expert's buffer) up to this many tokens per expert on an
# accelerator, the padded tiles past it; on CPU up to one. Per expert matrix of D x F weights, the buffers cost
# ``2 E N D F`` FLOPs and one read of the weights, the tiles about ``2 (N k + E t) D F`` FLOPs and three passes over
# ``N k / t + E`` copies of the weights (gathered, written, read by the GEMM). At an H100's 295 FLOPs per byte of
# HBM (989 TFLOP/s, 3.35 TB/s) the buffers are cheaper up to about 16 tokens per expert, at a v5p's 166 up to
# about 8; on the 2-core CPU they were faster at 1 (64 tokens of 64 experts, top-8, hidden 512, forward and
# backward in bf16: 128 ms against 267 ms as tiles) and slower at 8 (562 ms against 363 ms;
# bench/results/moe_layer_cpu_decode_shapes.json).
BUFFER_TOKENS_PER_EXPERT = 8


def dropless_experts(x_nd: jax.Array, experts_nk: jax.Array, weights_nk: jax.Array, gate_edf: jax.Array,
                     up_edf: jax.Array, down_efd: jax.Array) -> jax.Array:
    """No assignment dropped, the cheaper of two forms for the shape (pure XLA; with the experts sharded GSPMD
    partitions the buffers by expert, while the tiles' weight gather likely gathers every expert's weights): with
    few tokens for the experts (a decode step; :data:`BUFFER_TOKENS_PER_EXPERT`), every expert gets a buffer of
    all ``N`` tokens (an expert takes a token at most once, so none can overflow) and the experts run as one
    batched matmul that reads each expert's weights once; with more (a prefill chunk),
    :func:`tiled_grouped_matmul` over the assignments sorted by expert. ``ragged_dot`` would compute every
    assignment with every expert on GPU and CPU: at 64 tokens, top-8 of 64 experts, those took 535 ms on the 2-core
    CPU (forward and backward), the tiles 267 ms and the buffers 128 ms; at 512 tokens 3.19 s, 363 ms and 562 ms."""
    n, k = experts_nk.shape
    num_experts = gate_edf.shape[0]
    args = (x_nd, experts_nk, weights_nk, gate_edf, up_edf, down_efd)
    buffers = functools.partial(capacity_experts, capacity_factor=num_experts / k)
    tiles = functools.partial(grouped_experts, matmul=tiled_grouped_matmul)
    if n <= num_experts:
        return buffers(*args)
    if n <= BUFFER_TOKENS_PER_EXPERT * num_experts:
        return jax.lax.platform_dependent(*args, cpu=tiles, default=buffers)
    return tiles(*args)


def ragged_matmul(lhs_md: jax.Array, rhs_edf: jax.Array, group_sizes: jax.Array) -> jax.Array:
    """``moe_impl="ragged"``'s grouped matmul: ``jax.lax.ragged_dot`` on TPU (which GSPMD partitions when the
    experts are sharded), the padded row tiles of :func:`tiled_grouped_matmul` elsewhere, where ``ragged_dot``
    lowers to a masked matmul of every row per expert."""
    return jax.lax.platform_dependent(lhs_md, rhs_edf, group_sizes, tpu=jax.lax.ragged_dot,
                                      default=tiled_grouped_matmul)


def expert_capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float,
                    per_token: int = 1) -> int:
    """Slots per expert (or per group of experts): ``capacity_factor`` x the mean load ``N * k / E``, rounded up
    to a multiple of 8, never more than ``N * per_token`` (an expert gets each token at most once; a group of
    ``g`` experts at most ``min(k, g)`` times)."""
    mean = num_tokens * top_k / num_experts
    return max(1, min(num_tokens * per_token, -(-int(math.ceil(capacity_factor * mean)) // 8) * 8))


def _dispatch(x_nd: jax.Array, experts_nk: jax.Array, num_experts: int, cap: int) -> tuple[jax.Array, jax.Array]:
    """Scatters the assignments into expert buffers ``[E, C, D]`` in token order; returns them and each
    assignment's slot (``E * C`` for an assignment past its expert's capacity, which the scatter drops).
    ``experts`` may be any bucket ids below ``num_experts`` (e.g. the shard that holds each expert)."""
    n, k = experts_nk.shape
    flat_e = experts_nk.reshape(-1)  # assignment m = token m // k, its (m % k)-th choice
    order = jnp.argsort(flat_e, stable=True)  # token order inside each expert
    sizes = jnp.zeros((num_experts,), jnp.int32).at[flat_e].add(1)
    starts = jnp.cumsum(sizes) - sizes
    rank = jnp.zeros_like(flat_e).at[order].set(jnp.arange(n * k, dtype=flat_e.dtype) - starts[flat_e[order]])
    slot = jnp.where(rank < cap, flat_e * cap + rank, num_experts * cap)
    buf = jnp.zeros((num_experts * cap, x_nd.shape[-1]), x_nd.dtype).at[slot].set(jnp.repeat(x_nd, k, axis=0),
                                                                                 mode="drop")
    return buf.reshape(num_experts, cap, -1), slot


def _combine(out_ecd: jax.Array, slot: jax.Array, weights_nk: jax.Array) -> jax.Array:
    """The experts' outputs back at their tokens, weighted by the router (dropped assignments give zero)."""
    num_experts, cap, d = out_ecd.shape
    n, k = weights_nk.shape
    out_md = jnp.where((slot < num_experts * cap)[:, None],
                       out_ecd.reshape(-1, d)[jnp.minimum(slot, num_experts * cap - 1)], 0)
    return jnp.einsum("nkd,nk->nd", out_md.reshape(n, k, d), weights_nk.astype(out_md.dtype))


def _swiglu(buf: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array) -> jax.Array:
    """Each expert on its buffer: ``[..., E, C, D]`` with weights ``[E, D, F]``, ``[E, F, D]``."""
    h = jax.nn.silu(jnp.einsum("...ecd,edf->...ecf", buf, gate)) * jnp.einsum("...ecd,edf->...ecf", buf, up)
    return jnp.einsum("...ecf,efd->...ecd", h, down)


def capacity_experts(x_nd: jax.Array, experts_nk: jax.Array, weights_nk: jax.Array, gate_edf: jax.Array,
                     up_edf: jax.Array, down_efd: jax.Array, *, capacity_factor: float) -> jax.Array:
    """Experts over fixed-size buffers ``[E, C, D]`` (see the module docstring); overflow is dropped."""
    n, k = experts_nk.shape
    num_experts = gate_edf.shape[0]
    buf, slot = _dispatch(x_nd, experts_nk, num_experts, expert_capacity(n, k, num_experts, capacity_factor))
    return _combine(_swiglu(buf, gate_edf, up_edf, down_efd), slot, weights_nk)


def _mesh_axes(entry: Any) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _expert_parallel(x_nd: jax.Array, gate_edf: jax.Array):
    """How the current mesh and rules place the experts: (mesh, expert mesh axes, their size, the tokens' spec
    entry, the mesh axes of the experts' hidden width or None). No expert axes without a mesh or with experts on
    no mesh axis."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or not bool(mesh.axis_names):
        return mesh, (), 1, None, None
    spec = lambda names, shape: sharding.fit_spec(sharding.logical_to_spec(names, mesh=mesh), shape, mesh)  # noqa: E731
    ep = _mesh_axes(spec(("experts",), gate_edf.shape[:1])[0])
    tokens = spec(("batch", None), x_nd.shape)[0]
    hidden = _mesh_axes(spec((None, "expert_mlp"), gate_edf.shape[1:])[1])
    hidden = tuple(a for a in hidden if a not in _mesh_axes(tokens) and a not in ep) or None
    return mesh, ep, math.prod(mesh.shape[a] for a in ep), tokens, hidden


def _on_expert_shards(local, placement, x_nd, experts_nk, weights_nk, gate_edf, up_edf, down_efd) -> jax.Array:
    """``local(x, experts, weights, gate, up, down)`` inside ``shard_map``: each shard's tokens, its experts."""
    mesh, ep, _, tokens, hidden = placement
    t = P(tokens)
    return jax.shard_map(local, mesh=mesh, in_specs=(t, t, t, P(ep, None, hidden), P(ep, None, hidden),
                                                     P(ep, hidden, None)), out_specs=t, check_vma=False)(
        x_nd, experts_nk, weights_nk, gate_edf, up_edf, down_efd)


def alltoall_experts(x_nd: jax.Array, experts_nk: jax.Array, weights_nk: jax.Array, gate_edf: jax.Array,
                     up_edf: jax.Array, down_efd: jax.Array, *, capacity_factor: float) -> jax.Array:
    """Explicit expert parallelism (GShard): inside ``shard_map`` each shard fills capacity buffers for its own
    tokens, ``all_to_all`` over the expert mesh axes sends every expert's buffer to the shard that holds that
    expert, the shard runs its experts on what all shards sent, and a second ``all_to_all`` brings the outputs
    home. The capacity is per shard (``capacity_factor`` x the shard's mean load). An expert hidden width
    sharded (``expert_mlp``, e.g. over ``tensor``) gives partial outputs, summed over that axis. Without a mesh,
    or with experts on no mesh axis, this is :func:`capacity_experts`."""
    num_experts = gate_edf.shape[0]
    placement = _expert_parallel(x_nd, gate_edf)
    _, ep, ep_size, _, hidden = placement
    if not ep:
        return capacity_experts(x_nd, experts_nk, weights_nk, gate_edf, up_edf, down_efd,
                                capacity_factor=capacity_factor)

    def local(x, experts, weights, gate, up, down):
        n, k = experts.shape
        buf, slot = _dispatch(x, experts, num_experts, expert_capacity(n, k, num_experts, capacity_factor))
        buf = buf.reshape(ep_size, num_experts // ep_size, *buf.shape[1:])  # [shard, its experts, C, D]
        got = jax.lax.all_to_all(buf, ep, 0, 0, tiled=True)  # [sender shard, my experts, C, D]
        out = _swiglu(got, gate, up, down)
        if hidden:
            out = jax.lax.psum(out, hidden)
        back = jax.lax.all_to_all(out, ep, 0, 0, tiled=True)  # [expert shard, its experts, C, D]
        return _combine(back.reshape(num_experts, *back.shape[2:]), slot, weights)

    return _on_expert_shards(local, placement, x_nd, experts_nk, weights_nk, gate_edf, up_edf, down_efd)


def gmm_experts(x_nd: jax.Array, experts_nk: jax.Array, weights_nk: jax.Array, gate_edf: jax.Array,
                up_edf: jax.Array, down_efd: jax.Array, *, capacity_factor: float) -> jax.Array:
    """Explicit expert parallelism with grouped matmuls (:func:`grouped_matmul`: the megablox kernel on TPU).
    Inside ``shard_map`` each shard puts its own assignments, in token order, into one buffer per expert shard of
    ``capacity_factor`` x the mean load of a shard (``N * k / S``; an assignment past it is dropped), with each
    row's expert among that shard's; ``all_to_all`` sends the buffers and the expert ids; the receiving shard
    sorts what it got by expert and runs its experts as grouped matmuls over the filled rows only; a second
    ``all_to_all`` brings the outputs home. A shard's buffer pools its ``E / S`` experts, so at the same factor
    fewer assignments are dropped than with a buffer per expert (``alltoall``), and with ``capacity_factor >=
    S * min(k, E / S) / k`` none can be. The experts' hidden width sharded gives partial outputs, summed over its
    axes. Without a mesh, or with experts on no mesh axis, this is :func:`grouped_experts` (dropless) through
    :func:`grouped_matmul`."""
    num_experts = gate_edf.shape[0]
    placement = _expert_parallel(x_nd, gate_edf)
    _, ep, ep_size, _, hidden = placement
    if not ep:
        return grouped_experts(x_nd, experts_nk, weights_nk, gate_edf, up_edf, down_efd, matmul=grouped_matmul)
    per_shard = num_experts // ep_size

    def local(x, experts, weights, gate, up, down):
        n, k = experts.shape
        d = x.shape[-1]
        cap = expert_capacity(n, k, ep_size, capacity_factor, per_token=min(k, per_shard))
        buf, slot = _dispatch(x, experts // per_shard, ep_size, cap)  # [expert shard, C, D]
        ids = jnp.full((ep_size * cap,), per_shard, jnp.int32).at[slot].set(
            (experts % per_shard).reshape(-1), mode="drop")  # each row's expert on its shard; per_shard: empty
        got = jax.lax.all_to_all(buf, ep, 0, 0, tiled=True).reshape(-1, d)  # [sender shard x C, D]
        got_ids = jax.lax.all_to_all(ids.reshape(ep_size, cap), ep, 0, 0, tiled=True).reshape(-1)
        out = _sorted_swiglu(got, None, got_ids, gate, up, down, grouped_matmul)
        if hidden:
            out = jax.lax.psum(out, hidden)
        back = jax.lax.all_to_all(out.reshape(ep_size, cap, d), ep, 0, 0, tiled=True)  # [expert shard, C, D]
        return _combine(back, slot, weights)

    return _on_expert_shards(local, placement, x_nd, experts_nk, weights_nk, gate_edf, up_edf, down_efd)


def dense_experts(x_nd: jax.Array, experts_nk: jax.Array, weights_nk: jax.Array, gate_edf: jax.Array,
                  up_edf: jax.Array, down_efd: jax.Array) -> jax.Array:
    """Every token through every expert, combined with zero weight for unselected experts (reference)."""
    num_experts = gate_edf.shape[0]
    combine_ne = jnp.einsum("nk,nke->ne", weights_nk, jax.nn.one_hot(experts_nk, num_experts, dtype=weights_nk.dtype))
    h = jax.nn.silu(jnp.einsum("nd,edf->enf", x_nd, gate_edf)) * jnp.einsum("nd,edf->enf", x_nd, up_edf)
    return jnp.einsum("enf,efd,ne->nd", h, down_efd, combine_ne)


def load_balancing_loss(router_logits: jax.Array | Sequence[jax.Array], num_experts: int, top_k: int,
                        attention_mask: jax.Array | None = None) -> jax.Array:
    """Switch-style aux loss, as HF's ``load_balancing_loss_func``.

    ``router_logits``: ``[L, ..., E]`` (layers first, the rest flattened to tokens) or a sequence of
    per-layer ``[..., E]``. ``attention_mask`` (any shape with the tokens' count, e.g. ``[B, T]``)
    excludes padding. Returns ``E * sum_e f_e * P_e`` with ``f_e`` the mean number of top-k assignments
    per token and ``P_e`` the mean router probability, both over all layers' (unmasked) tokens.
    """
    return balance_loss(*routing_stats(router_logits, num_experts, top_k, attention_mask), num_experts)


def balance_loss(assigned: jax.Array, probs: jax.Array, rows: jax.Array, num_experts: int) -> jax.Array:
    """``E * sum_e (assigned_e / rows) * (probs_e / rows)`` from :func:`routing_stats`' sums."""
    return num_experts * jnp.sum((assigned / rows) * (probs / rows))


def routing_stats(router_logits: jax.Array | Sequence[jax.Array], num_experts: int, top_k: int,
                  attention_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The sums behind :func:`load_balancing_loss`, which add up over micro-batches: top-k assignments per expert
    ``[E]`` (no gradient), router probability per expert ``[E]``, and rows (layers x unmasked tokens)."""
    if isinstance(router_logits, (list, tuple)):
        logits = jnp.stack([jnp.reshape(x, (-1, num_experts)) for x in router_logits])
    else:
        logits = jnp.reshape(router_logits, (router_logits.shape[0], -1, num_experts))
    layers, n, _ = logits.shape
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    _, experts = jax.lax.top_k(probs, top_k)
    counts = jax.nn.one_hot(experts, num_experts, dtype=jnp.float32).sum(-2)  # [L, N, E]
    mask = jnp.ones((n,), jnp.float32) if attention_mask is None else attention_mask.reshape(-1).astype(jnp.float32)
    if mask.shape[0] != n:
        raise ValueError(f"attention_mask has {mask.shape[0]} tokens, router logits have {n}")
    return jnp.einsum("lne,n->e", counts, mask), jnp.einsum("lne,n->e", probs, mask), layers * mask.sum()


def hf_weight_table(prefix: str) -> dict[str, tuple[str, str]]:
    """Our parameter paths -> HF on-disk names under ``prefix`` (e.g. ``"model.layers.{i}.mlp."``).

    HF stores one tensor per expert (``experts.{e}.gate_proj.weight [F, D]``); in memory transformers
    fuses them into ``experts.gate_up_proj [E, 2F, D]`` and ``experts.down_proj [E, D, F]``.
    """
    return {
        "router/kernel": (f"{prefix}gate.weight", LINEAR),
        "gate_proj": (f"{prefix}experts.{{e}}.gate_proj.weight", LINEAR),
        "up_proj": (f"{prefix}experts.{{e}}.up_proj.weight", LINEAR),
        "down_proj": (f"{prefix}experts.{{e}}.down_proj.weight", LINEAR),
    }

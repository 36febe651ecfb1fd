"""LoRA for any NNX model: low-rank adapters on the kernels whose parameter paths match a pattern.

``LoRA(base, rank=r, alpha=a, targets=r"(q|k|v|o)_proj/kernel$")`` adds ``lora_a [..., in, r]``
(random, like PEFT's Kaiming init) and ``lora_b [..., r, out]`` (zeros) for every matching kernel of
shape ``[..., in, out]`` (leading dims are stacked layers or experts). The forward pass runs the base
model with ``W + (alpha / r) * A @ B`` in place of each target ``W``, so it works with any module
layout (scanned layers included) without touching the model's code; freshly added adapters leave the
output unchanged. With the optimizer's ``trainable="lora"`` preset only ``lora_*`` parameters train.
``merge()`` returns the base model with the adapters folded in (for export). Input dropout on the
adapter path is not part of this weight-space formulation (``dropout`` must be 0).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cogito_jax.train.optim import path_str

SEP = "."


def _targets(base: nnx.Module, pattern: str) -> dict[str, nnx.Variable]:
    """The base model's Param variables (with their metadata) whose path matches ``pattern``."""
    rx = re.compile(pattern)
    state = nnx.state(base, nnx.Param)
    leaves = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    return {path_str(p): v for p, v in leaves if rx.search(path_str(p)) and len(v.shape) >= 2}


class LoRA(nnx.Module):
    """A base model plus low-rank adapters on the kernels matching ``targets``."""

    def __init__(self, base: nnx.Module, *, rank: int, alpha: float, targets: str, dropout: float = 0.0,
                 rngs: nnx.Rngs):
        if rank < 1:
            raise ValueError(f"LoRA rank={rank} must be >= 1")
        if dropout:
            raise ValueError(f"LoRA dropout={dropout}: adapters are merged into the weights, so input dropout "
                             "is not available; use dropout=0")
        found = _targets(base, targets)
        if not found:
            raise ValueError(f"LoRA targets={targets!r} match no 2-D (or stacked) kernel of the model")
        self.base = base
        self.rank, self.scale = rank, alpha / rank
        self.names = tuple(sorted(found))
        a, b = {}, {}
        for name in self.names:
            w = found[name]
            *lead, d_in, d_out = w.shape
            meta = w.get_metadata()
            logical = tuple(meta.get("out_sharding") or ()) or None
            a_axes = (*logical[:-1], "lora_rank") if logical else None
            b_axes = (*logical[:-2], "lora_rank", logical[-1]) if logical else None
            init_a = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=-2, out_axis=-1)
            a[name.replace("/", SEP)] = nnx.Param(
                _annotate(init_a, a_axes)(rngs.params(), (*lead, d_in, rank), jnp.float32))
            b[name.replace("/", SEP)] = nnx.Param(
                _annotate(nnx.initializers.zeros, b_axes)(rngs.params(), (*lead, rank, d_out), jnp.float32))
        self.lora_a = nnx.Dict(a)
        self.lora_b = nnx.Dict(b)

    def _merged_state(self) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
        graphdef, params, rest = nnx.split(self.base, nnx.Param, ...)
        flat = dict(jax.tree_util.tree_flatten_with_path(params)[0])
        by_name = {path_str(p): p for p in flat}
        new = dict(flat)
        for name in self.names:
            key = name.replace("/", SEP)
            w = flat[by_name[name]]
            delta = jnp.einsum("...ir,...ro->...io", self.lora_a[key][...], self.lora_b[key][...])
            new[by_name[name]] = (w.astype(jnp.float32) + self.scale * delta).astype(w.dtype)
        treedef = jax.tree_util.tree_structure(params)
        merged = jax.tree_util.tree_unflatten(treedef, [new[p] for p in flat])
        return graphdef, merged, rest

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        graphdef, merged, rest = self._merged_state()
        return nnx.merge(graphdef, merged, rest)(*args, **kwargs)

    def merge(self) -> nnx.Module:
        """The base model with every adapter folded into its kernel (a new module; ``self`` is unchanged)."""
        graphdef, merged, rest = self._merged_state()
        return nnx.merge(graphdef, merged, rest)

    def adapters(self) -> dict[str, tuple[jax.Array, jax.Array]]:
        """``{kernel path: (A [..., in, r], B [..., r, out])}``, e.g. for a PEFT export."""
        return {n: (self.lora_a[n.replace("/", SEP)][...], self.lora_b[n.replace("/", SEP)][...])
                for n in self.names}


def _annotate(init, axes):
    return nnx.with_partitioning(init, axes) if axes else init

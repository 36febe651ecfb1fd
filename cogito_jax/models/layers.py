"""Shared layers: annotated dense, RMSNorm, LayerNorm, rotary embedding, SwiGLU MLP, scanned-stack remat.

Every parameter carries logical axis names (``cogito_jax.sharding.LOGICAL_AXES``). Activations run in
``dtype`` (the compute dtype); parameters are stored in ``param_dtype``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cogito_jax.errors import check_choice

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# Rematerialisation of a scanned block, by name: what the backward pass may keep from the forward.
REMAT_POLICIES = {
    "none": None,  # no remat: keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,  # keep matmul outputs
}


def path_str(path: Sequence[Any]) -> str:
    """'a/b/0/c' from an NNX filter path or a JAX key path (a trailing Variable 'value' is dropped)."""
    parts = []
    for p in path:
        attr = next((a for a in ("key", "name", "idx") if hasattr(p, a)), None)
        parts.append(str(getattr(p, attr)) if attr else str(p))
    if parts and parts[-1] == "value":
        parts.pop()
    return "/".join(parts)


def dtype_of(name: str | jnp.dtype, what: str = "dtype") -> jnp.dtype:
    """A dtype from its name (``"bfloat16"``) or the dtype itself; ConfigError naming ``what`` for another name."""
    if isinstance(name, str):
        return DTYPES[check_choice(what, name, tuple(DTYPES))]
    return name


def check_remat(remat: str, what: str = "remat") -> str:
    return check_choice(what, remat, tuple(REMAT_POLICIES))


def remat(fn: Callable, policy: str) -> Callable:
    """``fn`` wrapped in ``nnx.remat`` with the named policy (unchanged for ``"none"``)."""
    if check_remat(policy) == "none":
        return fn
    return nnx.remat(fn, policy=REMAT_POLICIES[policy], prevent_cse=False)


_UNROLLED = contextvars.ContextVar("unrolled_stacks", default=False)


@contextlib.contextmanager
def unrolled_stacks() -> Iterator[None]:
    """Layer stacks traced inside this context run unrolled, one copy of the layer per depth, instead of as one
    loop. Same results; it exists for XLA's cost analysis, which counts a loop's body once whatever its trip
    count (``launch/aot_compile.py`` measures one layer's cost as the difference of two depths)."""
    token = _UNROLLED.set(True)
    try:
        yield
    finally:
        _UNROLLED.reset(token)


def scan_stack(body: Callable, x: Any, stack: nnx.Module) -> tuple[Any, Any]:
    """``nnx.scan`` of ``body(carry, layer) -> (carry, out)`` over a stacked layer module (outputs stacked);
    unrolled under :func:`unrolled_stacks`."""
    return nnx.scan(body, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0), unroll=_UNROLLED.get())(x, stack)


def dense(d_in: int, d_out: int, axes: tuple[str | None, str | None], *, bias: bool, rngs: nnx.Rngs,
          dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32, std: float = 0.02) -> nnx.Linear:
    """``nnx.Linear`` (kernel ``[in, out]``) with logical axes on kernel and bias."""
    return nnx.Linear(
        d_in, d_out, use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        kernel_init=nnx.with_partitioning(nnx.initializers.normal(std), axes),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros, (axes[1],)),
    )


class RMSNorm(nnx.Module):
    """``x / rms(x) * scale`` computed in float32, as HF's Qwen2RMSNorm."""

    def __init__(self, d: int, eps: float = 1e-6, *, param_dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs | None = None):
        self.eps = eps
        self.weight = nnx.Param(nnx.with_partitioning(nnx.initializers.ones, ("norm",))(None, (d,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * x32.astype(x.dtype)


def layer_norm(d: int, eps: float = 1e-5, *, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs,
               dtype: jnp.dtype | None = None) -> nnx.LayerNorm:
    """``nnx.LayerNorm`` (scale and bias) with unsharded parameters; statistics in float32."""
    return nnx.LayerNorm(
        d, epsilon=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        scale_init=nnx.with_partitioning(nnx.initializers.ones, ("norm",)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("norm",)),
    )


def rope_cos_sin(positions_bt: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin ``[B, T, head_dim]`` in HF's layout (the frequencies repeated for both halves)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs_bth = positions_bt.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs_bth, freqs_bth], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x_btnh: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array) -> jax.Array:
    """``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = [-x2, x1]``."""
    half = x_btnh.shape[-1] // 2
    rotated = jnp.concatenate([-x_btnh[..., half:], x_btnh[..., :half]], axis=-1)
    cos, sin = cos_bth[:, :, None, :], sin_bth[:, :, None, :]
    return (x_btnh.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x_btnh.dtype)


class SwiGLU(nnx.Module):
    """``down(silu(gate(x)) * up(x))`` without biases (Qwen2 MLP)."""

    def __init__(self, d: int, d_ff: int, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
                 axes: Sequence[str] = ("embed", "mlp")):
        e, m = axes
        kw = dict(bias=False, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.gate_proj = dense(d, d_ff, (e, m), **kw)
        self.up_proj = dense(d, d_ff, (e, m), **kw)
        self.down_proj = dense(d_ff, d, (m, e), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """``[length, channels]`` = [sin | cos] of position x geometric timescales (Whisper's position table, HF
    ``SinusoidsPositionEmbedding``)."""
    inc = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-inc * np.arange(channels // 2, dtype=np.float32)).astype(np.float32)
    t = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)

"""The pre-LN transformer block both audio encoders stack: Whisper's in Qwen2-Audio (HF ``Qwen2AudioEncoderLayer``)
and AuT's in Qwen3-Omni (HF ``Qwen3OmniMoeAudioEncoderLayer``), as one scanned stack, with its HF weight names.

``x + out_proj(attn(LN(x)))``, then ``x + fc2(GELU(fc1(LN(x))))``: multi-head attention (no GQA) with
biases on every projection except, in Whisper's layout, ``k_proj``. The two encoders differ only around
the stack (front end, positions, attention windows, pooling and projection).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cogito_jax import sharding
from cogito_jax.models.attention import dot_product_attention
from cogito_jax.models.hf_weights import LINEAR, SAME
from cogito_jax.models.layers import dense, layer_norm, remat, scan_stack

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")
LAYER_NORMS = ("self_attn_layer_norm", "final_layer_norm")


class AudioEncoderLayer(nnx.Module):
    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, *, k_bias: bool, dtype: jnp.dtype,
                 param_dtype: jnp.dtype, attn_impl: str, rngs: nnx.Rngs):
        d = d_model
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.self_attn_layer_norm = layer_norm(d, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.q_proj = dense(d, d, ("audio_embed", "q_proj"), bias=True, **kw)
        self.k_proj = dense(d, d, ("audio_embed", "q_proj"), bias=k_bias, **kw)
        self.v_proj = dense(d, d, ("audio_embed", "q_proj"), bias=True, **kw)
        self.out_proj = dense(d, d, ("q_proj", "audio_embed"), bias=True, **kw)
        self.final_layer_norm = layer_norm(d, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.fc1 = dense(d, ffn_dim, ("audio_embed", "audio_mlp"), bias=True, **kw)
        self.fc2 = dense(ffn_dim, d, ("audio_mlp", "audio_embed"), bias=True, **kw)
        self.num_heads, self.attn_impl = num_heads, attn_impl

    def __call__(self, x_bsd: jax.Array, mask_bss: jax.Array) -> jax.Array:
        b, s, d = x_bsd.shape
        n = self.num_heads
        h = self.self_attn_layer_norm(x_bsd)
        q, k, v = (p(h).reshape(b, s, n, d // n) for p in (self.q_proj, self.k_proj, self.v_proj))
        att = dot_product_attention(q, k, v, mask_bss, (d // n) ** -0.5, self.attn_impl)
        x_bsd = x_bsd + self.out_proj(att.reshape(b, s, d))
        h = jax.nn.gelu(self.fc1(self.final_layer_norm(x_bsd)), approximate=False)
        return sharding.constrain(x_bsd + self.fc2(h), ("batch", "audio_length", "audio_embed"))


def stacked_layers(num_layers: int, rngs: nnx.Rngs, **layer_kw) -> AudioEncoderLayer:
    """``num_layers`` layers with their parameters stacked on a leading ``layers`` axis, for :func:`run`."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs):
        return AudioEncoderLayer(rngs=rngs, **layer_kw)

    return make(rngs)


def run(layers: AudioEncoderLayer, x_bsd: jax.Array, mask_bss: jax.Array, remat_policy: str = "none") -> jax.Array:
    """The stack scanned over ``x`` (compile time independent of depth), each layer rematerialised by policy."""
    body = remat(lambda x, layer: (layer(x, mask_bss), None), remat_policy)
    x_bsd, _ = scan_stack(body, x_bsd, layers)
    return x_bsd


def hf_weight_table(hf_layer: str, *, k_bias: bool) -> dict[str, tuple[str, str]]:
    """The stack's parameter paths (``layers/...``) -> HF names; ``hf_layer`` has ``{i}`` for the layer index
    (e.g. ``"audio_tower.layers.{i}."``)."""
    w = {}
    for name in LAYER_NORMS:
        w[f"layers/{name}/scale"] = (f"{hf_layer}{name}.weight", SAME)
        w[f"layers/{name}/bias"] = (f"{hf_layer}{name}.bias", SAME)
    for name in PROJECTIONS:
        w[f"layers/{name}/kernel"] = (f"{hf_layer}self_attn.{name}.weight", LINEAR)
        if name != "k_proj" or k_bias:
            w[f"layers/{name}/bias"] = (f"{hf_layer}self_attn.{name}.bias", SAME)
    for name in ("fc1", "fc2"):
        w[f"layers/{name}/kernel"] = (f"{hf_layer}{name}.weight", LINEAR)
        w[f"layers/{name}/bias"] = (f"{hf_layer}{name}.bias", SAME)
    return w

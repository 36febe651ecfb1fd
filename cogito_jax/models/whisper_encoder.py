"""The Whisper-style audio encoder of Qwen2-Audio (HF ``Qwen2AudioEncoder``).

``input_features [B, n_mels, 2 * max_source_positions]`` -> GELU(conv1, k3 s1) -> GELU(conv2, k3 s2)
-> + position table (Whisper's sinusoids at init; checkpoints carry them) -> pre-LN transformer layers
(``audio_layers``, k_proj without bias; keys past each clip's valid length, from ``feature_attention_mask``, are masked
as in HF's ``Qwen2AudioModel.forward``) -> average pooling (stride 2) -> LayerNorm. Output
``[B, S/2, d_model]`` and the per-example number of valid output frames,
``((L - 1) // 2 + 1 - 2) // 2 + 1`` for ``L`` valid mel frames (the valid frames are a prefix).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from cogito_jax import sharding
from cogito_jax.models import audio_layers
from cogito_jax.models.attention import check_impl, self_attention_mask
from cogito_jax.models.layers import check_remat, dtype_of, layer_norm, sinusoids


@dataclasses.dataclass(frozen=True)
class WhisperEncoderConfig:
    num_mel_bins: int
    d_model: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    max_source_positions: int
    dtype: str = "float32"
    param_dtype: str = "float32"
    attn_impl: str = "xla"
    remat: str = "none"

    def __post_init__(self):
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not a multiple of num_heads={self.num_heads}")
        dtype_of(self.dtype), dtype_of(self.param_dtype), check_remat(self.remat), check_impl(self.attn_impl)

    @property
    def num_frames(self) -> int:
        return 2 * self.max_source_positions


def output_lengths(mel_lengths_b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(frames after conv2, tokens after pooling) for valid mel frame counts."""
    after_conv = (mel_lengths_b - 1) // 2 + 1
    return after_conv, (after_conv - 2) // 2 + 1


class WhisperEncoder(nnx.Module):
    """Conv front end, scanned pre-LN layers, average pooling, final LayerNorm."""

    def __init__(self, cfg: WhisperEncoderConfig, *, rngs: nnx.Rngs):
        d, pd, dt = cfg.d_model, dtype_of(cfg.param_dtype), dtype_of(cfg.dtype)
        conv = dict(kernel_size=(3,), padding=((1, 1),), dtype=dt, param_dtype=pd, rngs=rngs,
                    bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("conv_out",)))
        self.conv1 = nnx.Conv(cfg.num_mel_bins, d, strides=(1,), **conv,
                              kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(),
                                                                ("kernel", "mel", "conv_out")))
        self.conv2 = nnx.Conv(d, d, strides=(2,), **conv,
                              kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(),
                                                                ("kernel", "conv_in", "conv_out")))
        positions = lambda *_: jnp.asarray(sinusoids(cfg.max_source_positions, d), pd)  # noqa: E731
        self.embed_positions = nnx.Param(nnx.with_partitioning(positions, ("audio_length", "audio_embed"))(None))

        self.layers = audio_layers.stacked_layers(cfg.num_layers, rngs, d_model=d, num_heads=cfg.num_heads,
                                                  ffn_dim=cfg.ffn_dim, k_bias=False, dtype=dt, param_dtype=pd,
                                                  attn_impl=cfg.attn_impl)
        self.layer_norm = layer_norm(d, param_dtype=pd, dtype=dt, rngs=rngs)
        self.cfg = cfg

    def __call__(self, features_bmf: jax.Array, feature_mask_bf: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
        """(embeddings ``[B, S/2, d]``, valid lengths ``[B]``) for log-mel ``[B, n_mels, frames]``."""
        cfg = self.cfg
        b, m, f = features_bmf.shape
        if m != cfg.num_mel_bins:
            raise ValueError(f"the audio encoder expects {cfg.num_mel_bins} mel bins, got {m}")
        if f != cfg.num_frames:
            raise ValueError(f"the audio encoder expects {cfg.num_frames} mel frames (pad to 30 s), got {f}")
        lengths = (jnp.full((b,), f, jnp.int32) if feature_mask_bf is None
                   else feature_mask_bf.sum(-1).astype(jnp.int32))
        after_conv, out_len = output_lengths(lengths)
        x = features_bmf.transpose(0, 2, 1).astype(dtype_of(cfg.dtype))
        x = jax.nn.gelu(self.conv1(x), approximate=False)
        x = jax.nn.gelu(self.conv2(x), approximate=False)
        x = x + self.embed_positions[...].astype(x.dtype)
        s = x.shape[1]
        idx = jnp.arange(s)
        mask = self_attention_mask(idx[None, :] < after_conv[:, None], causal=False)
        x = sharding.constrain(x, ("batch", "audio_length", "audio_embed"))
        x = audio_layers.run(self.layers, x, mask, cfg.remat)
        x = x[:, : (s // 2) * 2].reshape(b, s // 2, 2, -1).mean(axis=2)
        return self.layer_norm(x), out_len

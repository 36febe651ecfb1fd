"""The Qwen3-Omni "AuT" audio encoder (HF ``Qwen3OmniMoeAudioEncoder``) with static shapes.

``input_features [B, n_mels, frames]`` (+ ``feature_attention_mask [B, frames]``) -> each example cut
into chunks of ``2 * n_window`` frames (100) -> 3 x (Conv2d 3x3 stride 2 over (mel, time) -> GELU)
(8x fewer frames: a full chunk gives 13 tokens) -> ``conv_out`` linear over (channels x mel) ->
+ sinusoidal positions restarting in every chunk -> pre-LN transformer layers (``audio_layers``) whose
attention stays inside windows of ``n_window_infer // (2 * n_window)`` chunks -> ``ln_post`` -> proj1 -> GELU -> proj2.
Output ``[B, chunks * 13, output_dim]`` (zero past each example's length) and the lengths
``output_lengths(feature_lens)``.

HF packs every example's chunks into one batch zero-padded to the longest chunk ``P`` (100 unless all
audio is shorter) and convolves that; positions past ``P`` at each conv layer's input are therefore
conv padding (zero) rather than activations of padded frames. Chunks here are always ``2 * n_window``
wide and those positions are zeroed explicitly, so the outputs equal HF's for any batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cogito_jax import sharding
from cogito_jax.models import audio_layers
from cogito_jax.models.attention import check_impl, self_attention_mask
from cogito_jax.models.hf_weights import CONV2D, LINEAR, SAME
from cogito_jax.models.layers import check_remat, dense, dtype_of, layer_norm, sinusoids


@dataclasses.dataclass(frozen=True)
class AuTEncoderConfig:
    num_mel_bins: int
    d_model: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    output_dim: int
    n_window: int = 50
    n_window_infer: int = 800
    downsample_hidden_size: int = 480
    max_source_positions: int = 1500
    conv_chunksize: int = 500  # HF's conv micro-batch; kept for the config round trip
    max_frames: int = 3000  # the mel window runs pad audio to (static shapes; 30 s); not an HF field
    dtype: str = "float32"
    param_dtype: str = "float32"
    attn_impl: str = "xla"
    remat: str = "none"

    def __post_init__(self):
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        dtype_of(self.dtype), dtype_of(self.param_dtype), check_remat(self.remat), check_impl(self.attn_impl)
        if self.n_window_infer < 2 * self.n_window:
            raise ValueError(f"n_window_infer={self.n_window_infer} must be >= 2 * n_window = {2 * self.n_window}")
        if self.tokens_per_chunk > self.max_source_positions:
            raise ValueError(f"a chunk gives {self.tokens_per_chunk} tokens > max_source_positions")

    @property
    def num_frames(self) -> int:
        """Mel frames per clip in training and sampling batches (the encoder itself takes any length)."""
        return self.max_frames

    @property
    def chunk_frames(self) -> int:
        return 2 * self.n_window

    @property
    def tokens_per_chunk(self) -> int:
        return conv_out_length(self.chunk_frames)

    @property
    def chunks_per_window(self) -> int:
        return self.n_window_infer // self.chunk_frames

    @property
    def conv_mel_bins(self) -> int:
        return conv_out_length(self.num_mel_bins)

    @classmethod
    def from_hf(cls, audio_config: Mapping[str, Any], **overrides: Any) -> AuTEncoderConfig:
        """From HF's ``audio_config`` (``Qwen3OmniMoeAudioEncoderConfig`` fields)."""
        a = audio_config
        if a.get("activation_function", "gelu") != "gelu":
            raise ValueError(f"activation_function={a['activation_function']!r}: only 'gelu' is supported")
        return cls(
            num_mel_bins=a["num_mel_bins"], d_model=a["d_model"], num_layers=a["encoder_layers"],
            num_heads=a["encoder_attention_heads"], ffn_dim=a["encoder_ffn_dim"], output_dim=a["output_dim"],
            n_window=a.get("n_window", 50), n_window_infer=a.get("n_window_infer", 800),
            downsample_hidden_size=a.get("downsample_hidden_size", 480),
            max_source_positions=a.get("max_source_positions", 1500), conv_chunksize=a.get("conv_chunksize", 500),
            max_frames=a.get("max_frames", 3000), **overrides,
        )

    def to_hf(self) -> dict[str, Any]:
        return dict(
            model_type="qwen3_omni_moe_audio_encoder", activation_function="gelu", num_mel_bins=self.num_mel_bins,
            d_model=self.d_model, encoder_layers=self.num_layers, encoder_attention_heads=self.num_heads,
            encoder_ffn_dim=self.ffn_dim, output_dim=self.output_dim, n_window=self.n_window,
            n_window_infer=self.n_window_infer, downsample_hidden_size=self.downsample_hidden_size,
            max_source_positions=self.max_source_positions, conv_chunksize=self.conv_chunksize,
            max_frames=self.max_frames,
        )


def conv_out_length(n):
    """Length after three (kernel 3, stride 2, padding 1) convolutions; works on ints and arrays."""
    for _ in range(3):
        n = (n - 1) // 2 + 1
    return n


def output_lengths(feature_lens, n_window: int = 50):
    """Encoder tokens per example for its valid mel frames (HF ``_get_feat_extract_output_lengths``)."""
    chunk = 2 * n_window
    return (feature_lens // chunk) * conv_out_length(chunk) + conv_out_length(feature_lens % chunk)


def _conv(c_in: int, c_out: int, in_axis: str | None, cfg: AuTEncoderConfig, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        c_in, c_out, kernel_size=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=dtype_of(cfg.dtype),
        param_dtype=dtype_of(cfg.param_dtype), rngs=rngs,
        kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("kernel", "kernel", in_axis, "conv_out")),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("conv_out",)),
    )


class AuTEncoder(nnx.Module):
    def __init__(self, cfg: AuTEncoderConfig, *, rngs: nnx.Rngs):
        d, c, pd, dt = cfg.d_model, cfg.downsample_hidden_size, dtype_of(cfg.param_dtype), dtype_of(cfg.dtype)
        self.conv2d1 = _conv(1, c, None, cfg, rngs)
        self.conv2d2 = _conv(c, c, "conv_in", cfg, rngs)
        self.conv2d3 = _conv(c, c, "conv_in", cfg, rngs)
        self.conv_out = dense(c * cfg.conv_mel_bins, d, ("conv_out", "audio_embed"), bias=False, rngs=rngs,
                              dtype=dt, param_dtype=pd)

        self.layers = audio_layers.stacked_layers(cfg.num_layers, rngs, d_model=d, num_heads=cfg.num_heads,
                                                  ffn_dim=cfg.ffn_dim, k_bias=True, dtype=dt, param_dtype=pd,
                                                  attn_impl=cfg.attn_impl)
        self.ln_post = layer_norm(d, param_dtype=pd, rngs=rngs)
        self.proj1 = dense(d, d, ("audio_embed", "audio_embed"), bias=True, rngs=rngs, dtype=dt, param_dtype=pd)
        self.proj2 = dense(d, cfg.output_dim, ("audio_embed", "embed"), bias=True, rngs=rngs, dtype=dt,
                           param_dtype=pd)
        self.cfg = cfg

    def num_tokens(self, num_frames: int) -> int:
        """Static output length for ``num_frames`` input frames."""
        return math.ceil(num_frames / self.cfg.chunk_frames) * self.cfg.tokens_per_chunk

    def _downsample(self, chunks_nmw: jax.Array, widest: jax.Array) -> jax.Array:
        """3 x (conv -> GELU) over ``[N, mel, W]`` chunks; positions past the HF batch width stay zero."""
        x, width = chunks_nmw[..., None], widest
        for i, conv in enumerate((self.conv2d1, self.conv2d2, self.conv2d3)):
            if i:
                width = (width - 1) // 2 + 1
                x = jnp.where(jnp.arange(x.shape[2])[None, None, :, None] < width, x, 0)
            x = jax.nn.gelu(conv(x), approximate=False)
        return x  # [N, mel', tokens, C]

    def __call__(self, features_bmf: jax.Array, feature_mask_bf: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
        """(embeddings ``[B, ceil(frames / 100) * 13, output_dim]``, valid lengths ``[B]``)."""
        cfg = self.cfg
        dt = dtype_of(cfg.dtype)
        b, m, f = features_bmf.shape
        if m != cfg.num_mel_bins:
            raise ValueError(f"the audio encoder expects {cfg.num_mel_bins} mel bins, got {m}")
        if feature_mask_bf is None:
            lengths = jnp.full((b,), f, jnp.int32)
        else:
            valid = feature_mask_bf.astype(bool)
            lengths = valid.sum(-1).astype(jnp.int32)
            # HF keeps the masked frames in order; move them to the front.
            order = jnp.argsort(~valid, axis=-1, stable=True)
            features_bmf = jnp.take_along_axis(features_bmf, order[:, None, :], axis=-1)
        w, t3 = cfg.chunk_frames, cfg.tokens_per_chunk
        n_chunks = math.ceil(f / w)
        frame = jnp.arange(n_chunks * w)
        x = jnp.pad(features_bmf.astype(dt), ((0, 0), (0, 0), (0, n_chunks * w - f)))
        x = jnp.where(frame[None, None, :] < lengths[:, None, None], x, 0)
        x = x.reshape(b, m, n_chunks, w).transpose(0, 2, 1, 3).reshape(b * n_chunks, m, w)
        widest = jnp.minimum(lengths.max(), w)  # HF's padded chunk width
        x = self._downsample(x, widest)
        x = x.transpose(0, 2, 3, 1).reshape(b * n_chunks, t3, -1)  # [N, tokens, C * mel']
        x = self.conv_out(x) + jnp.asarray(sinusoids(t3, cfg.d_model), dt)
        out_len = output_lengths(lengths, cfg.n_window)
        s = n_chunks * t3
        x = x.reshape(b, s, cfg.d_model)

        # Attention windows of `chunks_per_window` chunks; one window when the audio fits in one.
        n_win = math.ceil(n_chunks / cfg.chunks_per_window)
        win = s if n_win == 1 else cfg.chunks_per_window * t3
        x = jnp.pad(x, ((0, 0), (0, n_win * win - s), (0, 0))).reshape(b * n_win, win, cfg.d_model)
        pos = jnp.arange(n_win * win).reshape(n_win, win)
        key_valid = (pos[None] < out_len[:, None, None]).reshape(b * n_win, win)
        mask = self_attention_mask(key_valid, causal=False)
        x = sharding.constrain(x, ("batch", "audio_length", "audio_embed"))
        x = audio_layers.run(self.layers, x, mask, cfg.remat)
        x = x.reshape(b, n_win * win, cfg.d_model)[:, :s]
        x = self.proj2(jax.nn.gelu(self.proj1(self.ln_post(x)), approximate=False))
        x = jnp.where(jnp.arange(s)[None, :, None] < out_len[:, None, None], x, 0)
        return x, out_len


def hf_weight_table(prefix: str = "audio_tower.") -> dict[str, tuple[str, str]]:
    """Our parameter paths -> HF on-disk names (``audio_tower.`` in a thinker checkpoint,
    ``thinker.audio_tower.`` in the full Qwen3-Omni one)."""
    w = {"conv_out/kernel": (f"{prefix}conv_out.weight", LINEAR)}
    for name in ("conv2d1", "conv2d2", "conv2d3"):
        w[f"{name}/kernel"] = (f"{prefix}{name}.weight", CONV2D)
        w[f"{name}/bias"] = (f"{prefix}{name}.bias", SAME)
    for name in ("proj1", "proj2"):
        w[f"{name}/kernel"] = (f"{prefix}{name}.weight", LINEAR)
        w[f"{name}/bias"] = (f"{prefix}{name}.bias", SAME)
    w["ln_post/scale"] = (f"{prefix}ln_post.weight", SAME)
    w["ln_post/bias"] = (f"{prefix}ln_post.bias", SAME)
    w.update(audio_layers.hf_weight_table(f"{prefix}layers.{{i}}.", k_bias=True))
    return w

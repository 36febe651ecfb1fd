"""Audio LM = audio encoder + projector + decoder LM, audio embeddings merged at placeholder tokens.

The call follows HF's ``...ForConditionalGeneration.forward``: ``model(input_ids, input_features,
feature_attention_mask, attention_mask)`` -> logits ``[B, T, V]``. Every audio-placeholder token
(``audio_token_id``) is replaced, in reading order over the batch, by the next valid frame of the
encoded audio clips (clips in batch order, each clip's valid frames in time order), as HF's
``masked_scatter`` does; prompts must hold one placeholder per valid frame (``chat.num_audio_tokens``;
HF's legacy single-placeholder expansion is not done). Without ``positions``, positions are ``0..T-1``
(Qwen2-Audio's forward) or, with ``positions_from_mask``, ``cumsum(attention_mask) - 1`` (Qwen3-Omni's
forward, whose M-RoPE positions for audio and text have three equal components, i.e. plain 1-D rotary);
generation passes ``cumsum(attention_mask) - 1`` (HF's ``generate``).

For decoding: :meth:`AudioLM.encode_audio` once, :meth:`AudioLM.prefill` the prompt into a
:class:`KVCache`, then :meth:`AudioLM.decode` one token per row per step.

Plug-in points: the audio encoder is any module passed to ``AudioLM(cfg, encoder, ...)`` that maps
``(input_features [N, mels, frames], feature_attention_mask [N, frames] | None)`` to
``(embeddings [N, S, d], valid lengths [N])``, with ``d = cfg.audio.output_dim`` (or
``cfg.audio.d_model`` when the config has no ``output_dim``); the projector is one linear layer
from ``d`` to the LM width, or none (``projector=False``: the encoder already ends at the LM width).
The LM's MLP comes from ``mlp_factory`` (see ``decoder``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cogito_jax.models.attention import KVCache
from cogito_jax.models.decoder import Decoder, DecoderConfig
from cogito_jax.models.layers import dense, dtype_of


@dataclasses.dataclass(frozen=True)
class AudioLMConfig:
    family: str
    audio: Any  # the encoder's config dataclass
    text: DecoderConfig
    audio_token_id: int
    hf_extra: tuple = ()  # HF config fields kept for a faithful save_hf, as (key, json) pairs
    projector: bool = True  # a linear audio -> LM projector (Qwen2-Audio); False: the encoder outputs LM width
    positions_from_mask: bool = False  # forward positions = cumsum(attention_mask) - 1 (Qwen3-Omni's forward)


def merge_audio(embeds_btd: jax.Array, input_ids_bt: jax.Array, audio_token_id: int,
                audio_nsd: jax.Array, audio_len_n: jax.Array) -> jax.Array:
    """Writes the valid audio frames, in order, over the placeholder tokens' embeddings."""
    n, s, d = audio_nsd.shape
    valid_flat = (jnp.arange(s)[None, :] < audio_len_n[:, None]).reshape(-1)
    order = jnp.argsort(~valid_flat, stable=True)  # indices of valid frames first, in order
    audio_flat = audio_nsd.reshape(n * s, d)[order]
    is_audio = (input_ids_bt == audio_token_id).reshape(-1)
    rank = jnp.cumsum(is_audio) - 1
    picked = audio_flat[jnp.clip(rank, 0, n * s - 1)].astype(embeds_btd.dtype)
    out = jnp.where(is_audio[:, None], picked, embeds_btd.reshape(-1, d))
    return out.reshape(embeds_btd.shape)


def check_audio_tokens(input_ids, audio_token_id: int, audio_len) -> None:
    """Raises if the number of placeholder tokens differs from the number of valid audio frames.

    Under tracing (inside ``jit``) or for arrays not on this host the values are unknown: no check.
    """
    try:
        ids, lens = np.asarray(input_ids), np.asarray(audio_len)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError, RuntimeError):
        return
    n_tokens, n_frames = int((ids == audio_token_id).sum()), int(lens.sum())
    if n_tokens != n_frames:
        raise ValueError(f"the prompt has {n_tokens} audio placeholder tokens (id {audio_token_id}) but the audio "
                         f"gives {n_frames} frames; build prompts with chat.num_audio_tokens")


class AudioLM(nnx.Module):
    """``audio_encoder`` -> ``projector`` -> merged into ``llm``'s token embeddings."""

    def __init__(self, cfg: AudioLMConfig, encoder: nnx.Module, *, rngs: nnx.Rngs, mlp_factory=None):
        self.cfg = cfg
        self.audio_encoder = encoder
        audio_dim = getattr(cfg.audio, "output_dim", None) or cfg.audio.d_model
        if cfg.projector:
            self.projector = dense(audio_dim, cfg.text.hidden_size, ("audio_embed", "embed"), bias=True, rngs=rngs,
                                   dtype=dtype_of(cfg.text.dtype), param_dtype=dtype_of(cfg.text.param_dtype))
        elif audio_dim != cfg.text.hidden_size:
            raise ValueError(f"without a projector the audio encoder's width {audio_dim} must equal the LM's "
                             f"hidden_size {cfg.text.hidden_size}")
        kw = {} if mlp_factory is None else {"mlp_factory": mlp_factory}
        self.llm = Decoder(cfg.text, rngs=rngs, **kw)

    def encode_audio(self, input_features: jax.Array, feature_attention_mask: jax.Array | None = None
                     ) -> tuple[jax.Array, jax.Array]:
        """(projected audio embeddings ``[N, S, d_model]``, valid lengths ``[N]``)."""
        h, lengths = self.audio_encoder(input_features, feature_attention_mask)
        return (self.projector(h) if self.cfg.projector else h), lengths

    def embed(self, input_ids, audio=None):
        """Token embeddings ``[B, T, D]`` with the audio frames written over the placeholders."""
        x = self.llm.embed(input_ids)
        if audio is not None:
            x = merge_audio(x, input_ids, self.cfg.audio_token_id, *audio)
        return x

    def __call__(self, input_ids, input_features=None, feature_attention_mask=None, attention_mask=None,
                 positions=None, segment_ids=None, *, audio=None, return_aux: bool = False):
        """Logits ``[B, T, V]`` (and the MLPs' stacked auxiliary outputs with ``return_aux``).

        ``audio`` (the output of :meth:`encode_audio`) may be given instead of ``input_features``.
        """
        b, t = input_ids.shape
        if audio is None and input_features is not None:
            audio = self.encode_audio(input_features, feature_attention_mask)
        if audio is not None:
            check_audio_tokens(input_ids, self.cfg.audio_token_id, audio[1])
        if positions is None and self.cfg.positions_from_mask and attention_mask is not None:
            mask = attention_mask.astype(bool)
            positions = jnp.where(mask, jnp.cumsum(mask, axis=-1, dtype=jnp.int32) - 1, 1)
        elif positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        out = self.llm(self.embed(input_ids, audio), positions, attention_mask_bt=attention_mask,
                       segment_ids_bt=segment_ids, return_aux=return_aux)
        return (out[0], out[2]) if return_aux else out[0]

    def init_cache(self, batch: int, length: int) -> KVCache:
        """An empty cache for ``batch`` rows of up to ``length`` tokens (prompt + generated)."""
        c = self.cfg.text
        return KVCache.init(c.num_layers, batch, length, c.num_kv_heads, c.head_dim, dtype_of(c.dtype))

    def prefill(self, input_ids, attention_mask, positions, cache: KVCache, audio=None):
        """Logits at the prompt's last position ``[B, V]`` and the cache holding the prompt."""
        logits, cache = self.llm(self.embed(input_ids, audio), positions, attention_mask_bt=attention_mask,
                                 cache=cache)
        return logits[:, -1], cache

    def decode(self, tokens_b, positions_b, cache: KVCache):
        """Logits ``[B, V]`` for one new token per row, appended to ``cache``."""
        logits, cache = self.llm(self.llm.embed(tokens_b[:, None]), positions_b[:, None], cache=cache)
        return logits[:, 0], cache

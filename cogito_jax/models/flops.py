"""Model FLOPs: the count MFU uses (matmuls only, causal attention halved).

Forward FLOPs = 2 x multiply-accumulates (MACs) of the matmuls; training = 3 x forward (the backward
pass computes gradients for both the activations and the weights). Element-wise work (norms,
activations, softmax, rotary) and the embedding lookup (a gather) are not counted.

Per LLM token (``DecoderConfig``), summed over layers:

* attention projections: ``D x H*hd`` (q), ``2 x D x KV*hd`` (k, v: GQA), ``H*hd x D`` (o);
* attention scores and values: ``2 x H*hd x seq_len / 2`` (every query head attends to, on average,
  half of a causal sequence of ``seq_len``);
* MLP: ``3 x D x I`` (SwiGLU), or a sparse MoE: router ``D x E`` plus the ``top_k`` active experts'
  ``3 x D x F`` (the other experts do no work for this token);
* LM head: ``D x V``.

Audio encoder per clip of ``cfg.audio.num_frames`` mel frames (the window batches pad to), for
``audio=True``: Whisper (conv1 k3, conv2 k3 s2, pre-LN layers with full attention over the clip,
linear projector after the stride-2 pooling) or AuT (three 3x3 stride-2 Conv2d per 100-frame chunk,
``conv_out``, layers with attention inside windows, proj1/proj2). The encoder's attention is not causal.
"""

from __future__ import annotations

import math
from typing import Any

TRAIN_FACTOR = 3  # forward + backward (activation and weight gradients)


def llm_macs_per_token(text: Any, seq_len: int) -> dict[str, float]:
    """Forward multiply-accumulates per token of the decoder ``text`` (a ``DecoderConfig``), by part."""
    d, h, kv, hd, n = text.hidden_size, text.num_heads, text.num_kv_heads, text.head_dim, text.num_layers
    out = {
        "attn_proj": n * (d * h * hd + 2 * d * kv * hd + h * hd * d),
        "attn_scores": n * 2 * h * hd * seq_len / 2,
    }
    if text.num_experts:
        out["router"] = n * d * text.num_experts
        out["mlp"] = n * text.num_experts_per_tok * 3 * d * text.moe_intermediate_size
    else:
        out["mlp"] = n * 3 * d * text.intermediate_size
    out["lm_head"] = d * text.vocab_size
    return out


def llm_flops_per_token(text: Any, seq_len: int, training: bool = True) -> float:
    """FLOPs per token of the decoder ``text`` in a sequence of ``seq_len`` tokens."""
    return 2.0 * sum(llm_macs_per_token(text, seq_len).values()) * (TRAIN_FACTOR if training else 1)


def _conv_len(n: int, kernel: int = 3, stride: int = 2, pad: int = 1) -> int:
    return (n + 2 * pad - kernel) // stride + 1


def _encoder_layers(num_layers: int, tokens: int, d: int, ffn: int, attn_keys: float) -> dict[str, float]:
    """MACs of ``num_layers`` pre-LN layers (4 d x d projections, a 2-matrix MLP) over ``tokens`` tokens, each
    attending to ``attn_keys`` keys."""
    return {"layers": num_layers * tokens * (4 * d * d + 2 * d * ffn),
            "attn_scores": num_layers * tokens * 2 * d * attn_keys}


def audio_macs_per_clip(cfg: Any, num_frames: int | None = None) -> dict[str, float]:
    """Forward MACs of the audio encoder (+ projector) of ``cfg`` (an ``AudioLMConfig``) for one clip of
    ``num_frames`` mel frames (default: the window batches pad to), by part."""
    a = cfg.audio
    f = int(num_frames or a.num_frames)
    d = a.d_model
    if hasattr(a, "n_window"):  # AuT: chunked Conv2d front end, windowed attention
        w = 2 * a.n_window
        chunks = math.ceil(f / w)
        c = a.downsample_hidden_size
        m1, t1 = _conv_len(a.num_mel_bins), _conv_len(w)
        m2, t2 = _conv_len(m1), _conv_len(t1)
        m3, t3 = _conv_len(m2), _conv_len(t2)
        tokens = chunks * t3
        per_window = a.n_window_infer // w
        n_win = math.ceil(chunks / per_window)
        win = tokens if n_win == 1 else per_window * t3
        out = {"conv": chunks * (m1 * t1 * 9 * c + m2 * t2 * 9 * c * c + m3 * t3 * 9 * c * c + t3 * c * m3 * d)}
        enc = _encoder_layers(a.num_layers, n_win * win, d, a.ffn_dim, win)
        out.update(enc)
        out["proj"] = tokens * (d * d + d * a.output_dim)
    else:  # Whisper: conv1 (k3), conv2 (k3, stride 2), full attention, stride-2 pooling, projector
        s = _conv_len(f, 3, 2, 1)
        out = {"conv": f * 3 * a.num_mel_bins * d + s * 3 * d * d}
        out.update(_encoder_layers(a.num_layers, s, d, a.ffn_dim, s))
        out["proj"] = (s // 2) * d * cfg.text.hidden_size if cfg.projector else 0
    return out


def audio_flops_per_clip(cfg: Any, num_frames: int | None = None, training: bool = True) -> float:
    """FLOPs of the audio encoder (+ projector) for one clip (see :func:`audio_macs_per_clip`)."""
    return 2.0 * sum(audio_macs_per_clip(cfg, num_frames).values()) * (TRAIN_FACTOR if training else 1)


def flops_per_token(cfg: Any, seq_len: int, training: bool = True, audio: bool = False) -> float:
    """Model FLOPs per LLM token of ``cfg`` (an ``AudioLMConfig``) in sequences of ``seq_len`` tokens:
    the count MFU uses (``tokens/s x flops_per_token / peak FLOP/s``).

    With ``audio``, one clip's encoder FLOPs per sequence are added, spread over its ``seq_len`` tokens.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 1")
    out = llm_flops_per_token(cfg.text, seq_len, training)
    if audio:
        out += audio_flops_per_clip(cfg, training=training) / seq_len
    return out


def step_flops(cfg: Any, tokens: int, seq_len: int, clips: int = 0, training: bool = True) -> float:
    """FLOPs of one step over ``tokens`` LLM tokens in sequences of ``seq_len`` and ``clips`` audio clips."""
    return tokens * flops_per_token(cfg, seq_len, training) + clips * audio_flops_per_clip(cfg, training=training)


# Dense bfloat16 matmul peak per chip (vendor figures), by ``jax.Device.device_kind`` prefix.
PEAK_BF16_FLOPS = (
    ("TPU v6", 918e12),  # v6e (Trillium)
    ("TPU v5p", 459e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v5", 459e12),  # v5p reports "TPU v5"
    ("TPU v4", 275e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA H100", 989e12),  # SXM; the PCIe card is lower, set train.peak_tflops for it
    ("NVIDIA A100", 312e12),
)


def peak_flops(device_kind: str, override_tflops: float = 0.0) -> float | None:
    """The bfloat16 matmul peak of one device, FLOP/s: ``override_tflops`` if set, else the table above; None
    for an unknown device (e.g. a CPU), where MFU is not reported."""
    if override_tflops:
        return float(override_tflops) * 1e12
    return next((peak for prefix, peak in PEAK_BF16_FLOPS if device_kind.startswith(prefix)), None)

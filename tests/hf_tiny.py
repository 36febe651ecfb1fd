"""Tiny random HF (PyTorch) reference models built from configs, saved to disk; nothing is downloaded."""

import pathlib

import torch

AUDIO_TOKEN = 290


def qwen2_audio_config(**text):
    from transformers import Qwen2AudioConfig

    t = dict(model_type="qwen2", vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rope_parameters=dict(
                 rope_theta=10000.0, rope_type="default"), tie_word_embeddings=False)
    t.update(text)
    return Qwen2AudioConfig(
        audio_config=dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                          num_mel_bins=16, max_source_positions=16),
        text_config=t, audio_token_index=AUDIO_TOKEN)


def save_qwen2_audio(path: pathlib.Path, seed: int = 0, **text) -> torch.nn.Module:
    from transformers import Qwen2AudioForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(qwen2_audio_config(**text)).eval()
    with torch.no_grad():  # make norms and biases non-trivial so a wrong mapping cannot hide
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(path))
    return model

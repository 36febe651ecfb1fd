"""Qwen2-Audio model configs as HF ``config.json`` dicts: `tiny` (tests, demo) and `7b` (Qwen2-Audio-7B).

`7b` is the released Qwen/Qwen2-Audio-7B(-Instruct) configuration: a Whisper-large-v3-sized encoder
(32 layers, d 1280, 20 heads, FFN 5120, 128 mel bins, 1500 positions = 30 s) and a Qwen-7B-sized
decoder: 32 layers, d 4096, 32 query / 32 key-value heads (no GQA), MLP 11008, vocabulary 156032,
RMSNorm eps 1e-5, rope theta 10000, untied head; 8.40B parameters in all. The released text_config
sets only intermediate_size, vocab_size, rms_norm_eps and max_position_embeddings; the other values
are transformers' ``Qwen2Config`` defaults, written out here.
"""

from ml_collections import ConfigDict


def get_config(arg: str = "tiny") -> ConfigDict:
    if arg == "tiny":
        audio = dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, num_mel_bins=80,
                     max_source_positions=200)
        text = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False)
        token = 500
    elif arg == "7b":
        audio = dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                     num_mel_bins=128, max_source_positions=1500)
        text = dict(vocab_size=156032, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-5, rope_theta=10000.0,
                    tie_word_embeddings=False, max_position_embeddings=8192)
        token = 151646
    else:
        raise ValueError(f"qwen2_audio size {arg!r} is not one of tiny, 7b")
    rope = text.pop("rope_theta")
    return ConfigDict(dict(
        model_type="qwen2_audio",
        audio_token_index=token,
        audio_config=dict(model_type="qwen2_audio_encoder", activation_function="gelu", **audio),
        text_config=dict(model_type="qwen2", hidden_act="silu",
                         rope_parameters=dict(rope_theta=rope, rope_type="default"), **text),
    ))

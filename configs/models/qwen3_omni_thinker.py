"""Qwen3-Omni thinker configs as HF ``config.json`` dicts (``Qwen3OmniMoeThinkerConfig``): `tiny` and `30b_a3b`.

`30b_a3b` is the thinker of the released Qwen/Qwen3-Omni-30B-A3B-Thinking (and -Instruct): the AuT audio
encoder (32 layers, d 1280, 20 heads, FFN 5120, 128 mel bins, output 2048, chunks of 2 x 50 frames,
attention windows of 800 frames, 480 conv channels) and a 48-layer MoE decoder (d 2048, 32 query / 4
key-value heads of 128, QK-RMSNorm, 128 experts of width 768, top-8 renormalised, vocabulary 152064,
M-RoPE theta 1e6 with interleaved sections [24, 20, 20]). The vision tower is listed so the config is
complete; the models here do not build it. ``max_frames`` (not an HF field) is the mel window that
training and sampling batches pad audio to: 30 s, or 4 s for `tiny` (the synthetic clips).
"""

from ml_collections import ConfigDict


def get_config(arg: str = "tiny") -> ConfigDict:
    if arg == "tiny":
        audio = dict(num_mel_bins=16, d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                     output_dim=32, n_window=50, n_window_infer=200, conv_chunksize=500, downsample_hidden_size=8,
                     max_source_positions=64, max_frames=400)
        text = dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=8, moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2,
                    max_position_embeddings=2048, mrope_section=[2, 1, 1])
        vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                      num_position_embeddings=16, deepstack_visual_indexes=[0])
        tokens = dict(audio_token_id=500, audio_start_token_id=501, audio_end_token_id=502, vision_start_token_id=503,
                      vision_end_token_id=504, image_token_id=505, video_token_id=506, user_token_id=507)
    elif arg == "30b_a3b":
        audio = dict(num_mel_bins=128, d_model=1280, encoder_layers=32, encoder_attention_heads=20,
                     encoder_ffn_dim=5120, output_dim=2048, n_window=50, n_window_infer=800, conv_chunksize=500,
                     downsample_hidden_size=480, max_source_positions=1500)
        text = dict(vocab_size=152064, hidden_size=2048, intermediate_size=768, num_hidden_layers=48,
                    num_attention_heads=32, num_key_value_heads=4, head_dim=128, moe_intermediate_size=768,
                    num_experts=128, num_experts_per_tok=8, max_position_embeddings=65536, mrope_section=[24, 20, 20])
        vision = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=2048,
                      num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24])
        tokens = dict(audio_token_id=151675, audio_start_token_id=151669, audio_end_token_id=151670,
                      vision_start_token_id=151652, vision_end_token_id=151653, image_token_id=151655,
                      video_token_id=151656, user_token_id=872)
    else:
        raise ValueError(f"qwen3_omni_thinker size {arg!r} is not one of tiny, 30b_a3b")
    section = text.pop("mrope_section")
    return ConfigDict(dict(
        model_type="qwen3_omni_moe_thinker",
        position_id_per_seconds=13,
        seconds_per_chunk=2,
        tie_word_embeddings=False,
        **tokens,
        audio_config=dict(model_type="qwen3_omni_moe_audio_encoder", activation_function="gelu",
                          scale_embedding=False, **audio),
        text_config=dict(
            model_type="qwen3_omni_moe_text", hidden_act="silu", rms_norm_eps=1e-6, attention_bias=False,
            decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True, router_aux_loss_coef=0.001,
            tie_word_embeddings=False,
            rope_parameters=dict(rope_type="default", rope_theta=1000000.0, mrope_section=section, interleaved=True,
                                 mrope_interleaved=True),
            **text),
        vision_config=dict(model_type="qwen3_omni_moe_vision_encoder", hidden_act="gelu_pytorch_tanh", in_channels=3,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, **vision),
    ))

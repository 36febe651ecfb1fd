"""Full fine-tuning of Qwen2-Audio-7B (8.4B parameters: Whisper-large-v3 encoder + Qwen-7B decoder).

Every parameter trains (`train.trainable="full"`, the encoder's fixed sinusoidal positions excepted):
float32 master weights and AdamW moments, bfloat16 compute, full rematerialisation per layer, pure FSDP
over all chips (`fsdp=-1`), global batch 64 of 2,048 tokens with 30 s of audio each, peak lr 1e-5 with
a cosine decay after a 3 % warmup, 1 epoch of `train.steps` steps (set it to ceil(examples / 64)).
`configs/qwen2_audio_sft.py:frozen_encoder` freezes the audio encoder (trains projector + LLM).

    python -m cogito_jax.train --config configs/qwen2_audio_sft.py --workdir gs://BUCKET/qwen2_audio_sft \\
        --config.model.checkpoint=/path/Qwen2-Audio-7B-Instruct \\
        --config.data.dir=/path/records --config.data.tokenizer=/path/Qwen2-Audio-7B-Instruct
    python launch/aot_compile.py --config configs/qwen2_audio_sft.py --topology v5p:2x4x4

`model.checkpoint` is the HF folder (or a `python -m cogito_jax.convert hf-to-orbax` folder) the
run starts from: its config.json gives the architecture and its weights the starting point.
"""

from ml_collections import ConfigDict

from cogito_jax.config import base_config


def get_config(arg: str | None = None) -> ConfigDict:
    if arg not in (None, "", "full", "frozen_encoder"):
        raise ValueError(f"qwen2_audio_sft variant {arg!r} is not one of full, frozen_encoder")
    c = base_config()
    c.name = "qwen2_audio_sft"
    c.seed = 0
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.sharding.rules = "fsdp"
    c.model = ConfigDict(dict(family="qwen2_audio", size="7b", checkpoint="", dtype="bfloat16",
                              param_dtype="float32", remat="full", attn_impl="xla"))
    c.data.update(dict(source="records", dir="", tokenizer="", seed=0, max_len=2048, use_thinking=True,
                       num_workers=8))
    c.train.trainable = arg or "full"
    c.train.batch_size = 64
    c.train.grad_accum = 1
    c.train.steps = 5000
    c.train.log_every = 10
    c.optim.lr = 1e-5
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 150
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 1.0
    c.checkpoint.every = 500
    c.checkpoint.keep_last = 2
    return c

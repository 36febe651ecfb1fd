"""Audio-Cogito's recipe: self-distillation fine-tuning of Qwen3-Omni-30B-A3B's thinker with LoRA.

The paper (arXiv 2604.12527) fine-tunes the thinker with LoRA for 1 epoch at a peak learning rate of 1e-5
(cosine decay after a linear warmup) on its audited CoT traces (545k samples). Here: bf16 base weights,
float32 adapters of rank 16 on the LLM's attention projections and on every expert's gate/up/down
kernels (the router, norms, embeddings and the AuT audio encoder stay frozen), global batch 64 of
2,048 tokens with 30 s of audio each, so 1 epoch of 545k samples is 8,516 steps (set `train.steps` to
ceil(examples / batch_size) for your data). The mesh is laid out for a v5p-64 slice (32 chips):
experts over `expert=8`, everything else FSDP over the rest (`fsdp=-1` takes the remaining chips, so the
same file fits v5p-128 or larger); the batch is split over all chips.

    python -m cogito_jax.train --config configs/audio_cogito.py --workdir gs://BUCKET/audio_cogito \\
        --config.model.checkpoint=/path/Qwen3-Omni-30B-A3B-Thinking \\
        --config.data.dir=/path/records --config.data.tokenizer=/path/Qwen3-Omni-30B-A3B-Thinking
    python launch/aot_compile.py --config configs/audio_cogito.py --topology v5p:2x4x4   # fits a v5p-64?

`data.dir` is a folder written by `python -m data_prep.build` (the Cogito-pipe records).
`model.checkpoint` is the HF folder (or a `python -m cogito_jax.convert hf-to-orbax` folder) the
run starts from: its config.json gives the architecture and its weights the starting point.
"""

from ml_collections import ConfigDict

from cogito_jax.config import base_config

PAPER_SAMPLES = 545_000


def get_config(arg: str | None = None) -> ConfigDict:
    c = base_config()
    c.name = "audio_cogito"
    c.seed = 0
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.expert = 8
    c.sharding.rules = "fsdp"  # embed over fsdp, experts over expert, batch over every axis
    # moe_impl "alltoall": each shard's capacity buffers sent to the expert shards by all-to-all (overflow past
    # 1.25 x the mean load dropped). Compiled ahead of time for this v5p-64 mesh (bench/results/
    # aot_moe_impls_v5p64.txt), per chip and step: alltoall 13.0 GiB peak, 130 TFLOP, 2.3 TB HBM, 64 GB
    # collectives, roofline 0.84 s; "capacity" (GSPMD-partitioned buffers) 31.1 GiB, 8.9 TB HBM, 543 GB, 3.2 s;
    # "ragged" (lax.ragged_dot, which GSPMD runs on every token on every chip) 39.2 GiB, 15.8 PFLOP, 34 s;
    # "gmm" (a buffer per expert shard, megablox grouped matmuls) 13.1 GiB, 130 TFLOP, 3.0 TB HBM, 1.08 s.
    c.model = ConfigDict(dict(family="qwen3_omni_thinker", size="30b_a3b", checkpoint="", dtype="bfloat16",
                              param_dtype="bfloat16", remat="full", attn_impl="xla",
                              moe_impl="alltoall", moe_capacity_factor=1.25))
    c.data.update(dict(source="records", dir="", tokenizer="", seed=0, max_len=2048, use_thinking=True,
                       num_workers=8))
    c.train.trainable = "lora"
    c.train.batch_size = 64
    c.train.grad_accum = 1
    c.train.steps = -(-PAPER_SAMPLES // c.train.batch_size)  # 1 epoch
    c.train.log_every = 10
    c.lora.rank = 16
    c.lora.alpha = 32.0
    c.lora.dropout = 0.0
    c.lora.targets = r"^llm/layers/(self_attn/(q|k|v|o)_proj/kernel|mlp/(gate|up|down)_proj)$"
    c.optim.lr = 1e-5
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 250  # about 3 % of the epoch
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 1.0
    c.checkpoint.every = 500
    c.checkpoint.keep_last = 3
    return c

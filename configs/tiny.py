"""The tiny default: a small audio LM on the synthetic corpus, trains in seconds on CPU.

Every test and the demo start from this file. `arg` picks the model family's tiny size
(`configs/tiny.py:qwen2_audio`, the default, or `configs/tiny.py:qwen3_omni_thinker`).
"""

from ml_collections import ConfigDict

from cogito_jax.config import base_config


def get_config(arg: str | None = None) -> ConfigDict:
    c = base_config()
    c.name = "tiny"
    c.seed = 0
    c.mesh.data = -1
    c.sharding.rules = "fsdp"
    c.model = ConfigDict(dict(family=arg or "qwen2_audio", size="tiny", checkpoint="", dtype="float32",
                              param_dtype="float32", remat="none", attn_impl="xla",
                              moe_impl="ragged", moe_capacity_factor=1.25))
    # source: "synthetic" (generated into the workdir) or "records" (a dataset written by data_prep.build).
    c.data.update(dict(source="synthetic", num_train=256, num_heldout=64, seed=0, dir="", tokenizer="",
                       vocab_size=512, max_len=192, use_thinking=True, num_workers=0))
    c.train.steps = 20
    c.train.batch_size = 8
    c.train.log_every = 1
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 2
    c.checkpoint.every = 10
    c.checkpoint.keep_last = 2
    c.metrics.tensorboard = False
    return c

"""The recipe's own training path at tiny size: the Qwen3-Omni thinker family (AuT encoder + MoE decoder with 8
experts, top-2) fine-tuned with LoRA on the targets of `configs/audio_cogito.py` (attention projections and
every expert's gate / up / down), on the synthetic corpus, exactly as `configs/tiny.py` trains the dense model.
"""

from ml_collections import ConfigDict

from configs import audio_cogito, tiny


def get_config(arg: str | None = None) -> ConfigDict:
    c = tiny.get_config("qwen3_omni_thinker")
    c.name = "tiny_moe"
    recipe = audio_cogito.get_config()
    c.train.trainable = "lora"
    c.lora.update(dict(rank=4, alpha=8.0, dropout=0.0, targets=recipe.lora.targets))
    return c

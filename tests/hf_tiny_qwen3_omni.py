"""A tiny random HF Qwen3-Omni thinker (PyTorch) from `configs/models/qwen3_omni_thinker.py`, saved to disk."""

import pathlib

import torch

from configs.models.qwen3_omni_thinker import get_config


def thinker_config(arg: str = "tiny"):
    from transformers import Qwen3OmniMoeThinkerConfig

    return Qwen3OmniMoeThinkerConfig(**get_config(arg).to_dict())


def rescale_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Matrices ~ N(0, 1/fan_in), vectors perturbed by N(0, 0.01): activations stay O(1), so a wrong
    mapping or a wrong detail (e.g. a padding value) shows in the output instead of being damped away."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
            else:
                fan_in = p.shape[-1] if name.endswith(("gate_up_proj", "down_proj")) and p.dim() == 3 else p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * fan_in**-0.5)
    return module


def save_thinker(path: pathlib.Path, seed: int = 0) -> torch.nn.Module:
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    torch.manual_seed(seed)
    model = rescale_(Qwen3OmniMoeThinkerForConditionalGeneration(thinker_config()).eval(), seed)
    model.save_pretrained(str(path))
    return model

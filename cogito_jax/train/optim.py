"""Optimizer: AdamW with warmup + cosine/linear decay, global-norm clipping, a weight-decay mask, and
the choice of which parameters train (full, LoRA only, frozen audio encoder, projector only).

Which parameters train is decided by their path in the NNX state (``"llm/layers/attn/q_proj/kernel"``)
against regexes, so a preset works for every family whose modules follow the naming of
``cogito_jax.models.audio_lm`` (``audio_encoder``, ``projector``, ``llm``; under a
``cogito_jax.models.lora.LoRA`` wrapper the same names sit below ``base/`` and adapters start with
``lora_``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import optax
from flax import nnx

from cogito_jax.errors import ConfigError, check_choice, check_number
from cogito_jax.models.layers import path_str

# preset -> (include regexes, exclude regexes) over "/"-joined parameter paths.
TRAINABLE_PRESETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "full": ((r".*",), (r"(^|/)lora_",)),
    "lora": ((r"(^|/)lora_",), ()),
    "frozen_encoder": ((r".*",), (r"^(base/)?audio_encoder/", r"(^|/)lora_")),
    "adapter_only": ((r"^(base/)?projector/",), ()),
}


# Parameters that never train, whatever the preset (frozen in the reference implementation too).
ALWAYS_FROZEN = (r"(^|/)audio_encoder/embed_positions$",)


def trainable_filter(preset: str) -> Callable[[Sequence[Any], Any], bool]:
    """An NNX filter ``(path, value) -> bool`` selecting the trainable ``nnx.Param`` leaves."""
    include, exclude = TRAINABLE_PRESETS[check_choice("train.trainable", preset, tuple(TRAINABLE_PRESETS))]
    inc = [re.compile(p) for p in include]
    exc = [re.compile(p) for p in (*exclude, *ALWAYS_FROZEN)]

    def keep(path, value) -> bool:
        if not isinstance(value, nnx.Param):
            return False
        s = path_str(path)
        return any(r.search(s) for r in inc) and not any(r.search(s) for r in exc)

    return keep


def decay_mask(params: Any) -> Any:
    """True for leaves that get weight decay (matrices that are not norms or biases)."""

    def one(path, leaf):
        names = path_str(path).lower().split("/")
        no_decay = any("norm" in n or n in ("bias", "scale") or n.endswith("_bias") for n in names)
        return len(getattr(leaf, "shape", ())) >= 2 and not no_decay

    return jax.tree_util.tree_map_with_path(one, params)


def schedule(lr: float, steps: int, warmup_steps: int = 0, kind: str = "cosine",
             end_lr_ratio: float = 0.0) -> optax.Schedule:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then ``kind`` decay to ``lr * end_lr_ratio``."""
    decay_steps = max(steps - warmup_steps, 1)
    end = lr * end_lr_ratio
    if kind == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=end_lr_ratio)
    elif kind == "linear":
        decay = optax.linear_schedule(lr, end, decay_steps)
    elif kind == "constant":
        decay = optax.constant_schedule(lr)
    else:
        raise ValueError(f"schedule={kind!r} must be cosine, linear or constant")
    if warmup_steps <= 0:
        return decay
    warm = optax.linear_schedule(0.0, lr, warmup_steps)
    return optax.join_schedules([warm, decay], [warmup_steps])


def make_tx(optim_cfg: Any, steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax chain for ``config.optim`` over ``steps`` total optimizer steps."""
    if optim_cfg.name != "adamw":
        raise ValueError(f"optim.name={optim_cfg.name!r}: only 'adamw' is available")
    sched = schedule(optim_cfg.lr, steps, optim_cfg.warmup_steps, optim_cfg.schedule, optim_cfg.end_lr_ratio)
    parts = []
    if optim_cfg.clip_norm and optim_cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optim_cfg.clip_norm))
    parts.append(
        optax.adamw(sched, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                    weight_decay=optim_cfg.weight_decay, mask=decay_mask)
    )
    return optax.chain(*parts), sched


def validate(o: Mapping[str, Any]) -> None:
    """Checks the ``optim`` section: schedule name and every number finite and in its range."""
    if o.schedule not in ("cosine", "linear", "constant"):
        raise ConfigError(f"optim.schedule={o.schedule!r} must be cosine, linear or constant")
    check_number("optim.lr", o.lr, lambda v: v > 0, "> 0")
    check_number("optim.eps", o.eps, lambda v: v > 0, "> 0")
    for key in ("b1", "b2"):
        check_number(f"optim.{key}", o[key], lambda v: 0 <= v < 1, "in [0, 1)")
    check_number("optim.end_lr_ratio", o.end_lr_ratio, lambda v: 0 <= v <= 1, "in [0, 1]")
    for key in ("weight_decay", "clip_norm"):
        check_number(f"optim.{key}", o[key], lambda v: v >= 0, ">= 0 (0 = off)")
    if o.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps={o.warmup_steps} must be >= 0")

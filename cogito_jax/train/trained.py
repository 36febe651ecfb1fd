"""The model a run trains, from its config: built, initialised from a checkpoint folder, or loaded once trained.

:func:`load` gives sampling and evaluation a finished run's model: the newest intact checkpoint's parameters
(``Checkpointer.restore_params``: the parameters alone, verified against their checksums; no optimizer state is
read), with the tokenizer the run trained with and its model config. It creates no data, so it works after the
run's dataset is gone. The parameters that did not train come from where the run took them: ``model.checkpoint``
or the config's initialisation (seed ``cfg.seed``); a run with ``train.trainable="lora"`` has its adapters folded
into the base kernels.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
from flax import nnx

from cogito_jax import convert, sharding
from cogito_jax.data import chat, tokenizer as toklib
from cogito_jax.errors import ConfigError
from cogito_jax.models import registry
from cogito_jax.train import optim, trainer
from cogito_jax.train.checkpoint import Checkpointer, abstract_like


def model_overrides(cfg: Any) -> dict[str, Any]:
    """The run's model settings (``registry.OVERRIDES``: dtypes, remat, attention, MoE) that it sets."""
    return {k: cfg.model[k] for k in registry.OVERRIDES if cfg.model.get(k)}


def load_init(cfg: Any, path: str, mesh: jax.sharding.Mesh | None):
    """(model, config) of an HF checkpoint folder (or a ``convert hf-to-orbax`` folder) with the run's
    dtypes, remat and attention settings."""
    over = model_overrides(cfg)
    param_dtype = over.pop("param_dtype", "float32")
    compute_dtype = over.pop("dtype", param_dtype)
    kw = {} if mesh is None else dict(mesh=mesh, rules=sharding.resolve_rules(cfg.sharding.rules))
    return convert.load(path, param_dtype, compute_dtype=compute_dtype, **kw, **over)


def model_config(cfg: Any, tok: Any):
    fmt = chat.chat_format(cfg.model.family)
    audio_id = tok.convert_tokens_to_ids(fmt.audio_token)
    return registry.config_for(cfg.model, vocab_size=len(tok), audio_token_id=audio_id)


def tokenizer_dir(cfg: Any, workdir: str | pathlib.Path) -> pathlib.Path:
    """The folder of the tokenizer a run trained with: ``data.tokenizer``, else the one it made in its workdir."""
    tok = pathlib.Path(cfg.data.tokenizer) if cfg.data.get("tokenizer") else pathlib.Path(workdir) / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        raise ConfigError(f"the run in {str(workdir)!r} has no tokenizer: {str(tok)!r} holds no tokenizer.json")
    return tok


def load(cfg: Any, workdir: str | pathlib.Path, merge: bool = True):
    """(model, tokenizer, model config) of the run trained with ``cfg`` in ``workdir``, with its newest intact
    checkpoint's parameters (see the module docstring); FileNotFoundError when it has no checkpoint. With
    ``merge=False`` a LoRA run's model is the ``LoRA`` module (base and adapters apart), e.g. for a PEFT export."""
    tok = toklib.load(tokenizer_dir(cfg, workdir))
    mcfg = model_config(cfg, tok)
    base = (load_init(cfg, cfg.model.checkpoint, None)[0] if cfg.model.get("checkpoint")  # the frozen parts
            else registry.build(mcfg, cfg.seed))
    model = trainer.for_training(cfg, base)  # LoRA runs: base + adapters
    graphdef, params, rest = nnx.split(model, optim.trainable_filter(cfg.train.trainable), ...)
    ck = Checkpointer(workdir)
    try:
        restored = ck.restore_params(abstract_like(params))  # into the layout of the rest of the model
    finally:
        ck.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}")
    model = nnx.merge(graphdef, restored[1], rest)
    return (trainer.unwrap(model) if merge else model), tok, mcfg

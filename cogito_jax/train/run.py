"""Wires a run together from its config: data, tokenizer, model, input pipeline, trainer."""

from __future__ import annotations

import pathlib
from typing import Any

import jax

from cogito_jax import sharding
from cogito_jax.data import chat, pipeline, prepare, records, tokenizer as toklib
from cogito_jax.models import registry


def example_spec(cfg: Any, model_cfg: Any, tok: Any) -> pipeline.ExampleSpec:
    return pipeline.ExampleSpec(
        family=model_cfg.family, max_len=cfg.data.max_len, max_frames=model_cfg.audio.num_frames,
        n_mels=model_cfg.audio.num_mel_bins, use_thinking=cfg.data.use_thinking, pad_id=tok.pad_token_id,
    )


def model_config(cfg: Any, tok: Any):
    fmt = chat.chat_format(cfg.model.family)
    audio_id = tok.convert_tokens_to_ids(fmt.audio_token)
    return registry.config_for(cfg.model, vocab_size=len(tok), audio_token_id=audio_id)


def train(cfg: Any, workdir: str, *, init_from: str | None = None, init_model: Any = None) -> dict[str, Any]:
    """Trains ``cfg`` in ``workdir``; starts from an HF checkpoint folder (``init_from``), a given model
    (``init_model``, e.g. the base of a self-distillation round) or a fresh initialisation."""
    from cogito_jax.train import trainer

    paths = prepare.ensure_data(cfg, workdir)
    tok = toklib.load(paths["tokenizer"])
    mcfg = model_config(cfg, tok)
    spec = example_spec(cfg, mcfg, tok)
    per_process = cfg.train.batch_size // jax.process_count()
    train_data = pipeline.make_dataset(
        records.RecordSource(paths["train"], "train"), tokenizer_dir=str(paths["tokenizer"]), spec=spec,
        batch_size=per_process, seed=cfg.seed, num_workers=cfg.data.num_workers,
    )
    eval_data = None
    if paths["heldout"] is not None:
        def eval_data():
            ds = pipeline.make_dataset(records.RecordSource(paths["heldout"], "train"),
                                       tokenizer_dir=str(paths["tokenizer"]), spec=spec, batch_size=per_process,
                                       num_epochs=1, shuffle=False)
            return iter(ds)
    mesh = sharding.make_mesh(cfg.mesh)
    model = init_model
    if init_from:
        from cogito_jax.convert import load_hf

        model, _ = load_hf(init_from, mesh=mesh, rules=sharding.resolve_rules(cfg.sharding.rules))
    return trainer.run(cfg, workdir, lambda: registry.build(mcfg, cfg.seed), train_data, eval_data=eval_data,
                       mesh=mesh, model=model)


def load_trained(cfg: Any, workdir: str | pathlib.Path):
    """(model, tokenizer, model config) with the newest checkpoint's parameters of a finished run."""
    from flax import nnx

    from cogito_jax.train import optim
    from cogito_jax.train.checkpoint import Checkpointer
    from cogito_jax.train.step import TrainState

    paths = prepare.ensure_data(cfg, workdir)
    tok = toklib.load(paths["tokenizer"])
    mcfg = model_config(cfg, tok)
    model = registry.build(mcfg, cfg.seed)
    graphdef, params, rest = nnx.split(model, optim.trainable_filter(cfg.train.trainable), ...)
    tx, _ = optim.make_tx(cfg.optim, cfg.train.steps)
    sds = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # noqa: E731
    abstract = TrainState(jax.tree.map(sds, params), jax.tree.map(sds, jax.eval_shape(tx.init, params)),
                          jax.ShapeDtypeStruct((), jax.numpy.int32),
                          sds(jax.random.key_data(jax.random.key(0))))
    ck = Checkpointer(workdir)
    try:
        restored = ck.restore(abstract)
    finally:
        ck.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}")
    return nnx.merge(graphdef, TrainState(*restored[1]).params, rest), tok, mcfg

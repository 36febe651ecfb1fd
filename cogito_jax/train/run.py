"""Wires a run together from its config: data, tokenizer, model, input pipeline, trainer."""

from __future__ import annotations

import pathlib
from typing import Any

import jax

from cogito_jax import config as cfglib, sharding
from cogito_jax.data import chat, pipeline, prepare, records, tokenizer as toklib
from cogito_jax.models import registry


def example_spec(cfg: Any, model_cfg: Any, tok: Any) -> pipeline.ExampleSpec:
    return pipeline.ExampleSpec(
        family=model_cfg.family, max_len=cfg.data.max_len, max_frames=model_cfg.audio.num_frames,
        n_mels=model_cfg.audio.num_mel_bins, use_thinking=cfg.data.use_thinking, pad_id=tok.pad_token_id,
    )


def pipeline_options(cfg: Any, model_cfg: Any) -> dict[str, Any]:
    """``make_dataset`` keyword arguments from the ``data`` section (packing, audio buckets, workers)."""
    d = cfg.data
    opts = {k: d.get(k, v) for k, v in cfglib.DATA_PIPELINE_DEFAULTS.items()}
    buckets = tuple(opts["audio_buckets"])
    if buckets:
        from cogito_jax.models.whisper_encoder import WhisperEncoderConfig

        if isinstance(model_cfg.audio, WhisperEncoderConfig):
            raise cfglib.ConfigError(f"data.audio_buckets={buckets}: the {model_cfg.family} audio encoder takes "
                                     f"exactly {model_cfg.audio.num_frames} mel frames; leave audio_buckets empty")
        if buckets[-1] > model_cfg.audio.num_frames:
            raise cfglib.ConfigError(f"data.audio_buckets={buckets} go past the encoder's window of "
                                     f"{model_cfg.audio.num_frames} mel frames")
    return {"packing": bool(opts["packing"]), "max_clips_per_row": int(opts["max_clips_per_row"]),
            "audio_buckets": buckets, "num_workers": int(opts["num_workers"])}


def model_overrides(cfg: Any) -> dict[str, Any]:
    """The run's model settings (``registry.OVERRIDES``: dtypes, remat, attention, MoE) that it sets."""
    return {k: cfg.model[k] for k in registry.OVERRIDES if cfg.model.get(k)}


def load_init(cfg: Any, path: str, mesh: jax.sharding.Mesh | None):
    """(model, config) of an HF checkpoint folder (or a ``convert hf-to-orbax`` folder) with the run's
    dtypes, remat and attention settings."""
    from cogito_jax.convert import load

    over = model_overrides(cfg)
    param_dtype = over.pop("param_dtype", "float32")
    compute_dtype = over.pop("dtype", param_dtype)
    kw = {} if mesh is None else dict(mesh=mesh, rules=sharding.resolve_rules(cfg.sharding.rules))
    return load(path, param_dtype, compute_dtype=compute_dtype, **kw, **over)


def model_config(cfg: Any, tok: Any):
    fmt = chat.chat_format(cfg.model.family)
    audio_id = tok.convert_tokens_to_ids(fmt.audio_token)
    return registry.config_for(cfg.model, vocab_size=len(tok), audio_token_id=audio_id)


def train(cfg: Any, workdir: str, *, init_from: str | None = None, init_model: Any = None) -> dict[str, Any]:
    """Trains ``cfg`` in ``workdir``; starts from an HF checkpoint folder (``init_from``, by default the
    config's ``model.checkpoint``), a given model (``init_model``, e.g. the base of a self-distillation
    round) or a fresh initialisation."""
    from cogito_jax.train import trainer

    if init_model is None and not init_from:
        init_from = cfg.model.get("checkpoint") or None

    with sharding.main_process_first("prepare data"):  # one process generates, the others reuse
        paths = prepare.ensure_data(cfg, workdir)
    tok = toklib.load(paths["tokenizer"])
    mesh = sharding.make_mesh(cfg.mesh)
    model = init_model
    if init_from:
        model, mcfg = load_init(cfg, init_from, mesh)
    else:
        mcfg = model_config(cfg, tok)
    spec = example_spec(cfg, mcfg, tok)
    per_process = cfg.train.batch_size // jax.process_count()
    check_dataset(records.RecordSource(paths["train"], "train"), spec, "training")
    if paths["heldout"] is not None:
        check_dataset(records.RecordSource(paths["heldout"], "train"), spec, "held-out")
    train_data = pipeline.make_dataset(
        records.RecordSource(paths["train"], "train"), tokenizer_dir=str(paths["tokenizer"]), spec=spec,
        batch_size=per_process, seed=cfg.seed, **pipeline_options(cfg, mcfg),
    )
    eval_data = None
    if paths["heldout"] is not None:
        def eval_data():
            ds = pipeline.make_dataset(records.RecordSource(paths["heldout"], "train"),
                                       tokenizer_dir=str(paths["tokenizer"]), spec=spec, batch_size=per_process,
                                       num_epochs=1, shuffle=False)
            return iter(ds)
    return trainer.run(cfg, workdir, lambda: registry.build(mcfg, cfg.seed), train_data, eval_data=eval_data,
                       mesh=mesh, model=model)


def check_dataset(source: records.RecordSource, spec: pipeline.ExampleSpec, what: str) -> None:
    """ConfigError when a dataset is empty or its log-mel has another number of bins than the model takes."""
    if len(source) == 0:
        raise cfglib.ConfigError(f"the {what} dataset {str(source.dataset_dir)!r} has no records")
    mel = source[0].get("mel")
    if mel is not None and mel.shape[-1] != spec.n_mels:
        raise cfglib.ConfigError(
            f"the {what} dataset {str(source.dataset_dir)!r} holds {mel.shape[-1]}-bin log-mel but the model takes "
            f"{spec.n_mels} bins: rebuild it with data_prep.build --config.features.n_mels={spec.n_mels}")


def load_trained(cfg: Any, workdir: str | pathlib.Path):
    """(model, tokenizer, model config) with the newest checkpoint's parameters of a finished run."""
    from flax import nnx

    from cogito_jax.train import optim, trainer
    from cogito_jax.train.checkpoint import Checkpointer
    from cogito_jax.train.step import TrainState

    paths = prepare.ensure_data(cfg, workdir)
    tok = toklib.load(paths["tokenizer"])
    mcfg = model_config(cfg, tok)
    base = (load_init(cfg, cfg.model.checkpoint, None)[0] if cfg.model.get("checkpoint")  # frozen parts
            else registry.build(mcfg, cfg.seed))
    model = trainer.for_training(cfg, base)  # LoRA runs: base + adapters
    graphdef, params, rest = nnx.split(model, optim.trainable_filter(cfg.train.trainable), ...)
    tx, _ = optim.make_tx(cfg.optim, cfg.train.steps)
    sds = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # noqa: E731
    abstract = TrainState(jax.tree.map(sds, params), jax.tree.map(sds, jax.eval_shape(tx.init, params)),
                          jax.ShapeDtypeStruct((), jax.numpy.int32))
    ck = Checkpointer(workdir)
    try:
        restored = ck.restore(abstract)
    finally:
        ck.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}")
    return trainer.unwrap(nnx.merge(graphdef, TrainState(*restored[1]).params, rest)), tok, mcfg

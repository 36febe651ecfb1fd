"""Wires a run together from its config: data, tokenizer, model, input pipeline, trainer."""

from __future__ import annotations

from typing import Any

import jax

from cogito_jax import config as cfglib, errors, sharding
from cogito_jax.data import pipeline, prepare, records, tokenizer as toklib
from cogito_jax.models import registry
from cogito_jax.models.whisper_encoder import WhisperEncoderConfig
from cogito_jax.train import trainer
from cogito_jax.train.trained import load_init, model_config


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
        if isinstance(model_cfg.audio, WhisperEncoderConfig):
            raise errors.ConfigError(f"data.audio_buckets={buckets}: the {model_cfg.family} audio encoder takes "
                                     f"exactly {model_cfg.audio.num_frames} mel frames; leave audio_buckets empty")
        if buckets[-1] > model_cfg.audio.num_frames:
            raise errors.ConfigError(f"data.audio_buckets={buckets} go past the encoder's window of "
                                     f"{model_cfg.audio.num_frames} mel frames")
    return {"packing": bool(opts["packing"]), "max_clips_per_row": int(opts["max_clips_per_row"]),
            "audio_buckets": buckets, "num_workers": int(opts["num_workers"])}


def train(cfg: Any, workdir: str, *, init_from: str | None = None, init_model: Any = None) -> dict[str, Any]:
    """Trains ``cfg`` in ``workdir``; starts from an HF checkpoint folder (``init_from``, by default the
    config's ``model.checkpoint``), a given model (``init_model``, e.g. the base of a self-distillation
    round) or a fresh initialisation."""
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
        raise errors.ConfigError(f"the {what} dataset {str(source.dataset_dir)!r} has no records")
    mel = source[0].get("mel")
    if mel is not None and mel.shape[-1] != spec.n_mels:
        raise errors.ConfigError(
            f"the {what} dataset {str(source.dataset_dir)!r} holds {mel.shape[-1]}-bin log-mel but the model takes "
            f"{spec.n_mels} bins: rebuild it with data_prep.build --config.features.n_mels={spec.n_mels}")

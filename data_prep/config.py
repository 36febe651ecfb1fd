"""The schema of data-prep configs (``configs/data/*.py`` start from :func:`base_data_config`)."""

from __future__ import annotations

from ml_collections import ConfigDict

from cogito_jax.config import ConfigError, check_schema


def base_data_config() -> ConfigDict:
    c = ConfigDict()
    c.name = "cogito_data"
    c.seed = 0
    c.source = ConfigDict(dict(
        kind="manifest",  # manifest | synthetic
        manifest="",  # JSONL path (kind=manifest)
        num_items=200,  # kind=synthetic
        split="train",  # kind=synthetic: which generator split (train | heldout)
    ))
    c.filters = ConfigDict(dict(
        min_seconds=0.5,
        max_seconds=60.0,
        min_sample_rate=8000,
        min_active_ratio=0.05,
        max_clip_ratio=0.05,
        min_lufs=-70.0,
        dedup=True,
        contamination_meta=(),  # benchmark meta files (MMAR/MMAU) whose clips must not be used
    ))
    c.features = ConfigDict(dict(n_mels=128, max_seconds=30.0))
    c.annotate = ConfigDict(dict(model="", seed_questions="", questions_per_clip=2))
    c.think = ConfigDict(dict(model="", num_samples=4, temperature=1.0, max_new_tokens=1024))
    c.audit = ConfigDict(dict(judge_url="", judge_model="", judge_local_model="", max_retries=5, timeout_s=60.0))
    c.output = ConfigDict(dict(heldout_fraction=0.0, split_seed=0))
    c.workers = 0
    return c


def validate_data_config(cfg: ConfigDict) -> ConfigDict:
    check_schema(cfg, base_data_config())
    if cfg.source.kind not in ("manifest", "synthetic"):
        raise ConfigError(f"source.kind={cfg.source.kind!r} must be manifest or synthetic")
    if cfg.source.kind == "manifest" and not cfg.source.manifest:
        raise ConfigError("source.kind=manifest needs --config.source.manifest=PATH.jsonl")
    if cfg.filters.min_seconds > cfg.filters.max_seconds:
        f = cfg.filters
        raise ConfigError(f"filters.min_seconds={f.min_seconds} > filters.max_seconds={f.max_seconds}")
    if not 0.0 <= cfg.output.heldout_fraction < 1.0:
        raise ConfigError(f"output.heldout_fraction={cfg.output.heldout_fraction} must be in [0, 1)")
    return cfg

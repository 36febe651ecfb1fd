"""The schema of data-prep configs (``configs/data/*.py`` start from :func:`base_data_config`)."""

from __future__ import annotations

from collections.abc import Sequence

from ml_collections import ConfigDict

from cogito_jax.config import DISTRIBUTED_DEFAULTS, check_schema
from cogito_jax.data import chat
from cogito_jax.errors import ConfigError, check_choice, check_number, is_int
from cogito_jax.judge import check_settings

LONG_CLIPS = ("auto", "truncate", "chunks")
MAX_QUESTIONS_PER_CLIP = 3
RUNNERS = ("local", "beam")  # local: data_prep.build; beam: data_prep.beam_pipeline (the CPU stages)
# options: pipeline options as strings; clips_per_shard: manifest items per output shard; select_groups: the
# GroupByKey groups of the dedup / selection step (a worker process reads the contamination meta, and decodes
# its benchmark clips, the first time it selects a group); audio_prefix_map: "LOCAL=REMOTE" prefixes: a clip
# under LOCAL is read by the workers from REMOTE + the rest of its path.
# The audio-fingerprint contamination guard (cogito_jax.data.fingerprint): a clip matches a benchmark clip when at
# least this share of the smaller landmark count agrees at one time offset, and at least this many landmarks do
# (bench/contamination.py measures recall and false positives at these values).
FINGERPRINT_THRESHOLD = 0.12
FINGERPRINT_MIN_LANDMARKS = 40
BEAM_DEFAULTS = dict(options=(), clips_per_shard=1000, select_groups=16, audio_prefix_map=())


def base_data_config() -> ConfigDict:
    c = ConfigDict()
    c.name = "cogito_data"
    c.seed = 0
    # the model stages across JAX processes: launch/local.sh sets them; on a TPU pod set auto=True
    c.distributed = ConfigDict(dict(DISTRIBUTED_DEFAULTS))
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
        # audio fingerprints of those clips: a clip whose landmarks match one (re-encoded, resampled, re-levelled,
        # noisy, trimmed or inside a longer recording) is rejected; 0 turns the fingerprint check off
        fingerprint_threshold=FINGERPRINT_THRESHOLD,
        fingerprint_min_landmarks=FINGERPRINT_MIN_LANDMARKS,
    ))
    c.features = ConfigDict(dict(
        n_mels=128,
        max_seconds=30.0,  # audio kept per clip
        # clips over 30 s: "truncate" (the first 30 s: qwen2_audio's Whisper encoder takes one 30 s window),
        # "chunks" (every 30 s window, concatenated along frames: qwen3_omni_thinker's AuT windows the
        # whole clip itself), or "auto" (by the family of think.model; truncate without one)
        long_clips="auto",
    ))
    c.annotate = ConfigDict(dict(
        model="",  # checkpoint folder (HF or Orbax, with its tokenizer) of the instruct model
        seed_questions="",  # JSONL pool of expert questions {question, choices, answer[, metadata]}
        questions_per_clip=2,  # asked for; 1-3
        num_shots=3,  # seed questions shown per prompt
        only_missing=True,  # annotate only clips whose manifest has no question
        temperature=0.0,
        max_new_tokens=512,
        batch_size=8,
        max_description_chars=2000,
    ))
    c.think = ConfigDict(dict(
        model="", num_samples=4, temperature=1.0, top_p=1.0, max_new_tokens=1024, batch_size=8,
        system="challenge",  # challenge | default | none
    ))
    c.audit = ConfigDict(dict(
        judge_url="",  # an OpenAI-compatible endpoint (``.../v1``) ...
        judge_model="",  # ... and the model name it serves
        judge_local_model="",  # or a checkpoint folder run through the sampling engine
        api_key_env="OPENAI_API_KEY",
        max_retries=5,  # per HTTP call; and judge runs asked again after an unreadable verdict
        timeout_s=60.0,
        backoff_s=1.0,
        requests_per_s=0.0,  # 0: no rate limit
        workers=4,  # concurrent HTTP judge calls
        judge_max_tokens=256,
        min_thinking_chars=20,
        max_thinking_chars=10_000,
        max_traces_per_question=1,
    ))
    c.output = ConfigDict(dict(heldout_fraction=0.0, split_seed=0))
    c.workers = 0
    c.runner = "local"  # local | beam
    c.beam = ConfigDict(dict(BEAM_DEFAULTS))
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
    f = cfg.filters
    check_number("filters.fingerprint_threshold", f.fingerprint_threshold, lambda v: 0 <= v <= 1, "in [0, 1]")
    check_number("filters.fingerprint_min_landmarks", f.fingerprint_min_landmarks,
                 lambda v: is_int(v) and v >= 1, "that is a whole number >= 1")
    if cfg.features.long_clips not in LONG_CLIPS:
        raise ConfigError(f"features.long_clips={cfg.features.long_clips!r} must be one of {LONG_CLIPS}")
    if not 1 <= cfg.annotate.questions_per_clip <= MAX_QUESTIONS_PER_CLIP:
        raise ConfigError(f"annotate.questions_per_clip={cfg.annotate.questions_per_clip} must be in "
                          f"1-{MAX_QUESTIONS_PER_CLIP}")
    if cfg.annotate.model and not cfg.annotate.seed_questions:
        raise ConfigError("annotate.model is set but annotate.seed_questions is not: give a JSONL pool of seed "
                          "questions (--config.annotate.seed_questions=SEEDS.jsonl)")
    check_choice("think.system", cfg.think.system, tuple(chat.SYSTEMS))
    a = cfg.audit
    if a.judge_url and a.judge_local_model:
        raise ConfigError(f"audit.judge_url={a.judge_url!r} and audit.judge_local_model={a.judge_local_model!r} "
                          "are both set; give one judge")
    if a.judge_url and not a.judge_model:
        raise ConfigError(f"audit.judge_url={a.judge_url!r} needs audit.judge_model (the model name it serves)")
    if a.judge_url:
        check_settings(a.judge_url, prefix="audit.", timeout_s=a.timeout_s, backoff_s=a.backoff_s,
                       requests_per_s=a.requests_per_s)
    for key in ("num_samples", "batch_size", "max_new_tokens"):
        if cfg.think[key] < 1:
            raise ConfigError(f"think.{key}={cfg.think[key]} must be >= 1")
    for key in ("num_shots", "batch_size", "max_new_tokens"):
        if cfg.annotate[key] < 1:
            raise ConfigError(f"annotate.{key}={cfg.annotate[key]} must be >= 1")
    if a.max_traces_per_question < 1 or a.workers < 1 or a.max_retries < 0:
        raise ConfigError(f"audit.max_traces_per_question={a.max_traces_per_question} and audit.workers="
                          f"{a.workers} must be >= 1, audit.max_retries={a.max_retries} >= 0")
    if not 0.0 <= cfg.output.heldout_fraction < 1.0:
        raise ConfigError(f"output.heldout_fraction={cfg.output.heldout_fraction} must be in [0, 1)")
    return validate_beam_config(cfg)


def validate_beam_config(cfg: ConfigDict) -> ConfigDict:
    """Raises ConfigError naming a bad ``runner`` / ``beam.*`` value."""
    if cfg.runner not in RUNNERS:
        raise ConfigError(f"runner={cfg.runner!r} must be one of {', '.join(RUNNERS)}")
    b = cfg.beam
    for key in ("clips_per_shard", "select_groups"):
        if isinstance(b[key], bool) or not isinstance(b[key], int) or b[key] < 1:
            raise ConfigError(f"beam.{key}={b[key]!r} must be an integer >= 1")
    if isinstance(b.options, str) or any(not isinstance(o, str) or not o.startswith("--") for o in b.options):
        raise ConfigError(f"beam.options={b.options!r} must be a tuple of '--name=value' strings")
    prefix_map(b.audio_prefix_map)
    return cfg


def prefix_map(entries: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``beam.audio_prefix_map`` (``("LOCAL=REMOTE", ...)``) as pairs; ConfigError for an entry without both
    sides."""
    if isinstance(entries, str):
        raise ConfigError(f"beam.audio_prefix_map={entries!r} must be a tuple of 'LOCAL=REMOTE' strings")
    pairs = []
    for e in entries:
        local, sep, remote = str(e).partition("=")
        if not sep or not local or not remote:
            raise ConfigError(f"beam.audio_prefix_map entry {e!r} must look like '/local/prefix=gs://bucket/prefix'")
        pairs.append((local, remote))
    return tuple(pairs)

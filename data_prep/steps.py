"""The CPU steps of a build that the local runner (``data_prep.build``) and the Beam pipeline
(``data_prep.beam_pipeline``) share, so each decision has one implementation: the source's items, the clip
settings of a data config, the selection of the processed clips, and the rule for the output's dataset folder.
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Any

import numpy as np

from cogito_jax import errors
from cogito_jax.data import clips, fingerprint, synthetic
from cogito_jax.errors import ConfigError
from cogito_jax.eval.benchmarks import BenchmarkError
from data_prep import filters
from data_prep.sources import manifest as manifest_lib
from data_prep.stages.generation import family_of

DATASET_MARKER = "COGITO_BUILD"  # inside DIR/dataset: the folder is this build's to replace
OWN_MARKERS = (DATASET_MARKER, "BUILD_KEY")  # either proves it (BUILD_KEY: datasets of earlier versions)
CHUNKED_FAMILIES = ("qwen3_omni_thinker",)  # audio encoders that take a whole clip and window it themselves


def source_items(cfg, out: pathlib.Path) -> tuple[list[dict], list[dict]]:
    """(items, rejections) from the configured source; the synthetic corpus is written to disk first (under
    ``out/cache/synthetic``, once)."""
    path = pathlib.Path(cfg.source.manifest) if cfg.source.kind == "manifest" else None
    if cfg.source.kind == "synthetic":
        path = out / "cache" / "synthetic" / "manifest.jsonl"
        if not path.exists():
            synthetic.write_corpus(path.parent, cfg.source.num_items, seed=cfg.seed, split=cfg.source.split)
    if not path.exists():
        errors.usage_error(f"manifest {str(path)!r} does not exist")
    items, rejected = [], []
    for entry in manifest_lib.read_manifest(path):
        if isinstance(entry, manifest_lib.Rejection):
            rejected.append({"id": str(entry.id), "reason": entry.reason})
        else:
            items.append(entry)
    return items, rejected


def long_clip_mode(cfg) -> str:
    """``truncate`` or ``chunks``: how clips over 30 s become log-mel (``features.long_clips``; ``auto`` follows
    the family of ``think.model``, ``truncate`` without one)."""
    mode = cfg.features.long_clips
    if mode != "auto":
        return mode
    if not cfg.think.model:
        return "truncate"
    return "chunks" if family_of(cfg.think.model, "think.model") in CHUNKED_FAMILIES else "truncate"


def feature_config(cfg) -> clips.Features:
    """The :class:`cogito_jax.data.clips.Features` of a data config's ``features`` section (``long_clips`` resolved
    by :func:`long_clip_mode`)."""
    f = cfg.features
    return clips.Features(n_mels=f.n_mels, max_seconds=f.max_seconds, long_clips=long_clip_mode(cfg))


def filter_config(cfg) -> clips.FilterConfig:
    """The :class:`cogito_jax.data.clips.FilterConfig` of a data config's ``filters`` section."""
    return clips.FilterConfig.from_mapping(cfg.filters.to_dict())


def select_items(items: list[dict], rows: dict[str, dict], cfg) -> tuple[list[dict], list[dict]]:
    """(kept items, rejections) in manifest order from the per-clip rows: failed clips, benchmark
    contamination (audio hash, the row's fingerprint ``match``, or source URL + time span from the item's
    metadata), exact duplicates (the first in manifest order is kept), items without a question."""
    guard = contamination_guard(tuple(str(m) for m in cfg.filters.contamination_meta))
    seen: dict[str, str] = {}
    kept, rejected = [], []
    for item in items:
        row = rows[item["id"]]
        contamination = guard.check_item(item, row["hash"], row.get("match"), cfg.filters.fingerprint_threshold,
                                         cfg.filters.fingerprint_min_landmarks) if row["ok"] else None
        if not row["ok"]:
            rejected.append({"id": item["id"], "reason": row["reason"]})
        elif contamination:
            rejected.append({"id": item["id"], "reason": contamination})
        elif cfg.filters.dedup and row["hash"] in seen:
            rejected.append({"id": item["id"], "reason": f"duplicate_of:{seen[row['hash']]}"})
        elif not item.get("question") and not cfg.annotate.model:
            rejected.append({"id": item["id"], "reason": "no_question: manifest has none and no annotator is set"})
        else:
            seen[row["hash"]] = item["id"]
            kept.append(item)
    return kept, rejected


@functools.lru_cache(maxsize=4)
def contamination_guard(meta_files: tuple[str, ...]) -> filters.ContaminationGuard:
    """The :class:`data_prep.filters.ContaminationGuard` of benchmark meta files (read once per process)."""
    try:
        return filters.ContaminationGuard.from_meta(meta_files)
    except BenchmarkError as e:
        raise ConfigError(f"filters.contamination_meta: {e}") from None


def fingerprints(cfg, cache_dir: pathlib.Path) -> fingerprint.Index | None:
    """The fingerprint index of ``filters.contamination_meta``'s benchmark clips for this build's log-mel (built or
    read from ``cache_dir``), or None when there is no meta file or ``filters.fingerprint_threshold`` is 0."""
    metas = tuple(str(m) for m in cfg.filters.contamination_meta)
    if not metas or not cfg.filters.fingerprint_threshold:
        return None
    try:
        return filters.fingerprint_index(metas, cfg.features.n_mels, cache_dir)
    except (BenchmarkError, OSError) as e:
        raise ConfigError(f"filters.contamination_meta: {e}") from None


def match_row(index: fingerprint.Index | None, mel_tf: Any) -> dict:
    """The fields a clip's row gets from a fingerprint lookup of its log-mel ``[frames, n_mels]``: the best match
    (or None) and the index it was looked up in; nothing without an index or a log-mel."""
    if index is None or mel_tf is None:
        return {}
    found = index.match(np.asarray(mel_tf, np.float32).T)
    return {"match": None if found is None else found.as_row(), "fingerprints": index.key}


def check_dataset_dir(folder: pathlib.Path) -> None:
    """ConfigError unless ``folder`` is absent, empty, or a dataset folder a build wrote (its marker inside)."""
    if not os.path.lexists(folder):
        return
    if not folder.is_symlink() and folder.is_dir():
        if any((folder / m).is_file() for m in OWN_MARKERS) or not any(folder.iterdir()):
            return
    raise foreign_dataset_error(folder)


def foreign_dataset_error(folder: str | pathlib.Path) -> ConfigError:
    """The one-line error for a dataset folder the build did not write."""
    return ConfigError(f"{folder} exists and is not a dataset folder this build wrote (no {DATASET_MARKER} "
                       "inside); it is left as it is: move it away or choose another --out")

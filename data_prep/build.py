"""Cogito-pipe driver: `python -m data_prep.build --config configs/data/X.py --out DIR [--config.a.b=v]`.

Stages, each cached under ``DIR/cache`` so a re-run skips finished work: read the source (a manifest, or the
synthetic corpus written as wav files + manifest) -> decode, quality-filter and extract log-mel per clip ->
exact dedup and the benchmark-contamination guard (audio hash, audio fingerprint, and source URL + time span,
against ``filters.contamination_meta``; see ``data_prep.filters``) -> question/answer (the manifest's own, or
the annotator model's) -> [thinking + audit with models, see ``data_prep.stages``] -> a TFDS array_record
dataset under ``DIR/dataset`` and ``DIR/report.json`` (``kept``, ``rejected`` = one ``{id, reason}`` per
rejected item, counts per stage and reason, durations, modality mix) plus ``DIR/report.md`` with plots.

Clips over 30 s (``features.long_clips``): ``truncate`` keeps the first 30 s, the one window
qwen2_audio's Whisper encoder takes (its HF processor truncates too); ``chunks`` keeps up to
``features.max_seconds`` as the log-mel of each 30 s window (``audio.log_mel_chunks``), concatenated
along frames into the record's one unpadded ``mel``, which qwen3_omni_thinker's AuT encoder windows by
itself; ``auto`` picks by the family of ``think.model`` (``truncate`` without one). Consumers crop the
mel to their model's frame window.

Under ``launch/local.sh N python -m data_prep.build ...`` process 0 reads the source and decodes, filters and
writes the log-mel of every clip while the others wait (``main_process_first``); then every process reads that
cache, takes its share of the model stages (see ``data_prep.stages``), and process 0 writes the dataset and
the report, the same as a 1-process run's.

A clip's cached row (``cache/audio.jsonl``) and log-mel (``cache/mel/<hash of the id>.npy``; ids never name
files) are reused only while its key holds: the resolved audio path, the file's size and mtime, and the feature
and filter settings; anything else redoes the clip, kept or rejected. Any failure inside one clip's processing
rejects that clip alone. ``DIR/dataset`` is replaced only when it is this build's own (its ``COGITO_BUILD``
marker inside); a folder there without it stops the build before any work, and nothing is deleted. A row's
fingerprint match is redone from the cached log-mel when the benchmark fingerprint index changes.

A clip's processing is :func:`cogito_jax.data.clips.process_clip`; the steps this runner shares with the Beam
pipeline (``runner=beam``, :mod:`data_prep.beam_pipeline`) are in :mod:`data_prep.steps`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import time
from typing import Any

import jax
import numpy as np
from absl import flags
from tqdm.auto import tqdm

from cogito_jax import cli, errors, sharding
from cogito_jax.data import clips, records
from data_prep import beam_pipeline, report as report_lib, stages, steps
from data_prep.config import validate_data_config
from data_prep.stages.cache import StageCache, mel_path


def _audio_stage(items: list[dict], cfg, out: pathlib.Path) -> tuple[StageCache, int]:
    """Decode + quality filters + log-mel for every item whose cached row has another :func:`clip_key`:
    ``(the cache, how many clips this call processed)``."""
    cache = StageCache(out / "cache" / "audio.jsonl")
    (out / "cache" / "mel").mkdir(parents=True, exist_ok=True)
    features, fcfg = steps.feature_config(cfg), steps.filter_config(cfg)
    settings = json.dumps([features.key(), dataclasses.asdict(fcfg)], sort_keys=True)
    keys = {it["id"]: clip_key(it["audio_path"], settings) for it in items}
    todo = [it for it in items if cache.rows.get(it["id"], {}).get("key") != keys[it["id"]]]
    index = steps.fingerprints(cfg, out / "cache")
    for item in tqdm(todo, desc="decode + filter + log-mel", unit="clip", disable=not todo):
        row, mel = clips.process_clip(item, features, fcfg)
        path = mel_path(out, item["id"])
        if mel is None:
            path.unlink(missing_ok=True)
        else:
            np.save(path, mel)
        cache.add({**row, **steps.match_row(index, mel), "key": keys[item["id"]]})
    # clips cached before the benchmark set (or the fingerprint settings) changed: looked up again from their log-mel
    stale = [it for it in items if cache.rows[it["id"]]["ok"]
             and cache.rows[it["id"]].get("fingerprints") != (index.key if index else None)]
    for item in tqdm(stale, desc="fingerprint lookup", unit="clip", disable=not stale):
        row = {k: v for k, v in cache.rows[item["id"]].items() if k not in ("match", "fingerprints")}
        cache.add({**row, **steps.match_row(index, np.load(mel_path(out, item["id"])) if index else None)})
    cache.close()
    return cache, len(todo)


def clip_key(audio_path: str, settings: str) -> str:
    """What a clip's cached row and log-mel depend on: the resolved file with its size and mtime, and ``settings``
    (the feature and filter settings); a file that cannot be looked at is keyed by its path alone."""
    try:
        resolved = os.path.realpath(audio_path)
        st = os.stat(resolved)
        ident = [resolved, st.st_size, st.st_mtime_ns]
    except (OSError, ValueError):
        ident = [str(audio_path), None]
    return hashlib.sha256(json.dumps([ident, settings]).encode()).hexdigest()


def build(cfg, out_dir: str, *, across_processes: bool = False) -> dict[str, Any]:
    """Runs the configured stages; returns the report (also written to ``out_dir/report.json``).

    ``across_processes`` (the CLI under ``launch/local.sh`` or on a pod): every process of the JAX job calls
    this together; process 0 does the CPU stages while the others wait, the model stages are shared. Without
    it the calling process does all of it alone (e.g. inside another ``main_process_first``).
    """
    out = pathlib.Path(out_dir)
    steps.check_dataset_dir(out / "dataset")
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    first = not across_processes or jax.process_index() == 0
    together = (sharding.main_process_first("cogito-pipe: source + audio") if across_processes
                else contextlib.nullcontext())
    with together:  # process 0 does it; the others read its cache
        t = time.time()
        items, rejected = steps.source_items(cfg, out)
        times["source"] = time.time() - t

        t = time.time()
        audio_cache, processed = _audio_stage(items, cfg, out) if first else (StageCache(
            out / "cache" / "audio.jsonl", writable=False), 0)
        times["audio"] = time.time() - t

    t = time.time()
    kept_items, more_rejected = steps.select_items(items, audio_cache.rows, cfg)
    rejected.extend(more_rejected)
    times["dedup+qa"] = time.time() - t
    stage_reports: dict[str, Any] = {}
    if stages.configured(cfg):
        kept_items, more_rejected, stage_reports = stages.run(kept_items, cfg, out, audio_cache.rows, times)
        rejected.extend(more_rejected)

    def make_records():
        for item in kept_items:
            yield records.item_record(item, np.load(mel_path(out, item.get("clip_id", item["id"]))))

    if not first:  # every process has the merged results; process 0 alone writes the dataset and the report
        return report_lib.summarize(items, kept_items, rejected, audio_cache.rows, times, None, stages=stage_reports,
                                    processed=processed)
    t = time.time()
    dataset_dir = _write_if_changed(out, cfg, kept_items, audio_cache.rows, make_records)
    times["write"] = time.time() - t
    report = report_lib.summarize(items, kept_items, rejected, audio_cache.rows, times, dataset_dir,
                                  stages=stage_reports, processed=processed)
    report_lib.write(report, out)
    return report


def _write_if_changed(out: pathlib.Path, cfg, kept_items: list[dict], rows: dict[str, dict], make_records
                      ) -> pathlib.Path | None:
    """Writes the dataset unless one with exactly these items, clips and this config already exists; with no kept
    item there is no dataset (None, and an earlier one is removed). Only a folder the build wrote is replaced."""
    content = [[i["id"], i.get("clip_id"), rows[i.get("clip_id", i["id"])].get("key"), i["question"], i["choices"],
                i["answer"], i.get("thinking", "")] for i in kept_items]
    key = hashlib.sha256(json.dumps([content, cfg.to_dict()], sort_keys=True, default=str).encode()).hexdigest()
    folder = out / "dataset"
    stamp = folder / "BUILD_KEY"
    steps.check_dataset_dir(folder)
    existing = next(folder.rglob("dataset_info.json"), None) if folder.exists() else None
    if existing is not None and stamp.exists() and stamp.read_text() == key:
        return existing.parent
    if folder.exists():
        shutil.rmtree(folder)
    if not kept_items:
        return None
    folder.mkdir(parents=True)
    (folder / steps.DATASET_MARKER).write_text("written by data_prep.build, which replaces this folder on a re-run\n")
    path = records.write_dataset(folder, {"train": make_records}, feat_dim=cfg.features.n_mels,
                                 description=f"Cogito-pipe build of {cfg.source.kind} source")
    stamp.write_text(key)
    return path


def main(cfg, out: str | None) -> int:
    if not out:
        errors.usage_error("--out is required")
    if sharding.maybe_initialize_distributed(cfg.distributed) and cfg.runner == "beam":
        errors.usage_error("runner=beam runs in one process: start it without launch/local.sh (several JAX "
                           "processes share the model stages of runner=local only)")
    if cfg.runner == "beam":
        report = beam_pipeline.build(cfg, out)
    else:
        report = build(cfg, out, across_processes=True)
    reasons = collections.Counter(r["reason"].split(":")[0] for r in report["rejected"])
    if jax.process_index() != 0:
        print(f"process {jax.process_index()}: model stages done (kept {report['kept']} items); process 0 writes the "
              "dataset and the report")
        return 0
    where = f"dataset in {report['dataset_dir']}" if report["dataset_dir"] else "no dataset written"
    print(f"kept {report['kept']} items, rejected {len(report['rejected'])} ({dict(reasons)}); {where}")
    if reasons.get("judge_failed"):
        print(f"{reasons['judge_failed']} questions wait for a judge verdict (judge calls failed); run the same "
              "command again to retry them")
    return 0


if __name__ == "__main__":
    _OUT = flags.DEFINE_string("out", None, "Output folder (dataset, report, cache).")
    cli.define_config_flag()
    cli.run_main(lambda cfg: main(cfg, _OUT.value), validate_fn=validate_data_config, uses_devices=False)

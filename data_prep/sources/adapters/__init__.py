"""Source adapters: the published metadata of Audio-Cogito's sources -> contract-6 manifests.

``convert(kind, meta, audio_dir, out)`` reads one metadata file of ``kind`` (see ``ADAPTERS``), looks up each
row's clip under ``audio_dir`` and writes a manifest (``id``, ``audio_path``, ``modality``, ``metadata``; no
question: the annotator writes those later) plus ``<out stem>.skipped.jsonl`` with one ``{id, reason}`` per row
that became no item (no audio file, a malformed row, a repeated id). Ids are stable, built from the source's
own ids; ``metadata`` has ``source``, the source's text (captions, labels, transcript, emotion, ...) and, where
the source has one, ``url`` + ``timestamp`` in the form the contamination guard (data_prep.filters) matches.
CLI: ``python -m data_prep.sources.adapters --kind audiocaps --meta val.csv --audio_dir DIR --out M.jsonl``.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

from data_prep.sources.adapters import music, sound, speech
from data_prep.sources.adapters.common import (
    MODALITIES,
    Adapter,
    AdapterError,
    Entry,
    Options,
    Skip,
    Summary,
    pattern_fields,
    write_manifest,
)

__all__ = ["ADAPTERS", "MODALITIES", "Adapter", "AdapterError", "Entry", "Options", "Skip", "Summary", "convert",
           "write_manifest"]

ADAPTERS: dict[str, Adapter] = {a.name: a for a in (
    Adapter("audiocaps", sound.audiocaps,
            ("{youtube_id}", "Y{youtube_id}", "{youtube_id}_{start_time}", "{youtube_id}_{start_time}_{end_time}",
             "{audiocap_id}"), sound.AUDIOCAPS_LAYOUT),
    Adapter("clotho", sound.clotho, ("{file_name}",), sound.CLOTHO_LAYOUT),
    Adapter("audioset", sound.audioset, ("Y{ytid}", "{ytid}", "{ytid}_{start}", "{ytid}_{start}_{end}"),
            sound.AUDIOSET_LAYOUT),
    Adapter("musicbench", music.musicbench, ("{location}",), music.MUSICBENCH_LAYOUT),
    Adapter("fma", music.fma, ("{folder}/{track_id}.mp3",), music.FMA_LAYOUT),
    Adapter("medley_solos_db", music.medley_solos_db, ("Medley-solos-DB_{subset}-{instrument_id}_{uuid4}.wav",),
            music.MEDLEY_LAYOUT),
    Adapter("meld", speech.meld, ("dia{dialogue_id}_utt{utterance_id}.mp4",), speech.MELD_LAYOUT),
    Adapter("dailytalk", speech.dailytalk,
            ("data/{dialog_id}/{utterance_id}_{speaker}_d{dialog_id}.wav",
             "{dialog_id}/{utterance_id}_{speaker}_d{dialog_id}.wav"), speech.DAILYTALK_LAYOUT),
    Adapter("covost2", speech.covost2, ("clips/{path}", "{path}"), speech.COVOST_LAYOUT),
)}


def get(kind: str) -> Adapter:
    """The adapter for ``kind``, or an AdapterError naming the known kinds."""
    if kind not in ADAPTERS:
        raise AdapterError(f"unknown source kind {kind!r}; known kinds: {', '.join(ADAPTERS)}")
    return ADAPTERS[kind]


def convert(kind: str, meta: str | pathlib.Path, audio_dir: str | pathlib.Path, out: str | pathlib.Path, *,
            ontology: str | pathlib.Path | None = None, genres: str | pathlib.Path | None = None,
            split: str | None = None, subset: str | None = None, patterns: Sequence[str] | None = None,
            progress: bool = True) -> Summary:
    """Writes the manifest of one metadata file (see the module docstring); ``patterns`` replace the
    adapter's audio file-name patterns (``str.format`` with the adapter's fields; any audio extension
    matches and a unique base name anywhere under ``audio_dir`` is found too)."""
    adapter = get(kind)
    meta = pathlib.Path(meta)
    if not meta.is_file():
        raise AdapterError(f"metadata file {meta} does not exist or is not a file")
    patterns = tuple(patterns) if patterns else adapter.patterns
    for p in patterns:
        unknown = sorted(set(pattern_fields(p)) - adapter.fields())
        if unknown:
            raise AdapterError(f"audio pattern {p!r} uses unknown field(s) {unknown} for {kind}; "
                               f"fields: {sorted(adapter.fields())}")
    opts = Options(split=split, subset=subset, ontology=pathlib.Path(ontology) if ontology else None,
                   genres=pathlib.Path(genres) if genres else None)
    for name, path in (("--ontology", opts.ontology), ("--genres", opts.genres)):
        if path is not None and not path.is_file():
            raise AdapterError(f"{name} {path} does not exist or is not a file")
    return write_manifest(adapter.read(meta, opts), patterns, pathlib.Path(audio_dir), pathlib.Path(out),
                          progress=progress, desc=kind)

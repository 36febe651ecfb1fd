"""Speech sources: MELD and DailyTalk dialogue utterances, CoVoST 2 speech translation."""

from __future__ import annotations

import csv
import pathlib
import re
from collections.abc import Iterator
from typing import Any

from data_prep.sources.adapters.common import (
    AdapterError,
    Entry,
    Options,
    Row,
    Skip,
    check_columns,
    compact,
    read_json,
    read_table,
    slug,
    split_from_name,
)

MELD_LAYOUT = ("MELD CSV 'Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,"
               "EndTime' (github.com/declare-lab/MELD data/MELD/{train,dev,test}_sent_emo.csv; clips "
               "dia{Dialogue_ID}_utt{Utterance_ID}.mp4 in MELD.Raw, or audio extracted under the same name)")
MELD_NEED = ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")
DAILYTALK_LAYOUT = ("DailyTalk metadata.json {dialog_id: {utterance_id: {text, speaker, emotion, act, ...}}} with "
                    "audio data/{dialog_id}/{utterance_id}_{speaker}_d{dialog_id}.wav "
                    "(github.com/keonlee9420/DailyTalk)")
COVOST_LAYOUT = ("CoVoST 2 TSV 'path, sentence, translation, client_id' written by get_covost_splits.py "
                 "(github.com/facebookresearch/covost: covost_v2.<src>_<tgt>.<split>.tsv, unquoted, backslash "
                 "escapes), clips from Common Voice clips/<path>")


def _srt_time(text: str | None) -> str | None:
    """``"00:20:57,256"`` -> ``"00:20:57.256"`` (MELD writes subtitle-style times)."""
    return text.strip().replace(",", ".") if text and text.strip() else None


def meld(meta: pathlib.Path, opts: Options) -> Iterator[Row]:
    """One item per utterance; dialogue and utterance ids restart in every split, so ids carry the split."""
    split = opts.split or split_from_name(meta, r"(train|dev|test)_sent_emo(?:_dya)?\.csv")
    if split is None:
        raise AdapterError(f"meld: cannot tell the split from the file name {meta.name!r} (expected "
                           "{train,dev,test}_sent_emo.csv); pass --split")
    for n, row in read_table(meta, MELD_NEED, MELD_LAYOUT):
        try:
            dia, utt = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
        except (TypeError, ValueError):
            yield Skip(f"line {n}", f"bad_row: Dialogue_ID {row['Dialogue_ID']!r} or Utterance_ID "
                                    f"{row['Utterance_ID']!r} is not an integer")
            continue
        start, end = _srt_time(row.get("StartTime")), _srt_time(row.get("EndTime"))
        season, episode = (row.get("Season") or "").strip(), (row.get("Episode") or "").strip()
        metadata = compact({"source": "meld", "split": split, "transcript": (row["Utterance"] or "").strip(),
                            "speaker": (row["Speaker"] or "").strip(), "emotion": (row["Emotion"] or "").strip(),
                            "sentiment": (row["Sentiment"] or "").strip(), "dialogue_id": dia, "utterance_id": utt,
                            "episode": f"Friends S{int(season):02d}E{int(episode):02d}"
                            if season.isdigit() and episode.isdigit() else None,
                            "timestamp": f"{start}-{end}" if start and end else None})
        yield Entry(f"meld-{split}-dia{dia}_utt{utt}", {"dialogue_id": str(dia), "utterance_id": str(utt)}, "speech",
                    metadata)


def _numeric_order(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda k: (0, int(k), "") if str(k).isdigit() else (1, 0, str(k)))


def dailytalk(meta: pathlib.Path, opts: Options) -> Iterator[Row]:
    """One item per utterance; dialog-level values that are not utterances (e.g. a topic) go to every turn."""
    data = read_json(meta)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise AdapterError(f"{meta} is not a DailyTalk metadata file; expected {DAILYTALK_LAYOUT}")
    checked = False
    for dialog_key in _numeric_order(list(data)):
        dialog: dict[str, Any] = data[dialog_key]
        shared = {k: v for k, v in dialog.items() if not isinstance(v, dict)}
        for utt_key in _numeric_order([k for k, v in dialog.items() if isinstance(v, dict)]):
            turn = dialog[utt_key]
            if not checked:
                check_columns(meta, list(turn), ("text", "speaker"), DAILYTALK_LAYOUT)
                checked = True
            dia = str(turn.get("dialog_idx", dialog_key))
            utt = str(turn.get("utterance_idx", utt_key))
            speaker = turn.get("speaker")
            if "text" not in turn or speaker is None or not dia.isdigit() or not utt.isdigit():
                yield Skip(f"dialog {dialog_key} turn {utt_key}", "bad_row: needs text, speaker and numeric "
                           f"dialog/utterance ids (got {sorted(turn)})")
                continue
            metadata = compact({"source": "dailytalk", "split": opts.split, **shared,
                                "transcript": str(turn["text"]).strip(), "speaker": speaker,
                                "emotion": turn.get("emotion"), "act": turn.get("act"),
                                "dialog_id": int(dia), "utterance_id": int(utt)})
            yield Entry(f"dailytalk-d{dia}-{utt}", {"dialog_id": dia, "utterance_id": utt, "speaker": str(speaker)},
                        "speech", metadata)


def covost2(meta: pathlib.Path, opts: Options) -> Iterator[Row]:
    """One item per clip with its transcript and translation (language pair from the file name)."""
    m = re.fullmatch(r"covost(?:_v2)?\.([A-Za-z-]+)_([A-Za-z-]+)(?:\.(\w+))?\.tsv", meta.name)
    src, tgt, split = (m.group(1), m.group(2), m.group(3)) if m else (None, None, None)
    split = opts.split or split
    rows = read_table(meta, ("path", "sentence", "translation", "client_id"), COVOST_LAYOUT, delimiter="\t",
                      quoting=csv.QUOTE_NONE, escapechar="\\")
    for n, row in rows:
        path = (row["path"] or "").strip()
        if not path:
            yield Skip(f"line {n}", "bad_row: empty path")
            continue
        metadata = compact({"source": "covost2", "split": split, "source_lang": src, "target_lang": tgt,
                            "transcript": (row["sentence"] or "").strip(),
                            "translation": (row["translation"] or "").strip(),
                            "client_id": (row["client_id"] or "").strip()})
        yield Entry(f"covost2-{slug(pathlib.PurePath(path).stem)}", {"path": path}, "speech", metadata)

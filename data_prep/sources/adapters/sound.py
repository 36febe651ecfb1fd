"""General-sound sources: AudioCaps and Clotho captions, AudioSet segments with ontology labels."""

from __future__ import annotations

import collections
import pathlib
from collections.abc import Iterator

from data_prep.sources.adapters.common import (
    AdapterError,
    Entry,
    Options,
    Row,
    Skip,
    compact,
    modality_of,
    number,
    open_text,
    read_json,
    read_table,
    slug,
    split_from_name,
    youtube_url,
)

AUDIOCAPS_SECONDS = 10.0
AUDIOCAPS_LAYOUT = ("AudioCaps captions CSV 'audiocap_id,youtube_id,start_time,caption' "
                    "(github.com/cdjkim/audiocaps dataset/{train,val,test}.csv, dataset2.0/ likewise)")
CLOTHO_LAYOUT = ("Clotho captions CSV 'file_name,caption_1,caption_2,caption_3,caption_4,caption_5' "
                 "(zenodo.org/records/4783391 clotho_captions_{development,validation,evaluation}.csv)")
AUDIOSET_LAYOUT = ("AudioSet segments CSV: '# Segments csv created ...' and '# num_ytids=...' comment lines, then "
                   "'# YTID, start_seconds, end_seconds, positive_labels' and rows like "
                   "'--PJHxphWEs, 30.000, 40.000, \"/m/09x0r,/t/dd00088\"' "
                   "(research.google.com/audioset/download.html {balanced_train,unbalanced_train,eval}_segments.csv)")
ONTOLOGY_LAYOUT = "AudioSet ontology.json: a JSON array of {id, name, child_ids, ...} (github.com/audioset/ontology)"
AUDIOSET_COLUMNS = ("YTID", "start_seconds", "end_seconds", "positive_labels")
MUSIC_ROOTS = ("/m/04rlf", "/m/015lz1")  # Music, Singing: these and every descendant count as music
SPEECH_ROOTS = ("/m/09x0r",)  # Speech and its descendants count as speech; every other label is sound


def audiocaps(meta: pathlib.Path, opts: Options) -> Iterator[Row]:
    """One item per (youtube_id, start_time) clip with all its captions (val/test have five per clip)."""
    split = opts.split or split_from_name(meta, r"(train|val|test)\.csv")
    clips: dict[tuple[str, str], dict[str, list[str]]] = {}
    for n, row in read_table(meta, ("audiocap_id", "youtube_id", "start_time", "caption"), AUDIOCAPS_LAYOUT):
        ytid, cap_id = (row["youtube_id"] or "").strip(), (row["audiocap_id"] or "").strip()
        try:
            start = number(row["start_time"])
        except (TypeError, ValueError):
            yield Skip(f"line {n}", f"bad_row: start_time {row['start_time']!r} is not a number")
            continue
        if not ytid or not cap_id:
            yield Skip(f"line {n}", f"bad_row: empty youtube_id {ytid!r} or audiocap_id {cap_id!r}")
            continue
        clip = clips.setdefault((ytid, start), {"ids": [], "captions": []})
        clip["ids"].append(cap_id)
        clip["captions"].append((row["caption"] or "").strip())
    for (ytid, start), clip in clips.items():
        end = number(str(float(start) + AUDIOCAPS_SECONDS))
        fields = {"audiocap_id": clip["ids"], "youtube_id": ytid, "start_time": start, "end_time": end}
        metadata = compact({"source": "audiocaps", "split": split, "captions": clip["captions"],
                            "audiocap_ids": clip["ids"], "youtube_id": ytid, "url": youtube_url(ytid),
                            "timestamp": f"{start}-{end}"})
        yield Entry(f"audiocaps-{slug(ytid)}-{start}", fields, "sound", metadata)


def clotho(meta: pathlib.Path, opts: Options) -> Iterator[Row]:
    """One item per file with its five captions."""
    split = opts.split or split_from_name(meta, r"clotho_captions_(\w+)\.csv")
    caps = [f"caption_{i}" for i in range(1, 6)]
    for n, row in read_table(meta, ("file_name", *caps), CLOTHO_LAYOUT):
        name = (row["file_name"] or "").strip()
        if not name:
            yield Skip(f"line {n}", "bad_row: empty file_name")
            continue
        captions = [c.strip() for c in (row[k] for k in caps) if c and c.strip()]
        metadata = compact({"source": "clotho", "split": split, "file_name": name, "captions": captions})
        yield Entry(f"clotho-{slug(pathlib.PurePath(name).stem)}", {"file_name": name}, "sound", metadata)


def load_ontology(path: pathlib.Path | None) -> tuple[dict[str, str], dict[str, str]]:
    """(mid -> display name, mid -> "music" | "speech" for the Music/Singing and Speech subtrees)."""
    if path is None:
        raise AdapterError("audioset needs --ontology PATH (ontology.json from github.com/audioset/ontology) to "
                           "name its labels")
    nodes = read_json(path)
    if not isinstance(nodes, list) or not all(isinstance(x, dict) and "id" in x and "name" in x for x in nodes):
        raise AdapterError(f"{path} is not an AudioSet ontology; expected {ONTOLOGY_LAYOUT}")
    names = {x["id"]: x["name"] for x in nodes}
    children = {x["id"]: list(x.get("child_ids") or []) for x in nodes}
    kind: dict[str, str] = {}
    for label, roots in (("music", MUSIC_ROOTS), ("speech", SPEECH_ROOTS)):
        todo = collections.deque(roots)
        while todo:
            mid = todo.popleft()
            if mid not in kind:
                kind[mid] = label
                todo.extend(children.get(mid, []))
    return names, kind


def audioset(meta: pathlib.Path, opts: Options) -> Iterator[Row]:
    """One item per segment: labels as mids and names, modality from where the labels sit in the ontology."""
    names, kind = load_ontology(opts.ontology)
    split = opts.split or split_from_name(meta, r"(\w+?)_segments\.csv")
    header = _audioset_header(meta)
    for n, row in read_table(meta, AUDIOSET_COLUMNS, AUDIOSET_LAYOUT, comment="#", header=header):
        ytid = (row["YTID"] or "").strip()
        try:
            start, end = number(row["start_seconds"]), number(row["end_seconds"])
        except (TypeError, ValueError):
            yield Skip(f"line {n}", f"bad_row: start/end {row['start_seconds']!r}, {row['end_seconds']!r} "
                                    "are not numbers")
            continue
        labels = [m.strip() for m in (row["positive_labels"] or "").split(",") if m.strip()]
        if not ytid or not labels:
            yield Skip(f"line {n}", f"bad_row: empty YTID {ytid!r} or positive_labels {row['positive_labels']!r}")
            continue
        unknown = [m for m in labels if m not in names]
        metadata = compact({"source": "audioset", "split": split, "labels": labels,
                            "label_names": [names.get(m, m) for m in labels], "unknown_labels": unknown or None,
                            "youtube_id": ytid, "url": youtube_url(ytid), "timestamp": f"{start}-{end}"})
        modality = modality_of(kind.get(m, "sound") for m in labels)
        yield Entry(f"audioset-{slug(ytid)}-{start}", {"ytid": ytid, "start": start, "end": end}, modality, metadata)


def _audioset_header(meta: pathlib.Path) -> list[str]:
    """The column names of the '# YTID, start_seconds, ...' comment line."""
    with open_text(meta) as f:
        for line in f:
            if not line.startswith("#"):
                break
            cells = [c.strip() for c in line.lstrip("#").split(",")]
            if "YTID" in cells:
                return [c for c in cells if c]
    raise AdapterError(f"{meta} has no '# YTID, start_seconds, end_seconds, positive_labels' header line; "
                       f"expected {AUDIOSET_LAYOUT}")

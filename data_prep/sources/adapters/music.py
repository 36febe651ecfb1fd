"""Music sources: MusicBench captions with musical features, FMA track metadata, Medley-solos-DB instruments."""

from __future__ import annotations

import ast
import csv
import pathlib
import re
from collections.abc import Iterator

from data_prep.sources.adapters.common import (
    AdapterError,
    Entry,
    Options,
    Row,
    Skip,
    check_columns,
    compact,
    open_text,
    read_json_lines,
    read_table,
    slug,
    split_from_name,
    youtube_url,
)

MUSICBENCH_LAYOUT = ("MusicBench JSON lines, one object per clip: location (e.g. 'data/sUjAb0SfppQ.wav'), "
                     "main_caption, alt_caption, prompt_aug, prompt_ch, prompt_bt, prompt_bpm, prompt_key, beats, "
                     "bpm, chords, chords_time, key ([tonic, mode]), keyprob[, is_audioset_eval_mcaps] "
                     "(huggingface.co/datasets/amaai-lab/MusicBench MusicBench_{train,test_A,test_B}.json)")
FMA_LAYOUT = ("FMA fma_metadata/tracks.csv: a row of column groups (album, artist, set, track), a row of field names, "
              "a 'track_id,,,...' row, then one row per track; needs (track, title), (track, genre_top), "
              "(track, genres) as '[21, ...]', (artist, name), (set, subset), (set, split) (github.com/mdeff/fma)")
FMA_GENRES_LAYOUT = "FMA fma_metadata/genres.csv 'genre_id,#tracks,parent,title,top_level'"
FMA_SUBSETS = ("small", "medium", "large")  # each holds the previous one; "full" is every track
FMA_NEED = (("track", "title"), ("track", "genre_top"), ("track", "genres"), ("artist", "name"), ("set", "subset"),
            ("set", "split"))
FMA_EXTRA = {"album": ("album", "title"), "duration": ("track", "duration"), "license": ("track", "license"),
             "language": ("track", "language_code"), "date_created": ("track", "date_created")}
MEDLEY_LAYOUT = ("Medley-solos-DB_metadata.csv 'subset,instrument,instrument_id,song_id,uuid4' "
                 "(zenodo.org/records/3464194; audio files Medley-solos-DB_{subset}-{instrument_id}_{uuid4}.wav)")
_YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]{11}")


def musicbench(meta: pathlib.Path, opts: Options) -> Iterator[Row]:
    """One item per clip; a clip named by its MusicCaps YouTube id carries that video as its source url."""
    split = opts.split or split_from_name(meta, r"MusicBench_(\w+?)(?:_modified)?\.jsonl?")
    first = True
    for n, rec in read_json_lines(meta):
        if first:
            if not isinstance(rec, dict):
                raise AdapterError(f"{meta} line {n} is not a JSON object; expected {MUSICBENCH_LAYOUT}")
            check_columns(meta, list(rec), ("location", "main_caption"), MUSICBENCH_LAYOUT)
            first = False
        if not isinstance(rec, dict) or not isinstance(rec.get("location"), str) or not rec["location"].strip():
            yield Skip(f"line {n}", "bad_row: not a JSON object with a 'location'")
            continue
        location = rec["location"].strip()
        rel = pathlib.PurePosixPath(location)
        stem = rel.stem
        key = rec.get("key")
        ytid = stem if _YOUTUBE_ID.fullmatch(stem) else None
        metadata = compact({"source": "musicbench", "split": split, "location": location,
                            "caption": rec.get("main_caption"), "alt_caption": rec.get("alt_caption"),
                            "bpm": rec.get("bpm"), "key": " ".join(map(str, key)) if isinstance(key, list) else key,
                            "chords": rec.get("chords") or None, "chords_time": rec.get("chords_time") or None,
                            "is_audioset_eval_mcaps": rec.get("is_audioset_eval_mcaps"), "youtube_id": ytid,
                            "url": youtube_url(ytid) if ytid else None})
        clip_id = "-".join(rel.with_suffix("").parts)
        yield Entry(f"musicbench-{slug(clip_id)}", {"location": location}, "music", metadata)


def _fma_genres(path: pathlib.Path | None) -> dict[int, str]:
    if path is None:
        return {}
    out: dict[int, str] = {}
    for n, row in read_table(path, ("genre_id", "title"), FMA_GENRES_LAYOUT):
        try:
            out[int(row["genre_id"])] = (row["title"] or "").strip()
        except (TypeError, ValueError):
            raise AdapterError(f"{path} line {n}: genre_id {row['genre_id']!r} is not an integer") from None
    return out


def fma(meta: pathlib.Path, opts: Options) -> Iterator[Row]:
    """One item per track in ``--subset`` (small / medium / large / full) and ``--split``; genre ids are named
    from ``--genres`` genres.csv when given."""
    if opts.subset not in (None, *FMA_SUBSETS, "full"):
        raise AdapterError(f"fma: --subset {opts.subset!r} is not one of {[*FMA_SUBSETS, 'full']}")
    genres = _fma_genres(opts.genres)
    keep = FMA_SUBSETS[: FMA_SUBSETS.index(opts.subset) + 1] if opts.subset in FMA_SUBSETS else None
    with open_text(meta) as f:
        reader = csv.reader(f)
        try:
            groups, names, index_row = next(reader, []), next(reader, []), next(reader, [])
            if not groups or groups[0].strip() or not index_row or index_row[0].strip() != "track_id":
                raise AdapterError(f"{meta} does not start with the two header rows and the 'track_id' row "
                                   f"(first cells {groups[:2]}, {index_row[:1]}); expected {FMA_LAYOUT}")
            columns = [(g.strip(), k.strip()) for g, k in zip(groups, names, strict=False)]
            check_columns(meta, columns, FMA_NEED, FMA_LAYOUT)
            pos = {c: i for i, c in enumerate(columns)}
            for row in reader:
                if not row:
                    continue
                yield _fma_row(reader.line_num, row, pos, keep, opts.split, genres)
        except csv.Error as e:
            raise AdapterError(f"{meta}: unreadable CSV near line {reader.line_num}: {e}") from None
        except UnicodeDecodeError as e:
            raise AdapterError(f"{meta} is not UTF-8 text (bad byte at offset {e.start})") from None


def _fma_row(n: int, row: list[str], pos: dict[tuple[str, str], int], keep: tuple[str, ...] | None,
             split: str | None, genres: dict[int, str]) -> Row:
    def get(column: tuple[str, str]) -> str:
        i = pos.get(column)
        return row[i].strip() if i is not None and i < len(row) else ""

    try:
        tid = int(row[0])
        genre_ids = [int(g) for g in ast.literal_eval(get(("track", "genres")) or "[]")]
    except (ValueError, TypeError, SyntaxError):
        return Skip(f"line {n}", f"bad_row: track_id {row[0]!r} or genres {get(('track', 'genres'))!r} unreadable")
    subset, row_split = get(("set", "subset")), get(("set", "split"))
    if (keep is not None and subset not in keep) or (split is not None and row_split != split):
        return None
    tid6 = f"{tid:06d}"
    metadata = compact({"source": "fma", "split": row_split, "subset": subset, "track_id": tid,
                        "title": get(("track", "title")), "artist": get(("artist", "name")),
                        "genre_top": get(("track", "genre_top")), "genre_ids": genre_ids,
                        "genres": [genres[g] for g in genre_ids if g in genres] or None,
                        **{k: get(c) for k, c in FMA_EXTRA.items()}})
    return Entry(f"fma-{tid6}", {"track_id": tid6, "folder": tid6[:3]}, "music", metadata)


def medley_solos_db(meta: pathlib.Path, opts: Options) -> Iterator[Row]:
    """One item per 3-second solo clip; ``--split`` keeps one subset (training / validation / test)."""
    need = ("subset", "instrument", "instrument_id", "song_id", "uuid4")
    for n, row in read_table(meta, need, MEDLEY_LAYOUT):
        subset, uuid = (row["subset"] or "").strip(), (row["uuid4"] or "").strip()
        if opts.split is not None and subset != opts.split:
            yield None
            continue
        try:
            instrument_id, song_id = int(row["instrument_id"]), int(row["song_id"])
        except (TypeError, ValueError):
            yield Skip(f"line {n}", f"bad_row: instrument_id {row['instrument_id']!r} or song_id "
                                    f"{row['song_id']!r} is not an integer")
            continue
        if not uuid or not subset:
            yield Skip(f"line {n}", f"bad_row: empty uuid4 {uuid!r} or subset {subset!r}")
            continue
        metadata = {"source": "medley_solos_db", "split": subset, "instrument": (row["instrument"] or "").strip(),
                    "instrument_id": instrument_id, "song_id": song_id}
        fields = {"subset": subset, "instrument_id": str(instrument_id), "uuid4": uuid}
        yield Entry(f"medley_solos_db-{slug(uuid)}", fields, "music", metadata)

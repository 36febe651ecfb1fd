"""What every source adapter shares: the row types, metadata readers with layout checks, the audio lookup,
and the writer that turns rows into a contract-6 manifest plus a list of skipped rows.

An adapter reads one published metadata file and yields, per row (or clip), an :class:`Entry` (a future
manifest item: stable id, the fields its audio file name is built from, modality, metadata), a
:class:`Skip` (a row that cannot become an item, with a ``"label: detail"`` reason) or ``None`` (a row left
out on purpose by ``--split`` / ``--subset``). A metadata file whose layout is not the expected one (a
missing column, unreadable, not UTF-8) raises :class:`AdapterError` naming the file and the bad value.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import hashlib
import itertools
import json
import math
import os
import pathlib
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from cogito_jax.audio import AUDIO_EXTENSIONS
from cogito_jax.errors import usage_error
from cogito_jax.eval.report import ORDER

MODALITIES: tuple[str, ...] = tuple(ORDER["modality"])
EXTENSION_PREFERENCE = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".mp4")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class AdapterError(ValueError):
    """Metadata that cannot be read as the expected layout, or a bad option; the message names the value."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One future manifest item; ``fields`` fill the adapter's audio file-name patterns (a list value
    tries each element)."""

    id: str
    fields: Mapping[str, str | list[str]]
    modality: str
    metadata: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Skip:
    """A row that becomes no item: ``id`` (or ``"line <n>"``) and a ``"label: detail"`` reason."""

    id: str
    reason: str


Row = Entry | Skip | None


@dataclasses.dataclass
class Options:
    """Per-run settings an adapter may need (see ``python -m data_prep.sources.adapters --help``)."""

    split: str | None = None
    ontology: pathlib.Path | None = None
    genres: pathlib.Path | None = None
    subset: str | None = None


@dataclasses.dataclass(frozen=True)
class Adapter:
    """A source: how to read its metadata, where its audio files are, which options it takes."""

    name: str
    read: Callable[[pathlib.Path, Options], Iterator[Row]]
    patterns: tuple[str, ...]
    layout: str

    def fields(self) -> set[str]:
        return {f for p in self.patterns for f in pattern_fields(p)}


@dataclasses.dataclass
class Summary:
    """What a conversion wrote: item count, skipped rows (with reasons), rows left out by a filter."""

    written: int = 0
    skipped: list[Skip] = dataclasses.field(default_factory=list)
    filtered: int = 0
    out: pathlib.Path | None = None
    skipped_path: pathlib.Path | None = None

    def reasons(self) -> dict[str, int]:
        return dict(collections.Counter(s.reason.split(":", 1)[0] for s in self.skipped))

    def line(self, name: str) -> str:
        why = ", ".join(f"{k}: {v}" for k, v in sorted(self.reasons().items()))
        return (f"{name}: wrote {self.written} items to {self.out}; skipped {len(self.skipped)}"
                f"{f' ({why})' if why else ''} -> {self.skipped_path}; filtered out {self.filtered}")


def pattern_fields(pattern: str) -> list[str]:
    """The ``{names}`` a file-name pattern uses."""
    try:
        return [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as e:
        raise AdapterError(f"audio pattern {pattern!r} is not a valid format string: {e}") from None


def slug(text: str) -> str:
    """``text`` as a file-name-safe id part; text that had to change gets a short hash so ids stay unique."""
    safe = _SAFE.sub("_", text.strip())
    if safe == text and safe not in ("", ".", ".."):
        return safe
    return f"{safe.strip('._') or 'x'}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def number(text: str) -> str:
    """A seconds value as written in ids and spans: ``"30.000"`` -> ``"30"``, ``"2.50"`` -> ``"2.5"``."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return str(int(value)) if value.is_integer() else repr(value)


def youtube_url(video_id: str) -> str:
    return f"https://www.youtube.com/watch?v={video_id}"


def compact(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` without the keys whose value is None or empty text."""
    return {k: v for k, v in metadata.items() if v is not None and v != ""}


def modality_of(kinds: Iterable[str]) -> str:
    """MMAR's modality name for the kinds of audio a clip holds (``{"sound", "music"}`` -> ``"mix-sound-music"``)."""
    kinds = set(kinds)
    present = [k for k in ("sound", "music", "speech") if k in kinds] or ["sound"]
    return present[0] if len(present) == 1 else "mix-" + "-".join(present)


def split_from_name(path: pathlib.Path, pattern: str) -> str | None:
    """The split named by a metadata file name (``pattern`` is a regex with one group), or None."""
    m = re.fullmatch(pattern, path.name)
    return m.group(1) if m else None


def open_text(path: pathlib.Path):
    """``path`` opened as UTF-8 text (BOM dropped), with an AdapterError naming the file if it cannot be."""
    try:
        f = open(path, encoding="utf-8-sig", newline="")
        f.read(1 << 16)
        f.seek(0)
        return f
    except UnicodeDecodeError as e:
        f.close()
        raise AdapterError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None
    except OSError as e:
        raise AdapterError(f"cannot read {path}: {e.strerror or e}") from None


def read_json(path: pathlib.Path) -> Any:
    with open_text(path) as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AdapterError(f"{path} is not valid JSON: {e}") from None


def check_columns(path: pathlib.Path, have: Sequence[Any], need: Iterable[Any], layout: str) -> None:
    """AdapterError unless every column in ``need`` is among ``have``."""
    missing = [c for c in need if c not in have]
    if missing:
        raise AdapterError(f"{path} lacks column(s) {missing} (has {list(have)}); expected the layout {layout}")


def read_table(path: pathlib.Path, need: Sequence[str], layout: str, *, delimiter: str = ",",
               quoting: int = csv.QUOTE_MINIMAL, escapechar: str | None = None,
               comment: str | None = None, header: Sequence[str] | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, row dict) per data row of a delimited file whose header has every ``need`` column.

    ``comment``: lines starting with it before the first data row are skipped; ``header``: column names given by
    the caller instead of the first row. A row with too few cells has ``None`` for the missing ones.
    """
    with open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting, escapechar=escapechar,
                            skipinitialspace=delimiter == ",")
        try:
            names = list(header) if header is not None else next(reader, None)
            if names is None:
                raise AdapterError(f"{path} is empty; expected the layout {layout}")
            names = [n.strip() for n in names]
            check_columns(path, names, need, layout)
            head = True
            for row in reader:
                if not row or not any(c.strip() for c in row) or (head and comment and row[0].startswith(comment)):
                    continue
                head = False
                yield reader.line_num, dict(itertools.zip_longest(names, row[:len(names)]))
        except csv.Error as e:
            raise AdapterError(f"{path}: unreadable CSV near line {reader.line_num}: {e}") from None
        except UnicodeDecodeError as e:
            raise AdapterError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None


def read_json_lines(path: pathlib.Path) -> Iterator[tuple[int, Any]]:
    """(line number, record) of a JSON-lines file, or of a JSON array; an undecodable line gives an
    ``AdapterError`` if it is the first one, else ``(n, None)``."""
    with open_text(path) as f:
        head = f.read(1 << 12).lstrip()
        f.seek(0)
        if head.startswith("["):
            yield from enumerate(read_json(path), start=1)
            return
        lines = enumerate(f, start=1)
        while True:
            try:
                n, line = next(lines)
            except StopIteration:
                return
            except UnicodeDecodeError as e:
                raise AdapterError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                if n == 1:
                    raise AdapterError(f"{path} is neither JSON lines nor a JSON array: {e}") from None
                rec = None
            yield n, rec


class AudioIndex:
    """Finds a clip under ``root`` from candidate relative paths: the exact path, the same path with another
    audio extension, or (if exactly one file has it) the same base name anywhere below ``root``."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        self._by_stem: dict[str, list[str]] | None = None
        self._by_name: dict[str, list[str]] = {}

    def _build(self) -> None:
        self._by_stem = collections.defaultdict(list)
        for folder, _, files in os.walk(self.root):
            rel_folder = os.path.relpath(folder, self.root)
            for name in files:
                stem, ext = os.path.splitext(name)
                if ext.lower() not in AUDIO_EXTENSIONS:
                    continue
                rel = name if rel_folder == "." else f"{pathlib.Path(rel_folder).as_posix()}/{name}"
                self._by_stem[rel[: -len(ext)]].append(rel)
                self._by_name.setdefault(stem, []).append(rel)
        rank = {e: i for i, e in enumerate(EXTENSION_PREFERENCE)}
        for rels in itertools.chain(self._by_stem.values(), self._by_name.values()):
            rels.sort(key=lambda r: (rank.get(os.path.splitext(r)[1].lower(), len(rank)), r))

    def _inside(self, rel: str) -> bool:
        return pathlib.Path(os.path.normpath(self.root / rel)).is_relative_to(self.root)

    def find(self, candidates: Sequence[str]) -> tuple[str | None, str]:
        """(relative path, "") for the first candidate found, else (None, why none was)."""
        outside = [rel for rel in candidates if not self._inside(rel)]
        if outside:
            return None, f"path_escapes_audio_folder: {outside} lead out of {self.root}"
        for rel in candidates:
            if (self.root / rel).is_file():
                return rel, ""
        if self._by_stem is None:
            self._build()
        stems = [_stem(rel) for rel in candidates]
        for key in stems:
            if self._by_stem.get(key):
                return self._by_stem[key][0], ""
        for key in dict.fromkeys(pathlib.PurePosixPath(s).name for s in stems):
            found = self._by_name.get(key, [])
            if len(found) == 1:
                return found[0], ""
            if len(found) > 1:
                return None, f"ambiguous_audio: {len(found)} files named {key} under {self.root} ({found[:3]})"
        return None, f"missing_audio: none of {list(candidates)} under {self.root}"


def _stem(rel: str) -> str:
    base, ext = os.path.splitext(rel)
    return base if ext.lower() in AUDIO_EXTENSIONS else rel


def candidates(patterns: Sequence[str], fields: Mapping[str, str | list[str]]) -> list[str]:
    """Every relative path the patterns give for these fields (list-valued fields try each value)."""
    out: list[str] = []
    for p in patterns:
        names = pattern_fields(p)
        values = [fields[n] if isinstance(fields[n], list) else [fields[n]] for n in names]
        for combo in itertools.product(*values):
            rel = p.format(**dict(zip(names, combo, strict=True)))
            if rel not in out:
                out.append(rel)
    return out


def write_manifest(rows: Iterable[Row], patterns: Sequence[str], audio_dir: pathlib.Path, out: pathlib.Path,
                   *, progress: bool = True, desc: str = "rows") -> Summary:
    """Writes the Entries whose audio is found as manifest lines to ``out`` and every Skip (including
    entries without audio and repeated ids) to ``<out stem>.skipped.jsonl``; returns the counts.

    ``audio_path`` is relative to the manifest's folder when the clip lies inside it, absolute otherwise
    (contract 6 resolves relative paths against the manifest's folder and refuses ones that leave it).
    """
    audio_dir = pathlib.Path(audio_dir)
    if not audio_dir.is_dir():
        raise AdapterError(f"audio folder {audio_dir} does not exist or is not a folder")
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest_root = out.parent.resolve()
    index = AudioIndex(audio_dir.resolve())
    summary = Summary(out=out, skipped_path=out.with_name(f"{out.stem}.skipped.jsonl"))
    partial = out.with_name(f".{out.name}.partial")
    try:
        with open(partial, "w", encoding="utf-8") as f:
            _write_rows(f, tqdm(rows, desc=desc, unit="row", disable=not progress), patterns, index,
                        manifest_root, summary)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    summary.skipped_path.write_text("".join(json.dumps(dataclasses.asdict(s), ensure_ascii=False) + "\n"
                                            for s in summary.skipped), encoding="utf-8")
    return summary


def _write_rows(f, rows: Iterable[Row], patterns: Sequence[str], index: AudioIndex, manifest_root: pathlib.Path,
                summary: Summary) -> None:
    """The body of write_manifest: one manifest line per Entry whose audio is found, the rest to ``summary``."""
    seen: set[str] = set()
    for row in rows:
        if row is None:
            summary.filtered += 1
            continue
        if isinstance(row, Skip):
            summary.skipped.append(row)
            continue
        if row.id in seen:
            summary.skipped.append(Skip(row.id, f"duplicate_id: {row.id} appeared earlier in the metadata"))
            continue
        seen.add(row.id)
        rel, why = index.find(candidates(patterns, row.fields))
        if rel is None:
            summary.skipped.append(Skip(row.id, why))
            continue
        path = index.root / rel
        audio_path = path.relative_to(manifest_root).as_posix() if path.is_relative_to(manifest_root) else str(path)
        f.write(json.dumps({"id": row.id, "audio_path": audio_path, "modality": row.modality,
                            "metadata": dict(row.metadata)}, ensure_ascii=False) + "\n")
        summary.written += 1


class CliParser(argparse.ArgumentParser):
    """An argument parser whose errors are the project's one-line usage errors (exit 2)."""

    def error(self, message: str) -> None:
        usage_error(message)


def run_conversion(convert_call: Callable[[], Summary], label: str) -> int:
    """Runs a CLI's conversion: bad input (AdapterError, an unreadable file) is one usage-error line and exit
    2; otherwise the summary line is printed."""
    try:
        summary = convert_call()
    except AdapterError as e:
        usage_error(" ".join(str(e).split()))
    except OSError as e:
        usage_error(f"{e.filename or ''}: {e.strerror or e}")
    print(summary.line(label))
    return 0

"""Append-only JSONL files (metrics, stage caches, sample outputs, judge replies): one reader, one appender.

A writer appends one JSON object per line and flushes, so a crash can leave only the last line torn (no
newline at its end). :func:`read` drops such a line when it does not parse and raises :class:`JsonlError`
naming ``file:line`` for any other line that is not a JSON object (or lacks a required key): a damaged file
is reported, never half-read. :func:`open_append` cuts a torn tail off before appending, so the next row
starts on a line of its own and the file stays readable (:func:`mended` does the same to a file's text held in
memory, for storage that cannot append). Paths may be local or ``gs://`` (read only).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import IO, Any

from cogito_jax.errors import ConfigError


class JsonlError(ConfigError):
    """A line of an append-only JSONL file, other than a torn last one, is not a usable row."""


def _path(path: Any):
    text = os.fspath(path)
    if "://" in text:
        from etils import epath  # object storage only: its import is slow

        return epath.Path(text)
    import pathlib

    return pathlib.Path(text)


def parse(text: str, where: str, require: Iterable[str] = (), *, objects: bool = True) -> list[Any]:
    """The rows of ``text`` (the content of file ``where``); see :func:`read`."""
    lines = text.split("\n")
    last = len(lines) - 1  # lines[last] is "" when the text ends with a newline, else the torn tail
    rows = []
    need = tuple(require)
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            if n == last:
                break  # torn by a crash mid-write: that row was never finished
            raise JsonlError(f"{where}:{n + 1}: not a JSON line ({e.msg}); the file is damaged: repair or "
                             "delete it") from None
        if not objects:
            rows.append(row)
            continue
        if not isinstance(row, dict):
            raise JsonlError(f"{where}:{n + 1}: a row must be a JSON object, got {type(row).__name__}")
        missing = [k for k in need if k not in row]
        if missing:
            raise JsonlError(f"{where}:{n + 1}: row has no {', '.join(map(repr, missing))}")
        rows.append(row)
    return rows


def read(path: Any, require: Iterable[str] = (), *, errors: str = "strict", objects: bool = True) -> list[Any]:
    """The rows of the append-only file ``path`` ([] when it does not exist): a torn last line is dropped; any
    other line that is not a JSON object with the ``require``\\d keys raises :class:`JsonlError` naming it.
    With ``objects=False`` a row may be any JSON value (the caller judges it); a line that is not JSON still
    raises."""
    p = _path(path)
    if not p.exists():
        return []
    return parse(p.read_bytes().decode("utf-8", errors=errors), os.fspath(path), require, objects=objects)


def _mend(tail: bytes) -> tuple[int, bytes]:
    """For the last bytes ``tail`` of a file: how many of them to keep and what to add so that it ends with a
    whole line (a torn last line that does not parse cut off, a complete one ended with its newline)."""
    if not tail or tail.endswith(b"\n"):
        return len(tail), b""
    cut = tail.rfind(b"\n") + 1
    try:
        json.loads(tail[cut:])
    except ValueError:
        return cut, b""
    return len(tail), b"\n"


def mended(text: str) -> str:
    """``text``, the whole content of an append-only file, ready for appending (see :func:`open_append`)."""
    data = text.encode("utf-8")
    keep, add = _mend(data)
    return (data[:keep] + add).decode("utf-8")


def open_append(path: Any) -> IO[str]:
    """``path`` opened for appending rows (created with its folder if needed), after cutting off a torn last
    line that does not parse (or ending a complete one with its newline)."""
    p = _path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    f = open(p, "a+b")
    try:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(max(0, size - (1 << 20)))
            tail = f.read()
            keep, add = _mend(tail)
            if keep < len(tail):
                f.truncate(size - len(tail) + keep)
            f.write(add)
    finally:
        f.close()
    return open(p, "a", encoding="utf-8")


def write_row(f: IO[str], row: Any) -> None:
    """Appends one row and flushes it (a crash can tear only this line)."""
    f.write(json.dumps(row) + "\n")
    f.flush()

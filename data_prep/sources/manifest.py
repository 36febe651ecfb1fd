"""Contract-6 manifests: JSONL with ``id`` and ``audio_path`` (relative to the manifest's folder) and
optional ``question``, ``choices``, ``answer``, ``modality``, ``category``, ``metadata``.

``read_manifest`` yields one item dict per good line and one :class:`Rejection` per bad line, with a
specific, stable reason (``"label: detail"``); a bad line never stops the build. Relative paths may not
leave the manifest's folder (checked on the path as written, so symlinks inside the folder still work);
absolute paths are taken as they are. Ids are kept as written (any non-empty text; build files are named by a
hash of the id); a line whose text is not valid Unicode (an unpaired surrogate escape) is rejected. Reasons
quote a manifest value only up to ``SHOWN_CHARS`` characters and never the content of an audio file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Iterator
from typing import Any

MIN_CHOICES, MAX_CHOICES = 2, 6
TEXT_FIELDS = ("question", "answer", "modality", "category")
SHOWN_CHARS = 80  # of a manifest value quoted in a rejection reason


def shown(value: Any) -> str:
    """``repr(value)``, cut to SHOWN_CHARS characters."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."


@dataclasses.dataclass(frozen=True)
class Rejection:
    """An item that is dropped: ``id`` (or ``"line <n>"`` when the line has none) and why."""

    id: str
    reason: str

    @property
    def label(self) -> str:
        return self.reason.split(":", 1)[0]


def qa_problem(question: Any, choices: Any, answer: Any) -> str | None:
    """Why a (question, choices, answer) triple is unusable, or None; all three absent is fine."""
    if question is None and choices is None and answer is None:
        return None
    if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
        return f"bad_choices: {shown(choices)} is not a list of non-empty strings"
    if not MIN_CHOICES <= len(choices) <= MAX_CHOICES:
        return f"bad_choices: {len(choices)} choices, need {MIN_CHOICES}-{MAX_CHOICES}"
    folded = [c.strip().casefold() for c in choices]
    dups = sorted({c for c, f in zip(choices, folded, strict=True) if folded.count(f) > 1})
    if dups:
        return f"bad_choices: duplicate choices {shown(dups)}"
    if not isinstance(answer, str) or answer.strip() not in [c.strip() for c in choices]:
        return f"bad_answer: {shown(answer)} is not one of the choices {shown(choices)}"
    if not isinstance(question, str) or not question.strip():
        return f"bad_question: {shown(question)} is empty or not a string"
    return None


def resolve_audio_path(root: pathlib.Path, audio_path: str) -> pathlib.Path | None:
    """The clip's absolute path, or None when a relative path leads out of ``root``."""
    p = pathlib.Path(audio_path)
    if p.is_absolute():
        return pathlib.Path(os.path.normpath(p))
    joined = pathlib.Path(os.path.normpath(root / p))
    return joined if joined == root or joined.is_relative_to(root) else None


def parse_line(line: str, where: str, root: pathlib.Path) -> dict | Rejection:
    """One manifest line to an item dict, or a Rejection (``where`` names the line, e.g. ``"line 3"``)."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        return Rejection(where, f"bad_json: {e.msg} at column {e.colno}")
    if not isinstance(rec, dict):
        return Rejection(where, f"bad_json: expected an object, got {type(rec).__name__}")
    try:
        json.dumps(rec, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        return Rejection(where, f"bad_text: an unpaired surrogate escape (\\u{ord(e.object[e.start]):04x}) is not text")
    rid = rec.get("id")
    if isinstance(rid, bool) or not isinstance(rid, str | int) or not str(rid).strip():
        return Rejection(where, f"missing_id: 'id' is {shown(rid)}")
    rid = str(rid)
    audio = rec.get("audio_path")
    if not isinstance(audio, str) or not audio.strip():
        return Rejection(rid, f"missing_audio_path: 'audio_path' is {shown(audio)}")
    if "\0" in audio:
        return Rejection(rid, f"bad_audio_path: {shown(audio)} contains a NUL character")
    resolved = resolve_audio_path(root, audio)
    if resolved is None:
        return Rejection(rid, f"path_escapes_manifest_folder: {shown(audio)} is outside {root}")
    problem = qa_problem(rec.get("question"), rec.get("choices"), rec.get("answer"))
    if problem:
        return Rejection(rid, problem)
    meta = rec.get("metadata")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        return Rejection(rid, f"bad_metadata: expected an object, got {type(meta).__name__}")
    for key in TEXT_FIELDS:
        if key in rec and rec[key] is not None and not isinstance(rec[key], str):
            return Rejection(rid, f"bad_{key}: {shown(rec[key])} is not a string")
    choices = [c.strip() for c in rec.get("choices") or []]
    return {"id": rid, "audio_path": str(resolved), "question": (rec.get("question") or "").strip(),
            "choices": choices, "answer": (rec.get("answer") or "").strip(),
            "modality": rec.get("modality") or "", "category": rec.get("category") or "",
            "sub_category": str(meta.get("sub_category", rec.get("sub-category", rec.get("sub_category", "")))),
            "thinking": str(meta.get("thinking", rec.get("thinking", "")) or ""), "metadata": meta}


def read_manifest(path: str | pathlib.Path) -> Iterator[dict | Rejection]:
    """Items and rejections of a manifest, in file order; a repeated id is rejected (the first line wins)."""
    path = pathlib.Path(path)
    root = path.parent.resolve()
    seen: dict[str, int] = {}
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            where = f"line {n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Rejection(where, f"bad_encoding: not UTF-8 at column {e.start + 1}")
                continue
            line = line.lstrip("\ufeff") if n == 1 else line
            if not line.strip():
                continue
            entry = parse_line(line, where, root)
            rid = entry["id"] if isinstance(entry, dict) else (None if entry.id == where else entry.id)
            if rid is not None and rid in seen:
                entry = Rejection(rid, f"duplicate_id: first on line {seen[rid]}, again on {where}")
            elif rid is not None:
                seen[rid] = n
            yield entry

"""Contract-6 manifests: JSONL with ``id`` and ``audio_path`` (relative to the manifest's folder) and
optional ``question``, ``choices``, ``answer``, ``modality``, ``category``, ``metadata``.

``read_manifest`` yields one item dict per good line and one :class:`Rejection` per bad line, with a
specific reason; a bad line never stops the build.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Iterator


@dataclasses.dataclass(frozen=True)
class Rejection:
    id: str  # the item's id, or "line <n>" when the line has none
    reason: str


def _qa_problem(rec: dict) -> str | None:
    if "choices" not in rec and "answer" not in rec and "question" not in rec:
        return None
    choices, answer = rec.get("choices"), rec.get("answer")
    if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
        return f"bad_choices: {choices!r} is not a list of non-empty strings"
    if not 2 <= len(choices) <= 6:
        return f"bad_choices: {len(choices)} choices (need 2-6)"
    if len(set(choices)) != len(choices):
        return "bad_choices: duplicate choices"
    if answer not in choices:
        return f"bad_answer: {answer!r} is not one of the choices"
    if not isinstance(rec.get("question"), str) or not rec["question"].strip():
        return "bad_question: empty or missing"
    return None


def read_manifest(path: str | pathlib.Path) -> Iterator[dict | Rejection]:
    path = pathlib.Path(path)
    root = path.parent.resolve()
    seen: set[str] = set()
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            yield Rejection(f"line {n}", f"bad_json: {e.msg} at column {e.colno}")
            continue
        if not isinstance(rec, dict):
            yield Rejection(f"line {n}", "bad_json: not an object")
            continue
        rid = rec.get("id")
        if not isinstance(rid, (str, int)) or str(rid).strip() == "":
            yield Rejection(f"line {n}", "missing_id")
            continue
        rid = str(rid)
        if rid in seen:
            yield Rejection(rid, f"duplicate_id: line {n}")
            continue
        seen.add(rid)
        audio = rec.get("audio_path")
        if not isinstance(audio, str) or not audio.strip():
            yield Rejection(rid, "missing_audio_path")
            continue
        resolved = (root / audio).resolve()
        if not resolved.is_relative_to(root):
            yield Rejection(rid, f"path_escapes_manifest_folder: {audio}")
            continue
        problem = _qa_problem(rec)
        if problem:
            yield Rejection(rid, problem)
            continue
        meta = rec.get("metadata") or {}
        yield {"id": rid, "audio_path": str(resolved), "question": rec.get("question", ""),
               "choices": rec.get("choices", []), "answer": rec.get("answer", ""),
               "modality": rec.get("modality", ""), "category": rec.get("category", ""),
               "sub_category": meta.get("sub_category", rec.get("sub-category", "")),
               "thinking": meta.get("thinking", rec.get("thinking", "")), "metadata": meta}

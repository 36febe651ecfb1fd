"""Benchmark loaders (MMAR, MMAU test-mini, MMSU) into one item type, and the prediction-file reader/writers.

Meta files may be JSONL (one record per line) or one JSON array; a malformed record raises
``BenchmarkError`` naming the file and the line (JSONL) or record number (array). Missing audio is not
fatal: it is reported per item in ``Loaded.missing_audio``. Each benchmark reads predictions under its
official key first (MMAR ``answer_prediction``, MMAU ``model_output``, MMSU ``response``); files are
written whole or not at all (a temporary file renamed into place).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

from cogito_jax.eval.score import DEFAULT_KEYS, MMSU_LETTERS, Rule, is_correct, mmsu_letter, prediction_text


class BenchmarkError(ValueError):
    """Bad benchmark or prediction input; the message names the file and where in it."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One multiple-choice question; ``answer`` is the gold choice text, ``meta`` the raw record."""

    id: str
    audio_path: str
    question: str
    choices: list[str]
    answer: str
    modality: str
    category: str
    sub_category: str
    meta: dict[str, Any]
    extra_groups: dict[str, str] = dataclasses.field(default_factory=dict)

    def groups(self) -> dict[str, str]:
        """Breakdown key -> this item's value (``modality``, ``category``, ``sub-category``, extras)."""
        return {"modality": self.modality, "category": self.category, "sub-category": self.sub_category,
                **self.extra_groups}


@dataclasses.dataclass
class Loaded:
    """Items of one benchmark file and the items whose audio is missing ({"id", "reason"})."""

    items: list[Item]
    missing_audio: list[dict[str, str]]


def read_records(path: str | pathlib.Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) pairs of a JSONL file or a JSON array; where is "FILE:LINE" or "FILE record N"."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BenchmarkError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BenchmarkError(f"{path}: cannot read: {e}") from None
    out: list[tuple[str, dict[str, Any]]] = []
    records = None
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # "Extra data": JSONL whose first line is a list
                raise BenchmarkError(f"{path}:{e.lineno}: malformed JSON array: {e.msg}") from None
    if records is not None:
        out = [(f"{path} record {i}", rec) for i, rec in enumerate(records, start=1)]
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise BenchmarkError(f"{path}:{lineno}: malformed JSON line: {e.msg}") from None
    for where, rec in out:
        if not isinstance(rec, dict):
            raise BenchmarkError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    return out


def _require(rec: Mapping[str, Any], where: str, fields: tuple[str, ...]) -> None:
    absent = [f for f in fields if f not in rec]
    if absent:
        raise BenchmarkError(f"{where}: missing field(s) {', '.join(absent)} (has {', '.join(sorted(rec))})")


def _choices(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(c, str) for c in value):
        raise BenchmarkError(f"{where}: 'choices' must be a list of at least 2 strings, got {value!r}")
    return value


def _text(rec: Mapping[str, Any], key: str, where: str) -> str:
    value = rec[key]
    if not isinstance(value, str):
        raise BenchmarkError(f"{where}: {key!r} must be a string, got {value!r}")
    return value


def _opt(rec: Mapping[str, Any], key: str) -> str:
    """A group name: "" if absent; a list (MMAU test-mini's ``["Reasoning"]``) is one name, its parts joined."""
    value = rec.get(key)
    if isinstance(value, list):
        return ", ".join(_opt({key: v}, key) for v in value)
    return "" if value is None else str(value)


def _mmar(rec: dict[str, Any], where: str) -> tuple[Item, str]:
    _require(rec, where, ("id", "question", "choices", "answer", "modality", "category"))
    rid = str(rec["id"])
    item = Item(rid, "", _text(rec, "question", where), _choices(rec["choices"], where),
                _text(rec, "answer", where), _opt(rec, "modality"), _opt(rec, "category"),
                _opt(rec, "sub-category"), rec)
    return item, rec.get("audio_path") or f"./audio/{rid}.wav"


def _mmau(rec: dict[str, Any], where: str) -> tuple[Item, str]:
    _require(rec, where, ("id", "audio_id", "question", "choices", "answer"))
    item = Item(str(rec["id"]), "", _text(rec, "question", where), _choices(rec["choices"], where),
                _text(rec, "answer", where), _opt(rec, "task"), _opt(rec, "category"),
                _opt(rec, "sub-category"), rec, {"difficulty": _opt(rec, "difficulty")})
    return item, _text(rec, "audio_id", where)


def _mmsu(rec: dict[str, Any], where: str) -> tuple[Item, str]:
    _require(rec, where, ("id", "audio_path", "question", "choice_a", "choice_b", "answer_gt"))
    keys = [f"choice_{letter.lower()}" for letter in MMSU_LETTERS]
    present = [rec.get(k) not in (None, "") for k in keys]
    if present != sorted(present, reverse=True):
        raise BenchmarkError(f"{where}: choices must be choice_a, choice_b, ... without gaps, got "
                             f"{', '.join(k for k, p in zip(keys, present, strict=True) if p)}")
    choices = [_text(rec, k, where) for k, p in zip(keys, present, strict=True) if p]
    answer = rec["answer_gt"]
    if answer not in choices:
        raise BenchmarkError(f"{where}: 'answer_gt' must be the text of one of "
                             f"{', '.join(keys[: len(choices)])} (the official layout), got {answer!r}")
    category, sub = _opt(rec, "category"), _opt(rec, "sub-category")
    item = Item(str(rec["id"]), "", _text(rec, "question", where), choices, answer, "speech", category, sub, rec,
                {"task": _opt(rec, "task_name"), "sub-sub-category": _opt(rec, "sub-sub-category"),
                 "category/sub-category": f"{category}/{sub}" if category and sub else ""})
    return item, _text(rec, "audio_path", where)


def string_rule(prediction: str, item: Item) -> bool:
    """MMAR/MMAU: the official string match against the gold choice text."""
    return is_correct(prediction, item.answer, item.choices)


def mmsu_rule(prediction: str, item: Item) -> bool | None:
    """MMSU: the official letter's choice text equals ``answer_gt``; None for a response it drops."""
    letter = mmsu_letter(prediction)
    return None if letter is None else item.meta.get(f"choice_{letter.lower()}") == item.meta["answer_gt"]


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A benchmark's meta parser, its official rule and its prediction keys (official one first)."""

    name: str
    parse: Callable[[dict[str, Any], str], tuple[Item, str]]
    rule: Rule
    keys: tuple[str, ...]


BENCHMARKS = {
    "mmar": Benchmark("mmar", _mmar, string_rule, DEFAULT_KEYS),
    "mmau": Benchmark("mmau", _mmau, string_rule, ("model_output", "answer_prediction")),
    "mmsu": Benchmark("mmsu", _mmsu, mmsu_rule, ("response", "answer_prediction")),
}


def get(name: str) -> Benchmark:
    """The benchmark called ``name``; raises BenchmarkError naming the known ones."""
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def resolve_audio(rel: str, meta_dir: pathlib.Path,
                  audio_dir: str | pathlib.Path | None) -> tuple[str, str | None]:
    """(resolved path, reason it is unusable or None): against ``audio_dir`` (or the meta's folder)."""
    rel_path = pathlib.Path(rel)
    if rel_path.is_absolute():
        candidates = [rel_path]
    elif audio_dir is None:
        candidates = [meta_dir / rel_path]
    else:
        candidates = [pathlib.Path(audio_dir) / rel_path, pathlib.Path(audio_dir) / rel_path.name]
    for c in candidates:
        if c.is_file():
            return str(c), None if c.stat().st_size > 0 else f"empty file: {c}"
    return str(candidates[0]), f"not found: {' or '.join(str(c) for c in candidates)}"


def load(name: str, meta_path: str | pathlib.Path, audio_dir: str | pathlib.Path | None = None,
         check_audio: bool = True) -> Loaded:
    """Items of benchmark ``name`` in ``meta_path``; audio resolves against ``audio_dir`` or its folder."""
    bench = get(name)
    meta_path = pathlib.Path(meta_path)
    items, missing, seen = [], [], {}
    for where, rec in read_records(meta_path):
        item, rel = bench.parse(rec, where)
        if item.id in seen:
            raise BenchmarkError(f"{where}: duplicate id {item.id!r} (first at {seen[item.id]})")
        seen[item.id] = where
        path, reason = resolve_audio(rel, meta_path.parent, audio_dir)
        if check_audio and reason:
            missing.append({"id": item.id, "reason": reason})
        items.append(dataclasses.replace(item, audio_path=path))
    return Loaded(items, missing)


def read_predictions(path: str | pathlib.Path, keys: tuple[str, ...] = DEFAULT_KEYS) -> dict[str, dict[str, Any]]:
    """id -> prediction record; its text is under the first of ``keys`` it has (none: the item is unanswered).

    A file in which no record has any of ``keys`` raises (predictions under another key, or another file)."""
    out: dict[str, dict[str, Any]] = {}
    where_of: dict[str, str] = {}
    for where, rec in read_records(path):
        if "id" not in rec:
            raise BenchmarkError(f"{where}: prediction has no 'id'")
        key = next((k for k in keys if k in rec), None)
        for k in (key, "thinking_prediction"):
            if k in rec and not isinstance(rec[k], str):
                raise BenchmarkError(f"{where}: {k!r} must be a string, got {rec[k]!r}")
        rid = str(rec["id"])
        if rid in out:
            raise BenchmarkError(f"{where}: duplicate prediction for id {rid!r} (first at {where_of[rid]})")
        out[rid], where_of[rid] = rec, where
    if out and all(prediction_text(rec, keys) is None for rec in out.values()):
        first = next(iter(out.values()))
        raise BenchmarkError(f"{path}: no prediction has any of {', '.join(keys)} (the first has "
                             f"{', '.join(sorted(first))})")
    return out


def write_atomic(path: str | pathlib.Path, text: str) -> pathlib.Path:
    """Writes ``text`` to ``path`` through a temporary file renamed into place (never a half-written file)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_official(meta_records: list[Mapping[str, Any]], predictions: Mapping[str, Mapping[str, Any]],
                   path: str | pathlib.Path) -> pathlib.Path:
    """JSONL for MMAR's ``code/evaluation.py``: each meta record plus answer/thinking predictions.

    Every record is written; one without a prediction gets ``answer_prediction = ""`` so the official script
    counts it wrong (an empty prediction has no tokens) and prints the same overall accuracy as ``score``.
    """
    lines = []
    for meta in meta_records:
        pred = predictions.get(str(meta["id"])) or {}
        rec = {k: v for k, v in meta.items() if k not in ("answer_prediction", "thinking_prediction")}
        rec["answer_prediction"] = prediction_text(pred) or ""
        rec["thinking_prediction"] = pred.get("thinking_prediction", "")
        lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
    return write_atomic(path, "".join(lines))

"""Benchmark scoring: the official MMAR/MMAU string rule, MMSU's official letter rule, breakdowns and CIs.

MMAR rule (``ddlBoJack/MMAR`` ``code/evaluation.py``; MMAU uses the same one): lower-case, take the *set*
of ``\\b\\w+\\b`` tokens of the answer, the prediction and every choice. A prediction without tokens is
wrong. The incorrect-token set is the union, over choices whose token set differs from the answer's, of
(choice tokens - answer tokens). Correct iff the answer's tokens are all in the prediction and the
prediction has none of the incorrect tokens.

MMSU rule (``dingdongwang/MMSU`` ``mmsu_evaluation.py``): the response is stripped and its newlines removed;
its letter is the first character if that is one of A-D, else the second-to-last character if that is; the
official script drops every other response from its total. The letter is right iff ``choice_<letter>``
equals ``answer_gt`` (the gold choice text). An empty or "None" response is dropped too (the official
loop reuses the previous line's letter for it).

A rule returns True/False, or None for a response the official script leaves out of its total. Unlike
the official scripts, every item of the benchmark is scored here: an item with no prediction (reported
under ``missing``) or with a response the official script drops (``unparsed``) counts as wrong in
``overall``; ``answered`` holds the official number (correct / total over the items it counts).
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

_WORD = re.compile(r"\b\w+\b")
BREAKDOWNS = ("modality", "category", "sub-category")
DEFAULT_KEYS = ("answer_prediction", "model_output")  # the challenge format's key first (MMAR's official one)
MMSU_LETTERS = "ABCD"
Rule = Callable[[str, Any], "bool | None"]


def tokens(text: str) -> set[str]:
    """The set of lower-cased ``\\b\\w+\\b`` tokens of ``text``."""
    return set(_WORD.findall(text.lower()))


def is_correct(prediction: str, answer: str, choices: Sequence[str]) -> bool:
    """The official MMAR/MMAU string-match verdict for one prediction."""
    pred, ans = tokens(prediction), tokens(answer)
    if not pred:
        return False
    incorrect: set[str] = set()
    for choice in choices:
        ch = tokens(choice)
        if ch != ans:
            incorrect |= ch - ans
    return ans <= pred and pred.isdisjoint(incorrect)


def mmsu_letter(response: str) -> str | None:
    """The letter MMSU's official script reads from a response, or None where it drops the response."""
    text = response.strip().replace("\n", "")
    if text in ("", "None"):
        return None
    if text[0] in MMSU_LETTERS:
        return text[0]
    if len(text) > 1 and text[-2] in MMSU_LETTERS:
        return text[-2]
    return None


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One item's outcome; ``prediction`` is None when the item had no prediction, ``answered`` is False
    also when the official script drops the response."""

    id: str
    correct: bool
    prediction: str | None
    groups: dict[str, str]
    answered: bool

    @property
    def missing(self) -> bool:
        return self.prediction is None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "correct": self.correct, "missing": self.missing, "answered": self.answered,
                "prediction": self.prediction, **self.groups}


def prediction_text(record: Mapping[str, Any], keys: Sequence[str] = DEFAULT_KEYS) -> str | None:
    """The answer text of one prediction record under the first of ``keys`` it has, or None."""
    return next((record[k] for k in keys if k in record), None)


def verdicts(items: Iterable[Any], predictions: Mapping[str, Mapping[str, Any]], rule: Rule,
             keys: Sequence[str] = DEFAULT_KEYS) -> list[Verdict]:
    """One verdict per item (``benchmarks.Item``); ``rule(prediction, item)`` decides correctness."""
    out = []
    for item in items:
        record = predictions.get(item.id)
        pred = None if record is None else prediction_text(record, keys)
        ok = None if pred is None else rule(pred, item)
        out.append(Verdict(item.id, bool(ok), pred, item.groups(), ok is not None))
    return out


def group_stats(correct: int, total: int) -> dict[str, Any]:
    """G = {correct, total, accuracy in [0, 1]}."""
    return {"correct": int(correct), "total": int(total), "accuracy": correct / total if total else 0.0}


def bootstrap_ci(correct: Sequence[bool], resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval [lo, hi] of the mean of ``correct`` (resampling items)."""
    x = np.asarray(correct, dtype=np.float64)
    if x.size == 0:
        return [0.0, 0.0]
    idx = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def paired_difference(before: Sequence[bool], after: Sequence[bool]) -> tuple[float, float]:
    """(accuracy of ``after`` minus that of ``before``, the standard error of that difference) for two systems'
    verdicts on the same items: the mean and standard error of the per-item differences (each -1, 0 or 1), so an
    item both get right or both get wrong adds no variance."""
    a, b = np.asarray(before, np.float64), np.asarray(after, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_difference needs two equal non-empty lists of verdicts, got {a.shape} and {b.shape}")
    d = b - a
    return float(d.mean()), float(np.sqrt(d.var() / d.size))


def _group_seed(seed: int, key: str, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(f"{key}\x00{name}".encode())) % (2**32)


def summarize(vs: Sequence[Verdict], breakdowns: Sequence[str] = BREAKDOWNS, resamples: int = 1000,
              seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """OUT.json: overall and per-group G, plus ``answered`` (and per group), ``missing``, ``unparsed``, ``ci``.

    Group keys beyond ``breakdowns`` that items carry (e.g. MMAU ``difficulty``) get their own table.
    Items whose value for a key is empty are left out of that key's table (as the official script does).
    """
    keys = list(breakdowns) + sorted({k for v in vs for k in v.groups} - set(breakdowns))
    members: dict[str, dict[str, list[Verdict]]] = {k: {} for k in keys}
    for v in vs:
        for k in keys:
            name = v.groups.get(k)
            if name not in (None, ""):
                members[k].setdefault(str(name), []).append(v)

    out: dict[str, Any] = {"overall": group_stats(sum(v.correct for v in vs), len(vs))}
    ci: dict[str, Any] = {"level": level, "resamples": resamples, "seed": seed,
                          "overall": bootstrap_ci([v.correct for v in vs], resamples, seed, level)}
    missing: dict[str, Any] = {"total": sum(v.missing for v in vs), "ids": [v.id for v in vs if v.missing]}
    unparsed = [v.id for v in vs if not v.missing and not v.answered]
    by_group: dict[str, Any] = {}
    for k in keys:
        groups = dict(sorted(members[k].items()))
        out[k] = {n: group_stats(sum(v.correct for v in g), len(g)) for n, g in groups.items()}
        ci[k] = {n: bootstrap_ci([v.correct for v in g], resamples, _group_seed(seed, k, n), level)
                 for n, g in groups.items()}
        missing[k] = {n: sum(v.missing for v in g) for n, g in groups.items()}
        by_group[k] = {n: _answered_stats(g) for n, g in groups.items()}
    out["answered"] = _answered_stats(vs)
    out["answered_groups"] = by_group
    out["missing"] = missing
    out["unparsed"] = {"total": len(unparsed), "ids": unparsed}
    out["ci"] = ci
    return out


def _answered_stats(vs: Sequence[Verdict]) -> dict[str, Any]:
    """G over the verdicts the official script counts."""
    answered = [v for v in vs if v.answered]
    return group_stats(sum(v.correct for v in answered), len(answered))


def check_known(ids: Iterable[str], predictions: Mapping[str, Any]) -> None:
    """Raises ValueError if a prediction's id is not among ``ids`` (a prediction file for another set)."""
    known = set(ids)
    unknown = [pid for pid in predictions if pid not in known]
    if unknown:
        raise ValueError(f"{len(unknown)} prediction id(s) not in the benchmark, first {unknown[0]!r}")


def score(items: Sequence[Any], predictions: Mapping[str, Mapping[str, Any]], rule: Rule, resamples: int = 1000,
          seed: int = 0, keys: Sequence[str] = DEFAULT_KEYS) -> tuple[dict[str, Any], list[Verdict]]:
    """(OUT.json dict, per-item verdicts) for ``items`` under ``rule``; unknown prediction ids raise ValueError.

    A prediction's text is its value under the first of ``keys`` it has; a record with none is unanswered."""
    check_known((item.id for item in items), predictions)
    vs = verdicts(items, predictions, rule, keys)
    return summarize(vs, resamples=resamples, seed=seed), vs

"""Benchmark scoring: the official MMAR/MMAU string rule, the MMSU letter rule, breakdowns and bootstrap CIs.

MMAR rule (``ddlBoJack/MMAR`` ``code/evaluation.py``; MMAU uses the same one): lower-case, take the *set*
of ``\\b\\w+\\b`` tokens of the answer, the prediction and every choice. A prediction without tokens is
wrong. The incorrect-token set is the union, over choices whose token set differs from the answer's, of
(choice tokens - answer tokens). Correct iff the answer's tokens are all in the prediction and the
prediction has none of the incorrect tokens.

Unlike the official script, which skips items without a prediction, every item of the benchmark is
scored here: an item with no prediction counts as wrong and is reported as missing. ``answered`` holds
the official number (accuracy over the items that have a prediction).
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from cogito_jax.distill.scoring import named_choices

_WORD = re.compile(r"\b\w+\b")
LETTERS = "ABCDEFGHIJ"
BREAKDOWNS = ("modality", "category", "sub-category")
PREDICTION_KEYS = ("answer_prediction", "model_output")


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


_BARE = re.compile(r"^\W*([A-Za-z])\W*$")
_LEADING = re.compile(r"^\s*\(?([A-Z])(?:\)|\.|:)(?:\s|$)")
_PAREN = re.compile(r"\(([A-Z])\)")
_CUED = re.compile(r"(?i:\b(?:answer|option|choice)\b)\s*(?:(?i:is)|:)?\s*\(?([A-Z])\)?(?!\w)")


def _phrase(text: str) -> re.Pattern:
    return re.compile(r"(?<!\w)" + re.escape(text.strip()) + r"(?!\w)", re.I)


def extract_letter(prediction: str, choices: Sequence[str]) -> str | None:
    """The one choice letter a prediction names (by letter or by a choice's text), or None if none or several.

    Accepted: a bare letter ("B", "(b)", "B."), a leading "B." / "(B)" / "B)", "(B)" anywhere, "answer is B",
    "Answer: B", "option B", and the text of a choice. Letters are looked for only outside the named choice
    texts, so a choice starting with an article ("A dog") is not read as letter A.
    """
    valid = LETTERS[: len(choices)]
    text = prediction.strip()
    bare = _BARE.match(text)
    if bare:
        letter = bare.group(1).upper()
        return letter if letter in valid else None
    named = named_choices(text, choices)
    found = {valid[i] for i, c in enumerate(choices) if c in named}
    rest = text
    for choice in named:
        rest = _phrase(choice).sub(" ", rest)
    for pattern in (_LEADING, _PAREN, _CUED):
        found |= {m.group(1) for m in pattern.finditer(rest) if m.group(1) in valid}
    return found.pop() if len(found) == 1 else None


def letter_correct(prediction: str, answer_letter: str, choices: Sequence[str]) -> bool:
    """The MMSU verdict: the prediction names exactly the gold letter (by letter or by choice text)."""
    return extract_letter(prediction, choices) == answer_letter.strip().strip("()").upper()


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One item's outcome; ``prediction`` is None when the item had no prediction."""

    id: str
    correct: bool
    prediction: str | None
    groups: dict[str, str]

    @property
    def missing(self) -> bool:
        return self.prediction is None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "correct": self.correct, "missing": self.missing,
                "prediction": self.prediction, **self.groups}


def prediction_text(record: Mapping[str, Any]) -> str:
    """The answer text of one prediction record (``answer_prediction``, else MMAU's ``model_output``)."""
    for key in PREDICTION_KEYS:
        if key in record:
            return record[key]
    raise KeyError(f"prediction for {record.get('id')!r} has none of {PREDICTION_KEYS}")


def verdicts(items: Iterable[Any], predictions: Mapping[str, Mapping[str, Any]],
             rule: Callable[[str, Any], bool]) -> list[Verdict]:
    """One verdict per item (``benchmarks.Item``); ``rule(prediction, item)`` decides correctness."""
    out = []
    for item in items:
        record = predictions.get(item.id)
        pred = None if record is None else prediction_text(record)
        out.append(Verdict(item.id, pred is not None and rule(pred, item), pred, item.groups()))
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


def _group_seed(seed: int, key: str, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(f"{key}\x00{name}".encode())) % (2**32)


def summarize(vs: Sequence[Verdict], breakdowns: Sequence[str] = BREAKDOWNS, resamples: int = 1000,
              seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """OUT.json: overall and per-group G, plus ``answered``, ``missing`` and ``ci``.

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

    answered = [v for v in vs if not v.missing]
    out: dict[str, Any] = {"overall": group_stats(sum(v.correct for v in vs), len(vs))}
    ci: dict[str, Any] = {"level": level, "resamples": resamples, "seed": seed,
                          "overall": bootstrap_ci([v.correct for v in vs], resamples, seed, level)}
    missing: dict[str, Any] = {"total": len(vs) - len(answered), "ids": [v.id for v in vs if v.missing]}
    for k in keys:
        groups = dict(sorted(members[k].items()))
        out[k] = {n: group_stats(sum(v.correct for v in g), len(g)) for n, g in groups.items()}
        ci[k] = {n: bootstrap_ci([v.correct for v in g], resamples, _group_seed(seed, k, n), level)
                 for n, g in groups.items()}
        missing[k] = {n: sum(v.missing for v in g) for n, g in groups.items()}
    out["answered"] = group_stats(sum(v.correct for v in answered), len(answered))
    out["missing"] = missing
    out["ci"] = ci
    return out


def score(items: Sequence[Any], predictions: Mapping[str, Mapping[str, Any]],
          rule: Callable[[str, Any], bool], resamples: int = 1000,
          seed: int = 0) -> tuple[dict[str, Any], list[Verdict]]:
    """(OUT.json dict, per-item verdicts) for ``items`` under ``rule``; unknown prediction ids raise ValueError."""
    known = {item.id for item in items}
    unknown = [pid for pid in predictions if pid not in known]
    if unknown:
        raise ValueError(f"{len(unknown)} prediction id(s) not in the benchmark, first {unknown[0]!r}")
    vs = verdicts(items, predictions, rule)
    return summarize(vs, resamples=resamples, seed=seed), vs

"""Choosing which accepted traces of one prompt become training data, with every decision recorded.

Per prompt: the pass rate over its N samples; all-wrong prompts are dropped (or flagged for a retry
with the answer as a hint, STaR-style rationalisation); all-right prompts are kept with a lower
weight (easy, little to learn); the option-shuffle guard keeps a prompt only if its accepted traces
are correct under at least ``min_orders_correct`` different choice orders (a model that guesses a
position does not pass); near-duplicate traces are removed; at most ``max_per_prompt`` are kept.

Rationalisation: a prompt whose first N samples were all wrong is sampled once more with the key given
as a hint in the prompt (:func:`hint_question`); :func:`select_rationalised` applies the same checks to
those samples (plus: the thinking must not mention the hint, since the trace is trained on the prompt
without it) and marks what it keeps ``rationalised``. Kept rationalised traces get ``hint_weight``,
never the all-right down-weight: the prompt was one the model could not solve unaided.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from cogito_jax.distill.scoring import Verdict

HINT_TEMPLATE = '{question}\nHint: the correct answer is "{answer}". Reason your way to it.'
_HINT_WORD = re.compile(r"\bhint(ed|s)?\b", re.I)


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    max_per_prompt: int = 4
    min_orders_correct: int = 2
    all_right_weight: float = 0.5
    dedup_jaccard: float = 0.9
    hint_all_wrong: bool = False
    hint_weight: float = 1.0


@dataclasses.dataclass
class Sample:
    """One sampled trace of a prompt: its verdict, the choice order it was shown, whether a hint was given."""

    index: int
    verdict: Verdict
    order: tuple[int, ...] = ()
    rationalised: bool = False


@dataclasses.dataclass
class Decision:
    """What happened to one prompt's samples.

    ``status``: ``all_wrong`` (no sample correct), ``none_accepted`` (some correct, none passed the checks),
    ``retry_with_hint`` (all wrong, to be re-sampled with a hint), ``guess_guard``, ``all_right``, ``mixed``;
    after a hint retry ``rationalised`` (hinted traces kept) or ``hint_failed``, with the unaided pass's
    decision in ``first_pass``.
    """

    prompt_id: str
    n_samples: int
    n_accepted: int
    pass_rate: float
    status: str
    weight: float
    kept: list[int]
    dropped: dict[int, str]
    rationalised: bool = False
    first_pass: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def hint_question(question: str, answer: str, template: str = HINT_TEMPLATE) -> str:
    """The question as shown in a hint retry: the key is given, the model is asked to reason to it."""
    return template.format(question=question, answer=answer)


def mentions_hint(thinking: str) -> bool:
    return _HINT_WORD.search(thinking) is not None


def _shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str) -> float:
    sa, sb = _shingles(a), _shingles(b)
    return len(sa & sb) / max(len(sa | sb), 1)


def _split(samples: Sequence[Sample], extra_reason=None) -> tuple[list[Sample], dict[int, str]]:
    accepted, dropped = [], {}
    for s in samples:
        reasons = list(s.verdict.reasons)
        if extra_reason is not None and (r := extra_reason(s)):
            reasons.append(r)
        if reasons:
            dropped[s.index] = ",".join(reasons)
        else:
            accepted.append(s)
    return accepted, dropped


def _guard(samples: Sequence[Sample], accepted: list[Sample], dropped: dict[int, str], cfg: SelectConfig) -> bool:
    """The option-shuffle guard: True (and every accepted sample dropped) if too few orders were correct."""
    orders_sampled = {s.order for s in samples}
    orders_ok = {s.order for s in accepted}
    if len(orders_sampled) >= cfg.min_orders_correct and len(orders_ok) < cfg.min_orders_correct:
        for s in accepted:
            dropped[s.index] = f"guess_guard:correct_under_{len(orders_ok)}_of_{len(orders_sampled)}_orders"
        return True
    return False


def _dedup_cap(accepted: list[Sample], dropped: dict[int, str], cfg: SelectConfig) -> list[Sample]:
    kept: list[Sample] = []
    for s in accepted:
        dup = next((k for k in kept if jaccard(k.verdict.thinking, s.verdict.thinking) >= cfg.dedup_jaccard), None)
        if dup is not None:
            dropped[s.index] = f"near_duplicate_of:{dup.index}"
        elif len(kept) >= cfg.max_per_prompt:
            dropped[s.index] = f"over_max_per_prompt:{cfg.max_per_prompt}"
        else:
            kept.append(s)
    return kept


def select(prompt_id: str, samples: Sequence[Sample], cfg: SelectConfig = SelectConfig()) -> Decision:
    """Decides which of one prompt's (unaided) samples to keep."""
    n = len(samples)
    accepted, dropped = _split(samples)
    n_correct = sum(s.verdict.correct for s in samples)
    pass_rate = n_correct / n if n else 0.0

    def decision(status: str, kept: list[Sample], weight: float) -> Decision:
        return Decision(prompt_id, n, len(accepted), pass_rate, status, weight, [s.index for s in kept], dropped)

    if n_correct == 0:
        return decision("retry_with_hint" if cfg.hint_all_wrong else "all_wrong", [], 0.0)
    if not accepted:
        return decision("none_accepted", [], 0.0)
    if _guard(samples, accepted, dropped, cfg):
        return decision("guess_guard", [], 0.0)
    kept = _dedup_cap(accepted, dropped, cfg)
    all_right = n_correct == n and all(s.verdict.accepted for s in samples)
    return decision("all_right" if all_right else "mixed", kept, cfg.all_right_weight if all_right else 1.0)


def select_rationalised(first: Decision, samples: Sequence[Sample], cfg: SelectConfig = SelectConfig()) -> Decision:
    """Decides which hinted samples of a prompt whose unaided samples were all wrong (``first``) to keep.

    Same checks as :func:`select` (scoring verdict, option-shuffle guard, near-duplicates, at most K), and a
    trace whose thinking mentions the hint is dropped. Kept traces are marked rationalised.
    """
    if first.status != "retry_with_hint":
        raise ValueError(f"prompt {first.prompt_id!r}: a hint retry follows an all-wrong first pass, "
                         f"not {first.status!r}")
    if not all(s.rationalised for s in samples):
        raise ValueError(f"prompt {first.prompt_id!r}: hint-retry samples must be marked rationalised")
    accepted, dropped = _split(samples, lambda s: "mentions_hint" if mentions_hint(s.verdict.thinking) else None)
    n = len(samples)
    pass_rate = sum(s.verdict.correct for s in samples) / n if n else 0.0
    kept: list[Sample] = []
    if accepted and not _guard(samples, accepted, dropped, cfg):
        kept = _dedup_cap(accepted, dropped, cfg)
    return Decision(first.prompt_id, n, len(accepted), pass_rate, "rationalised" if kept else "hint_failed",
                    cfg.hint_weight if kept else 0.0, [s.index for s in kept], dropped, rationalised=bool(kept),
                    first_pass=first.to_dict())

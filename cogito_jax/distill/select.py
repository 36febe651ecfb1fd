"""Choosing which accepted traces of one prompt become training data, with every decision recorded.

Per prompt: the pass rate over its N samples; all-wrong prompts are dropped (or flagged for a retry
with the answer as a hint, STaR-style rationalisation); all-right prompts are kept with a lower
weight (easy, little to learn); the option-shuffle guard keeps a prompt only if its accepted traces
are correct under at least ``min_orders_correct`` different choice orders (a model that guesses a
position does not pass); near-duplicate traces are removed; at most ``max_per_prompt`` are kept.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from cogito_jax.distill.scoring import Verdict


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    max_per_prompt: int = 4
    min_orders_correct: int = 2
    all_right_weight: float = 0.5
    dedup_jaccard: float = 0.9
    hint_all_wrong: bool = False


@dataclasses.dataclass
class Sample:
    """One sampled trace of a prompt: its verdict and the choice order it was shown."""

    index: int
    verdict: Verdict
    order: tuple[int, ...] = ()
    rationalized: bool = False


@dataclasses.dataclass
class Decision:
    """What happened to one prompt's samples."""

    prompt_id: str
    n_samples: int
    n_accepted: int
    pass_rate: float
    status: str  # all_wrong | retry_with_hint | all_right | mixed | guess_guard
    weight: float
    kept: list[int]
    dropped: dict[int, str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str) -> float:
    sa, sb = _shingles(a), _shingles(b)
    return len(sa & sb) / max(len(sa | sb), 1)


def select(prompt_id: str, samples: Sequence[Sample], cfg: SelectConfig = SelectConfig()) -> Decision:
    """Decides which of one prompt's samples to keep."""
    n = len(samples)
    dropped: dict[int, str] = {}
    accepted = []
    for s in samples:
        if s.verdict.accepted:
            accepted.append(s)
        else:
            dropped[s.index] = ",".join(s.verdict.reasons)
    n_correct = sum(s.verdict.correct for s in samples)
    pass_rate = n_correct / n if n else 0.0

    def decision(status: str, kept: list[Sample], weight: float) -> Decision:
        return Decision(prompt_id, n, len(accepted), pass_rate, status, weight, [s.index for s in kept], dropped)

    if not accepted:
        return decision("retry_with_hint" if cfg.hint_all_wrong and n_correct == 0 else "all_wrong", [], 0.0)
    orders_sampled = {s.order for s in samples}
    orders_ok = {s.order for s in accepted}
    if len(orders_sampled) >= cfg.min_orders_correct and len(orders_ok) < cfg.min_orders_correct:
        for s in accepted:
            dropped[s.index] = f"guess_guard:correct_under_{len(orders_ok)}_of_{len(orders_sampled)}_orders"
        return decision("guess_guard", [], 0.0)

    kept: list[Sample] = []
    for s in accepted:
        dup = next((k for k in kept if jaccard(k.verdict.thinking, s.verdict.thinking) >= cfg.dedup_jaccard), None)
        if dup is not None:
            dropped[s.index] = f"near_duplicate_of:{dup.index}"
        elif len(kept) >= cfg.max_per_prompt:
            dropped[s.index] = f"over_max_per_prompt:{cfg.max_per_prompt}"
        else:
            kept.append(s)
    all_right = n_correct == n and all(s.verdict.accepted for s in samples)
    return decision("all_right" if all_right else "mixed", kept, cfg.all_right_weight if all_right else 1.0)

"""Scoring one sampled reasoning trace for self-distillation.

A trace is accepted only if every check passes, and each failed check leaves a named reason:
``format`` (exactly one well-formed ``<think>…</think>`` block followed by a non-empty answer),
``names_one_choice`` (the answer names exactly one choice, at word boundaries), ``correct`` (the
official MMAR string rule against the key), ``agrees`` (the conclusion at the end of the thinking
names the same choice as the answer, or names none), ``length`` (thinking within bounds), and an
optional ``judge`` verdict supplied by the caller.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

from cogito_jax.data.chat import THINK_CLOSE, THINK_OPEN

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CONCLUSION_CUE = re.compile(r"\b(so|therefore|thus|hence|the answer is|answer:|final answer|conclusion)\b", re.I)


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    min_thinking_chars: int = 20
    max_thinking_chars: int = 10_000
    require_thinking: bool = True
    require_explicit_conclusion: bool = False


@dataclasses.dataclass
class Verdict:
    """Every check's outcome; ``accepted`` iff no reason was recorded."""

    thinking: str
    answer: str
    named_choice: str | None
    correct: bool
    reasons: list[str]
    judge: bool | None = None

    @property
    def accepted(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "accepted": self.accepted}


def parse_trace(text: str) -> tuple[str | None, str, str | None]:
    """(thinking, answer, format problem or None) for a raw model output."""
    text = text.replace("<|im_end|>", "").replace("<|endoftext|>", "")
    n_open, n_close = text.count(THINK_OPEN), text.count(THINK_CLOSE)
    if n_close == 0:
        return None, text.strip(), "format:no_think_block"
    if n_open > 1 or n_close > 1:
        return None, text.rpartition(THINK_CLOSE)[2].strip(), "format:several_think_blocks"
    head, _, answer = text.partition(THINK_CLOSE)
    pre, opened, thinking = head.partition(THINK_OPEN)
    if opened and pre.strip():
        return thinking.strip(), answer.strip(), "format:text_before_think"
    answer = answer.strip()
    if not answer:
        return thinking.strip(), "", "format:empty_answer"
    return thinking.strip(), answer, None


def _contains_phrase(text: str, phrase: str) -> bool:
    """``phrase`` occurs in ``text`` case-insensitively, not inside a longer word."""
    return re.search(r"(?<!\w)" + re.escape(phrase.lower().strip()) + r"(?!\w)", text.lower()) is not None


def named_choices(text: str, choices: Sequence[str]) -> list[str]:
    """The choices whose full text occurs in ``text``; a choice contained in a longer named one is dropped."""
    found = [c for c in choices if c.strip() and _contains_phrase(text, c)]
    return [c for c in found if not any(c != o and _contains_phrase(o, c) for o in found)]


def conclusion(thinking: str) -> str:
    """The end of the reasoning: from the last sentence with a concluding cue, else the last sentence."""
    sentences = [s for s in _SENTENCE_END.split(thinking.strip()) if s.strip()]
    if not sentences:
        return ""
    for i in range(len(sentences) - 1, max(len(sentences) - 4, -1), -1):
        if _CONCLUSION_CUE.search(sentences[i]):
            return " ".join(sentences[i:])
    return sentences[-1]


def score_trace(
    text: str,
    choices: Sequence[str],
    answer_key: str,
    is_correct: Callable[[str, str, Sequence[str]], bool],
    cfg: ScoreConfig = ScoreConfig(),
    judge: bool | None = None,
) -> Verdict:
    """Runs every check on one raw output. ``is_correct(prediction, answer, choices)`` is the MMAR rule."""
    thinking, answer, problem = parse_trace(text)
    reasons = [problem] if problem and (cfg.require_thinking or problem != "format:no_think_block") else []
    named = named_choices(answer, choices) if answer else []
    if answer and len(named) != 1:
        reasons.append("names_no_choice" if not named else "names_several_choices")
    correct = bool(answer) and is_correct(answer, answer_key, choices)
    if not correct:
        reasons.append("wrong_answer")
    if thinking is not None:
        concluded = named_choices(conclusion(thinking), choices)
        if len(concluded) > 1:
            reasons.append("conclusion_names_several_choices")
        elif concluded and named and concluded[0] != named[0]:
            reasons.append("conclusion_disagrees")
        elif not concluded and cfg.require_explicit_conclusion:
            reasons.append("no_explicit_conclusion")
        if len(thinking) < cfg.min_thinking_chars:
            reasons.append(f"thinking_too_short:{len(thinking)}<{cfg.min_thinking_chars}")
        if len(thinking) > cfg.max_thinking_chars:
            reasons.append(f"thinking_too_long:{len(thinking)}>{cfg.max_thinking_chars}")
    if judge is False:
        reasons.append("judge_rejected")
    return Verdict(thinking or "", answer, named[0] if len(named) == 1 else None, correct, reasons, judge)

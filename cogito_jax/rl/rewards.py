"""Rewards of one sampled response, as small functions that compose: ``reward(text, item) -> float``.

* :func:`correctness`: 1 when the answer after ``</think>`` is right by the MMAR rule, else 0.
* :func:`well_formed`: 1 for one ``<think>...</think>`` block followed by an answer that names exactly one
  choice, else 0.
* :func:`consistent`: 1 when the thinking's conclusion names no other choice than the answer does (the
  distill scorer's check), else 0.

:func:`combine` weights them into one reward. ``item`` is a mapping with ``choices`` and ``answer``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cogito_jax.distill.scoring import conclusion, named_choices, parse_trace
from cogito_jax.eval.score import is_correct

Reward = Callable[[str, Mapping[str, Any]], float]


def correctness(text: str, item: Mapping[str, Any]) -> float:
    _, answer, _ = parse_trace(text)
    return float(bool(answer) and is_correct(answer, item["answer"], item["choices"]))


def well_formed(text: str, item: Mapping[str, Any]) -> float:
    thinking, answer, problem = parse_trace(text)
    return float(problem is None and thinking is not None and len(named_choices(answer, item["choices"])) == 1)


def consistent(text: str, item: Mapping[str, Any]) -> float:
    thinking, answer, _ = parse_trace(text)
    if thinking is None:
        return 0.0
    named = named_choices(answer, item["choices"])
    concluded = named_choices(conclusion(thinking), item["choices"])
    return float(len(named) == 1 and len(concluded) <= 1 and (not concluded or concluded[0] == named[0]))


REWARDS: dict[str, Reward] = {"correct": correctness, "format": well_formed, "consistent": consistent}


def combine(weights: Mapping[str, float]) -> Reward:
    """The reward ``sum(weight * REWARDS[name](text, item))`` over ``weights``."""
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown:
        raise ValueError(f"unknown rewards {unknown}; known: {sorted(REWARDS)}")
    parts: Sequence[tuple[Reward, float]] = [(REWARDS[k], float(w)) for k, w in weights.items() if w]
    return lambda text, item: sum(w * fn(text, item) for fn, w in parts)

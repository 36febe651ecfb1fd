"""MMAR-Rubrics: grading the reasoning of correctly answered items with an LLM judge.

Protocol: an item scores 0 if its answer is wrong (official string rule). Otherwise the judge scores
the item's 5 binary rubric points given the question, the reference answer and thinking, and the
model's ``"{thinking_prediction} The answer is {answer_prediction}."``; this is repeated 5 times, each
run normalised to [0, 1]; the item's score is the mean of the middle 3 runs. The benchmark score is
the mean over items x 100, and CRS = rubric score / accuracy. An item whose judge runs fail is
reported under ``failed`` and left out of the mean, never scored as zero.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cogito_jax.judge import JudgeError

RUNS = 5

SYSTEM = ("You are a strict grader of audio-reasoning explanations. You are given a question about an audio "
          "clip, the reference answer and reasoning, a list of rubric points, and a model's response. For each "
          "rubric point, decide whether the model's response satisfies it (1) or not (0). Reply with JSON only: "
          '{"scores": [s1, s2, ...]} with one 0 or 1 per rubric point, in order.')


def judge_prompt(meta: Mapping[str, Any], thinking_prediction: str, answer_prediction: str) -> list[dict]:
    """The chat messages for one judge run of one item."""
    points = "\n".join(
        f"{i + 1}. {r.get('name', '')}: {r.get('scoring_point', '')}"
        + (f" (note: {r['note']})" if r.get("note") else "")
        for i, r in enumerate(meta["rubric"])
    )
    user = (f"Question: {meta['question']}\nChoices: {'; '.join(meta['choices'])}\n"
            f"Reference answer: {meta['answer']}\nReference reasoning: {meta.get('thinking', '')}\n\n"
            f"Rubric points:\n{points}\n\n"
            f"Model response: {thinking_prediction} The answer is {answer_prediction}.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_scores(reply: str, n_points: int) -> list[int]:
    """The 0/1 list from a judge reply; raises ValueError if it is not there or has the wrong length."""
    m = re.search(r"\{.*\}", reply, re.S)
    if not m:
        raise ValueError(f"no JSON object in judge reply {reply[:80]!r}")
    scores = json.loads(m.group(0)).get("scores")
    if not isinstance(scores, list) or len(scores) != n_points or any(s not in (0, 1) for s in scores):
        raise ValueError(f"judge scores {scores!r} are not {n_points} values of 0/1")
    return [int(s) for s in scores]


def middle_mean(values: Sequence[float]) -> float:
    """Mean of the middle values after dropping the lowest and highest (of 5 runs: the middle 3)."""
    ordered = sorted(values)
    core = ordered[1:-1] if len(ordered) > 2 else ordered
    return sum(core) / len(core)


def score_rubrics(
    meta_records: Sequence[Mapping[str, Any]],
    predictions: Mapping[str, Mapping[str, str]],
    judge: Any,
    is_correct: Callable[[str, str, Sequence[str]], bool],
    runs: int = RUNS,
) -> dict[str, Any]:
    """Rubric score, accuracy and CRS over ``meta_records`` (MMAR meta with ``rubric``)."""
    items: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for meta in meta_records:
        rid = meta["id"]
        pred = predictions.get(rid)
        answer = (pred or {}).get("answer_prediction", "")
        if not pred or not is_correct(answer, meta["answer"], meta["choices"]):
            items[rid] = {"correct": False, "score": 0.0, "runs": []}
            continue
        messages = judge_prompt(meta, pred.get("thinking_prediction", ""), answer)
        run_scores = []
        try:
            for r in range(runs):
                reply = judge.complete(messages, temperature=0.0, run=r)
                run_scores.append(sum(parse_scores(reply, len(meta["rubric"]))) / len(meta["rubric"]))
        except (JudgeError, ValueError, json.JSONDecodeError) as e:
            failed[rid] = f"{type(e).__name__}: {e}"
            continue
        items[rid] = {"correct": True, "score": middle_mean(run_scores), "runs": run_scores}
    scored = list(items.values())
    n = len(scored)
    accuracy = sum(i["correct"] for i in scored) / n if n else 0.0
    rubric = 100.0 * sum(i["score"] for i in scored) / n if n else 0.0
    return {
        "rubric_score": rubric,
        "accuracy": accuracy,
        "crs": rubric / (100.0 * accuracy) if accuracy else 0.0,
        "scored": n,
        "failed": failed,
        "items": items,
    }

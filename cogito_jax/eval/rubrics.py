"""MMAR-Rubrics: grading the reasoning of correctly answered items with an LLM judge.

Protocol: an item scores 0 if its answer is wrong (official string rule). Otherwise the judge scores
the item's 5 binary rubric points given the question, the reference answer and thinking, and the
model's ``"{thinking_prediction} The answer is {answer_prediction}."``; this is repeated 5 times, each
run normalised to [0, 1]; the item's score is the mean of the middle 3 runs. The benchmark score is
the mean over items x 100, and CRS = rubric score / accuracy (the mean score of the correct items).

Accuracy counts every item (the string rule needs no judge). A correct item whose judge runs fail has no
score: it is reported under ``failed`` (count, ids, reasons) and left out of the rubric score's mean and of
CRS, never scored as zero; ``scored`` says how many items the rubric score covers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cogito_jax.eval.benchmarks import BenchmarkError
from cogito_jax.eval.score import prediction_text
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


def check_rubrics(meta_records: Sequence[Mapping[str, Any]], path: str) -> None:
    """Raises BenchmarkError naming the first record whose ``rubric`` is not a non-empty list of points."""
    for meta in meta_records:
        rubric = meta.get("rubric")
        if not isinstance(rubric, list) or not rubric or not all(isinstance(r, dict) for r in rubric):
            raise BenchmarkError(f"{path}: record {meta['id']!r} needs 'rubric', a non-empty list of rubric "
                                 f"points ({{name, scoring_point, note}}) for MMAR-Rubrics, got {rubric!r}")


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
    correct = 0
    for meta in meta_records:
        rid = str(meta["id"])
        pred = predictions.get(rid) or {}
        answer = prediction_text(pred)
        if answer is None or not is_correct(answer, meta["answer"], meta["choices"]):
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
        else:
            items[rid] = {"correct": True, "score": middle_mean(run_scores), "runs": run_scores}
        correct += 1
    total = len(meta_records)
    scores = [i["score"] for i in items.values()]
    judged = sum(i["correct"] for i in items.values())
    return {
        "rubric_score": 100.0 * sum(scores) / len(scores) if scores else 0.0,
        "accuracy": correct / total if total else 0.0,
        "crs": sum(scores) / judged if judged else 0.0,
        "total": total,
        "correct": correct,
        "scored": len(scores),
        "failed": {"count": len(failed), "ids": list(failed), "reasons": failed},
        "items": items,
    }

"""The MMAR/MMAU string rule, MMSU's official letter rule, breakdowns and CIs against independent re-implementations."""

import json
import math
import random
import re
from collections import defaultdict

import numpy as np
import pytest

from cogito_jax.eval import benchmarks
from cogito_jax.eval.score import bootstrap_ci, is_correct, mmsu_letter, score

MODALITIES = ["sound", "music", "speech", "mix-sound-music", "mix-sound-speech", "mix-music-speech",
              "mix-sound-music-speech"]
LAYERS = ["Signal Layer", "Perception Layer", "Semantic Layer", "Cultural Layer"]
SUBCATS = ["Counting and Statistics", "Speaker Analysis", "Music Theory", "Content Analysis", "Emotion"]
PHRASES = ["dog", "dogs", "dog barking", "a dog barking", "barking", "cat", "Cat meowing", "piano", "PIANO solo",
           "C#", "C", "C major", "3", "3.5 seconds", "12", "12 seconds", "the man", "the woman", "man's voice",
           "low-pitched hum", "high pitch", "rain", "rainfall", "none of the above", "Yes", "no", "don't know",
           "rock-and-roll", "rock", "é café", "two", "2"]


def ref_tokens(text: str) -> frozenset:
    """Word tokens another way: replace every run of non-word characters by a space, then split."""
    return frozenset(re.sub(r"[^\w]+", " ", text.lower()).split())


def ref_correct(prediction: str, answer: str, choices: list[str]) -> bool:
    """The official rule, written independently of cogito_jax.eval.score."""
    pred, ans = ref_tokens(prediction), ref_tokens(answer)
    if len(pred) == 0:
        return False
    if any(t not in pred for t in ans):
        return False
    for choice in choices:
        toks = ref_tokens(choice)
        if toks == ans:
            continue
        if any(t in pred and t not in ans for t in toks):
            return False
    return True


def ref_tally(meta: list[dict], preds: dict[str, str]) -> dict:
    """Overall and per-group counts with missing predictions counted wrong; empty groups skipped."""
    out: dict = {"overall": [0, 0], "modality": defaultdict(lambda: [0, 0]),
                 "category": defaultdict(lambda: [0, 0]), "sub-category": defaultdict(lambda: [0, 0])}
    missing = defaultdict(int)
    for rec in meta:
        ok = rec["id"] in preds and ref_correct(preds[rec["id"]], rec["answer"], rec["choices"])
        out["overall"][0] += ok
        out["overall"][1] += 1
        for key in ("modality", "category", "sub-category"):
            if rec.get(key):
                out[key][rec[key]][0] += ok
                out[key][rec[key]][1] += 1
                missing[(key, rec[key])] += rec["id"] not in preds
    g = lambda c: {"correct": c[0], "total": c[1], "accuracy": c[0] / c[1] if c[1] else 0.0}
    res = {"overall": g(out["overall"])}
    for key in ("modality", "category", "sub-category"):
        res[key] = {name: g(c) for name, c in out[key].items()}
    res["missing"] = {k: {n: m for (kk, n), m in missing.items() if kk == k}
                      for k in ("modality", "category", "sub-category")}
    return res


def _choices(rng: random.Random) -> list[str]:
    n = rng.randint(2, 6)
    out: list[str] = []
    while len(out) < n:
        kind = rng.random()
        if out and kind < 0.2:
            cand = rng.choice(out) + " " + rng.choice(PHRASES)  # a superset of an existing choice
        elif out and kind < 0.3:
            cand = " ".join(reversed(rng.choice(out).split())).upper()  # same token set, other order and case
        elif kind < 0.5:
            cand = rng.choice(PHRASES) + rng.choice([",", ".", "!", " -", "'s", ""]) + " " + rng.choice(PHRASES)
        else:
            cand = rng.choice(PHRASES)
        if cand not in out:
            out.append(cand)
    return out


def _prediction(rng: random.Random, choices: list[str], answer: str) -> str | None:
    other = rng.choice([c for c in choices if c != answer])
    kind = rng.randrange(12)
    return [
        answer,
        f"The answer is {answer}.",
        f"{answer} or maybe {other}",
        "ABCDEF"[choices.index(answer)],
        "",
        answer.upper(),
        answer.replace(" ", "") + "ing",
        other,
        None,
        " ".join(reversed(answer.split())),
        f"({answer}) -- {rng.choice(PHRASES)}",
        "?!...",
    ][kind]


def make_mmar(n: int, seed: int) -> tuple[list[dict], dict[str, str]]:
    """A seeded MMAR-format meta with tricky choices, and predictions of every kind (None = no prediction)."""
    rng = random.Random(seed)
    meta, preds = [], {}
    for i in range(n):
        choices = _choices(rng)
        answer = rng.choice(choices)
        rec = {"id": f"item{i:04d}", "audio_path": f"./audio/item{i:04d}.wav", "question": f"Q{i}?",
               "choices": choices, "answer": answer, "modality": rng.choice(MODALITIES),
               "category": rng.choice(LAYERS), "sub-category": rng.choice(SUBCATS), "language": "en",
               "source": "synthetic", "url": "", "timestamp": "", "thinking": "because", "cue": [], "rubric": []}
        if i % 37 == 0:
            del rec["sub-category"]
        meta.append(rec)
        pred = _prediction(rng, choices, answer)
        if pred is not None:
            preds[rec["id"]] = pred
    return meta, preds


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    meta, preds = make_mmar(600, seed=3)
    path = tmp_path_factory.mktemp("mmar") / "MMAR-meta.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in meta))
    items = benchmarks.load("mmar", path, check_audio=False).items
    return meta, preds, items


def test_verdicts_and_breakdowns_match_reference(generated):
    meta, preds, items = generated
    records = {k: {"id": k, "answer_prediction": v} for k, v in preds.items()}
    summary, verdicts = score(items, records, benchmarks.string_rule, resamples=200)
    expected = [rec["id"] in preds and ref_correct(preds[rec["id"]], rec["answer"], rec["choices"]) for rec in meta]
    assert [v.correct for v in verdicts] == expected
    assert [v.missing for v in verdicts] == [rec["id"] not in preds for rec in meta]
    ref = ref_tally(meta, preds)
    for key in ("overall", "modality", "category", "sub-category"):
        assert summary[key] == ref[key], key
    for key in ("modality", "category", "sub-category"):
        assert summary["missing"][key] == ref["missing"][key]
    assert summary["missing"]["total"] == len(meta) - len(preds)
    answered = [ok for ok, rec in zip(expected, meta, strict=True) if rec["id"] in preds]
    assert summary["answered"] == {"correct": sum(answered), "total": len(answered),
                                   "accuracy": sum(answered) / len(answered)}
    # The generated set exercises both outcomes and the rule's corner cases.
    assert 0.15 < np.mean(expected) < 0.6
    assert sum(rec.get("sub-category") is None for rec in meta) > 10


def test_generated_token_sets_agree(generated):
    meta, preds, _ = generated
    from cogito_jax.eval.score import tokens

    for rec in meta:
        for text in [*rec["choices"], preds.get(rec["id"], "")]:
            assert tokens(text) == ref_tokens(text), text


@pytest.mark.parametrize("prediction,answer,choices,expected", [
    ("dog barking", "dog barking", ["dog barking", "cat meowing"], True),
    ("The answer is: Dog Barking!", "dog barking", ["dog barking", "cat meowing"], True),
    ("B", "dog", ["cat", "dog"], False),                       # a bare letter never matches
    ("", "dog", ["cat", "dog"], False),
    ("...", "dog", ["cat", "dog"], False),                     # no tokens
    ("dogs", "dog", ["cat", "dog"], False),                    # a token inside a longer word
    ("cat and dog", "dog", ["cat", "dog"], False),             # names two choices
    ("dog", "dog barking", ["dog barking", "dog"], False),     # answer tokens not all present
    ("dog barking", "dog", ["dog", "dog barking"], False),     # 'barking' belongs to a wrong choice
    ("the dog", "The dog", ["The dog", "Dog the", "cat"], True),  # same token set as answer: not incorrect
    ("Dog the", "The dog", ["The dog", "Dog the", "cat"], True),
    ("3.5", "3", ["3", "4"], True),                            # '5' is in no choice
    ("3.4", "3", ["3", "4"], False),
    ("C#", "C", ["C", "D"], True),                             # '#' is not a token
    ("C major", "C", ["C", "C major"], False),
    ("a man's voice", "man's voice", ["man's voice", "a woman"], False),  # 'a' is in a wrong choice
    ("man's voice", "man's voice", ["man's voice", "a woman"], True),
])
def test_string_rule_known_cases(prediction, answer, choices, expected):
    assert is_correct(prediction, answer, choices) is expected
    assert ref_correct(prediction, answer, choices) is expected


def ref_mmsu(records: list[dict]) -> tuple[dict, list[int], dict]:
    """MMSU's official ``mmsu_evaluation.py`` written again: id -> True/False/None (dropped), its [correct, total]
    and its table per (category, sub-category). Empty and "None" responses are dropped (the official loop would
    reuse the previous line's letter for them)."""
    verdict, tally, table = {}, [0, 0], defaultdict(lambda: [0, 0])
    for rec in records:
        if "response" not in rec:
            verdict[rec["id"]] = None
            continue
        text = "".join(rec["response"].strip().split("\n"))
        letter = None
        if text and text != "None":
            if re.match(r"[ABCD]", text):
                letter = text[0]
            elif re.search(r"[ABCD].\Z", text, re.S):
                letter = text[-2]
        if letter is None:
            verdict[rec["id"]] = None
            continue
        ok = rec.get("choice_" + letter.lower(), "") == rec["answer_gt"]
        verdict[rec["id"]] = ok
        for counts in (tally, table[f"{rec['category']}/{rec['sub-category']}"]):
            counts[0] += ok
            counts[1] += 1
    return verdict, tally, dict(table)


MMSU_TEXTS = ["anger", "joy", "sadness", "neutral", "None", "A", "B.", "yes", "no", "Definitely D", "(C)",
              "a rising tone"]
MMSU_RESPONSES = [
    "B", "b", "The answer is C.", "Answer: D", "(A)", "A dog barks", "None", "", "  \n C \n", "E", "x\nB.",
    "The answer is (B)", "B\r\n", "C and D", "because of the pitch, D", "\u00a0D", "AB", "(E)", "D)",
    "the answer is d.",
    "答案是B。", "\nA", "Answer:\nC\n", "ZZ", "A\n\n", "?", "xC\ny", "None.", " None ", "D\n.", "(D)\n", "AnswerB",
]


def make_mmsu(n: int, seed: int) -> list[dict]:
    """Seeded MMSU records in the official layout (meta + ``response``), with adversarial responses."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.choice([2, 4, 4])
        texts = rng.sample(MMSU_TEXTS, k)
        if k == 4 and rng.random() < 0.1:
            texts[3] = texts[0]  # two choices with the gold text: either letter is right
        rec = {"id": f"s{i:04d}", "audio_path": f"audio/s{i:04d}.wav", "question": f"Q{i}?",
               **{f"choice_{c}": (texts[j] if j < k else None) for j, c in enumerate("abcd")},
               "answer_gt": rng.choice(texts), "task_name": rng.choice(["emotion", "tone"]),
               "category": rng.choice(["Perception", "Reasoning"]),
               "sub-category": rng.choice(["Linguistics", "Paralinguistics"]), "sub-sub-category": "x"}
        kind = rng.random()
        if kind < 0.05:
            pass  # no response: not answered
        elif kind < 0.2:
            rec["response"] = rng.choice(texts)  # the choice text itself
        else:
            rec["response"] = rng.choice(MMSU_RESPONSES)
        out.append(rec)
    return out


def test_mmsu_official_rule_matches_reference(tmp_path):
    records = make_mmsu(500, seed=7)
    path = tmp_path / "mmsu.jsonl"  # the official layout: one file holds the meta and the responses
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    bench = benchmarks.get("mmsu")
    items = benchmarks.load("mmsu", path, check_audio=False).items
    summary, verdicts = score(items, benchmarks.read_predictions(path, bench.keys), bench.rule, resamples=50,
                              keys=bench.keys)
    ref, (correct, total), table = ref_mmsu(records)
    disagreements = [v.id for v in verdicts if (v.correct if v.answered else None) != ref[v.id]]
    assert disagreements == []
    assert summary["answered"] == {"correct": correct, "total": total, "accuracy": correct / total}
    assert {n: [g["correct"], g["total"]] for n, g in summary["answered_groups"]["category/sub-category"].items()} \
        == table
    assert summary["overall"] == {"correct": correct, "total": len(records), "accuracy": correct / len(records)}
    assert summary["missing"]["ids"] == [r["id"] for r in records if "response" not in r]
    assert summary["unparsed"]["ids"] == [r["id"] for r in records if "response" in r and ref[r["id"]] is None]
    # The set exercises every branch: first letter, second-to-last letter, dropped, right and wrong letters.
    outcomes = [ref[r["id"]] for r in records if "response" in r]
    assert outcomes.count(None) > 50 and outcomes.count(True) > 50 and outcomes.count(False) > 50


@pytest.mark.parametrize("response,letter", [
    ("B", "B"), ("The answer is C.", "C"), ("(A)", "A"), ("A dog", "A"), (" \n D \n", "D"), ("x\nB.", "B"),
    ("Answer: D", "A"), ("b", None), ("E", None), ("", None), ("None", None), ("(E)", None), ("answer is b.", None),
])
def test_mmsu_letter_known_cases(response, letter):
    assert mmsu_letter(response) == letter


def test_unanswered_records_and_official_keys():
    item = benchmarks.Item("q", "", "?", ["dog", "cat"], "dog", "sound", "Reasoning", "", {})
    rule = benchmarks.string_rule
    preds = {"q": {"id": "q", "thinking_prediction": "no answer key"}}
    summary, (v,) = score([item], preds, rule, resamples=10)
    assert (v.correct, v.missing, v.answered) == (False, True, False)
    assert summary["overall"]["total"] == 1 and summary["answered"]["total"] == 0
    both = {"q": {"id": "q", "model_output": "dog", "answer_prediction": "cat"}}
    assert score([item], both, rule, resamples=10, keys=benchmarks.get("mmau").keys)[1][0].correct
    assert not score([item], both, rule, resamples=10, keys=benchmarks.get("mmar").keys)[1][0].correct


def test_bootstrap_ci_width_and_determinism():
    rng = np.random.default_rng(0)
    x = rng.random(1000) < 0.7
    lo, hi = bootstrap_ci(x, resamples=2000, seed=1)
    assert lo < x.mean() < hi
    normal = 2 * 1.96 * np.sqrt(x.mean() * (1 - x.mean()) / x.size)
    assert abs((hi - lo) - normal) < 0.1 * normal
    assert bootstrap_ci(x, resamples=2000, seed=1) == [lo, hi]
    assert bootstrap_ci([True] * 20) == [1.0, 1.0]
    assert bootstrap_ci([]) == [0.0, 0.0]


def test_unknown_prediction_id_raises(generated):
    _, _, items = generated
    with pytest.raises(ValueError, match="'nope'"):
        score(items, {"nope": {"id": "nope", "answer_prediction": "x"}}, benchmarks.string_rule)


def test_ci_fields_cover_every_group(generated):
    meta, preds, items = generated
    records = {k: {"id": k, "answer_prediction": v} for k, v in preds.items()}
    summary, _ = score(items, records, benchmarks.string_rule, resamples=100, seed=5)
    for key in ("modality", "category", "sub-category"):
        assert set(summary["ci"][key]) == set(summary[key])
        for name, (lo, hi) in summary["ci"][key].items():
            assert 0.0 <= lo <= summary[key][name]["accuracy"] <= hi <= 1.0
    again, _ = score(items, records, benchmarks.string_rule, resamples=100, seed=5)
    assert again["ci"] == summary["ci"]


def test_paired_difference_is_the_mean_and_standard_error_of_the_per_item_differences():
    from cogito_jax.eval.score import paired_difference

    before = [True, True, False, False, True, False, True, True]
    after = [True, False, True, True, True, False, True, False]
    d = [0, -1, 1, 1, 0, 0, 0, -1]  # by hand: mean 0, mean of squares 4/8
    delta, se = paired_difference(before, after)
    assert delta == pytest.approx(sum(d) / 8) == 0.0
    assert se == pytest.approx(math.sqrt((4 / 8 - 0.0) / 8))
    delta, se = paired_difference([False] * 4, [True, True, True, False])
    assert (delta, se) == (pytest.approx(0.75), pytest.approx(math.sqrt((0.75 - 0.75**2) / 4)))
    assert paired_difference([True, False], [True, False]) == (0.0, 0.0)  # same verdicts: no difference, no noise
    with pytest.raises(ValueError, match="two equal non-empty"):
        paired_difference([True], [True, False])

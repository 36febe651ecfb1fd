"""The MMAR/MMAU string rule, the MMSU letter rule, breakdowns and CIs against an independent re-implementation."""

import json
import random
import re
from collections import defaultdict

import numpy as np
import pytest

from cogito_jax.eval import benchmarks
from cogito_jax.eval.score import bootstrap_ci, extract_letter, is_correct, letter_correct, score

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


CH = ["A dog barking", "cat", "bird song", "car horn"]


@pytest.mark.parametrize("prediction,letter", [
    ("B", "B"), ("b", "B"), ("(B)", "B"), ("B.", "B"), ("Answer: B", "B"), ("The answer is (C).", "C"),
    ("option D", "D"), ("cat", "B"), ("(B) cat", "B"), ("B) cat", "B"), ("A dog barking", "A"),
    ("Answer: A dog barking", "A"), ("the answer is a car horn", "D"),
    ("(C) cat", None), ("B and C", None), ("bird song or cat", None), ("E", None), ("", None),
    ("catapult", None), ("I cannot tell", None),
])
def test_extract_letter(prediction, letter):
    assert extract_letter(prediction, CH) == letter
    assert letter_correct(prediction, "B", CH) is (letter == "B")


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

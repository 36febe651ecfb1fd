"""Scoring and selection of self-distillation traces, on hand-written (and adversarial) outputs."""

import re

import pytest

from cogito_jax.distill.scoring import ScoreConfig, conclusion, named_choices, parse_trace, score_trace
from cogito_jax.distill.select import Sample, SelectConfig, select

CHOICES = ["two beeps", "three beeps", "four beeps"]


def mmar_rule(prediction, answer, choices):
    """The official MMAR rule, written out for the test."""
    tok = lambda s: set(re.findall(r"\b\w+\b", s.lower()))  # noqa: E731
    p, a = tok(prediction), tok(answer)
    if not p:
        return False
    wrong = set().union(*[tok(c) - a for c in choices if tok(c) != a])
    return a <= p and not (p & wrong)


def score(text, key="three beeps", **kw):
    return score_trace(text, CHOICES, key, mmar_rule, ScoreConfig(min_thinking_chars=10), **kw)


GOOD = "<think>\nI hear a beep, a second beep and a third beep. So the answer is three beeps.\n</think>\n\nthree beeps"


def test_good_trace_accepted():
    v = score(GOOD)
    assert v.accepted and v.correct and v.named_choice == "three beeps", v.reasons
    assert v.thinking.startswith("I hear") and v.answer == "three beeps"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("<think>I count the beeps carefully.</think>\n\nthree beeps or four beeps", "names_several_choices"),
        ("<think>I count the beeps carefully. Therefore it is four beeps.</think>\n\nthree beeps",
         "conclusion_disagrees"),
        ("<think>I count the beeps carefully, one by one.</think>\n\n", "format:empty_answer"),
        ("<think>I count the beeps carefully, one by one.</think>\n\nthreebeeps", "names_no_choice"),
        ("three beeps", "format:no_think_block"),
        ("<think>a</think><think>b</think>three beeps", "format:several_think_blocks"),
        ("<think>I count the beeps carefully, one by one.</think>\n\nfour beeps", "wrong_answer"),
        ("<think>Short.</think>three beeps", "thinking_too_short:6<10"),
    ],
)
def test_adversarial_traces_rejected_with_reason(text, reason):
    v = score(text)
    assert not v.accepted
    assert reason in v.reasons, v.reasons


def test_choice_inside_a_longer_word_is_not_named():
    choices = ["cat", "dog"]
    assert named_choices("a category of sounds: dog", choices) == ["dog"]
    assert named_choices("the catalogue", choices) == []
    assert named_choices("three beeps and two beeps", CHOICES) == ["two beeps", "three beeps"]
    # A choice contained in a longer one ("beeps" in "three beeps") is not also counted.
    assert named_choices("three beeps", ["beeps", "three beeps"]) == ["three beeps"]


def test_conclusion_and_judge():
    assert conclusion("First a beep. Then more. Therefore four beeps. Done") == "Therefore four beeps. Done"
    v = score(GOOD, judge=False)
    assert v.reasons == ["judge_rejected"]
    assert parse_trace("pre <think>x</think> y")[2] == "format:text_before_think"


def _sample(i, text, order=(0, 1, 2)):
    return Sample(index=i, verdict=score(text), order=order)


OTHER = "<think>\nThe first beep, then another, then one more at the end. Thus three beeps.\n</think>\n\nthree beeps"
WRONG = "<think>\nThe first beep, then another, then one more at the end. Thus four beeps.\n</think>\n\nfour beeps"


def test_selection_dedup_cap_and_weights():
    samples = [_sample(0, GOOD, (0, 1, 2)), _sample(1, GOOD, (2, 1, 0)), _sample(2, OTHER, (1, 0, 2)),
               _sample(3, WRONG, (0, 1, 2))]
    d = select("p1", samples, SelectConfig(max_per_prompt=4))
    assert d.status == "mixed" and d.kept == [0, 2] and d.weight == 1.0
    assert d.dropped[1] == "near_duplicate_of:0" and d.dropped[3].startswith("wrong_answer")
    assert d.pass_rate == pytest.approx(0.75)
    d = select("p1", samples[:3], SelectConfig(max_per_prompt=1, dedup_jaccard=1.1))
    assert d.status == "all_right" and d.kept == [0] and d.weight == 0.5
    assert d.dropped == {1: "over_max_per_prompt:1", 2: "over_max_per_prompt:1"}


def test_option_shuffle_guard_and_all_wrong():
    # Correct only when the answer sat in one position: a guesser, dropped.
    samples = [_sample(0, GOOD, (0, 1, 2)), _sample(1, WRONG, (2, 0, 1)), _sample(2, WRONG, (1, 2, 0))]
    d = select("p2", samples)
    assert d.status == "guess_guard" and d.kept == [] and d.dropped[0].startswith("guess_guard:correct_under_1_of_3")
    d = select("p3", [_sample(0, WRONG), _sample(1, WRONG, (1, 0, 2))], SelectConfig(hint_all_wrong=True))
    assert d.status == "retry_with_hint" and d.pass_rate == 0.0
    assert select("p3", [_sample(0, WRONG)]).status == "all_wrong"

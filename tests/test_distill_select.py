"""Hint retry of all-wrong prompts (STaR rationalisation), on hand-written traces: selection, the decision
log, the written records and the round summary."""

import json
import re

import numpy as np
import pytest

from cogito_jax import cli, config as cfglib, errors
from cogito_jax.distill import rounds
from cogito_jax.distill.scoring import ScoreConfig, score_trace
from cogito_jax.distill.select import (
    HINT_TEMPLATE,
    Sample,
    SelectConfig,
    hint_question,
    mentions_hint,
    select,
    select_rationalised,
)
from tests.test_distill_scoring import CHOICES, mmar_rule


def trace(thinking, answer):
    return f"<think>\n{thinking}\n</think>\n\n{answer}"


RIGHT = trace("I hear one beep, a second and then a third one. So the answer is three beeps.", "three beeps")
RIGHT2 = trace("Energy bursts at 0.2 s, 0.5 s and 0.9 s: that is three separate onsets. Thus three beeps.",
               "three beeps")
WRONG = trace("I hear one beep, a second, a third and a fourth one. So the answer is four beeps.", "four beeps")
LEAKY = trace("The hint says it is three, and I trust the hint here. So the answer is three beeps.", "three beeps")


def sample(i, text, order=0, rationalised=False):
    v = score_trace(text, CHOICES, "three beeps", mmar_rule, ScoreConfig(min_thinking_chars=10))
    return Sample(index=i, verdict=v, order=(order,), rationalised=rationalised)


HINT = SelectConfig(hint_all_wrong=True, hint_weight=0.8)


def test_all_wrong_is_dropped_or_flagged_for_a_hint():
    wrong = [sample(0, WRONG, 0), sample(1, WRONG, 1)]
    assert select("p", wrong).status == "all_wrong"
    d = select("p", wrong, HINT)
    assert (d.status, d.kept, d.weight, d.pass_rate) == ("retry_with_hint", [], 0.0, 0.0)
    # A correct answer whose trace failed a check is not all-wrong: no hint for it.
    bad_format = sample(2, "three beeps", 0)
    assert bad_format.verdict.correct and not bad_format.verdict.accepted
    assert select("p", [bad_format, sample(3, WRONG, 1)], HINT).status == "none_accepted"


def test_rationalised_traces_are_kept_marked_and_not_down_weighted():
    first = select("p", [sample(0, WRONG, 0), sample(1, WRONG, 1)], HINT)
    hinted = [sample(10, RIGHT, 0, True), sample(11, RIGHT2, 1, True), sample(12, WRONG, 0, True),
              sample(13, RIGHT, 1, True)]
    d = select_rationalised(first, hinted, HINT)
    assert d.status == "rationalised" and d.rationalised
    assert d.kept == [10, 11] and d.weight == 0.8  # every hinted sample right would still not be "all_right"
    assert d.dropped[12].startswith("wrong_answer") and d.dropped[13] == "near_duplicate_of:10"
    assert d.first_pass["status"] == "retry_with_hint" and set(d.first_pass["dropped"]) == {0, 1}
    log = json.loads(json.dumps(d.to_dict()))
    assert log["rationalised"] is True and log["status"] == "rationalised"


def test_hint_retry_checks_leaks_guard_and_input():
    first = select("p", [sample(0, WRONG, 0), sample(1, WRONG, 1)], HINT)
    # A trace that leans on the hint cannot be trained on the question without it.
    d = select_rationalised(first, [sample(10, LEAKY, 0, True), sample(11, WRONG, 1, True)], HINT)
    assert d.status == "hint_failed" and not d.rationalised and d.kept == [] and d.weight == 0.0
    assert d.dropped[10] == "mentions_hint"
    # Right under one choice order only: the option-shuffle guard applies to hinted samples too.
    d = select_rationalised(first, [sample(10, RIGHT, 0, True), sample(11, WRONG, 1, True)], HINT)
    assert d.status == "hint_failed" and d.dropped[10].startswith("guess_guard:correct_under_1_of_2")
    with pytest.raises(ValueError, match="all-wrong first pass"):
        select_rationalised(select("p", [sample(0, RIGHT, 0), sample(1, RIGHT2, 1)], HINT), [], HINT)
    with pytest.raises(ValueError, match="marked rationalised"):
        select_rationalised(first, [sample(10, RIGHT, 0)], HINT)


def test_hint_question_and_mentions():
    q = hint_question("How many beeps do you hear?", "three beeps")
    assert q.startswith("How many beeps do you hear?\n") and '"three beeps"' in q
    assert HINT_TEMPLATE == cfglib.base_config().distill.hint_template
    assert mentions_hint("as the Hint suggests") and mentions_hint("hinted at")
    assert not mentions_hint("a thin tone, nothing in this") and not mentions_hint("chinta")


def _rec(pid, answer="three beeps"):
    return {"id": pid, "mel": np.zeros((12, 8), np.float16), "n_frames": 12, "question": "How many beeps?",
            "choices": CHOICES, "answer": answer, "category": "Perception Layer", "modality": "sound"}


def _row(pid, text, order, choices=CHOICES):
    return {"id": pid, "text": text, "order": order, "choices": list(choices)}


def _cfg(all_wrong):
    c = cfglib.base_config()
    c.distill.all_wrong, c.distill.orders, c.distill.num_samples = all_wrong, 2, 4
    c.distill.min_thinking_chars = 10
    return c


def test_round_selection_writes_marked_records_decisions_and_separate_counts(tmp_path):
    pool = {"easy": _rec("easy"), "hard": _rec("hard"), "lost": _rec("lost")}
    rev = CHOICES[::-1]
    rows = [_row("easy", RIGHT, 0), _row("easy", RIGHT2, 1, rev),
            _row("hard", WRONG, 0), _row("hard", WRONG, 1, rev),
            _row("lost", WRONG, 0), _row("lost", WRONG, 1, rev)]
    hint_rows = [_row("hard", RIGHT, 0), _row("hard", RIGHT2, 1, rev), _row("lost", LEAKY, 0), _row("lost", WRONG, 1)]
    kept, summary = rounds._select(_cfg("hint"), rows, hint_rows, pool, tmp_path, 3)
    assert summary["accepted_traces"] == 2 and summary["rationalised_traces"] == 2
    assert summary["rationalised_prompts"] == 1 and summary["hint_prompts"] == 2 and summary["prompts"] == 3
    assert summary["status"] == {"all_right": 1, "rationalised": 1, "hint_failed": 1}
    assert summary["pass_rate_histogram"] == {"0.0": 2, "1.0": 1}  # unaided pass rates
    by_id = {r["id"]: r for r in kept}
    assert set(by_id) == {"easy#r3s0", "easy#r3s1", "hard#r3h6", "hard#r3h7"}
    hard = by_id["hard#r3h7"]
    assert hard["provenance"] == {"distilled_from": "hard", "round": 3, "sample": 7, "order": 1, "rationalised": True}
    assert hard["question"] == "How many beeps?" and hard["choices"] == rev  # trained without the hint
    assert hard["thinking"].startswith("Energy bursts") and hard["weight"] == 1.0
    assert by_id["easy#r3s0"]["provenance"]["rationalised"] is False and by_id["easy#r3s0"]["weight"] == 0.5
    log = {d["prompt_id"]: d for d in map(json.loads, (tmp_path / "decisions.jsonl").read_text().splitlines())}
    assert log["hard"]["rationalised"] is True and log["hard"]["first_pass"]["status"] == "retry_with_hint"
    assert log["lost"]["status"] == "hint_failed" and log["lost"]["dropped"]["8"] == "mentions_hint"
    assert log["easy"]["rationalised"] is False and log["easy"]["first_pass"] is None
    # With all_wrong="drop" the same samples keep only the unaided traces.
    kept, summary = rounds._select(_cfg("drop"), rows, [], pool, tmp_path, 3)
    assert len(kept) == 2 and summary["rationalised_traces"] == 0 and summary["status"] == {"all_right": 1,
                                                                                              "all_wrong": 2}


@pytest.mark.parametrize("override, message", [
    ({"distill.all_wrong": "retry"}, "distill.all_wrong='retry' must be one of drop, hint"),
    ({"distill.all_wrong": "hint", "distill.hint_template": "Hint: {answer}"}, "must contain {question} and {answer}"),
    ({"distill.all_wrong": "hint", "distill.hint_template": "{question} {key}"}, "must use only {question}"),
    ({"distill.orders": 4, "distill.num_samples": 2}, "distill.orders=4 must be <= distill.num_samples=2"),
    ({"distill.num_samples": 0}, "distill.num_samples=0 must be >= 1"),
])
def test_distill_config_errors(override, message):
    with pytest.raises(errors.ConfigError, match=re.escape(message)):
        cli.validate(cfglib.apply_overrides(cfglib.base_config(), override))


def test_stage_records_and_skips_finished_stages(tmp_path):
    state = rounds.State(tmp_path / "rounds.json")
    calls = []
    rounds._stage(state, "select_1", lambda: calls.append(1) or {"accepted_traces": 3})
    rec = state.data["stages"]["select_1"]
    assert rec["attempts"] == 1 and rec["finished"] >= rec["started"] and rec["seconds"] >= 0

    def crash():
        calls.append(2)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        rounds._stage(state, "train_1", crash)
    again = rounds.State(tmp_path / "rounds.json")  # as a restarted job reads it
    assert again.data["done"] == ["select_1"] and again.data["rounds"]["1"] == {"accepted_traces": 3}
    assert "finished" not in again.data["stages"]["train_1"]
    rounds._stage(again, "select_1", lambda: calls.append(3))
    rounds._stage(again, "train_1", lambda: calls.append(4))
    assert calls == [1, 2, 4] and again.data["done"] == ["select_1", "train_1"]
    assert again.data["stages"]["train_1"]["attempts"] == 2 and again.data["stages"]["select_1"] == rec


def test_a_round_trains_on_the_seed_every_earlier_accepted_trace_and_its_own(tmp_path):
    """Round 2's data: the seed, round 1's accepted and rationalised traces (read from round 1's dataset, where the
    seed is carried too and must not be counted twice), then round 2's; round 1 has no earlier round to read."""
    from cogito_jax.data import records

    def rec(i, **provenance):
        return records.make_record(id=i, mel=np.zeros((4, 8)), n_frames=4, question="How many beeps?",
                                   choices=CHOICES, answer=CHOICES[0], provenance=provenance)

    seed = [rec("s0"), rec("s1")]
    round_1 = [rec("p0#r1s1", distilled_from="p0", round=1), rec("p1#r1h4", distilled_from="p1", round=1)]
    records.write_dataset(tmp_path / "round_1" / "data", {"train": lambda: seed + round_1}, feat_dim=8)
    kept = [rec("p0#r2s0", distilled_from="p0", round=2)]
    assert [r["id"] for r in rounds.training_union(tmp_path, 1, seed, round_1)] == ["s0", "s1", "p0#r1s1", "p1#r1h4"]
    got = rounds.training_union(tmp_path, 2, seed, kept)
    assert [r["id"] for r in got] == ["s0", "s1", "p0#r1s1", "p1#r1h4", "p0#r2s0"]
    assert [r["id"] for r in rounds.training_union(tmp_path, 2, [], kept)] == ["p0#r1s1", "p1#r1h4", "p0#r2s0"]


def test_the_rl_stage_takes_its_prompts_from_rl_pool_dir_checked_before_any_stage(tmp_path, monkeypatch):
    """``rl.pool_dir`` names the RL stage's prompts (else the rounds' pool); one too small for an RL step stops the
    run before its first stage, not after hours of rounds."""
    from cogito_jax.data import synthetic

    small = synthetic.build_dataset(tmp_path / "rl_pool", 4, seed=3, split="train", n_mels=16, max_seconds=1.0)
    cfg = cli.load_config("configs/distill_tiny.py", ["distill.rl_steps=2", f"rl.pool_dir={tmp_path / 'rl_pool'}",
                                                       "rl.prompts_per_step=8"])
    assert rounds.rl_pool(cfg, tmp_path / "rounds_pool") == small
    cfg.rl.pool_dir = ""
    assert rounds.rl_pool(cfg, tmp_path / "rounds_pool") == tmp_path / "rounds_pool"
    cfg.rl.pool_dir = str(tmp_path / "rl_pool")

    def no_stage(*args, **kw):
        raise AssertionError("a stage started")

    monkeypatch.setattr(rounds, "_stage", no_stage)
    with pytest.raises(errors.ConfigError, match=re.escape("prompts_per_step=8 must be <= the 4 prompts of the pool")):
        rounds.run(cfg, tmp_path / "run")

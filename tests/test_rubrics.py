"""MMAR-Rubrics against a local judge stub that scores deterministically and fails part of the time."""

import json
import re

import numpy as np
import pytest

from cogito_jax.eval import rubrics
from cogito_jax.judge import HttpJudge
from tests.judge_stub import JudgeStub


def mmar_rule(prediction, answer, choices):
    tok = lambda s: set(re.findall(r"\b\w+\b", s.lower()))  # noqa: E731
    p, a = tok(prediction), tok(answer)
    wrong = set().union(*[tok(c) - a for c in choices if tok(c) != a])
    return bool(p) and a <= p and not (p & wrong)


def _meta(i):
    return {"id": f"q{i}", "question": f"Question {i}?", "choices": ["dog bark", "cat meow"], "answer": "dog bark",
            "modality": "sound", "category": "Perception Layer", "thinking": "ref",
            "rubric": [{"name": f"r{k}", "scoring_point": f"point {k}", "note": ""} for k in range(5)]}


def _reply(messages):
    """Scores depend on the item and on how often it was asked: item q1 gets 1,2,3,4,5 points over 5 runs."""
    text = messages[-1]["content"]
    item = int(re.search(r"Question (\d+)\?", text).group(1))
    _reply.count[item] = _reply.count.get(item, 0) + 1
    k = (_reply.count[item] - 1) % 5 + 1 if item == 1 else 3
    if item == 4:
        return "I think it is fine"  # no JSON: a failed judgement, not a zero
    return json.dumps({"scores": [1] * k + [0] * (5 - k)})


def test_rubric_protocol_hand_computed(tmp_path):
    _reply.count = {}
    meta = [_meta(i) for i in range(5)]
    preds = {"q0": {"thinking_prediction": "t", "answer_prediction": "cat meow"},  # wrong -> 0
             "q1": {"thinking_prediction": "t", "answer_prediction": "dog bark"},  # runs .2..1.0 -> middle .6
             "q2": {"thinking_prediction": "t", "answer_prediction": "the dog bark"},  # always 3/5 -> .6
             "q4": {"thinking_prediction": "t", "answer_prediction": "dog bark"}}  # judge fails
    failures = {"Question 2?": ["500", "timeout"]}  # transient: retried, then scored
    with JudgeStub(_reply, failures, delay_s=1.0) as stub:
        judge = HttpJudge(stub.url, "stub", timeout_s=0.5, backoff_s=0.01, max_retries=2,
                          cache_path=tmp_path / "c.jsonl")
        out = rubrics.score_rubrics(meta, preds, judge, mmar_rule)
    # q3 has no prediction: wrong, 0. Scored items: q0, q1, q2, q3 (q4 failed and is reported).
    assert out["failed"]["count"] == 1 and out["failed"]["ids"] == ["q4"]
    assert "no JSON object" in out["failed"]["reasons"]["q4"]
    assert (out["scored"], out["total"], out["correct"]) == (4, 5, 3)
    assert out["items"]["q1"]["runs"] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert out["rubric_score"] == pytest.approx(100 * (0 + 0.6 + 0.6 + 0) / 4)
    assert out["accuracy"] == pytest.approx(3 / 5)  # q4's answer is right whatever the judge does
    assert out["crs"] == pytest.approx((0.6 + 0.6) / 2)  # the mean score of the judged correct items


def test_middle_mean():
    assert rubrics.middle_mean([0.0, 1.0, 0.4, 0.6, 0.2]) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="are not 5 values"):
        rubrics.parse_scores('{"scores": [1, 0]}', 5)


def test_rubrics_cli_against_stub(tmp_path):
    import os
    import subprocess
    import sys

    _reply.count = {}
    meta = [_meta(i) for i in range(3)]
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    preds = [{"id": "q1", "thinking_prediction": "t", "answer_prediction": "dog bark"},
             {"id": "q2", "thinking_prediction": "t", "answer_prediction": "cat meow"}]
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    with JudgeStub(_reply, {"Question 1?": ["500"]}) as stub:
        args = ["rubrics", "--meta", str(tmp_path / "meta.jsonl"), "--predictions", str(tmp_path / "pred.jsonl"),
                "--out", str(tmp_path / "rub.json"), "--judge-url", stub.url, "--judge-model", "stub", "--timeout", "2"]
        r = subprocess.run([sys.executable, "-m", "cogito_jax.evaluate", *args], capture_output=True, text=True,
                           env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "rub.json").read_text())
    # q0 unanswered and q2 wrong score 0; q1's five runs give 1..5 points: middle three mean 0.6.
    assert out["rubric_score"] == pytest.approx(100 * 0.6 / 3)
    assert out["judge_stats"]["retries"] == 1 and out["failed"] == {"count": 0, "ids": [], "reasons": {}}
    assert (tmp_path / "rub.judge_cache.jsonl").exists()


def _rubrics_cli(tmp_path, url, *extra):
    import os
    import subprocess
    import sys

    args = ["rubrics", "--meta", str(tmp_path / "meta.jsonl"), "--predictions", str(tmp_path / "pred.jsonl"),
            "--out", str(tmp_path / "rub.json"), "--judge-url", url, "--judge-model", "stub", "--timeout", "2",
            "--retries", "0", *extra]
    return subprocess.run([sys.executable, "-m", "cogito_jax.evaluate", *args], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)


def test_rubrics_cli_judge_failures_are_reported_and_fail_the_run(tmp_path):
    meta = [_meta(i) for i in range(3)]
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    preds = [{"id": "q0", "thinking_prediction": "t", "answer_prediction": "dog bark"},
             {"id": "q1", "thinking_prediction": "t", "answer_prediction": "cat meow"},
             {"id": "q2", "thinking_prediction": "t", "answer_prediction": "the dog bark"}]
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    with JudgeStub(lambda messages: "no verdict") as stub:
        r = _rubrics_cli(tmp_path, stub.url)
        assert r.returncode == 1, r.stderr
        out = json.loads((tmp_path / "rub.json").read_text())
        assert out["failed"]["count"] == 2 and out["failed"]["ids"] == ["q0", "q2"]
        assert (out["correct"], out["total"], out["scored"]) == (2, 3, 1)
        assert "accuracy 66.67% = 2/3" in r.stdout and "2 judge failure(s)" in r.stdout
        assert "q0, q2" in r.stderr and "--allow-failures" in r.stderr
        r = _rubrics_cli(tmp_path, stub.url, "--allow-failures")
    assert r.returncode == 0, r.stderr
    assert "accuracy 66.67% = 2/3" in r.stdout


def test_engine_judge_runs_a_local_model(tmp_path):
    from cogito_jax.convert import load_hf
    from cogito_jax.data import tokenizer as toklib
    from cogito_jax.judge import EngineJudge
    from tests.hf_tiny import save_qwen2_audio

    save_qwen2_audio(tmp_path)
    model, cfg = load_hf(tmp_path)
    tok = toklib.train_bpe(["grade the answer: scores 0 1 {}"] * 20, vocab_size=280)
    judge = EngineJudge(model, tok, cfg.family, max_new_tokens=6)
    messages = rubrics.judge_prompt(_meta(1), "t", "dog bark")
    a, b = judge.complete(messages, run=0), judge.complete(messages, run=0)
    assert isinstance(a, str) and a == b and judge.stats["calls"] == 2
    # Prompts of other lengths in the same length bucket reuse the compiled programs.
    from cogito_jax.sampling import engine_for

    eng = engine_for(model)
    traces = dict(eng.trace_counts)
    longer = rubrics.judge_prompt(_meta(1), "t", "dog bark twice, then a door")
    assert len(tok.encode(longer[-1]["content"])) != len(tok.encode(messages[-1]["content"]))
    judge.complete(longer, run=0)
    assert eng.trace_counts == traces
    # Left padding changes nothing: the same prompt unpadded through the engine gives the same answer.
    from cogito_jax.data import chat

    ids = chat.encode_prompt(tok, chat.chat_format(cfg.family), messages[-1]["content"], 0, messages[0]["content"])
    eos = [tok.convert_tokens_to_ids(t) for t in (chat.IM_END, "<|endoftext|>")]
    raw = eng.generate(np.asarray(ids)[None], max_new_tokens=6, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    toks = [t for t in np.asarray(raw.tokens)[0, 0].tolist() if t not in eos]
    assert chat.split_thinking(tok.decode(toks, skip_special_tokens=True))[1] == a
    # A random model writes no JSON: the item is reported as a judge failure, never scored as zero.
    out = rubrics.score_rubrics([_meta(1)], {"q1": {"answer_prediction": "dog bark"}}, judge, mmar_rule, runs=1)
    assert out["failed"]["ids"] == ["q1"] and out["scored"] == 0 and out["accuracy"] == 1.0


def test_rubrics_cli_on_a_damaged_judge_cache_is_one_line_exit_2(tmp_path):
    (tmp_path / "meta.jsonl").write_text(json.dumps(_meta(0)) + "\n")
    (tmp_path / "pred.jsonl").write_text(json.dumps({"id": "q0", "thinking_prediction": "t",
                                                     "answer_prediction": "dog bark"}) + "\n")
    cache = tmp_path / "rub.judge_cache.jsonl"
    cache.write_text('{"key": "a", "reply": "fine"}\n{"key": "b", "re\n{"key": "c", "reply": "fine"}\n')
    with JudgeStub(_reply) as stub:
        r = _rubrics_cli(tmp_path, stub.url)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and "rub.judge_cache.jsonl:2: not a JSON line" in lines[0], r.stderr
    assert not stub.requests and not (tmp_path / "rub.json").exists()

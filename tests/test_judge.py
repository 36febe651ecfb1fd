"""The HTTP judge client (retries, caches, never hides a failure) and the audit's reading of a judge's verdict."""

import pytest

from cogito_jax.judge import HttpJudge, JudgeError
from data_prep.stages.audit import VERDICT_FORMAT, judge_messages, parse_verdict
from tests.judge_stub import JudgeStub


def _echo(messages):
    return "verdict for " + messages[-1]["content"]


def _judge(url, **kw):
    return HttpJudge(url, "stub-model", timeout_s=0.5, backoff_s=0.01, max_retries=3, **kw)


def test_retries_through_errors_and_timeouts_then_caches(tmp_path):
    failures = {"a": ["500", "timeout", "garbage"], "b": ["429"]}
    with JudgeStub(_echo, failures, delay_s=1.0) as stub:
        j = _judge(stub.url, cache_path=tmp_path / "cache.jsonl")
        assert j.complete([{"role": "user", "content": "a"}]) == "verdict for a"
        assert j.complete([{"role": "user", "content": "b"}]) == "verdict for b"
        assert j.stats == {"calls": 6, "cache_hits": 0, "retries": 4, "failures": 0}
        n = len(stub.requests)
        # The same request again, even from a new client, comes from the cache: no HTTP call.
        j2 = _judge(stub.url, cache_path=tmp_path / "cache.jsonl")
        assert j2.complete([{"role": "user", "content": "a"}]) == "verdict for a"
        assert len(stub.requests) == n and j2.stats["cache_hits"] == 1
        # A different run index is a separate judgement.
        assert j2.complete([{"role": "user", "content": "a"}], run=1) == "verdict for a"
        assert len(stub.requests) == n + 1


def test_persistent_failure_raises_and_is_not_cached(tmp_path):
    with JudgeStub(_echo, {"c": ["500"] * 10}) as stub:
        j = _judge(stub.url, cache_path=tmp_path / "cache.jsonl")
        with pytest.raises(JudgeError, match="failed after 4 attempts: HTTP 500"):
            j.complete([{"role": "user", "content": "c"}])
        assert j.stats["failures"] == 1
        assert not (tmp_path / "cache.jsonl").exists()


def test_unreachable_endpoint():
    j = HttpJudge("http://127.0.0.1:9/v1", "m", timeout_s=0.2, backoff_s=0.0, max_retries=1)
    with pytest.raises(JudgeError, match="failed after 2 attempts"):
        j.complete([{"role": "user", "content": "x"}])


# ------------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize("reply, verdict", [
    ("VERDICT: ACCEPT\nREASON: none", (True, "none")),
    ('{"verdict": "REJECT", "reason": "hallucination", "explanation": "no dog in the clip"}', (False, "hallucination")),
    ('```json\n{"verdict": "accept", "reason": "none", "explanation": "sound"}\n```', (True, "none")),
    ('{"verdict": "REJECT", "reason": "logic error: step 2"}', (False, "logic_error")),
    ("**Verdict:** **reject**\nReason: logic error, step 2 does not follow", (False, "logic_error")),
    ("REJECT.", (False, "other")),
    ("I would ACCEPT step one, but the dog is invented.\nVERDICT: REJECT\nREASON: hallucination",
     (False, "hallucination")),
    ("<think>VERDICT: REJECT, maybe</think>\nVERDICT: ACCEPT\nREASON: none", (True, "none")),
    # No verdict, or no single one in the last place that gives one: a failed call, never ACCEPT.
    ("Verdict: Acceptable? No … REJECT", None),
    ("VERDICT: ACCEPT or REJECT\nREASON: none, hallucination, logic_error or shortcut, then one sentence", None),
    ('{"verdict": "ACCEPT or REJECT", "reason": "none"}', None),
    (VERDICT_FORMAT, None),
    ("VERDICT: ACCEPT/REJECT", None),
    ("VERDICT: ACCEPT\nVERDICT: REJECT", None),
    ('{"verdict": "ACCEPT"}\nVERDICT: REJECT', None),
    ("VERDICT: ACCEPT\nREASON: none\n\nOn reflection the dog is invented: REJECT", None),
    ("VERDICT: ACCEPTABLE", None),
    ("VERDICT: NOT ACCEPT", None),
    ('{"verdict": true}', None),
    ("<think>the steps hold, so VERDICT: ACCEPT", None),
    ("The reasoning is acceptable.", None),
    ("", None),
    (None, None),
])
def test_adversarial_verdicts(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_the_judge_is_asked_for_the_strict_format():
    item = {"question": "Q?", "choices": ["a", "b"], "answer": "a", "metadata": {"caption": "a tone"}}
    prompt = judge_messages(item, "thinking", "a")[-1]["content"]
    assert prompt.splitlines()[-2] == VERDICT_FORMAT and "nothing after it" in prompt
    assert parse_verdict(prompt) is None  # a judge that echoes its instructions gives no verdict

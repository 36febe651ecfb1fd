"""The HTTP judge client: retries through errors and timeouts, caches, never hides a failure."""

import pytest

from cogito_jax.judge import HttpJudge, JudgeError
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

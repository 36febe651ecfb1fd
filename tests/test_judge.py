"""The HTTP judge client (retries, deadlines, redirects, its cache) and the audit's reading of a judge's verdict."""

import email.utils
import json
import time

import pytest

from cogito_jax import jsonl
from cogito_jax.errors import ConfigError
from cogito_jax.judge import VERDICT_FORMAT, HttpJudge, JudgeError, parse_verdict, retry_after_s
from data_prep.stages.audit import judge_messages
from tests.judge_stub import JudgeStub


def _echo(messages):
    return "verdict for " + messages[-1]["content"]


def _judge(url, **kw):
    return HttpJudge(url, "stub-model", **{"timeout_s": 0.5, "backoff_s": 0.01, "max_retries": 3, **kw})


def _ask(judge, text="x", **kw):
    return judge.complete([{"role": "user", "content": text}], **kw)


def test_retries_through_errors_and_timeouts_then_caches(tmp_path):
    failures = {"a": ["500", "timeout", "garbage"], "b": ["429"]}
    with JudgeStub(_echo, failures, delay_s=1.0) as stub:
        j = _judge(stub.url, cache_path=tmp_path / "cache.jsonl")
        assert _ask(j, "a") == "verdict for a"
        assert _ask(j, "b") == "verdict for b"
        assert j.stats == {"calls": 6, "cache_hits": 0, "retries": 4, "failures": 0}
        n = len(stub.requests)
        # The same request again, even from a new client, comes from the cache: no HTTP call.
        j2 = _judge(stub.url, cache_path=tmp_path / "cache.jsonl")
        assert _ask(j2, "a") == "verdict for a"
        assert len(stub.requests) == n and j2.stats["cache_hits"] == 1
        # A different run index is a separate judgement.
        assert _ask(j2, "a", run=1) == "verdict for a"
        assert len(stub.requests) == n + 1


def test_persistent_failure_raises_and_is_not_cached(tmp_path):
    with JudgeStub(_echo, {"c": ["500"] * 10}) as stub:
        j = _judge(stub.url, cache_path=tmp_path / "cache.jsonl")
        with pytest.raises(JudgeError, match="failed after 4 attempts: HTTP 500"):
            _ask(j, "c")
        assert j.stats["failures"] == 1
        assert not (tmp_path / "cache.jsonl").exists()


def test_unreachable_endpoint():
    j = HttpJudge("http://127.0.0.1:9/v1", "m", timeout_s=0.2, backoff_s=0.0, max_retries=1)
    with pytest.raises(JudgeError, match="failed after 2 attempts"):
        _ask(j)


# ------------------------------------------------------------------------------- misbehaving servers


@pytest.mark.parametrize("mode", ["cut", "latin1", "garbage", "408", "429", "500", "503"])
def test_each_broken_reply_is_one_failed_attempt_then_retried(mode):
    """A connection closed mid-body, a body that is not UTF-8, ...: the attempt fails and the next one answers."""
    with JudgeStub(_echo, {"": [mode]}) as stub:
        j = _judge(stub.url)
        assert _ask(j) == "verdict for x"
    assert len(stub.requests) == 2 and j.stats["retries"] == 1 and j.stats["failures"] == 0


def test_a_drip_fed_reply_meets_the_overall_deadline():
    """The server sends a byte every 0.1 s, well inside any per-read timeout: each attempt still ends at 0.4 s."""
    with JudgeStub(_echo, {"": ["drip"] * 3}) as stub:
        j = _judge(stub.url, timeout_s=0.4, max_retries=1)
        t = time.monotonic()
        with pytest.raises(JudgeError, match=r"failed after 2 attempts: no complete reply .* within 0.4 s"):
            _ask(j)
        assert time.monotonic() - t < 1.5
    assert len(stub.requests) == 2


@pytest.mark.parametrize("code", ["400", "401", "404"])
def test_client_errors_fail_at_once(code):
    with JudgeStub(_echo, {"": [code] * 5}) as stub:
        j = _judge(stub.url)
        with pytest.raises(JudgeError, match=rf"HTTP {code} from http://127.0.0.1:\d+/v1/chat/completions \(not "
                                             r"retried\)"):
            _ask(j)
    assert len(stub.requests) == 1 and j.stats == {"calls": 1, "cache_hits": 0, "retries": 0, "failures": 1}


def test_a_redirect_is_not_followed_and_the_key_goes_nowhere_else(monkeypatch):
    monkeypatch.setenv("STUB_JUDGE_KEY", "secret")
    with JudgeStub(_echo, host="127.0.0.2") as elsewhere:
        target = elsewhere.url + "/chat/completions"
        with JudgeStub(_echo, {"": [f"redirect={target}"] * 5}) as stub:
            j = _judge(stub.url, api_key_env="STUB_JUDGE_KEY")
            with pytest.raises(JudgeError, match=f"HTTP 302 .* redirects to '{target}'; redirects are not followed"):
                _ask(j)
    assert [s["headers"].get("Authorization") for s in stub.seen] == ["Bearer secret"]
    assert elsewhere.seen == []


@pytest.mark.parametrize("value, max_backoff_s, low, high", [
    ("1", 30.0, 0.95, 1.6),
    ("http-date in 2 s", 30.0, None, 2.6),  # HTTP dates have whole seconds: the retry comes at the date
    ("100", 0.3, 0.28, 0.9),  # capped by max_backoff_s
])
def test_retry_after_is_honoured(value, max_backoff_s, low, high):
    not_before = None
    if value.startswith("http-date"):
        wall, mono = time.time(), time.monotonic()
        value = email.utils.formatdate(wall + 2, usegmt=True)
        # The date has whole seconds: the retry may not come before it, however long the first call took to start.
        not_before = mono + int(wall + 2) - wall
    with JudgeStub(_echo, {"": [f"retry-after={value}"]}) as stub:
        j = _judge(stub.url, max_backoff_s=max_backoff_s)
        assert _ask(j) == "verdict for x"
    waited = stub.seen[1]["time"] - stub.seen[0]["time"]
    if not_before is None:
        assert low <= waited <= high, waited
    else:
        assert stub.seen[1]["time"] >= not_before - 0.05 and waited <= high, (stub.seen[1]["time"] - not_before, waited)


def test_retry_after_values():
    assert retry_after_s("7") == 7.0 and retry_after_s("-3") == 0.0
    assert retry_after_s(email.utils.formatdate(1000.0, usegmt=True), now=990.0) == pytest.approx(10.0)
    assert retry_after_s(email.utils.formatdate(1000.0, usegmt=True), now=2000.0) == 0.0
    for bad in (None, "", "soon", "Wed, 21 Oct 2015 07:28:00"):  # the last has no time zone
        assert retry_after_s(bad) is None


@pytest.mark.parametrize("url", ["ftp://judge/v1", "localhost:8000/v1", "http:///v1"])
def test_a_url_that_is_not_http_is_a_config_error(url):
    with pytest.raises(ConfigError, match=f"judge_url='{url}' must be an http:// or https:// URL"):
        HttpJudge(url, "m")


@pytest.mark.parametrize("setting, message", [({"timeout_s": 0}, "timeout_s=0 must be > 0"),
                                              ({"max_retries": -1}, "max_retries=-1 must be >= 0"),
                                              ({"backoff_s": float("nan")}, "backoff_s=nan must be >= 0")])
def test_bad_client_settings_are_config_errors(setting, message):
    with pytest.raises(ConfigError, match=message):
        HttpJudge("http://127.0.0.1:9/v1", "m", **setting)


# ------------------------------------------------------------------------------- the reply cache


@pytest.mark.parametrize("content", [None, 5, "", "  \n"])
def test_a_reply_without_text_is_a_failed_attempt_and_never_cached(tmp_path, content):
    with JudgeStub(lambda m: content) as stub:
        j = _judge(stub.url, max_retries=1, cache_path=tmp_path / "cache.jsonl")
        with pytest.raises(JudgeError, match=r"failed after 2 attempts: reply .* has no text in choices"):
            _ask(j)
    assert len(stub.requests) == 2 and not (tmp_path / "cache.jsonl").exists()


def test_unusable_cache_lines_are_asked_again(tmp_path):
    cache = tmp_path / "cache.jsonl"
    with JudgeStub(_echo) as stub:
        assert [_ask(_judge(stub.url, cache_path=cache), t) for t in "abc"] == [f"verdict for {t}" for t in "abc"]
        a, b, c = [json.loads(line) for line in cache.read_text().splitlines()]
        junk = [json.dumps({**a, "reply": None}), json.dumps({**b, "reply": 5}), "[1, 2]", '"text"', "null",
                json.dumps({"reply": "no key"}), json.dumps(c)[:-9]]
        cache.write_text("\n".join(junk))  # and the last line is torn
        j = _judge(stub.url, cache_path=cache)
        assert [_ask(j, t) for t in "abc"] == [f"verdict for {t}" for t in "abc"]
        assert len(stub.requests) == 6 and j.stats["cache_hits"] == 0
        # The new replies are cached on lines of their own: a new client asks nothing.
        j = _judge(stub.url, cache_path=cache)
        assert [_ask(j, t) for t in "abc"] == [f"verdict for {t}" for t in "abc"]
        assert len(stub.requests) == 6 and j.stats["cache_hits"] == 3


def test_a_cache_line_that_is_not_json_inside_the_file_is_named(tmp_path):
    """Rows that are JSON but no usable entry are asked again (above); a line in the middle that is not JSON at
    all is damage, reported in one message naming the file and line before anything is asked or written."""
    cache = tmp_path / "cache.jsonl"
    with JudgeStub(_echo) as stub:
        _ask(_judge(stub.url, cache_path=cache), "a")
        good = cache.read_text()
        damaged = good + '{"key": "k", "reply": "unfinished\n' + good
        cache.write_text(damaged)
        with pytest.raises(jsonl.JsonlError, match=r"cache.jsonl:2: not a JSON line"):
            _judge(stub.url, cache_path=cache)
        assert len(stub.requests) == 1 and cache.read_text() == damaged


def test_the_cache_is_keyed_by_url(tmp_path):
    with JudgeStub(lambda m: "from one") as one, JudgeStub(lambda m: "from two") as two:
        assert _ask(_judge(one.url, cache_path=tmp_path / "c.jsonl")) == "from one"
        assert _ask(_judge(two.url, cache_path=tmp_path / "c.jsonl")) == "from two"
    assert len(two.requests) == 1


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

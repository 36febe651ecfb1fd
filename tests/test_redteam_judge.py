"""Adversarial judges against the audit stage and the real ``python -m data_prep.build``.

A judge that stalls, drip-feeds bytes, drops the connection mid-body, sends bytes that are not UTF-8, redirects to
another host, refuses the request, replies with null content or without one clear verdict costs ``judge_failed``
traces (asked again by the next run), never an accepted one, and never stops the build; a judge URL that is not
HTTP is one line on stderr and exit status 2.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests import test_model_stages as stages_tests
from tests.judge_stub import JudgeStub
from tests.test_model_stages import CHOICES, GOOD, WRONG, Q, _cache_outputs, _corpus, _data_cfg, _mcq, _settings

ckpt = stages_tests.ckpt  # the tiny thinker checkpoint (a module fixture)

REPO = pathlib.Path(__file__).resolve().parents[1]
ELSEWHERE = "http://127.0.0.2:9/v1/chat/completions"
# case -> (scripted failures of every HTTP attempt, reply content, start of the trace's recorded reason)
AFTER_RETRIES = "judge_failed: judge call failed after 2 attempts: "
CASES = {
    "stall": (["timeout"] * 9, "VERDICT: ACCEPT", AFTER_RETRIES + "no complete reply"),
    "drip": (["drip"] * 9, "VERDICT: ACCEPT", AFTER_RETRIES + "no complete reply"),
    "cut": (["cut"] * 9, "VERDICT: ACCEPT", AFTER_RETRIES + "RemoteProtocolError"),
    "latin1": (["latin1"] * 9, "VERDICT: ACCEPT", AFTER_RETRIES + "reply from"),
    "redirect": ([f"redirect={ELSEWHERE}"] * 9, "VERDICT: ACCEPT", "judge_failed: HTTP 302"),
    "refused": (["401"] * 9, "VERDICT: ACCEPT", "judge_failed: HTTP 401"),
    "null": ([], None, AFTER_RETRIES + "reply from"),
    "echo": ([], "VERDICT: ACCEPT or REJECT\nREASON: none, hallucination, logic_error or shortcut",
             "judge_failed: no readable verdict in 3 replies"),
    "acceptable": ([], "Verdict: Acceptable? No … REJECT", "judge_failed: no readable verdict in 3 replies"),
    "sound": ([], '{"verdict": "ACCEPT", "reason": "none", "explanation": "it follows"}', None),
    "invented": ([], '{"verdict": "REJECT", "reason": "hallucination"}', "judge_rejected:hallucination"),
}


def _case_trace(case: str) -> str:
    return GOOD.replace("one pitch", f"one pitch (case {case})")


def _reply_for_case(messages):
    reasoning = messages[-1]["content"].split("The model's reasoning:")[1]
    return next(reply for case, (_, reply, _) in CASES.items() if f"(case {case})" in reasoning)


def _adversarial_judge(**kw) -> JudgeStub:
    return JudgeStub(_reply_for_case, {f"(case {c})": list(f) for c, (f, _, _) in CASES.items()}, delay_s=1.0, **kw)


def _items():
    items = [{"id": c, "clip_id": c, "question": Q, "choices": CHOICES, "answer": CHOICES[0],
              "metadata": {"caption": "a steady 440 Hz tone"}, "question_source": "annotator"} for c in CASES]
    return items, {c: [{"id": c, "sample": 0, "text": _case_trace(c)}, {"id": c, "sample": 1, "text": WRONG}]
                   for c in CASES}


def test_the_audit_survives_adversarial_judges_and_never_accepts_on_a_failure(tmp_path):
    from data_prep.stages import audit

    items, samples = _items()
    settings = {"audit.timeout_s": 0.3, "audit.max_retries": 1, "audit.workers": 4, "think.num_samples": 2}
    with _adversarial_judge() as stub:
        cfg = _data_cfg(**settings, **{"audit.judge_url": stub.url})
        kept, rejected, stats = audit.run(items, samples, cfg, tmp_path, audit.make_judge(cfg, tmp_path))
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "cache" / "audit.jsonl").read_text().splitlines())}
    for case, (_, _, reason) in CASES.items():
        row = rows[f"{case}#s0"]
        assert (row["reason"] or "").startswith(reason or "none") if reason else row["status"] == "accepted", row
    assert [k["id"] for k in kept] == ["sound"] and stats["traces_accepted"] == 1
    assert stats["traces_judge_failed"] == 9 and stats["questions_waiting_for_judge"] == 9
    # A redirect and a refusal are asked once; nothing reaches the other host.
    asked = {c: sum(f"(case {c})" in r["messages"][-1]["content"] for r in stub.requests) for c in CASES}
    assert asked["redirect"] == asked["refused"] == 1 and asked["drip"] == asked["cut"] == asked["null"] == 2
    assert asked["echo"] == 3

    # Junk in the reply cache is skipped; a healthy judge then decides every waiting trace.
    with (tmp_path / "cache" / "judge_http.jsonl").open("a") as f:
        f.write('[1, 2]\n{"key": "k", "reply": null}\n{"key": "k2", "reply": 7}\n{"key": "torn", "re')
    with JudgeStub(lambda m: "VERDICT: ACCEPT\nREASON: none") as healthy:
        cfg = _data_cfg(**settings, **{"audit.judge_url": healthy.url})
        kept, rejected, stats = audit.run(items, samples, cfg, tmp_path, audit.make_judge(cfg, tmp_path))
    assert len(healthy.requests) == 9 and stats["traces_judge_failed"] == 0
    assert sorted(k["id"] for k in kept) == sorted(set(CASES) - {"invented"})


def _build(args, cwd, **env):
    return subprocess.run([sys.executable, "-m", "data_prep.build", "--config",
                           str(REPO / "configs" / "data" / "cogito_pipe.py"), *args], cwd=cwd,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), **env},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_build_against_an_adversarial_judge(ckpt, tmp_path):
    """The whole CLI: the cut and ambiguous judgements wait as judge_failed, the sound one is kept, exit 0."""
    cases = ["cut", "echo", "sound"]
    root = _corpus(tmp_path / "corpus", [_mcq(c) for c in cases])
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    _cache_outputs(out / "cache" / "think_samples.jsonl", {c: [_case_trace(c), WRONG] for c in cases})
    with _adversarial_judge() as stub:
        overrides = {**_settings(root, ckpt), "audit.judge_url": stub.url, "audit.judge_model": "stub",
                     "audit.timeout_s": 2.0, "audit.max_retries": 1, "audit.backoff_s": 0.01}
        r = _build(["--out", str(out), *[f"--config.{k}={v}" for k, v in overrides.items()]], cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    reasons = {x["id"]: x["reason"] for x in report["rejected"]}
    assert reasons["cut"].startswith(CASES["cut"][2]) and reasons["echo"].startswith(CASES["echo"][2])
    assert report["kept"] == 1 and "sound" not in reasons
    assert report["stages"]["audit"]["traces_judge_failed"] == 2 and report["stages"]["audit"]["traces_accepted"] == 1
    assert "2 questions wait for a judge verdict" in r.stdout
    assert not any(cwd.iterdir()) and {p.name for p in tmp_path.iterdir()} == {"corpus", "out", "cwd"}


@pytest.mark.slow
@pytest.mark.parametrize("url", ["ftp://judge/v1", "judge.example:8000/v1"])
def test_cli_rejects_a_judge_url_that_is_not_http(ckpt, tmp_path, url):
    root = _corpus(tmp_path / "corpus", [_mcq("m0")])
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    overrides = {**_settings(root, ckpt), "audit.judge_url": url, "audit.judge_model": "stub"}
    r = _build(["--out", str(out), *[f"--config.{k}={v}" for k, v in overrides.items()]], cwd)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert f"audit.judge_url='{url}' must be an http:// or https:// URL" in lines[0]
    assert not any(cwd.iterdir()) and not (out / "cache" / "judge_http.jsonl").exists()
    assert not (out / "report.json").exists()


@pytest.mark.parametrize("settings, message", [
    ({"audit.judge_url": "ftp://judge/v1"}, "audit.judge_url='ftp://judge/v1' must be an http:// or https:// URL"),
    ({"audit.judge_url": "http://127.0.0.1:9/v1", "audit.timeout_s": 0.0}, "audit.timeout_s=0.0 must be > 0"),
    ({"audit.judge_url": "http://127.0.0.1:9/v1", "audit.backoff_s": -1.0}, "audit.backoff_s=-1.0 must be >= 0"),
])
def test_bad_judge_settings_fail_when_the_config_is_read(settings, message):
    from cogito_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _data_cfg(**settings)

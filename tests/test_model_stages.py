"""Cogito-pipe's model stages (annotate -> think -> audit) with a tiny random model built from a config.

The tiny model's outputs are noise, so what is tested is the machinery: parsing and validation of annotator
outputs (each kind of bad output has its own reason), the audit against an HTTP judge that fails part of the
time (nothing lost, nothing counted twice), a build that crashes midway and resumes, the real CLI with a local
judge, and the contamination guard by source URL + time span. Where a test needs outputs a random model never
writes (well-formed questions, correct reasoning), it writes them into the stage's generation cache first, as
an earlier, interrupted run would have left them: the build must use them as they are.
"""

import collections
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from cogito_jax.judge import parse_verdict
from data_prep.stages.annotate import check_question, parse_questions
from tests.judge_stub import JudgeStub

REPO = pathlib.Path(__file__).resolve().parents[1]
Q, CHOICES = "Is this a steady tone or white noise?", ["a steady tone", "white noise"]
N = 2  # thinker samples per question


def _trace(thinking: str, answer: str = CHOICES[0]) -> str:
    return f"<think>\n{thinking}\n</think>\n\n{answer}"


GOOD = _trace("I hear one pitch held without change and no hiss, so the answer is a steady tone.")
GOOD2 = _trace("The level stays even from start to end and it has a pitch, so the answer is a steady tone.")
DOG = _trace("A dog barks twice while the tone plays, so the answer is a steady tone.")
WRONG = _trace("I hear broadband hiss with no pitch at all, so the answer is white noise.", CHOICES[1])
SEED = {"question": "Which sound starts first?", "choices": ["the bell", "the horn", "both at once"],
        "answer": "the horn", "metadata": {"caption": "a horn honks, then a bell rings"}}
A0_OUTPUT = json.dumps([
    {"question": "Does the hiss get louder over time?", "choices": ["yes, it swells", "no, it stays level"],
     "answer": "No, it stays level"},
    {"question": "How many separate bursts are there?", "choices": ["one", "two", "three"], "answer": "one"},
    {"question": "What is the pitch?", "choices": ["high", "low"], "answer": "medium"},
])


# ------------------------------------------------------------------------------- parsing and validation


def _q(**kw):
    return json.dumps([{"question": "How many beeps?", "choices": ["two", "three"], "answer": "three", **kw}])


@pytest.mark.parametrize("text, reason", [
    ("I think the clip has beeps.", "unparseable: no JSON array"),
    ("[]", "no_questions"),
    ('["How many beeps?"]', "not_an_object: got str"),
    (json.dumps([{"question": "How many beeps?", "choices": ["two", "three"]}]), "missing_field: no 'answer'"),
    (_q(choices=["three"]), "bad_choices: 1 choices, need 2-6"),
    (_q(choices=[str(i) for i in range(7)], answer="3"), "bad_choices: 7 choices, need 2-6"),
    (_q(choices=["three", "Three ", "two"]), "bad_choices: duplicate choices"),
    (_q(choices=["three.", "three!"], answer="three."), "bad_choices: 'three.' and 'three!' have the same words"),
    (_q(choices=["three", "???"]), "bad_choices: choice '???' has no words"),
    (_q(choices="two or three"), "bad_choices: 'two or three' is not a list"),
    (_q(choices=["two", 3]), "bad_choices: ['two', 3] is not a list"),
    (_q(answer="four"), "bad_answer: 'four' is not one of the choices"),
    (_q(answer="B"), "bad_answer: 'B' is not one of the choices"),
    (_q(question="  "), "bad_question"),
])
def test_each_kind_of_bad_annotator_output_has_its_reason(text, reason):
    parsed = parse_questions(text)
    assert not parsed.questions
    got = parsed.problem or parsed.rejected[0]["reason"]
    assert got.startswith(reason), got


def test_good_annotator_output_is_parsed_and_normalised():
    text = ("<think>draft</think> Here they are:\n```json\n" + A0_OUTPUT[:-1] + ", " +
            json.dumps({"question": "does the hiss get louder over time?", "choices": ["a", "b"], "answer": "a"}) +
            ", " + json.dumps({"question": "Is it outdoors?", "choices": ["yes", "no"], "answer": "no"}) + "]\n```")
    parsed = parse_questions(text, max_questions=3)
    assert parsed.problem is None
    assert [q["index"] for q in parsed.questions] == [0, 1, 4]
    assert parsed.questions[0]["answer"] == "no, it stays level"  # matched to the choice's own case
    assert {r["index"]: r["reason"].split(":")[0] for r in parsed.rejected} == {
        2: "bad_answer", 3: "duplicate_question"}
    four = json.dumps([{"question": f"Q{i}?", "choices": ["x", "y"], "answer": "x"} for i in range(4)])
    parsed = parse_questions(four, max_questions=3)
    assert len(parsed.questions) == 3 and parsed.rejected[0]["reason"].startswith("too_many_questions: question 4")
    q, problem = check_question({"question": "Q?", "choices": [" a dog ", "a cat"], "answer": "a dog"})
    assert problem is None and q == {"question": "Q?", "choices": ["a dog", "a cat"], "answer": "a dog"}


def test_judge_verdicts_are_parsed_or_refused():
    assert parse_verdict("VERDICT: ACCEPT\nREASON: none") == (True, "none")
    assert parse_verdict("**Verdict:** reject\nReason: logic error, step 2 does not follow") == (False, "logic_error")
    assert parse_verdict("VERDICT: REJECT\nREASON: hallucination") == (False, "hallucination")
    assert parse_verdict("VERDICT: REJECT\nREASON: too long") == (False, "other")
    assert parse_verdict("The reasoning looks fine to me.") is None


def test_stage_cache_survives_a_torn_last_line(tmp_path):
    """A process killed mid-write leaves half a line: that item is redone, and nothing after it is lost."""
    from data_prep.stages.cache import StageCache

    path = tmp_path / "stage.jsonl"
    cache = StageCache(path)
    cache.add({"id": "a", "v": 1})
    cache.close()
    with path.open("a") as f:
        f.write('{"id": "b", "v"')
    cache = StageCache(path)
    assert set(cache.rows) == {"a"} and "b" not in cache
    cache.add({"id": "b", "v": 2})
    cache.add({"id": "a", "v": 3})  # a later row for an id replaces the earlier one
    cache.close()
    assert StageCache(path).rows == {"a": {"id": "a", "v": 3}, "b": {"id": "b", "v": 2}}
    assert path.read_text().count("\n") == 3  # the torn half line was cut off before appending


def test_a_damaged_line_before_the_last_stops_the_stage_naming_file_and_line(tmp_path):
    """Only a torn last line is a crash's doing; a bad line anywhere else is damage, reported, never skipped."""
    from cogito_jax.jsonl import JsonlError
    from data_prep.stages import generation
    from data_prep.stages.cache import StageCache

    path = tmp_path / "stage.jsonl"
    path.write_text('{"id": "a", "v": 1}\n{"id": "b", "v"\n{"id": "c", "v": 3}\n')
    with pytest.raises(JsonlError, match=rf"{path}:2: not a JSON line"):
        StageCache(path)
    path.write_text('{"id": "a", "v": 1}\n{"v": 2}\n')
    with pytest.raises(JsonlError, match=rf"{path}:2: row has no 'id'"):
        StageCache(path, writable=False)
    think = tmp_path / "think_samples.jsonl"
    think.write_text('{"id": "q", "sample": 0}\n[1, 2]\n{"id": "q", "sample": 1}\n{"id": "r", "sa')
    with pytest.raises(JsonlError, match=rf"{think}:2: a row must be a JSON object"):
        generation.read_outputs(think, ["q"], 2)
    think.write_text('{"id": "q", "sample": 0}\n{"id": "q", "sample": 1}\n{"id": "r", "sa')  # torn tail: dropped
    assert [r["sample"] for r in generation.read_outputs(think, ["q"], 2)["q"]] == [0, 1]


# ------------------------------------------------------------------------------- the audit and a flaky judge


def _judge_reply(messages):
    reasoning = messages[-1]["content"].split("The model's reasoning:")[1]
    if "dog barks" in reasoning:
        return "VERDICT: REJECT\nREASON: hallucination: the description has no dog"
    if "cannot tell" in reasoning:
        return "I would need to hear it."
    return "VERDICT: ACCEPT\nREASON: none"


def _data_cfg(**settings):
    from cogito_jax import config as cfglib
    from data_prep.config import base_data_config, validate_data_config

    cfg = base_data_config()
    cfglib.apply_overrides(cfg, {"source.manifest": "unused.jsonl", "audit.judge_model": "stub",
                                 "audit.timeout_s": 0.25, "audit.max_retries": 2, "audit.backoff_s": 0.01, **settings})
    return validate_data_config(cfg)


def test_audit_against_a_flaky_http_judge_loses_and_double_counts_nothing(tmp_path):
    """Sample 0 of each question is judged through a scripted run of errors and timeouts (more than one call's
    retries for some), sample 1 is wrong or hallucinated, sample 2 sometimes gets replies without a verdict."""
    from data_prep.stages import audit

    rng = np.random.default_rng(0)
    items, samples, scripts = [], {}, {}
    for i in range(8):
        qid = f"q{i}"
        items.append({"id": qid, "clip_id": qid, "question": Q, "choices": CHOICES, "answer": CHOICES[0],
                      "metadata": {"caption": "a steady 440 Hz tone"}, "question_source": "annotator"})
        texts = [GOOD.replace("one pitch", f"pitch number {i}"), DOG if i % 3 == 0 else WRONG,
                 GOOD2.replace("it has a pitch", "I cannot tell" if i % 4 == 0 else f"it has pitch {i}")]
        samples[qid] = [{"id": qid, "sample": s, "text": t} for s, t in enumerate(texts)]
        scripts[f"pitch number {i}"] = [str(x) for x in rng.choice(["500", "429", "timeout", "garbage"],
                                                                   rng.integers(0, 5))]
    failing = {k for k, v in scripts.items() if len(v) >= 3}  # more failures than 1 + max_retries attempts
    assert failing and any("timeout" in v for v in scripts.values())
    with JudgeStub(_judge_reply, {k: list(v) for k, v in scripts.items()}, delay_s=0.5) as stub:
        cfg = _data_cfg(**{"audit.judge_url": stub.url, "audit.workers": 4, "think.num_samples": 3})
        kept, rejected, stats = audit.run(items, samples, cfg, tmp_path, audit.make_judge(cfg, tmp_path))
        assert stats["traces"] == 24 == sum(stats[f"traces_{k}"] for k in ("accepted", "rejected", "judge_failed"))
        assert stats["traces_judge_failed"] == len(failing) + 2  # + q0, q4: replies without a verdict
        assert stats["rejected_by_reason"]["judge_rejected:hallucination"] == 3
        assert stats["rejected_by_reason"]["wrong_answer"] == 5
        waiting = {r["id"] for r in rejected if r["reason"].startswith("judge_failed")}
        assert waiting == {f"q{k.split()[-1]}" for k in failing} and len(kept) + len(rejected) == 8
        # A re-run asks again only for the failed traces (the unreadable replies come from the judge's cache).
        before = len(stub.requests)
        kept2, rejected2, stats2 = audit.run(items, samples, cfg, tmp_path, audit.make_judge(cfg, tmp_path))
        assert stats2["judged_this_run"] == len(failing) + 2 and stats2["traces_judge_failed"] == 2
        assert len(stub.requests) - before == sum(len(scripts[k]) - 3 + 1 for k in failing)
    # Over both runs every sample-0 trace got its scripted failures and then exactly one good reply.
    per_trace = collections.Counter(k for r in stub.requests for k in scripts if k in r["messages"][-1]["content"])
    assert per_trace == {k: len(v) + 1 for k, v in scripts.items()}
    # Every question now keeps sample 0: sample 2's missing verdict does not hold back a question already decided.
    assert {k["id"] for k in kept2} == {f"q{i}" for i in range(8)} and not rejected2
    assert all(k["thinking"].startswith("I hear pitch number") and k["trace_sample"] == 0 for k in kept2)
    rows = _lines(tmp_path / "cache" / "audit.jsonl")
    final = collections.Counter(r["id"] for r in rows if r["status"] != "judge_failed")
    assert len(final) == 22 and set(final.values()) == {1}
    unreadable = [r for r in rows if r["id"] in ("q0#s2", "q4#s2")]
    assert len(unreadable) == 4 and all(r["status"] == "judge_failed" for r in unreadable)
    assert all("no readable verdict in 3 replies" in r["reason"] for r in unreadable)


# ------------------------------------------------------------------------------- builds with a tiny model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny random Qwen2-Audio (from configs/models/qwen2_audio.py:tiny) saved with a locally trained tokenizer."""
    from cogito_jax.convert import save_hf
    from cogito_jax.data import chat, tokenizer as toklib
    from cogito_jax.models import registry
    from data_prep.stages import annotate

    d = tmp_path_factory.mktemp("tiny_qwen2_audio")
    shots = [{**SEED, "description": "caption: a horn honks, then a bell rings"}]
    texts = [annotate.prompt("caption: a steady tone\nlabels: [\"tone\"]", shots, 2), chat.mcq_text(Q, CHOICES),
             GOOD, GOOD2, DOG, WRONG, A0_OUTPUT] * 8
    tok = toklib.train_bpe(texts, vocab_size=400, out_dir=d)
    fmt = chat.chat_format("qwen2_audio")
    mcfg = registry.config_for({"family": "qwen2_audio", "size": "tiny"}, vocab_size=len(tok),
                               audio_token_id=tok.convert_tokens_to_ids(fmt.audio_token))
    save_hf(_random_model(mcfg), mcfg, d)
    return d


def _random_model(mcfg):
    """The model of ``mcfg`` with N(0, 0.05) parameters drawn in NumPy (no per-initialiser compilation)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from cogito_jax import sharding
    from cogito_jax.models import registry

    graphdef, abstract = nnx.split(sharding.abstract_model(lambda: registry.build(mcfg)))
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda x: jnp.asarray((0.05 * rng.normal(size=x.shape)).astype(x.dtype)), abstract)
    return nnx.merge(graphdef, state)


def _write_clip(path: pathlib.Path, k: int, seconds: float = 1.5, noise: bool = False) -> None:
    t = np.arange(int(16000 * seconds)) / 16000
    rng = np.random.default_rng(k)
    wave = 0.2 * rng.normal(size=t.size) if noise else 0.3 * np.sin(2 * np.pi * (300 + 40 * k) * t)
    sf.write(path, wave.astype(np.float32), 16000)


def _corpus(root: pathlib.Path, lines: list[dict]) -> pathlib.Path:
    (root / "audio").mkdir(parents=True, exist_ok=True)
    for k, line in enumerate(lines):
        if not (root / line["audio_path"]).exists():
            _write_clip(root / line["audio_path"], k, noise=line["id"].startswith("a0"))
    (root / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (root / "seeds.jsonl").write_text(json.dumps(SEED) + "\n")
    return root


def _mcq(id_, **kw):
    return {"id": id_, "audio_path": f"audio/{id_}.wav", "question": Q, "choices": CHOICES, "answer": CHOICES[0],
            "modality": "sound", "metadata": {"caption": "a steady tone"}, **kw}


def _clip(id_, meta):
    return {"id": id_, "audio_path": f"audio/{id_}.wav", "modality": "sound", "metadata": meta}


def _cache_outputs(path: pathlib.Path, rows: dict[str, list[str]]) -> None:
    """Driver output lines (``num_samples`` per prompt), as a run that stopped after them leaves them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for pid, texts in rows.items():
            for s, text in enumerate(texts):
                head, _, tail = text.rpartition("</think>")
                f.write(json.dumps({"id": pid, "sample": s, "text": text, "thinking": head, "answer": tail.strip(),
                                    "n_tokens": 0, "finish_reason": "eos"}) + "\n")


def _settings(root, ckpt):
    return {"source.manifest": str(root / "manifest.jsonl"), "features.n_mels": 80, "features.max_seconds": 4.0,
            "filters.min_seconds": 0.3, "annotate.model": str(ckpt),
            "annotate.seed_questions": str(root / "seeds.jsonl"), "annotate.num_shots": 1,
            "annotate.max_new_tokens": 12, "annotate.batch_size": 2,
            "think.model": str(ckpt), "think.num_samples": N, "think.max_new_tokens": 12, "think.batch_size": 2}


def _lines(path: pathlib.Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_build_crashes_midway_then_resumes_without_losing_or_repeating_work(ckpt, tmp_path, monkeypatch):
    from cogito_jax.data import records
    from cogito_jax.sampling import continuous
    from data_prep import build

    root = _corpus(tmp_path / "corpus", [_mcq("m0"), _mcq("m1"), _mcq("m2"), _clip("a0", {"caption": "a hiss"}),
                                         _clip("a1", {"labels": ["tone"]}), _clip("bare", {})])
    out = tmp_path / "out"
    _cache_outputs(out / "cache" / "annotate_outputs.jsonl", {"a0": [A0_OUTPUT]})
    _cache_outputs(out / "cache" / "think_samples.jsonl", {"m0": [GOOD, DOG], "m2": [GOOD2, WRONG]})
    real_run, calls = continuous.ContinuousEngine.run, []

    def dies_midway_through_think(self, requests, on_finished, **kw):
        requests = list(requests)
        calls.append(sorted(r.id for r in requests))
        written = []

        def write(fin):
            on_finished(fin)
            written.append(fin)
            if len(calls) == 2 and len(written) == N + 1:
                raise RuntimeError("simulated crash")

        return real_run(self, requests, write, **kw)

    think_file = out / "cache" / "think_samples.jsonl"
    failures = {"one pitch held": ["timeout", "500"], "level stays even": ["500", "garbage", "429"]}
    with JudgeStub(_judge_reply, failures, delay_s=0.5) as stub:
        cfg = _data_cfg(**_settings(root, ckpt), **{"audit.judge_url": stub.url})
        monkeypatch.setattr(continuous.ContinuousEngine, "run", dies_midway_through_think)
        with pytest.raises(RuntimeError, match="simulated crash"):
            build.build(cfg, str(out))
        assert calls == [["a1"], ["a0#q0", "a0#q1", "m1"]]  # annotate a1; think the three questions not cached
        partial = think_file.read_text()
        # Each sample's line was written as it finished: the cached 2 x N and the N + 1 done before the crash.
        assert len(partial.splitlines()) == 3 * N + 1 and not stub.requests
        per_prompt = collections.Counter(r["id"] for r in _lines(think_file))
        unfinished = sum(per_prompt.get(q, 0) < N for q in ("m1", "a0#q0", "a0#q1"))
        monkeypatch.setattr(continuous.ContinuousEngine, "run", real_run)

        report = build.build(cfg, str(out))
        st = report["stages"]
        assert st["annotate"]["generated_this_run"] == 0 and st["think"]["generated_this_run"] == unfinished
        assert think_file.read_text().startswith(partial)
        samples = collections.Counter((r["id"], r["sample"]) for r in _lines(think_file))
        questions = {"m0", "m1", "m2", "a0#q0", "a0#q1"}
        assert set(samples.values()) == {1} and {i for i, _ in samples} == questions and len(samples) == 5 * N
        a = st["audit"]
        assert a["traces"] == 5 * N == a["traces_accepted"] + a["traces_rejected"] + a["traces_judge_failed"]
        assert a["traces_accepted"] == 1 and a["traces_judge_failed"] == 1  # m2's judge failed all 3 attempts
        assert a["rejected_by_reason"]["judge_rejected:hallucination"] == 1
        reasons = {r["id"]: r["reason"] for r in report["rejected"]}
        assert reasons["m2"].startswith("judge_failed: judge call failed after 3 attempts")
        assert reasons["a0#q2"].startswith("bad_answer: 'medium'") and reasons["bare"].startswith("no_metadata")
        assert reasons["a1"].split(":")[0] in ("unparseable", "no_questions", "no_valid_question")
        assert reasons["m1"].startswith("no_trace_accepted: 0 of 2")
        assert report["kept"] == 1 and report["counts"]["rejected_by_reason"]["judge_failed"] == 1
        assert st["annotate"]["questions_valid"] == 2 and st["annotate"]["rejected_by_reason"]["bad_answer"] == 1

        n = len(stub.requests)
        report = build.build(cfg, str(out))  # the judge works now: only m2's trace is asked again
        assert len(stub.requests) == n + 1 and report["stages"]["think"]["generated_this_run"] == 0
        assert report["stages"]["audit"]["judged_this_run"] == 1
    assert report["kept"] == 2 and "m2" not in {r["id"] for r in report["rejected"]}
    ds = records.RecordSource(report["dataset_dir"])
    got = {r["id"]: r for r in ds}
    assert set(got) == {"m0", "m2"} and got["m0"]["thinking"].startswith("I hear one pitch held")
    assert got["m2"]["provenance"]["trace_sample"] == 0 and got["m0"]["answer"] == "a steady tone"
    assert got["m0"]["mel"].shape[1] == 80
    audit_rows = _lines(out / "cache" / "audit.jsonl")
    final = collections.Counter(r["id"] for r in audit_rows if r["status"] != "judge_failed")
    assert len(final) == 5 * N and set(final.values()) == {1}
    md = (out / "report.md").read_text()
    assert "## annotate" in md and "## audit" in md and "judge_rejected:hallucination" in md


@pytest.mark.slow
def test_cli_runs_the_model_stages_with_a_local_judge_and_drops_contaminated_clips(ckpt, tmp_path):
    """Through ``python -m data_prep.build``: the local judge (the tiny model) writes no readable verdict, so the
    one trace that reaches it waits as judge_failed, neither kept nor counted as a judge rejection."""
    bench = tmp_path / "bench"
    (bench / "audio").mkdir(parents=True)
    lines = [_mcq("m0"), _clip("a0", {"caption": "a hiss", "url": "https://example.org/x.wav"}),
             _mcq("c_url", metadata={"url": "https://www.youtube.com/watch?v=abc123", "timestamp": "00:05-00:15"}),
             _mcq("c_other_span", metadata={"url": "https://youtu.be/abc123", "timestamp": "00:20-00:30"}),
             _mcq("c_hash")]
    # c_other_span is another sound (1.9 kHz): the audio-fingerprint guard takes two 1.5 s steady tones 40 Hz
    # apart, starting and stopping together, for one sound
    (tmp_path / "corpus" / "audio").mkdir(parents=True)
    _write_clip(tmp_path / "corpus" / "audio" / "c_other_span.wav", 40)
    root = _corpus(tmp_path / "corpus", lines)
    sf.write(bench / "audio" / "m1.wav", sf.read(root / "audio" / "c_hash.wav")[0], 16000)
    meta = [{"id": "m1", "audio_path": "./audio/m1.wav", "url": "https://youtube.com/watch?v=abc123",
             "timestamp": "00:01-00:11", "question": Q, "choices": CHOICES, "answer": CHOICES[0]}]
    (bench / "MMAR-meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    out = tmp_path / "out"
    _cache_outputs(out / "cache" / "think_samples.jsonl", {"m0": [GOOD, WRONG]})
    overrides = {**_settings(root, ckpt), "audit.judge_local_model": str(ckpt), "audit.judge_max_tokens": 8,
                 "filters.contamination_meta": (str(bench / "MMAR-meta.jsonl"),)}
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-m", "data_prep.build", "--config", "configs/data/cogito_pipe.py", "--out",
                        str(out), *[f"--config.{k}={v}" for k, v in overrides.items()]], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    reasons = {x["id"]: x["reason"] for x in report["rejected"]}
    assert reasons["c_url"].startswith("contamination: source youtube:abc123 (5-15 s) overlaps MMAR-meta.jsonl:m1")
    assert reasons["c_hash"] == "contamination: audio identical to MMAR-meta.jsonl:m1"
    assert reasons["c_other_span"].startswith("no_trace_accepted")  # same video, another span: used
    assert reasons["m0"].startswith("judge_failed: no readable verdict")
    audit = report["stages"]["audit"]
    assert audit["judge"] == "EngineJudge" and audit["traces_judge_failed"] == 1
    assert not any(k.startswith("judge_rejected") for k in audit["rejected_by_reason"])
    assert report["stages"]["annotate"]["clips"] == 1 and report["kept"] == 0
    assert "questions wait for a judge verdict" in r.stdout


def test_bad_model_stage_settings_are_clear_errors(ckpt, tmp_path):
    from cogito_jax.errors import ConfigError
    from data_prep import build

    for settings, message in [
        ({"audit.judge_url": "http://127.0.0.1:9/v1", "audit.judge_model": ""}, "needs audit.judge_model"),
        ({"audit.judge_url": "http://x/v1", "audit.judge_local_model": "ckpt"}, "are both set; give one judge"),
        ({"annotate.model": "ckpt"}, "annotate.seed_questions is not"),
        ({"annotate.questions_per_clip": 4}, "annotate.questions_per_clip=4 must be in 1-3"),
        ({"features.long_clips": "split"}, "features.long_clips='split' must be one of"),
    ]:
        with pytest.raises(ConfigError, match=message):
            _data_cfg(**settings)
    root = _corpus(tmp_path / "corpus", [_mcq("m0")])
    cfg = _data_cfg(**{**_settings(root, ckpt), "features.n_mels": 128})
    with pytest.raises(ConfigError, match="features.n_mels=128 but think.model=.* takes 80-bin log-mel"):
        build.build(cfg, str(tmp_path / "out"))
    assert not (tmp_path / "out" / "cache" / "think_samples.jsonl").exists()
    (root / "seeds.jsonl").write_text(json.dumps({**SEED, "answer": "the drum"}) + "\n")
    cfg = _data_cfg(**_settings(root, ckpt), **{"annotate.only_missing": False})
    with pytest.raises(ConfigError, match=r"seeds.jsonl:1: bad_answer: 'the drum'"):
        build.build(cfg, str(tmp_path / "out"))

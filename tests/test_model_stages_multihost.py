"""Cogito-pipe's model stages over two JAX processes (``launch/local.sh 2``) against one process.

Each process annotates, thinks and audits its share into its own files; after a barrier every process merges
them, checked to hold each input exactly once, and process 0 writes the dataset and the report, which must be
those of a 1-process run of the same config and seed. A job killed (SIGKILL) during think resumes on re-run
without repeating or losing a prompt.
"""

import collections
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cogito_jax import jsonl
from tests import test_model_stages as single
from tests.judge_stub import JudgeStub
from tests.test_model_stages import (
    A0_OUTPUT,
    DOG,
    GOOD,
    GOOD2,
    WRONG,
    _cache_outputs,
    _clip,
    _corpus,
    _judge_reply,
    _lines,
    _mcq,
    _settings,
)

ckpt = single.ckpt  # the tiny Qwen2-Audio fixture
REPO = pathlib.Path(__file__).resolve().parents[1]
N_MCQ = 8
QUESTIONS = [f"m{i}" for i in range(N_MCQ)] + ["a0#q0", "a0#q1"]  # what the thinker answers
N = 2  # thinker samples per question (tests.test_model_stages.N)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    lines = [_mcq(f"m{i}") for i in range(N_MCQ)] + [_clip("a0", {"caption": "a hiss"}),
                                                     _clip("a1", {"labels": ["tone"]}), _clip("bare", {})]
    return _corpus(root, lines)


@pytest.fixture(scope="module")
def judge():
    with JudgeStub(_judge_reply, delay_s=0.5) as stub:
        yield stub


def _seed_caches(out: pathlib.Path) -> None:
    """Outputs an earlier 1-process run left (a random model never writes well-formed ones): both runs use them."""
    _cache_outputs(out / "cache" / "annotate_outputs.jsonl", {"a0": [A0_OUTPUT]})
    _cache_outputs(out / "cache" / "think_samples.jsonl", {"m0": [GOOD, DOG], "m2": [GOOD2, WRONG]})


def _command(out, corpus, ckpt, judge):
    overrides = {**_settings(corpus, ckpt), "think.batch_size": 1, "audit.judge_url": judge.url,
                 "audit.judge_model": "stub", "audit.timeout_s": 5.0, "think.num_samples": N}
    return [sys.executable, "-m", "data_prep.build", "--config", "configs/data/cogito_pipe.py", "--out", str(out),
            *[f"--config.{k}={v}" for k, v in overrides.items()]]


def _launch(n, out, corpus, ckpt, judge, **popen):
    # no shared compilation cache: a job that loads its programs finishes think before a test can kill it there
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
    env.update(COGITO_LOG_DIR=str(out.parent / f"logs_{out.name}"), JAX_PLATFORMS="cpu")
    return subprocess.Popen(["bash", str(REPO / "launch/local.sh"), str(n), *_command(out, corpus, ckpt, judge)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _run(n, out, corpus, ckpt, judge):
    p = _launch(n, out, corpus, ckpt, judge)
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log[-3000:] + _logs(out)
    return json.loads((out / "report.json").read_text())


def _build(n, out, corpus, ckpt, judge):
    _seed_caches(out)
    return _run(n, out, corpus, ckpt, judge)


def _logs(out):
    d = out.parent / f"logs_{out.name}"
    return "".join(f"\n--- {f.name}\n{f.read_text()[-2000:]}" for f in sorted(d.glob("*.log"))) if d.exists() else ""


def _comparable(report):
    r = json.loads(json.dumps(report))
    r.pop("stage_seconds")
    r.pop("dataset_dir", None)
    r["counts"].pop("audio_processed_this_run")  # what this run did, like generated_this_run below
    r["stages"]["audit"].pop("judge_calls")  # HTTP call counts of process 0's judge only
    for stage in r["stages"].values():
        stage.pop("generated_this_run", None)
    return r


def _records(report):
    from cogito_jax.data import records

    return {r["id"]: r for r in records.RecordSource(report["dataset_dir"])}


def _assert_same_records(got, want):
    assert set(got) == set(want)
    for i, w in want.items():
        g = got[i]
        assert set(g) == set(w), i
        for k in w:
            if isinstance(w[k], np.ndarray):
                np.testing.assert_array_equal(g[k], w[k], err_msg=f"{i}.{k}")
            else:
                assert g[k] == w[k], (i, k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus, ckpt, judge):
    """The 1-process run: (report, records, judge requests it made, {(stage file, id, sample): generated text})."""
    out = tmp_path_factory.mktemp("one") / "out"
    before = len(judge.requests)
    report = _build(1, out, corpus, ckpt, judge)
    return report, _records(report), len(judge.requests) - before, _generated(out, 1)


def _generated(out, processes):
    """Every generated text of a build, merged over its processes' files."""
    from data_prep.stages import generation

    got = {}
    for name, ids, n in [("annotate_outputs.jsonl", ["a0", "a1"], 1), ("think_samples.jsonl", QUESTIONS, N)]:
        for i, rows in generation.read_outputs(out / "cache" / name, ids, n, processes).items():
            got.update({(name, i, r["sample"]): r["text"] for r in rows})
    return got


def _think_shards(out):
    return [out / "cache" / f"think_samples.jsonl.process{p}-of-2" for p in range(2)]


@pytest.mark.slow
def test_two_processes_build_what_one_process_builds(reference, corpus, ckpt, judge, tmp_path):
    ref_report, ref_records, ref_requests, ref_texts = reference
    assert ref_report["kept"] >= 1 and ref_report["stages"]["think"]["questions"] == len(QUESTIONS)
    out = tmp_path / "out"
    before = len(judge.requests)
    report = _build(2, out, corpus, ckpt, judge)
    assert len(judge.requests) - before == ref_requests  # every trace judged once, by one process
    assert _comparable(report) == _comparable(ref_report)
    assert report["stages"]["think"]["generated_this_run"] == len(QUESTIONS) - 2
    assert report["stages"]["audit"]["judged_this_run"] == ref_report["stages"]["audit"]["judged_this_run"]
    _assert_same_records(_records(report), ref_records)
    assert _generated(out, 2) == ref_texts  # the same batches with the same seeds, whichever process ran them

    # Each process wrote its own share: the think prompts split between the two files, none in both.
    shards = [{r["id"] for r in _lines(p)} for p in _think_shards(out)]
    assert all(shards) and not shards[0] & shards[1] and shards[0] | shards[1] == set(QUESTIONS) - {"m0", "m2"}
    audits = [{r["id"] for r in _lines(out / "cache" / f"audit.jsonl.process{p}-of-2")} for p in range(2)]
    assert all(audits) and not audits[0] & audits[1]
    assert len(audits[0] | audits[1]) == len(QUESTIONS) * N

    # The merge names what is missing or done twice.
    from data_prep.stages import audit, generation

    think = out / "cache" / "think_samples.jsonl"
    moved = sorted(shards[1])[0]
    lines = [ln for ln in _think_shards(out)[1].read_text().splitlines() if json.loads(ln)["id"] == moved]
    with _think_shards(out)[0].open("a") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(RuntimeError, match=rf"1 in several files \{{'{moved}': \['think_samples.jsonl.process0-of-2'"):
        generation.read_outputs(think, QUESTIONS, N, process_count=2)
    with pytest.raises(RuntimeError, match=r"1 missing \['extra'\]"):
        generation.read_outputs(think, [*QUESTIONS, "extra"], N, process_count=2)
    tid = sorted(audits[1])[0]
    row = next(r for r in _lines(out / "cache" / "audit.jsonl.process1-of-2") if r["id"] == tid)
    with (out / "cache" / "audit.jsonl.process0-of-2").open("a") as f:
        f.write(json.dumps(row) + "\n")
    items = [{"id": q} for q in QUESTIONS]
    samples = {q: [{"sample": s} for s in range(N)] for q in QUESTIONS}
    with pytest.raises(RuntimeError, match=rf"1 audited by several processes \{{'{tid}': \[0, 1\]\}}"):
        audit._merged_verdicts(out / "cache" / "audit.jsonl", 2, items, samples)
    samples["m1"].append({"sample": N})
    with pytest.raises(RuntimeError, match=r"1 without a verdict \['m1#s2'\]"):
        audit._merged_verdicts(out / "cache" / "audit.jsonl", 2, items, samples)


def _finished(texts):
    """The questions with all ``N`` samples in ``texts`` (think files' contents), read as the driver reads them on
    resume: a torn last line is not a sample."""
    done = collections.Counter(r["id"] for text in texts for r in jsonl.parse(text, "think file", require=("id",)))
    return {i for i, c in done.items() if c == N}


def _kill_during_think(out, corpus, ckpt, judge):
    """Starts a 2-process build and SIGKILLs the whole job once think has finished a question (all its samples
    written: a question's samples reach the file one line at a time, milliseconds apart on a loaded machine);
    returns what each process's file held and the questions finished then."""
    _seed_caches(out)
    job = _launch(2, out, corpus, ckpt, judge, start_new_session=True)
    shards = _think_shards(out)
    deadline = time.time() + 600  # the two processes start and compile first; slow on a loaded machine
    while not _finished(p.read_text() for p in shards if p.exists()):
        assert job.poll() is None and time.time() < deadline, "the job ended before think finished a question"
        time.sleep(0.002)
    os.killpg(job.pid, signal.SIGKILL)  # the whole job: both processes and the launcher
    job.wait(timeout=30)
    assert not (out / "report.json").exists()
    partial = [p.read_text() if p.exists() else "" for p in shards]
    finished = _finished(partial)
    assert finished and len(finished) < len(QUESTIONS) - 2, "the kill came after think had finished"
    return partial, finished


def _assert_resumed(out, n, partial, finished, reference, judge_requests):
    ref_report, ref_records, ref_requests, ref_texts = reference
    report = json.loads((out / "report.json").read_text())
    assert report["stages"]["think"]["generated_this_run"] == len(QUESTIONS) - 2 - len(finished)
    shards = _think_shards(out)
    for p, text in zip(shards, partial, strict=True):  # every whole line the killed job wrote is kept as it was
        assert p.read_text().startswith(text[:text.rfind("\n") + 1])
    files = [*shards, out / "cache" / "think_samples.jsonl"]
    samples = collections.Counter((r["id"], r["sample"]) for p in files if p.exists() for r in _lines(p)
                                  if n == 2 or p.name.endswith(".jsonl") or r["id"] in finished)
    assert set(samples.values()) == {1} and len(samples) == len(QUESTIONS) * N
    assert _comparable(report) == _comparable(ref_report)
    _assert_same_records(_records(report), ref_records)
    assert _generated(out, n) == ref_texts  # the same batches with the same seeds as an uninterrupted run
    assert judge_requests == ref_requests


@pytest.fixture(scope="module")
def killed(tmp_path_factory, corpus, ckpt, judge):
    """One 2-process job killed during think: (its out folder, what its think files held, the questions finished).
    Each re-run below works on its own copy of the folder."""
    out = tmp_path_factory.mktemp("killed") / "out"
    partial, finished = _kill_during_think(out, corpus, ckpt, judge)
    return out, partial, finished


@pytest.mark.slow
@pytest.mark.parametrize("rerun", [2, 1])
def test_a_job_killed_during_think_resumes_without_repeating_or_losing_work(reference, killed, corpus, ckpt, judge,
                                                                            tmp_path, rerun):
    """Re-run with the same process count, or another one: then the killed job's finished prompts count as done
    (its files are read, not written) and the rest is generated with the seeds an uninterrupted run gives them."""
    src, partial, finished = killed
    out = tmp_path / "out"
    shutil.copytree(src, out)
    before = len(judge.requests)
    _run(rerun, out, corpus, ckpt, judge)
    if rerun == 1:
        mine = {r["id"] for r in _lines(out / "cache" / "think_samples.jsonl")}
        assert not mine & finished and mine | finished == set(QUESTIONS)
    _assert_resumed(out, rerun, partial, finished, reference, len(judge.requests) - before)
    # The copy was resumed, not the folder it was copied from (no path into the killed job's folder is kept).
    assert [p.read_text() if p.exists() else "" for p in _think_shards(src)] == partial
    assert not (src / "report.json").exists()

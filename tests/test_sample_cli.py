"""`python -m cogito_jax.sample` on a tiny HF checkpoint: output lines, resume, dataset input, bad input."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from cogito_jax.data import chat, tokenizer as toklib
from tests import hf_tiny

REPO = pathlib.Path(__file__).resolve().parents[1]
FMT = chat.chat_format("qwen2_audio")
CHOICES = ["two beeps", "three beeps", "four beeps"]
FIELDS = {"id", "sample", "text", "thinking", "answer", "n_tokens", "finish_reason"}
N, NEW = 3, 6


def cli(*args, timeout=300):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", "cogito_jax.sample", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> pathlib.Path:
    """A random tiny Qwen2-Audio saved with a tokenizer whose audio placeholder is the model's audio token."""
    from transformers import Qwen2AudioForConditionalGeneration

    d = tmp_path_factory.mktemp("ckpt")
    texts = [FMT.prompt(chat.mcq_text("How many beeps do you hear?", CHOICES), 1, chat.CHALLENGE_SYSTEM)
             + FMT.response("three beeps", "I count the beeps.")] * 20
    tok = toklib.train_bpe(texts, vocab_size=300, out_dir=d)
    cfg = hf_tiny.qwen2_audio_config(vocab_size=len(tok))
    cfg.audio_token_index = tok.convert_tokens_to_ids(FMT.audio_token)
    import torch

    torch.manual_seed(0)
    Qwen2AudioForConditionalGeneration(cfg).eval().save_pretrained(str(d))
    return d


def _prompts(d: pathlib.Path) -> pathlib.Path:
    """Six prompts: audio files (relative and absolute paths), pre-extracted log-mel, text only."""
    (d / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(3200) / 16000
    sf.write(d / "audio" / "tone.wav", (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    sf.write(d / "audio" / "noise.wav", (0.1 * rng.normal(size=4000)).astype(np.float32), 16000)
    q = "How many beeps do you hear?"
    lines = [
        {"id": "tone", "question": q, "choices": CHOICES, "audio_path": "audio/tone.wav"},
        {"id": "noise", "question": q + " Listen again.", "choices": CHOICES,
         "audio_path": str(d / "audio" / "noise.wav")},
        {"id": "mel", "question": q, "choices": CHOICES[:2],
         "mel": rng.normal(size=(20, hf_tiny.N_MELS)).round(3).tolist()},
        {"id": 7, "question": "Describe the sound."},
        {"id": "free", "prompt_text": "Say three words."},
        {"id": "tone_again", "question": q, "choices": CHOICES, "audio_path": "audio/tone.wav",
         "answer": "ignored"},
    ]
    path = d / "prompts.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _settings(checkpoint):
    return ["--config", "configs/tiny.py", f"--config.model.checkpoint={checkpoint}",
            f"--config.sample.num_samples={N}", "--config.sample.temperature=1.0", "--config.sample.top_k=50",
            f"--config.sample.max_new_tokens={NEW}", "--config.sample.batch_size=2", "--progress=false"]


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_samples_then_resumes(checkpoint, tmp_path):
    prompts = _prompts(tmp_path)
    out = tmp_path / "out" / "results.jsonl"
    args = [*_settings(checkpoint), "--input", prompts, "--out", out]
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sampled 6 prompts x 3" in r.stdout and "0 already done" in r.stdout, r.stdout
    rows = _rows(out)
    ids = ["tone", "noise", "mel", "7", "free", "tone_again"]
    assert len(rows) == len(ids) * N
    assert sorted((x["id"], x["sample"]) for x in rows) == sorted((i, s) for i in ids for s in range(N))
    for x in rows:
        assert set(x) == FIELDS
        assert 0 <= x["n_tokens"] <= NEW and x["finish_reason"] in ("eos", "length")
        assert (x["finish_reason"] == "length") == (x["n_tokens"] == NEW)
    by_id = {i: [x["text"] for x in rows if x["id"] == i] for i in ids}
    assert all(len(set(texts)) > 1 for texts in by_id.values()), by_id  # samples of one prompt differ
    # Each prompt's samples are written together.
    order = [x["id"] for x in rows]
    assert all(len(set(order[k:k + N])) == 1 for k in range(0, len(order), N))

    # A second run finds everything done: nothing is generated or rewritten.
    before = out.read_text()
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sampled 0 prompts" in r.stdout and "6 already done" in r.stdout, r.stdout
    assert out.read_text() == before

    # A crash left two whole prompts, one sample of a third and a torn line: only the other four are redone.
    lines = before.splitlines(keepends=True)
    out.write_text("".join(lines[: 2 * N + 1]) + lines[2 * N + 1][:15])
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sampled 4 prompts" in r.stdout and "2 already done" in r.stdout, r.stdout
    after = out.read_text()
    assert after.startswith("".join(lines[: 2 * N]))
    rows = _rows(out)
    assert len(rows) == len(ids) * N
    assert sorted((x["id"], x["sample"]) for x in rows) == sorted((i, s) for i in ids for s in range(N))

    # A bad line before the last one is not a crash's doing: one line naming it, exit 2, the file left as it is.
    lines = after.splitlines(keepends=True)
    damaged = lines[0] + lines[1][:15] + "\n" + "".join(lines[2:])
    out.write_text(damaged)
    r = cli(*args)
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(err) == 1, r.stderr[-3000:]
    assert err[0].startswith("cogito_jax.sample: error:") and "results.jsonl:2: not a JSON line" in err[0], err
    assert out.read_text() == damaged


@pytest.mark.slow
def test_dataset_input(checkpoint, tmp_path):
    from cogito_jax.data import records

    rng = np.random.default_rng(1)
    recs = [records.make_record(id=f"r{i}", mel=rng.normal(size=(12 + 4 * i, hf_tiny.N_MELS)), n_frames=12 + 4 * i,
                                question=f"How many beeps? ({i})", choices=CHOICES, answer=CHOICES[i % 3])
            for i in range(5)]
    records.write_dataset(tmp_path / "data", {"train": lambda: recs}, feat_dim=hf_tiny.N_MELS)
    out = tmp_path / "results.jsonl"
    r = cli(*_settings(checkpoint), "--config.sample.temperature=0.0", "--input", tmp_path / "data", "--limit", 4,
            "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _rows(out)
    assert sorted((x["id"], x["sample"]) for x in rows) == sorted((f"r{i}", s) for i in range(4) for s in range(N))
    # Greedy: the samples of one prompt are the same.
    assert all(len({x["text"] for x in rows if x["id"] == f"r{i}"}) == 1 for i in range(4))


def _bad_prompts(d: pathlib.Path) -> dict[str, pathlib.Path]:
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "malformed": '{"id": "a", "question": "q"}\n{"id": "b", "question": \n',
        "no_question": '{"id": "a", "choices": ["x", "y"]}\n',
        "duplicate": '{"id": "a", "question": "q"}\n{"id": "a", "question": "r"}\n',
        "no_audio": '{"id": "a", "question": "q", "audio_path": "missing.wav"}\n',
        "mel_bins": json.dumps({"id": "m", "question": "q", "mel": [[0.0] * 5] * 4}) + "\n",
        "long": json.dumps({"id": "wordy", "question": "beeps " * 40}) + "\n",
    }
    out = {}
    for name, text in files.items():
        out[name] = d / f"{name}.jsonl"
        out[name].write_text(text)
    return out


@pytest.mark.parametrize("override, fragment", [
    ("sample.num_samples=0", "sample.num_samples=0 must be >= 1"),
    ("sample.system=pirate", "sample.system='pirate'"),
    ("sample.slots=-1", "sample.slots=-1 must be >= 0"),
    ("sample.kv_pages=3", "sample.kv_pages=3: num_pages=3 cannot hold one row"),
    ("sample.max_steps_per_sync=4", "sample.max_steps_per_sync=4 must be 0 (4 x steps_per_sync) or >= "
                                    "sample.steps_per_sync=8"),
])
def test_bad_sample_settings_name_the_setting(override, fragment):
    """The config checks the CLI runs before it loads anything (below, one of them through the CLI itself)."""
    from cogito_jax import cli
    from cogito_jax.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        cli.load_config("configs/tiny.py", [override])
    assert fragment in str(e.value)


@pytest.mark.slow
def test_bad_input_one_line_exit_2(checkpoint, tmp_path):
    bad = _bad_prompts(tmp_path / "bad")
    good = _prompts(tmp_path / "good")
    base = _settings(checkpoint)
    out = tmp_path / "o.jsonl"
    cases = [
        ([*base, "--input", tmp_path / "nope.jsonl", "--out", out], "'" + str(tmp_path / "nope.jsonl") + "'"),
        ([*base, "--out", out], "--input is required"),
        ([*base, "--input", good], "--out is required"),
        ([*base, "--config.sample.top_p=1.5", "--input", good, "--out", out],
         "sample.top_p=1.5 must be a finite number in (0, 1]"),
        ([*base, "--config.sample.temprature=1", "--input", good, "--out", out], 'did you mean "sample.temperature"'),
        ([*base, "--config.sample.top_k=many", "--input", good, "--out", out], "'many'"),
        (["--config", "configs/tiny.py", "--input", good, "--out", out], "no model: set model.checkpoint"),
        ([*base, "--config.sample.workdir=" + str(tmp_path / "bad"), "--input", good, "--out", out],
         "holds no checkpoints/"),
        ([*base, f"--config.model.checkpoint={tmp_path / 'bad'}", "--input", good, "--out", out],
         "has no config.json"),
        ([*base, "--input", bad["malformed"], "--out", out], "malformed.jsonl:2: malformed JSON"),
        ([*base, "--input", bad["no_question"], "--out", out], "no_question.jsonl:1: prompt 'a' needs a 'question'"),
        ([*base, "--input", bad["duplicate"], "--out", out], "duplicate.jsonl:2: duplicate id 'a'"),
        ([*base, "--input", bad["no_audio"], "--out", out], "missing.wav"),
        ([*base, "--input", bad["mel_bins"], "--out", out], "'mel' has 5 bins, the model takes 16"),
        ([*base, "--config.sample.length_buckets=(16,32)", "--input", bad["long"], "--out", out],
         "prompt 'wordy' has"),
    ]
    for args, fragment in cases:
        r = cli(*args)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2, (args, r.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("cogito_jax.sample: error:"), (args, r.stderr[-2000:])
        assert fragment in lines[0], (fragment, lines[0])
        assert "Traceback" not in r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_trained_run_input(tmp_path):
    """``sample.workdir`` loads the newest checkpoint of a run trained with the same config."""
    run = tmp_path / "run"
    train = ["--config", "configs/tiny.py", "--config.data.num_train=16", "--config.data.num_heldout=0",
             "--config.train.steps=2", "--config.checkpoint.async_save=False"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    r = subprocess.run([sys.executable, "-m", "cogito_jax.train", *train, "--workdir", str(run)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.rmtree(run / "data")  # sampling needs the run's checkpoint and tokenizer, not its training data
    rng = np.random.default_rng(2)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "question": "How many beeps?", "choices": CHOICES,
                                           "mel": rng.normal(size=(30 + 10 * i, 80)).round(2).tolist()}) + "\n"
                               for i in range(3)))
    out = tmp_path / "results.jsonl"
    r = cli(*train, f"--config.sample.workdir={run}", "--config.sample.max_new_tokens=8", "--input", prompts,
            "--out", out, "--progress=false")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _rows(out)
    assert [x["id"] for x in rows] == ["q0", "q1", "q2"] and all(set(x) == FIELDS for x in rows)
    assert all(0 < x["n_tokens"] <= 8 for x in rows)
    assert not (run / "data").exists()

"""Benchmark loaders on small fixtures in the real MMAR, MMAU test-mini and MMSU field layouts."""

import json

import pytest

from cogito_jax.eval import benchmarks
from cogito_jax.eval.benchmarks import BenchmarkError
from cogito_jax.eval.score import score

MMAR = [
    {"id": "a1", "audio_path": "./audio/a1.wav", "question": "How many dogs bark?", "choices": ["one", "two", "three"],
     "answer": "two", "modality": "sound", "category": "Perception Layer", "sub-category": "Counting and Statistics",
     "language": "en", "source": "AudioSet", "url": "https://example.org/a1", "timestamp": "00:01-00:11",
     "thinking": "Two distinct barks.", "cue": ["bark"],
     "rubric": [{"name": "n", "scoring_point": "counts", "note": "", "choices": [0, 1]}] * 5},
    {"id": "a2", "audio_path": "./audio/a2.wav", "question": "Which key?", "choices": ["C major", "A minor"],
     "answer": "A minor", "modality": "music", "category": "Signal Layer", "sub-category": "Music Theory",
     "language": "en", "source": "FMA", "url": "", "timestamp": "", "thinking": "", "cue": [], "rubric": []},
    {"id": "a3", "audio_path": "./audio/a3.wav", "question": "Mood?", "choices": ["happy", "sad", "angry", "calm"],
     "answer": "calm", "modality": "mix-sound-speech", "category": "Semantic Layer", "sub-category": "Emotion",
     "language": "zh", "source": "MELD", "url": "", "timestamp": "", "thinking": "", "cue": [], "rubric": []},
]

MMAU = [
    {"id": "u1", "audio_id": "./test-mini-audios/u1.wav", "question": "What is the speaker's gender?",
     "choices": ["Man", "Woman", "Child", "Robot"], "answer": "Woman", "dataset": "IEMOCAP", "task": "speech",
     "split": "test-mini", "category": "Speaker Identification", "sub-category": None, "difficulty": "easy"},
    {"id": "u2", "audio_id": "./test-mini-audios/u2.wav", "question": "Which instrument leads?",
     "choices": ["Piano", "Guitar", "Flute"], "answer": "Flute", "dataset": "MusicCaps", "task": "music",
     "split": "test-mini", "category": "Instrument Identification", "sub-category": "Lead", "difficulty": "hard"},
]

MMSU = [
    {"id": "s1", "audio_path": "audio/s1.wav", "question": "What emotion does the speaker express?",
     "choice_a": "anger", "choice_b": "joy", "choice_c": "sadness", "choice_d": "neutral", "answer_gt": "joy",
     "task_name": "emotion_recognition", "category": "perception", "sub-category": "paralinguistics",
     "sub-sub-category": "emotion"},
    {"id": "s2", "audio_path": "audio/s2.wav", "question": "Is the sentence a question?",
     "choice_a": "yes", "choice_b": "no", "choice_c": None, "choice_d": "", "answer_gt": "yes",
     "task_name": "intonation_judgement", "category": "reasoning", "sub-category": "phonology",
     "sub-sub-category": "prosody"},
]


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_mmar_jsonl_and_array_agree_and_missing_audio_reported(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "a1.wav").write_bytes(b"RIFF0000")
    (tmp_path / "audio" / "a2.wav").write_bytes(b"")
    jl = benchmarks.load("mmar", _jsonl(tmp_path / "MMAR-meta.jsonl", MMAR))
    (tmp_path / "MMAR-meta.json").write_text(json.dumps(MMAR, indent=2))
    arr = benchmarks.load("mmar", tmp_path / "MMAR-meta.json")
    assert jl.items == arr.items
    a1, a2, a3 = jl.items
    assert a1.audio_path == str(tmp_path / "audio" / "a1.wav")
    assert (a1.answer, a1.choices, a1.modality, a1.category, a1.sub_category) == (
        "two", ["one", "two", "three"], "sound", "Perception Layer", "Counting and Statistics")
    assert a1.meta == MMAR[0]
    assert a3.groups() == {"modality": "mix-sound-speech", "category": "Semantic Layer", "sub-category": "Emotion"}
    assert [m["id"] for m in jl.missing_audio] == ["a2", "a3"]
    assert jl.missing_audio[0]["reason"].startswith("empty file")
    assert jl.missing_audio[1]["reason"].startswith("not found") and "a3.wav" in jl.missing_audio[1]["reason"]


def test_audio_dir_resolves_relative_path_or_basename(tmp_path):
    (tmp_path / "meta").mkdir()
    meta = _jsonl(tmp_path / "meta" / "MMAR-meta.jsonl", MMAR)
    flat = tmp_path / "clips"
    flat.mkdir()
    for i in ("a1", "a2", "a3"):
        (flat / f"{i}.wav").write_bytes(b"RIFF")
    loaded = benchmarks.load("mmar", meta, audio_dir=flat)
    assert loaded.missing_audio == []
    assert [it.audio_path for it in loaded.items] == [str(flat / f"{i}.wav") for i in ("a1", "a2", "a3")]


def test_mmar_audio_path_defaults_to_id(tmp_path):
    rec = {k: v for k, v in MMAR[1].items() if k != "audio_path"}
    item = benchmarks.load("mmar", _jsonl(tmp_path / "m.jsonl", [rec]), check_audio=False).items[0]
    assert item.audio_path == str(tmp_path / "audio" / "a2.wav")


def test_malformed_meta_names_file_and_line(tmp_path):
    path = tmp_path / "MMAR-meta.jsonl"
    path.write_text(json.dumps(MMAR[0]) + "\n\n" + '{"id": "x", "question": \n')
    with pytest.raises(BenchmarkError, match=r"MMAR-meta\.jsonl:3: malformed JSON line"):
        benchmarks.load("mmar", path)
    bad = dict(MMAR[1])
    del bad["answer"]
    with pytest.raises(BenchmarkError, match=r"m\.jsonl:2: missing field\(s\) answer"):
        benchmarks.load("mmar", _jsonl(tmp_path / "m.jsonl", [MMAR[0], bad]))
    (tmp_path / "arr.json").write_text(json.dumps([MMAR[0], {**MMAR[1], "choices": "C major"}]))
    with pytest.raises(BenchmarkError, match=r"arr\.json record 2: 'choices' must be a list"):
        benchmarks.load("mmar", tmp_path / "arr.json")
    (tmp_path / "broken.json").write_text('[\n{"id": 1},\n{"id": \n')
    with pytest.raises(BenchmarkError, match=r"broken\.json:4: malformed JSON array"):
        benchmarks.load("mmar", tmp_path / "broken.json")
    with pytest.raises(BenchmarkError, match=r"d\.jsonl:2: duplicate id 'a1' \(first at .*d\.jsonl:1\)"):
        benchmarks.load("mmar", _jsonl(tmp_path / "d.jsonl", [MMAR[0], MMAR[0]]))
    with pytest.raises(BenchmarkError, match="no such file"):
        benchmarks.load("mmar", tmp_path / "absent.jsonl")
    with pytest.raises(BenchmarkError, match="unknown benchmark 'mmx'; known: mmar, mmau, mmsu"):
        benchmarks.load("mmx", path)


def test_mmau_test_mini_layout(tmp_path):
    (tmp_path / "MMAU.json").write_text(json.dumps(MMAU, indent=4))
    loaded = benchmarks.load("mmau", tmp_path / "MMAU.json")
    u1, u2 = loaded.items
    assert u1.audio_path == str(tmp_path / "test-mini-audios" / "u1.wav")
    assert u1.groups() == {"modality": "speech", "category": "Speaker Identification", "sub-category": "",
                           "difficulty": "easy"}
    assert [m["id"] for m in loaded.missing_audio] == ["u1", "u2"]
    preds = {"u1": {"id": "u1", "model_output": "The speaker is a woman."}, "u2": {"id": "u2", "model_output": "B"}}
    summary, verdicts = score(loaded.items, preds, benchmarks.BENCHMARKS["mmau"].rule, resamples=50)
    assert [v.correct for v in verdicts] == [True, False]
    assert summary["difficulty"] == {"easy": {"correct": 1, "total": 1, "accuracy": 1.0},
                                     "hard": {"correct": 0, "total": 1, "accuracy": 0.0}}
    assert "" not in summary["sub-category"] and summary["sub-category"]["Lead"]["total"] == 1


def test_mmsu_official_layout_and_letter_rule(tmp_path):
    loaded = benchmarks.load("mmsu", _jsonl(tmp_path / "mmsu.jsonl", MMSU), check_audio=False)
    s1, s2 = loaded.items
    assert (s1.choices, s1.answer, s1.modality) == (["anger", "joy", "sadness", "neutral"], "joy", "speech")
    assert (s2.choices, s2.answer) == (["yes", "no"], "yes")
    assert s1.groups()["task"] == "emotion_recognition" and s1.groups()["sub-sub-category"] == "emotion"
    assert s1.groups()["category/sub-category"] == "perception/paralinguistics"
    rule = benchmarks.BENCHMARKS["mmsu"].rule
    # The official letter: first character if A-D, else the second-to-last; anything else is dropped (None).
    assert [rule(p, s1) for p in ("B", "(B) joy", "The answer is B.", "Answer: B", "joy", "C", "b")] == [
        True, None, True, False, None, False, None]
    assert rule("C", s2) is False and rule("A", s2) is True and rule("yes", s2) is None
    for bad, pattern in [({**MMSU[1], "answer_gt": "A"}, r"'answer_gt' must be the text of one of choice_a, "
                                                          r"choice_b \(the official layout\), got 'A'"),
                         ({**MMSU[0], "choice_c": None}, r"choices must be choice_a, choice_b, \.\.\. without gaps, "
                                                         r"got choice_a, choice_b, choice_d")]:
        with pytest.raises(BenchmarkError, match=r"mmsu2\.jsonl:1: " + pattern):
            benchmarks.load("mmsu", _jsonl(tmp_path / "mmsu2.jsonl", [bad]))


def test_mmau_list_valued_category_is_one_group(tmp_path):
    listed = {**MMAU[0], "id": "u3", "category": ["Reasoning"]}
    pair = {**MMAU[0], "id": "u4", "category": ["Reasoning", "Information Extraction"]}
    plain = {**MMAU[1], "category": "Reasoning"}
    loaded = benchmarks.load("mmau", _jsonl(tmp_path / "u.jsonl", [listed, pair, plain]), check_audio=False)
    assert [it.category for it in loaded.items] == ["Reasoning", "Reasoning, Information Extraction", "Reasoning"]
    preds = {"u3": {"id": "u3", "model_output": "Man", "answer_prediction": "Woman"}}  # the official key wins
    summary, _ = score(loaded.items, preds, benchmarks.get("mmau").rule, resamples=10)
    assert summary["category"] == {"Reasoning": {"correct": 1, "total": 2, "accuracy": 0.5},
                                   "Reasoning, Information Extraction": {"correct": 0, "total": 1, "accuracy": 0.0}}


def test_read_predictions_checks_every_line(tmp_path):
    ok = _jsonl(tmp_path / "p.jsonl", [{"id": "a1", "answer_prediction": "two", "thinking_prediction": "t"},
                                      {"id": 7, "model_output": "x"}])
    assert benchmarks.read_predictions(ok) == {"a1": {"id": "a1", "answer_prediction": "two",
                                                      "thinking_prediction": "t"},
                                               "7": {"id": 7, "model_output": "x"}}
    cases = [
        ([{"answer_prediction": "x"}], r"p1\.jsonl:1: prediction has no 'id'"),
        ([{"id": "a"}, {"id": "b", "thinking_prediction": "t"}],
         r"p1\.jsonl: no prediction has any of answer_prediction, model_output \(the first has id\)"),
        ([{"id": "a", "answer_prediction": None}], r"p1\.jsonl:1: 'answer_prediction' must be a string"),
        ([{"id": "a", "answer_prediction": "x"}, {"id": "a", "answer_prediction": "y"}],
         r"p1\.jsonl:2: duplicate prediction for id 'a'"),
        ([{"id": "a", "answer_prediction": "x"}, ["a", "x"]], r"p1\.jsonl:2: expected a JSON object, got list"),
        ([["a", "x"], {"id": "a", "answer_prediction": "x"}], r"p1\.jsonl:1: expected a JSON object, got list"),
    ]
    for records, pattern in cases:
        with pytest.raises(BenchmarkError, match=pattern):
            benchmarks.read_predictions(_jsonl(tmp_path / "p1.jsonl", records))


def test_prediction_without_the_key_is_unanswered_not_fatal(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"id": "a1", "answer_prediction": "two"}, {"id": "a2", "thinking": "t"},
                                         {"id": "a3", "answer_prediction": "calm"}])
    preds = benchmarks.read_predictions(path)
    loaded = benchmarks.load("mmar", _jsonl(tmp_path / "m.jsonl", MMAR), check_audio=False)
    summary, verdicts = score(loaded.items, preds, benchmarks.string_rule, resamples=10)
    assert [(v.correct, v.missing, v.answered) for v in verdicts] == [(True, False, True), (False, True, False),
                                                                      (True, False, True)]
    assert summary["overall"]["correct"] == 2 and summary["overall"]["total"] == 3
    assert summary["answered"] == {"correct": 2, "total": 2, "accuracy": 1.0}
    assert summary["missing"]["ids"] == ["a2"]


def test_write_official_carries_every_meta_field(tmp_path):
    preds = {"a1": {"id": "a1", "answer_prediction": "two", "thinking_prediction": "I hear two."},
             "a2": {"id": "a2", "answer_prediction": "C major"}}
    path = benchmarks.write_official(MMAR, preds, tmp_path / "official.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and all(line.strip() for line in lines)
    out = [json.loads(line) for line in lines]
    for meta, rec in zip(MMAR, out, strict=True):
        assert {k: rec[k] for k in meta} == meta
        assert set(rec) == set(meta) | {"answer_prediction", "thinking_prediction"}
    assert [(r["answer_prediction"], r["thinking_prediction"]) for r in out] == [
        ("two", "I hear two."), ("C major", ""), ("", "")]

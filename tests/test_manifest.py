"""Contract-6 manifest reader: good lines become items, every bad line one Rejection with a specific reason."""

import json
import pathlib

import pytest

from data_prep.sources.manifest import Rejection, qa_problem, read_manifest

QA = {"question": "Which comes first?", "choices": ["the noise", "the tone"], "answer": "the tone"}


def _write(folder: pathlib.Path, lines: list) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = [x if isinstance(x, str) else json.dumps(x) for x in lines]
    (folder / "manifest.jsonl").write_text("\n".join(text) + "\n")
    return folder / "manifest.jsonl"


def _read(path):
    out = list(read_manifest(path))
    items = {x["id"]: x for x in out if isinstance(x, dict)}
    rejected = {x.id: x.reason for x in out if isinstance(x, Rejection)}
    return items, rejected


def test_good_lines_resolve_against_the_manifest_folder(tmp_path):
    m = _write(tmp_path / "data", [
        {"id": "a", "audio_path": "clips/a.wav", **QA, "modality": "sound", "category": "Signal Layer",
         "metadata": {"sub_category": "order", "thinking": "First a tone.", "url": "u"}},
        {"id": 7, "audio_path": "./clips/../b.wav"},  # no QA: fine (an annotator may write it later)
        {"id": "abs", "audio_path": str(tmp_path / "elsewhere" / "c.flac"), **QA},
        "",
        {"id": "sub", "audio_path": "x.wav", "sub-category": "counting", "thinking": "top-level", **QA},
    ])
    items, rejected = _read(m)
    assert not rejected and list(items) == ["a", "7", "abs", "sub"]
    root = (tmp_path / "data").resolve()
    assert items["a"]["audio_path"] == str(root / "clips" / "a.wav")
    assert items["7"]["audio_path"] == str(root / "b.wav") and items["7"]["question"] == ""
    assert items["7"]["choices"] == [] and items["7"]["metadata"] == {}
    assert items["abs"]["audio_path"] == str(tmp_path / "elsewhere" / "c.flac")
    a = items["a"]
    assert (a["question"], a["choices"], a["answer"]) == (QA["question"], QA["choices"], QA["answer"])
    assert (a["modality"], a["category"], a["sub_category"], a["thinking"]) == (
        "sound", "Signal Layer", "order", "First a tone.")
    assert a["metadata"]["url"] == "u"
    assert (items["sub"]["sub_category"], items["sub"]["thinking"]) == ("counting", "top-level")


def test_relative_paths_from_another_working_directory(tmp_path, monkeypatch):
    m = _write(tmp_path / "d", [{"id": "a", "audio_path": "a.wav"}])
    monkeypatch.chdir(tmp_path)
    items, _ = _read(pathlib.Path("d/manifest.jsonl"))
    assert items["a"]["audio_path"] == str((tmp_path / "d" / "a.wav").resolve())
    assert m.exists()


def test_every_bad_line_is_rejected_with_its_reason(tmp_path):
    lines = [
        {"id": "ok", "audio_path": "ok.wav", **QA},
        "{not json",
        "[1, 2]",
        {"audio_path": "x.wav"},
        {"id": "", "audio_path": "x.wav"},
        {"id": "no_path", **QA},
        {"id": "escape", "audio_path": "../../etc/passwd"},
        {"id": "escape2", "audio_path": "sub/../../x.wav"},
        {"id": "ok", "audio_path": "again.wav"},
        {"id": "bad_answer", "audio_path": "x.wav", **QA, "answer": "purple"},
        {"id": "one_choice", "audio_path": "x.wav", **QA, "choices": ["the tone"]},
        {"id": "seven", "audio_path": "x.wav", **QA, "choices": [f"c{i}" for i in range(6)] + ["the tone"]},
        {"id": "dup_choices", "audio_path": "x.wav", **QA, "choices": ["the tone", "The Tone ", "noise"]},
        {"id": "no_question", "audio_path": "x.wav", "choices": QA["choices"], "answer": "the tone"},
        {"id": "question_only", "audio_path": "x.wav", "question": "What is it?"},
        {"id": "choice_types", "audio_path": "x.wav", **QA, "choices": ["the tone", 3]},
        {"id": "meta", "audio_path": "x.wav", "metadata": ["not", "a", "dict"]},
        {"id": "modality", "audio_path": "x.wav", "modality": 5},
    ]
    m = _write(tmp_path / "m", lines)
    (tmp_path / "m" / "manifest.jsonl").write_bytes(m.read_bytes() + b'{"id": "\xff\xfe", "audio_path": "x"}\n')
    items, rejected = _read(m)
    assert list(items) == ["ok"]
    expected = {
        "line 2": "bad_json: Expecting property name enclosed in double quotes at column 2",
        "line 3": "bad_json: expected an object, got list",
        "line 4": "missing_id: 'id' is None",
        "line 5": "missing_id: 'id' is ''",
        "no_path": "missing_audio_path: 'audio_path' is None",
        "escape": f"path_escapes_manifest_folder: '../../etc/passwd' is outside {(tmp_path / 'm').resolve()}",
        "escape2": f"path_escapes_manifest_folder: 'sub/../../x.wav' is outside {(tmp_path / 'm').resolve()}",
        "bad_answer": "bad_answer: 'purple' is not one of the choices ['the noise', 'the tone']",
        "one_choice": "bad_choices: 1 choices, need 2-6",
        "seven": "bad_choices: 7 choices, need 2-6",
        "dup_choices": "bad_choices: duplicate choices ['The Tone ', 'the tone']",
        "no_question": "bad_question: None is empty or not a string",
        "question_only": "bad_choices: None is not a list of non-empty strings",
        "choice_types": "bad_choices: ['the tone', 3] is not a list of non-empty strings",
        "meta": "bad_metadata: expected an object, got list",
        "modality": "bad_modality: 5 is not a string",
        "line 19": "bad_encoding: not UTF-8 at column 9",
    }
    for rid, reason in expected.items():
        assert rejected.get(rid) == reason, (rid, rejected.get(rid))
    dup = [x for x in read_manifest(m) if isinstance(x, Rejection) and x.label == "duplicate_id"]
    assert dup == [Rejection("ok", "duplicate_id: first on line 1, again on line 9")]
    assert len(rejected) == len(expected) + 1 and len(list(read_manifest(m))) == len(expected) + 2  # + dup, + ok


def test_a_repeated_id_is_rejected_even_when_its_first_line_was_bad(tmp_path):
    m = _write(tmp_path, [{"id": "x", "audio_path": "../x.wav"}, {"id": "x", "audio_path": "x.wav"}])
    out = list(read_manifest(m))
    assert [r.label for r in out] == ["path_escapes_manifest_folder", "duplicate_id"]


@pytest.mark.parametrize("question, choices, answer, label", [
    ("q?", ["a", "b"], "a", None),
    ("q?", ["a", "b"], " b ", None),
    (None, None, None, None),
    ("q?", ["a", "b"], "A", "bad_answer"),
    ("q?", ["a", "b", "c", "d", "e", "f"], "f", None),
    ("q?", ["a", " "], "a", "bad_choices"),
    ("q?", "a, b", "a", "bad_choices"),
    ("  ", ["a", "b"], "a", "bad_question"),
])
def test_qa_rules(question, choices, answer, label):
    problem = qa_problem(question, choices, answer)
    assert (problem.split(":")[0] if problem else None) == label


def test_odd_ids_are_kept_and_lines_that_are_not_text_are_rejected(tmp_path):
    """Any non-empty id is kept as written (slash, NUL, 300 characters); a NUL in a path, an unpaired surrogate
    escape and very long values give one short rejection each."""
    m = _write(tmp_path, [
        {"id": "../../x/ESCAPED", "audio_path": "a.wav"}, {"id": "a/b\x00c", "audio_path": "a.wav"},
        {"id": "L" * 300, "audio_path": "a.wav"},
        {"id": "nul_path", "audio_path": "a\x00.wav"},
        '{"id": "s\\ud800", "audio_path": "a.wav"}',
        {"id": "long_answer", "audio_path": "a.wav", **QA, "answer": "x" * 5000},
        {"id": ["not", "text"], "audio_path": "a.wav"},
    ])
    items, rejected = _read(m)
    assert list(items) == ["../../x/ESCAPED", "a/b\x00c", "L" * 300]
    assert rejected["nul_path"] == "bad_audio_path: 'a\\x00.wav' contains a NUL character"
    assert rejected["line 5"] == "bad_text: an unpaired surrogate escape (\\ud800) is not text"
    assert rejected["long_answer"].startswith("bad_answer: 'xxx") and len(rejected["long_answer"]) < 250
    assert rejected["line 7"] == "missing_id: 'id' is ['not', 'text']"

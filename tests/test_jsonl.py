"""The one reader and appender of append-only JSONL files."""

import pytest

from cogito_jax import jsonl


def test_torn_last_line_is_dropped_and_cut_before_appending(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "x')
    assert [r["id"] for r in jsonl.read(p)] == ["a", "b"]
    with jsonl.open_append(p) as f:
        jsonl.write_row(f, {"id": "d"})
    assert p.read_text() == '{"id": "a"}\n{"id": "b"}\n{"id": "d"}\n'
    assert [r["id"] for r in jsonl.read(p)] == ["a", "b", "d"]


def test_complete_last_row_without_newline_is_kept(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"id": "a"}\n{"id": "b"}')
    assert [r["id"] for r in jsonl.read(p)] == ["a", "b"]
    with jsonl.open_append(p) as f:
        jsonl.write_row(f, {"id": "c"})
    assert [r["id"] for r in jsonl.read(p)] == ["a", "b", "c"]


@pytest.mark.parametrize("bad, why", [('{"id": "b', "not a JSON line"), ("[1, 2]", "must be a JSON object"),
                                      ('{"x": 1}', "row has no 'id'")])
def test_a_bad_line_inside_the_file_is_named(tmp_path, bad, why):
    p = tmp_path / "rows.jsonl"
    p.write_text(f'{{"id": "a"}}\n{bad}\n{{"id": "c"}}\n')
    with pytest.raises(jsonl.JsonlError, match=rf"rows.jsonl:2: .*{why}"):
        jsonl.read(p, require=("id",))


def test_missing_file_has_no_rows(tmp_path):
    assert jsonl.read(tmp_path / "absent.jsonl") == []


def test_any_json_value_as_a_row_when_the_caller_judges_rows(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"id": "a"}\n[1, 2]\nnull\n"text"\n{"id": "b"')
    assert jsonl.read(p, objects=False) == [{"id": "a"}, [1, 2], None, "text"]
    p.write_text('{"id": "a"}\n{"id": \n{"id": "c"}\n')
    with pytest.raises(jsonl.JsonlError, match=r"rows.jsonl:2: not a JSON line"):
        jsonl.read(p, objects=False)


@pytest.mark.parametrize("text, mended", [("", ""), ('{"a": 1}\n', '{"a": 1}\n'), ('{"a": 1}\n{"b', '{"a": 1}\n'),
                                          ('{"a": 1}\n{"b": 2}', '{"a": 1}\n{"b": 2}\n'), ('{"b', "")])
def test_mended_text_is_what_open_append_leaves(tmp_path, text, mended):
    p = tmp_path / "rows.jsonl"
    p.write_text(text)
    jsonl.open_append(p).close()
    assert jsonl.mended(text) == mended == p.read_text()

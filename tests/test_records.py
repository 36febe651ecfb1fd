"""Record schema, msgpack round trip, ArrayRecord shards read back through Grain's data source."""

import numpy as np
import pytest

from cogito_jax.data import records


def _rec(i, frames=7):
    mel = (np.arange(frames * 4, dtype=np.float32).reshape(frames, 4) / 10 + i).astype(np.float16)
    return records.make_record(id=f"ex{i}", mel=mel, n_frames=frames, question="How many beeps?",
                               choices=["two beeps", "three beeps"], answer="three beeps", modality="sound",
                               category="Perception Layer", provenance={"seed": i})


def test_roundtrip_keeps_arrays_exact():
    rec = _rec(3)
    back = records.decode(records.encode(rec))
    assert back["mel"].dtype == np.float16 and back["mel"].shape == (7, 4)
    np.testing.assert_array_equal(back["mel"], rec["mel"])
    assert {k: v for k, v in back.items() if k != "mel"} == {k: v for k, v in rec.items() if k != "mel"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"answer": "four beeps"}, "answer 'four beeps' is not among choices"),
        ({"choices": ["a"], "answer": "a"}, "choices must be 2-6 distinct"),
        ({"n_frames": 9}, "n_frames=9 but features have 7 rows"),
        ({"colour": "red"}, r"unknown fields \['colour'\]"),
    ],
)
def test_schema_errors_name_the_field(change, message):
    rec = {**_rec(1), **change}
    with pytest.raises(records.RecordError, match=message):
        records.validate(rec)
    bad = dict(_rec(1))
    del bad["question"]
    with pytest.raises(records.RecordError, match="record 'ex1': missing field 'question'"):
        records.validate(bad)


def test_shards_read_back_in_order(tmp_path):
    recs = [_rec(i, frames=3 + i % 5) for i in range(11)]
    paths = records.write_shards(recs, tmp_path, num_shards=3)
    assert [p.name for p in paths] == [f"data-0000{i}-of-00003.array_record" for i in range(3)]
    source = records.RecordSource.from_dir(tmp_path)
    assert len(source) == 11
    ids = sorted(r["id"] for r in source)
    assert ids == sorted(f"ex{i}" for i in range(11))
    got = {r["id"]: r for r in source}
    np.testing.assert_array_equal(got["ex4"]["mel"], recs[4]["mel"])
    with pytest.raises(FileNotFoundError, match="no data-\\*-of-\\*.array_record shards"):
        records.RecordSource.from_dir(tmp_path / "empty")

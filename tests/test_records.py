"""Record schema and the TFDS array_record dataset read back through a Grain-compatible source."""

import pickle

import numpy as np
import pytest

from cogito_jax.data import records


def _rec(i, frames=7):
    mel = (np.arange(frames * 4, dtype=np.float32).reshape(frames, 4) / 10 + i).astype(np.float16)
    return records.make_record(id=f"ex{i}", mel=mel, n_frames=frames, question="How many beeps?",
                               choices=["two beeps", "three beeps"], answer="three beeps", modality="sound",
                               category="Perception Layer", provenance={"seed": i})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"answer": "four beeps"}, "answer 'four beeps' is not among choices"),
        ({"choices": ["a"], "answer": "a"}, "choices must be 2-6 distinct"),
        ({"n_frames": 9}, "n_frames=9 but features have 7 rows"),
        ({"colour": "red"}, r"unknown fields \['colour'\]"),
        ({"audio_embeds": np.zeros((7, 2))}, "exactly one of 'mel' and 'audio_embeds'"),
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


def test_dataset_roundtrip_in_order(tmp_path):
    recs = {"train": [_rec(i, frames=3 + i % 5) for i in range(11)], "heldout": [_rec(100 + i) for i in range(3)]}
    path = records.write_dataset(tmp_path, {k: (lambda v=v: v) for k, v in recs.items()}, feat_dim=4)
    src = records.RecordSource(path, "train")
    assert len(src) == 11 and len(records.RecordSource(path, "heldout")) == 3
    got = list(src)
    assert [r["id"] for r in got] == [f"ex{i}" for i in range(11)]  # input order is kept
    for r, want in zip(got, recs["train"], strict=True):
        np.testing.assert_array_equal(r["mel"], want["mel"])
        assert r["mel"].dtype == np.float16
        assert {k: v for k, v in r.items() if k != "mel"} == {k: v for k, v in want.items() if k != "mel"}
    again = pickle.loads(pickle.dumps(src))  # Grain workers receive the source pickled
    assert again[4]["id"] == "ex4"
    with pytest.raises(KeyError, match="has no split 'test'"):
        records.RecordSource(path, "test")
    with pytest.raises(FileNotFoundError, match="no TFDS dataset"):
        records.RecordSource(tmp_path / "nothing")


def test_audio_is_stored_as_one_bytes_value_and_float_list_datasets_still_read(tmp_path, monkeypatch):
    import json

    import tensorflow_datasets as tfds

    recs = [_rec(i, frames=3 + i) for i in range(4)]
    new = records.write_dataset(tmp_path / "new", {"train": lambda: recs}, feat_dim=4)
    mel_spec = json.loads((new / "features.json").read_text())["featuresDict"]["features"]["mel"]["tensor"]
    assert mel_spec["encoding"] == "bytes" and mel_spec["dtype"] == "float16"

    # A dataset written with TFDS's default encoding (a float list per value), as earlier versions wrote them.
    def float_list_features(audio_field, feat_dim):
        spec = dict(records_features(audio_field, feat_dim))
        spec[audio_field] = tfds.features.Tensor(shape=(None, feat_dim), dtype=np.float16)
        return tfds.features.FeaturesDict(spec)

    records_features = records.features
    monkeypatch.setattr(records, "features", float_list_features)
    old = records.write_dataset(tmp_path / "old", {"train": lambda: recs}, feat_dim=4)
    monkeypatch.undo()
    old_spec = json.loads((old / "features.json").read_text())["featuresDict"]["features"]["mel"]["tensor"]
    assert old_spec.get("encoding", "none") == "none"
    for path in (new, old):
        got = list(records.RecordSource(path, "train"))
        assert [r["id"] for r in got] == [r["id"] for r in recs]
        for r, want in zip(got, recs, strict=True):
            assert r["mel"].dtype == np.float16
            np.testing.assert_array_equal(r["mel"], want["mel"])

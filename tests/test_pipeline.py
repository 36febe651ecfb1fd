"""Grain pipeline: exact shapes and masks, per-process slicing, exact resume from iterator state."""

import dataclasses

import numpy as np
import pytest

from cogito_jax.data import chat, pipeline, records, tokenizer as toklib

N_MELS = 8


def _ds_dir(root):
    return next((root / "data").rglob("dataset_info.json")).parent


def _rec(i):
    rng = np.random.default_rng(i)
    frames = int(rng.integers(20, 60))
    return records.make_record(
        id=f"ex{i}", mel=rng.normal(size=(frames, N_MELS)), n_frames=frames, question=f"How many beeps ({i})?",
        choices=["two beeps", "three beeps", "four beeps"], answer=["two beeps", "three beeps", "four beeps"][i % 3],
        thinking="I count them one by one." if i % 2 else "",
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    recs = [_rec(i) for i in range(24)]
    records.write_dataset(root / "data", {"train": lambda: recs}, feat_dim=N_MELS)
    texts = [r["question"] + " " + " ".join(r["choices"]) + " " + r["thinking"] for r in recs]
    toklib.train_bpe(texts * 5, vocab_size=320, out_dir=root / "tok")
    return root, recs


def _spec(family="qwen2_audio"):
    return pipeline.ExampleSpec(family=family, max_len=160, max_frames=64, n_mels=N_MELS, pad_id=0)


def test_example_layout(corpus):
    root, recs = corpus
    tok = toklib.load(root / "tok")
    ex = pipeline.encode_record(recs[1], tok, _spec(), index=5)
    n = int(ex["attention_mask"].sum())
    ids = ex["input_ids"][:n]
    frames = int(ex["feature_attention_mask"].sum())
    assert frames == recs[1]["n_frames"]
    assert (ids == tok.convert_tokens_to_ids("<|AUDIO|>")).sum() == chat.num_audio_tokens("qwen2_audio", frames)
    np.testing.assert_allclose(ex["input_features"][:, :frames], recs[1]["mel"].T.astype(np.float32))
    assert not ex["input_features"][:, frames:].any()
    # Targets are the inputs shifted by one; the loss covers exactly the assistant's reply.
    np.testing.assert_array_equal(ex["targets"][: n - 1], ids[1:])
    supervised = ex["targets"][ex["loss_mask"] == 1]
    assert tok.decode(supervised) == "<think>\nI count them one by one.\n</think>\n\nthree beeps<|im_end|>"
    too_long = pipeline.ExampleSpec(family="qwen2_audio", max_len=20, max_frames=64, n_mels=N_MELS)
    assert pipeline.encode_record(recs[1], tok, too_long) is None


def _consume(it, n):
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume_and_no_repeats(corpus, workers):
    root, recs = corpus
    src = records.RecordSource(_ds_dir(root))
    kw = dict(tokenizer_dir=str(root / "tok"), spec=_spec(), batch_size=4, seed=3, num_workers=workers)
    it = iter(pipeline.make_dataset(src, **kw))
    first = _consume(it, 3)
    state = it.get_state()
    full = first + _consume(it, 5)  # 32 examples = 1 epoch + 8
    it2 = iter(pipeline.make_dataset(src, **kw))
    it2.set_state(state)
    rest = _consume(it2, 5)
    for a, b in zip(full, first + rest, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    idx = np.concatenate([b["index"] for b in full])
    assert list(idx) == list(range(32))  # every stream position once, in order: no gaps, no repeats
    # The first epoch covers every record once (a permutation), the second is reshuffled.
    epoch1 = [tuple(b["input_ids"][r]) for b in full[:6] for r in range(4)]
    assert len(set(epoch1)) == 24


def test_too_long_examples_keep_their_place_and_workers_agree(corpus):
    root, recs = corpus
    tok = toklib.load(root / "tok")
    lengths = sorted(int(pipeline.encode_record(r, tok, _spec())["attention_mask"].sum()) for r in recs)
    spec = dataclasses.replace(_spec(), max_len=lengths[len(lengths) * 2 // 3])  # about a third too long
    kw = dict(tokenizer_dir=str(root / "tok"), spec=spec, batch_size=4, seed=3)
    src = records.RecordSource(_ds_dir(root))
    alone = _consume(iter(pipeline.make_dataset(src, **kw)), 4)
    workers = _consume(iter(pipeline.make_dataset(src, **kw, num_workers=2)), 4)
    idx = np.concatenate([b["index"] for b in alone])
    placeholder = idx == -1
    assert 0 < placeholder.sum() < len(idx)
    np.testing.assert_array_equal(idx[~placeholder], np.arange(len(idx))[~placeholder])  # positions kept
    for b in alone:
        rows = b["index"] == -1
        assert not b["loss_mask"][rows].any() and not b["feature_attention_mask"][rows].any()
        assert (b["attention_mask"][rows].sum(-1) == 1).all()
    for a, b in zip(alone, workers, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    packed = _consume(iter(pipeline.make_dataset(src, **kw, packing=True)), 2)  # the packer drops them instead
    assert all((b["index"] != -1).any() for b in packed)


def test_a_finite_stream_is_padded_to_whole_global_batches(corpus):
    root, recs = corpus
    src = records.RecordSource(_ds_dir(root))
    kw = dict(tokenizer_dir=str(root / "tok"), spec=_spec(), batch_size=5, num_epochs=1, shuffle=False)
    per_process = [list(pipeline.make_dataset(src, **kw, process_index=i, process_count=2)) for i in range(2)]
    assert len(per_process[0]) == len(per_process[1]) == -(-len(recs) // 10)  # same number of steps
    idx = np.concatenate([b["index"] for batches in per_process for b in batches])
    assert sorted(idx[idx >= 0].tolist()) == list(range(len(recs)))  # every example exactly once
    assert (idx == -1).sum() == len(per_process[0]) * 10 - len(recs)


def test_process_slices_partition_the_stream(corpus):
    root, _ = corpus
    src = records.RecordSource(_ds_dir(root))
    kw = dict(tokenizer_dir=str(root / "tok"), spec=_spec(), batch_size=2, seed=1)
    one = np.concatenate([b["index"] for b in _consume(iter(pipeline.make_dataset(src, **kw, process_index=0,
                                                                                  process_count=1)), 4)])
    p0 = np.concatenate([b["index"] for b in _consume(iter(pipeline.make_dataset(src, **kw, process_index=0,
                                                                                 process_count=2)), 2)])
    p1 = np.concatenate([b["index"] for b in _consume(iter(pipeline.make_dataset(src, **kw, process_index=1,
                                                                                 process_count=2)), 2)])
    assert sorted(np.concatenate([p0, p1])) == sorted(one)
    assert set(p0).isdisjoint(p1)


def test_nothing_fits_raises_instead_of_spinning(corpus):
    root, _ = corpus
    src = records.RecordSource(_ds_dir(root))
    spec = pipeline.ExampleSpec(family="qwen2_audio", max_len=10, max_frames=64, n_mels=N_MELS)
    it = iter(pipeline.make_dataset(src, tokenizer_dir=str(root / "tok"), spec=spec, batch_size=2))
    with pytest.raises(ValueError, match="examples in a row are longer than max_len=10 tokens"):
        for _ in range(64):  # placeholder rows hold their places until the guard sees 64 in a row
            next(it)


def test_the_token_memo_tokenises_each_conversation_once_and_changes_nothing(corpus, monkeypatch):
    root, recs = corpus
    tok = toklib.load(root / "tok")
    plain = [pipeline.encode_record(r, tok, _spec(), index=i) for i, r in enumerate(recs)]
    calls = []
    real = chat.encode_example
    monkeypatch.setattr(chat, "encode_example", lambda *a, **k: calls.append(1) or real(*a, **k))
    memo = pipeline.TokenMemo()
    for epoch in range(3):  # three epochs: the tokenizer runs in the first only
        for i, r in enumerate(recs):
            got = pipeline.encode_record(r, tok, _spec(), index=i, memo=memo)
            assert got.keys() == plain[i].keys()
            for k in got:
                np.testing.assert_array_equal(got[k], plain[i][k], err_msg=f"{k} of example {i}, epoch {epoch}")
            got["input_ids"][:] = -1  # a caller's writes never reach the memo
    assert len(calls) == len(recs)
    # Another weight is not another conversation (it scales the loss mask after the memo); another thinking is.
    heavier = pipeline.encode_record({**recs[1], "weight": 0.5}, tok, _spec(), memo=memo)
    np.testing.assert_array_equal(heavier["loss_mask"], 0.5 * plain[1]["loss_mask"])
    assert len(calls) == len(recs)
    pipeline.encode_record({**recs[1], "thinking": "Something else."}, tok, _spec(), memo=memo)
    assert len(calls) == len(recs) + 1
    # Bounded in bytes: full, a new conversation pushes out the oldest, which is then tokenised again.
    sized = pipeline.TokenMemo()
    for r in recs:
        pipeline.encode_record(r, tok, _spec(), memo=sized)
    small = pipeline.TokenMemo(max_bytes=sized.bytes)
    for r in recs:
        pipeline.encode_record(r, tok, _spec(), memo=small)
    assert small.bytes == sized.bytes and len(small._entries) == len(recs)  # all of them fit
    n = len(calls)
    pipeline.encode_record({**recs[1], "thinking": "Something else."}, tok, _spec(), memo=small)
    assert small.bytes <= small.max_bytes and next(iter(small._entries))[0] != recs[0]["question"]
    pipeline.encode_record(recs[0], tok, _spec(), memo=small)
    assert len(calls) == n + 2  # the new conversation, then the evicted oldest again

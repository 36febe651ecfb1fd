"""Packing and audio-length buckets: row layout, no example lost or repeated, exact resume, and the same
per-token loss as unpacked / unbucketed batches on the tiny models."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cogito_jax.data import chat, pipeline, records, tokenizer as toklib
from cogito_jax.models import registry
from cogito_jax.train import step

N_RECORDS = 20
FAMILIES = {"qwen2_audio": 80, "qwen3_omni_thinker": 16}  # family -> mel bins of its tiny encoder
MAX_LEN = 192


def _rec(i, n_mels):
    rng = np.random.default_rng(i)
    frames = int(rng.integers(16, 240))
    choices = ["two beeps", "three beeps", "four beeps"]
    return records.make_record(
        id=f"ex{i}", mel=rng.normal(size=(frames, n_mels)), n_frames=frames, question=f"Beeps ({i})?",
        choices=choices, answer=choices[i % 3], thinking="Count." if i % 2 else "",
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    out = {}
    for family, n_mels in FAMILIES.items():
        recs = [_rec(i, n_mels) for i in range(N_RECORDS)]
        records.write_dataset(root / family, {"train": lambda recs=recs: recs}, feat_dim=n_mels)
        out[family] = records.RecordSource(next((root / family).rglob("dataset_info.json")).parent)
    texts = [fmt.prompt(chat.mcq_text(r["question"], r["choices"])) + fmt.response(r["answer"], r["thinking"] or None)
             for fmt in map(chat.chat_format, FAMILIES) for r in (_rec(i, 1) for i in range(N_RECORDS))]
    toklib.train_bpe(texts * 5, vocab_size=400, out_dir=root / "tok")
    return root / "tok", out


def _spec(family):
    mcfg = registry.config_for({"family": family, "size": "tiny"})
    return pipeline.ExampleSpec(family=family, max_len=MAX_LEN, max_frames=mcfg.audio.num_frames,
                                n_mels=FAMILIES[family])


def _dataset(corpus, family="qwen2_audio", **kw):
    tok_dir, sources = corpus
    args = dict(tokenizer_dir=str(tok_dir), spec=_spec(family), batch_size=2, seed=5)
    return pipeline.make_dataset(sources[family], **{**args, **kw})


def _stream_record(source, seed, position):
    """The record at ``position`` of the shuffled, repeated stream (what make_dataset reads there)."""
    return grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)[position]


def test_packed_rows_hold_whole_examples_in_order(corpus):
    tok_dir, sources = corpus
    tok, spec = toklib.load(tok_dir), _spec("qwen2_audio")
    audio_id = tok.convert_tokens_to_ids(chat.chat_format("qwen2_audio").audio_token)
    it = iter(_dataset(corpus, packing=True, max_clips_per_row=3))
    batches = [next(it) for _ in range(8)]
    b = batches[0]
    assert b["input_ids"].shape == b["segment_ids"].shape == b["positions"].shape == (2, MAX_LEN)
    assert b["input_features"].shape == (2, 3, 80, spec.max_frames)
    assert b["feature_attention_mask"].shape == (2, 3, spec.max_frames) and b["clip_mask"].shape == (2, 3)
    per_row = []
    for batch in batches:
        for r in range(2):
            seg, idx = batch["segment_ids"][r], batch["index"][r]
            k = int(seg.max())
            per_row.append(k)
            assert list(idx[k:]) == [-1] * (3 - k) and (np.diff(idx[:k]) > 0).all()  # clips in stream order
            assert list(batch["clip_mask"][r]) == [1] * k + [0] * (3 - k)
            np.testing.assert_array_equal(batch["attention_mask"][r], seg > 0)
            assert not batch["loss_mask"][r][seg == 0].any()
            start = 0
            for j in range(1, k + 1):  # segment j holds the example of clip slot j - 1, positions from 0
                ref = pipeline.encode_unpadded(_stream_record(sources["qwen2_audio"], 5, int(idx[j - 1])), tok, spec)
                n = len(ref["input_ids"])
                assert list(seg[start:start + n]) == [j] * n
                np.testing.assert_array_equal(batch["positions"][r, start:start + n], np.arange(n))
                for key in ("input_ids", "targets", "loss_mask"):
                    np.testing.assert_array_equal(batch[key][r, start:start + n], ref[key])
                np.testing.assert_array_equal(batch["input_features"][r, j - 1], ref["input_features"][0])
                frames = int(batch["feature_attention_mask"][r, j - 1].sum())
                assert (ref["input_ids"] == audio_id).sum() == chat.num_audio_tokens("qwen2_audio", frames)
                start += n
            assert not seg[start:].any()
    assert max(per_row) >= 2  # rows really hold several examples
    # Every stream position once (a prefix of the stream): no example lost or repeated, a whole epoch covered.
    idx = np.concatenate([bt["index"].reshape(-1) for bt in batches])
    idx = idx[idx >= 0]
    assert sorted(idx) == list(range(len(idx))) and len(idx) >= N_RECORDS
    first_epoch = {_stream_record(sources["qwen2_audio"], 5, int(p))["id"] for p in idx[idx < N_RECORDS]}
    assert len(first_epoch) == N_RECORDS


def test_packed_resume_with_two_workers_is_exact(corpus):
    kw = dict(packing=True, max_clips_per_row=3, num_workers=2)
    it = iter(_dataset(corpus, **kw))
    _ = [next(it) for _ in range(3)]
    state = it.get_state()
    ahead = [next(it) for _ in range(4)]
    it2 = iter(_dataset(corpus, **kw))
    it2.set_state(state)
    for a, b in zip(ahead, [next(it2) for _ in range(4)], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def _jitted(model, fn):
    graphdef, state = nnx.split(model)
    f = jax.jit(lambda st, b: fn(nnx.merge(graphdef, st), b))
    return lambda batch: f(state, {k: jnp.asarray(v) for k, v in batch.items() if k not in pipeline.BOOKKEEPING})


def _token_losses(logits, targets):
    logits = np.asarray(logits, np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return lse - np.take_along_axis(logits, targets[..., None].astype(np.int64), -1)[..., 0]


def _model(tok_dir, family):
    tok = toklib.load(tok_dir)
    audio_id = tok.convert_tokens_to_ids(chat.chat_format(family).audio_token)
    return registry.build(registry.config_for({"family": family, "size": "tiny"}, vocab_size=len(tok),
                                              audio_token_id=audio_id), seed=0), tok


@pytest.mark.parametrize("family", list(FAMILIES))
def test_packed_loss_equals_unpacked(corpus, family):
    tok_dir, sources = corpus
    model, tok = _model(tok_dir, family)
    spec = _spec(family)
    packed = next(iter(_dataset(corpus, family, packing=True, max_clips_per_row=4)))
    assert packed["segment_ids"].max() >= 2
    positions = [int(p) for p in packed["index"].reshape(-1) if p >= 0]
    unpacked = [pipeline.encode_record(_stream_record(sources[family], 5, p), tok, spec, p) for p in positions]
    unpacked = {k: np.stack([u[k] for u in unpacked]) for k in unpacked[0]}
    logits_fn = _jitted(model, step.lm_logits)
    logits_p, logits_u = logits_fn(packed), logits_fn(unpacked)
    lp, lu = _token_losses(logits_p, packed["targets"]), _token_losses(logits_u, unpacked["targets"])
    seen = 0
    for r in range(packed["input_ids"].shape[0]):
        for j in range(1, int(packed["segment_ids"][r].max()) + 1):
            where = packed["segment_ids"][r] == j
            n = int(where.sum())
            m = packed["loss_mask"][r][where] > 0
            np.testing.assert_array_equal(m, unpacked["loss_mask"][seen, :n] > 0)
            np.testing.assert_allclose(lp[r][where][m], lu[seen, :n][m], atol=1e-5, rtol=1e-5)
            seen += 1
    assert seen == len(positions)
    # The summed loss the train step uses (token_cross_entropy of these logits) agrees too.
    tp, cp, sp = step.token_cross_entropy(logits_p, packed["targets"], packed["loss_mask"], packed["answer_mask"])
    tu, cu, su = step.token_cross_entropy(logits_u, unpacked["targets"], unpacked["loss_mask"], unpacked["answer_mask"])
    assert float(cp) == float(cu)
    assert float(sp["answer_tokens"]) == float(su["answer_tokens"]) > 0
    assert float(sp["correct"]) == float(su["correct"])
    np.testing.assert_allclose(float(tp), float(tu), rtol=1e-5)


def test_buckets_group_short_clips_and_resume_exactly(corpus):
    kw = dict(audio_buckets=(100, 200), bucket_window=2, batch_size=4)
    ds = _dataset(corpus, "qwen3_omni_thinker", **kw)
    full = [next(it) for it in [iter(ds)] for _ in range(10)]
    widths = [b["input_features"].shape[-1] for b in full]
    assert set(widths) <= {100, 200, 400} and min(widths) < 400
    for b in full:
        longest = int(b["feature_attention_mask"].sum(-1).max())
        assert b["input_features"].shape[-1] == pipeline.bucket_for(longest, (100, 200, 400))
        assert b["feature_attention_mask"].shape == (4, b["input_features"].shape[-1])
    idx = np.concatenate([b["index"] for b in full])
    assert sorted(idx) == list(range(40))  # five whole windows: every position once
    assert list(idx) != sorted(idx)  # reordered by length inside a window
    it = iter(_dataset(corpus, "qwen3_omni_thinker", **kw))
    first = [next(it) for _ in range(3)]  # mid-window
    it2 = iter(_dataset(corpus, "qwen3_omni_thinker", **kw))
    it2.set_state(it.get_state())
    rest = [next(it2) for _ in range(7)]
    for a, b in zip(full, first + rest, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_bucketed_loss_equals_full_width(corpus):
    tok_dir, _ = corpus
    model, _ = _model(tok_dir, "qwen3_omni_thinker")
    run = _jitted(model, step.lm_loss)
    for kw in ({"batch_size": 4, "bucket_window": 2}, {"packing": True, "max_clips_per_row": 3}):
        short = next(b for b in iter(_dataset(corpus, "qwen3_omni_thinker", audio_buckets=(100, 200), **kw))
                     if b["input_features"].shape[-1] < 400)
        width = short["input_features"].shape[-1]
        pad = [(0, 0)] * (short["input_features"].ndim - 1) + [(0, 400 - width)]
        wide = {**short, "input_features": np.pad(short["input_features"], pad),
                "feature_attention_mask": np.pad(short["feature_attention_mask"], pad[1:])}
        (ts, cs, ss), (tw, cw, sw) = run(short), run(wide)
        assert float(cs) == float(cw) > 0
        assert float(ss["answer_tokens"]) == float(sw["answer_tokens"]) > 0
        assert float(ss["correct"]) == float(sw["correct"])
        np.testing.assert_allclose(float(ts), float(tw), rtol=1e-5)


@pytest.mark.parametrize("key, value, message", [
    ("packing", "yes", r"config key 'data.packing'.*cannot be casted to type <class 'bool'>"),
    ("max_clips_per_row", 0, r"data.max_clips_per_row=0 must be an integer >= 1"),
    ("audio_buckets", (200, 100), r"data.audio_buckets=\(200, 100\) must be increasing"),
])
def test_bad_pipeline_options_are_config_errors(key, value, message):
    from cogito_jax import cli, errors

    with pytest.raises(errors.ConfigError, match=message):
        cli.load_config("configs/tiny.py", {f"data.{key}": value})


def test_buckets_need_an_encoder_that_takes_any_length():
    from cogito_jax import cli, errors
    from cogito_jax.train import run

    cfg = cli.load_config("configs/tiny.py")
    cfg.data.audio_buckets = (100, 200)
    with pytest.raises(errors.ConfigError, match="takes exactly 400 mel frames"):
        run.pipeline_options(cfg, registry.config_for({"family": "qwen2_audio", "size": "tiny"}))
    opts = run.pipeline_options(cfg, registry.config_for({"family": "qwen3_omni_thinker", "size": "tiny"}))
    assert opts == {"packing": False, "max_clips_per_row": 4, "audio_buckets": (100, 200), "num_workers": 0}

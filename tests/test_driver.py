"""The sampling driver: static batch shapes, JSONL output, resume after a crash, per-process shards."""

import json

import numpy as np
import pytest

from cogito_jax import jsonl
from cogito_jax.data import chat, tokenizer as toklib
from cogito_jax.sampling import driver

ANSWERS = ["two beeps", "three beeps", "four beeps"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    text = chat.chat_format("qwen2_audio").prompt(chat.mcq_text("How many beeps?", ANSWERS)) + " ".join(ANSWERS)
    toklib.train_bpe([text, "<think>\nI count.\n</think>\n\nthree beeps"] * 10, vocab_size=300, out_dir=out)
    return toklib.load(out)


def _items(n):
    rng = np.random.default_rng(0)
    return [{"id": f"p{i}", "question": "How many beeps?" + " really?" * (i % 4), "choices": ANSWERS,
             "mel": rng.normal(size=(10 + i, 4)).astype(np.float16)} for i in range(n)]


class FakeEngine:
    """Answers '<think>I count.</think> three beeps<|im_end|>' and records every call's shapes."""

    def __init__(self, tok, crash_on_call=None):
        self.tok, self.calls, self.crash_on_call = tok, [], crash_on_call
        self.answer = tok.encode("<think>\nI count.\n</think>\n\nthree beeps<|im_end|>", add_special_tokens=False)

    def __call__(self, input_ids, *, input_features, feature_attention_mask, num_samples, max_new_tokens, **kw):
        self.calls.append((input_ids.shape, None if input_features is None else input_features.shape))
        if self.crash_on_call is not None and len(self.calls) == self.crash_on_call:
            raise RuntimeError("crash")
        out = np.full((input_ids.shape[0], num_samples, max_new_tokens), kw["pad_token_id"], np.int32)
        out[:, :, : len(self.answer)] = self.answer
        return out


def _cfg(**kw):
    return driver.DriverConfig(family="qwen2_audio", batch_size=4, num_samples=2, max_new_tokens=24, max_frames=32,
                               n_mels=4, length_buckets=(64, 128, 256), **kw)


def _run(tok, items, out, engine, **kw):
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]
    return driver.run(items, out, generate_fn=engine, tokenizer=tok, cfg=_cfg(), eos_token_ids=eos,
                      pad_token_id=tok.pad_token_id, progress=False, **kw)


def test_outputs_shapes_and_parsing(tok, tmp_path):
    eng = FakeEngine(tok)
    stats = _run(tok, _items(10), tmp_path / "out.jsonl", eng)
    rows = [json.loads(ln) for ln in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and stats["prompts"] == 10
    assert {(r["id"], r["sample"]) for r in rows} == {(f"p{i}", s) for i in range(10) for s in range(2)}
    assert all(r["answer"] == "three beeps" and r["thinking"] == "I count." and r["finish_reason"] == "eos"
               for r in rows)
    assert all(b == 4 and t in (64, 128, 256) and feats == (4, 4, 32) for (b, t), feats in eng.calls)
    assert len({shape for shape, _ in eng.calls}) <= 2  # a handful of static shapes, not one per batch


def test_resume_after_crash_and_merge(tok, tmp_path):
    out = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError, match="crash"):
        _run(tok, _items(10), out, FakeEngine(tok, crash_on_call=2))
    with open(out, "a") as f:
        f.write(json.dumps({"id": "p9", "sample": 0}) + "\n" + '{"id": "p9", "sam')  # a torn, partial prompt
    first = {json.loads(ln)["id"] for ln in out.read_text().splitlines() if ln.endswith("}")}
    eng = FakeEngine(tok)
    stats = _run(tok, _items(10), out, eng)
    assert stats["skipped_done"] == 4 and stats["prompts"] == 6 and len(first) == 5
    merged = driver.merge_outputs(out, [f"p{i}" for i in range(10)], 1, 2)
    assert len(merged) == 20


@pytest.mark.parametrize("bad, why", [("not json at all", "not a JSON line"), ('{"sample": 1}', "row has no 'id'")])
def test_a_bad_line_inside_an_output_is_named_not_skipped(tok, tmp_path, bad, why):
    """Only a torn last line is a crash's doing: any other bad line stops resuming (and merging) with one message
    naming the file and line, and the file is left as it is."""
    out = tmp_path / "out.jsonl"
    _run(tok, _items(3), out, FakeEngine(tok))
    lines = out.read_text().splitlines()
    damaged = "\n".join([lines[0], bad, *lines[1:]]) + "\n"
    out.write_text(damaged)
    with pytest.raises(jsonl.JsonlError, match=rf"out.jsonl:2: .*{why}"):
        _run(tok, _items(3), out, FakeEngine(tok))
    with pytest.raises(jsonl.JsonlError, match=rf"out.jsonl:2: .*{why}"):
        driver.merge_outputs(out, [f"p{i}" for i in range(3)], 1, 2)
    assert out.read_text() == damaged


def test_process_shards_partition_prompts(tok, tmp_path):
    out = tmp_path / "out.jsonl"
    for p in range(2):
        _run(tok, _items(7), out, FakeEngine(tok), process_index=p, process_count=2)
    assert (tmp_path / "out.jsonl.process0-of-2").exists() and (tmp_path / "out.jsonl.process1-of-2").exists()
    merged = driver.merge_outputs(out, [f"p{i}" for i in range(7)], 2, 2)
    assert [r["id"] for r in merged[::2]] == [f"p{i}" for i in range(7)]
    with pytest.raises(ValueError, match=r"missing \['p7'\]"):
        driver.merge_outputs(out, [f"p{i}" for i in range(8)], 2, 2)


def test_prompt_too_long():
    with pytest.raises(ValueError, match="longer than the largest length bucket 256"):
        driver.bucket_length(300, (64, 128, 256))


# ------------------------------------------------------------------------------------ the continuous engine


@pytest.fixture(scope="module")
def tiny_model():
    from cogito_jax.models import registry

    return registry.build(registry.config_for({"family": "qwen2_audio", "size": "tiny"}), seed=3)


def _text_items(n):
    return [{"id": f"q{i}", "question": "How many beeps?" + " really?" * (i % 5), "choices": ANSWERS}
            for i in range(n)]


def _run_model(tok, model, items, out, **kw):
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]
    cfg = driver.DriverConfig(family="qwen2_audio", batch_size=2, num_samples=3, max_new_tokens=20, temperature=1.0,
                              seed=11, length_buckets=(256,), slots=4, page_size=8, prefill_chunk=32,
                              steps_per_sync=4, logprobs=True)
    return driver.run(items, out, model=model, tokenizer=tok, cfg=cfg, eos_token_ids=eos,
                      pad_token_id=tok.pad_token_id, progress=False, **kw)


def _by_sample(path):
    return {(r["id"], r["sample"]): r for r in jsonl.read(path)}


def test_continuous_lines_are_written_as_samples_finish_and_a_rerun_fills_only_the_gaps(tok, tiny_model, tmp_path,
                                                                                        monkeypatch):
    """A run that dies after 7 samples (and leaves a torn line) keeps them; the re-run generates the other 17 and
    the file then holds exactly what an uninterrupted run writes; 2 processes write the same samples as 1."""
    items = _text_items(8)
    whole = tmp_path / "whole.jsonl"
    stats = _run_model(tok, tiny_model, items, whole)
    ref = _by_sample(whole)
    assert len(ref) == 24 and stats["samples"] == 24 and 0 < stats["engine"]["utilization"] <= 1
    assert all(len(r["token_ids"]) == len(r["logprobs"]) == r["n_tokens"] + (r["finish_reason"] == "eos")
               for r in ref.values())

    out, written = tmp_path / "out.jsonl", []
    real = jsonl.write_row

    def dies_after_seven(f, row):
        real(f, row)
        written.append(row)
        if len(written) == 7:
            f.write('{"id": "q7", "sam')
            raise RuntimeError("killed")

    monkeypatch.setattr(jsonl, "write_row", dies_after_seven)
    with pytest.raises(RuntimeError, match="killed"):
        _run_model(tok, tiny_model, items, out)
    monkeypatch.setattr(jsonl, "write_row", real)
    assert len(driver.done_samples(out)) >= 1 and sum(map(len, driver.done_samples(out).values())) == 7
    again = _run_model(tok, tiny_model, items, out)
    assert again["samples"] == 17
    assert _by_sample(out) == ref
    assert len(driver.merge_outputs(out, [it["id"] for it in items], 1, 3)) == 24

    split = tmp_path / "split.jsonl"
    for p in range(2):
        _run_model(tok, tiny_model, items, split, process_index=p, process_count=2)
    merged = driver.merge_outputs(split, [it["id"] for it in items], 2, 3)
    assert {(r["id"], r["sample"]): r for r in merged} == ref


def test_slot_config_follows_the_driver_settings():
    """The engine the driver builds gets its slots, pool and per-call step limits from the driver's settings."""
    base = dict(family="qwen2_audio", batch_size=2, num_samples=4, max_new_tokens=64, length_buckets=(64, 128))
    sc = driver.DriverConfig(**base).slot_config()
    assert (sc.slots, sc.max_context, sc.share_rows, sc.longest_call) == (8, 192, 4, 4 * sc.steps_per_sync)
    sc = driver.DriverConfig(**base, slots=3, kv_pages=40, steps_per_sync=4, max_steps_per_sync=20).slot_config()
    assert (sc.slots, sc.pool_pages, sc.steps_per_sync, sc.longest_call) == (3, 40, 4, 20)

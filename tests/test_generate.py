"""Generation: greedy equals HF generate token for token; N samples share one prefill; seeds."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from cogito_jax.convert import load_hf
from cogito_jax.models.attention import PagedKV, SampleCache, SharedPrompts, paged_attention
from cogito_jax.sampling import Engine, engine_for, generate
from cogito_jax.sampling.continuous import ContinuousEngine, Request, SlotConfig
from tests.hf_tiny import save_qwen2_audio
from tests.test_models_qwen2_audio import make_batch

EOS, PAD = 7, 0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen_hf")
    hf = save_qwen2_audio(d, seed=1)
    model, _ = load_hf(d)
    return hf, model


def _prompts(seed=0):
    ids, feats, fmask, am = make_batch(seed=seed, lengths=(32, 19, 27), left_pad=(0, 4, 2))
    ids = np.where(am == 1, ids, PAD)
    return ids, feats, fmask, am


def _hf_greedy(hf, ids, am, feats, fmask, new):
    """HF generate's greedy output (prompt included) for a left-padded batch with audio."""
    with torch.no_grad():
        return hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(am),
                           input_features=torch.tensor(feats), feature_attention_mask=torch.tensor(fmask),
                           do_sample=False, max_new_tokens=new, eos_token_id=EOS, pad_token_id=PAD).numpy()


def test_greedy_equals_hf_generate_with_audio_and_left_padding(models):
    hf, model = models
    ids, feats, fmask, am = _prompts()
    ref = _hf_greedy(hf, ids, am, feats, fmask, 12)
    ref_new = ref[:, ids.shape[1]:]
    out = np.asarray(generate(model, ids, input_features=feats, feature_attention_mask=fmask, max_new_tokens=12,
                              eos_token_id=EOS, pad_token_id=PAD))
    assert out.shape == (3, 1, 12) and out.dtype == np.int32
    got = out[:, 0, :ref_new.shape[1]]
    np.testing.assert_array_equal(got, ref_new)
    assert (out[:, 0, ref_new.shape[1]:] == PAD).all()


def test_greedy_samples_equal_the_single_sample(models):
    """Greedy rows read their prompt's shared keys/values: each of N rows continues its own prompt."""
    _, model = models
    ids, feats, fmask, _ = _prompts(seed=3)
    kw = dict(input_features=feats, feature_attention_mask=fmask, max_new_tokens=10, eos_token_id=EOS,
              pad_token_id=PAD)
    one = np.asarray(generate(model, ids, **kw))
    many = np.asarray(generate(model, ids, num_samples=3, **kw))
    assert many.shape == (3, 3, 10)
    np.testing.assert_array_equal(many, np.repeat(one, 3, axis=1))
    assert len({tuple(r) for r in one[:, 0]}) == 3  # the prompts' continuations differ, so a mix-up would show
    # Slicing the stacked layer weights inside the loop (the default where a second copy would not fit) agrees.
    sliced = Engine(model, unstack_layers=False).generate(ids, num_samples=3, **kw).tokens
    np.testing.assert_array_equal(np.asarray(sliced), many)


def test_sample_cache_decode_matches_full_forward(models):
    """Prefill once, then each of N rows per prompt decodes its own tokens over the shared prompt cache:
    logits equal a full forward of that row's prompt + tokens (left padding, HF generate's positions)."""
    _, model = models
    ids, feats, fmask, am = (jnp.asarray(x) for x in _prompts(seed=4))
    b, t = ids.shape
    n, steps = 3, 5
    new = jnp.asarray(np.random.default_rng(0).integers(1, 280, (b * n, steps)), jnp.int32)
    positions = jnp.maximum(jnp.cumsum(am, axis=1) - 1, 0)

    @nnx.jit
    def prefill(m, ids, am, positions, feats, fmask):
        last, cache = m.prefill(ids, am, positions, m.init_cache(b, t), m.encode_audio(feats, fmask))
        return last, SampleCache.from_prompt(cache, n, steps)

    last, cache = prefill(model, ids, am, positions, feats, fmask)
    step = nnx.jit(lambda m, tok, pos, c, unstack: m.llm.decode(tok, pos, c, m.llm.unstack_layers() if unstack
                                                                 else None), static_argnums=4)
    pos = jnp.repeat(positions[:, -1] + 1, n)
    got = [np.repeat(np.asarray(last), n, axis=0)]
    for s in range(steps - 1):
        logits, cache = step(model, new[:, s], pos + s, cache, s % 2 == 0)
        got.append(np.asarray(logits))
    assert int(cache.index) == steps - 1
    rep = lambda x: jnp.repeat(x, n, axis=0)  # noqa: E731
    full_ids = jnp.concatenate([rep(ids), new], axis=1)
    full_am = jnp.concatenate([rep(am), jnp.ones_like(new)], axis=1)
    full_pos = jnp.maximum(jnp.cumsum(full_am, axis=1) - 1, 0)
    full = nnx.jit(lambda m, *a: m(*a[:4], positions=a[4]))(model, full_ids, rep(feats), rep(fmask), full_am, full_pos)
    want = np.asarray(full[:, t - 1:t - 1 + steps])
    np.testing.assert_allclose(np.stack(got, axis=1), want, atol=1e-5 * np.abs(want).max(), rtol=0)


def test_eos_stops_rows_and_pads_after(models):
    _, model = models
    ids, feats, fmask, _ = _prompts(seed=1)
    greedy = np.asarray(generate(model, ids, input_features=feats, feature_attention_mask=fmask, max_new_tokens=6,
                                 eos_token_id=PAD + 999, pad_token_id=PAD))[:, 0]
    stop = int(greedy[0, 2])  # make the third greedy token of row 0 an end token
    out = np.asarray(generate(model, ids, input_features=feats, feature_attention_mask=fmask, max_new_tokens=6,
                              eos_token_id=[stop, 12345], pad_token_id=PAD))[:, 0]
    first = int(np.flatnonzero(greedy[0] == stop)[0])
    np.testing.assert_array_equal(out[0, : first + 1], greedy[0, : first + 1])
    assert (out[0, first + 1:] == PAD).all()


def test_prefill_once_for_n_samples_and_seeds(models):
    _, model = models
    ids, feats, fmask, _ = _prompts(seed=2)
    eng = engine_for(model)
    traced_before = eng.trace_counts["prefill"]
    calls = []
    original = type(model).encode_audio

    def spy(self, features, mask):
        calls.append(features.shape)
        return original(self, features, mask)

    type(model).encode_audio = spy
    try:
        kw = dict(input_features=feats, feature_attention_mask=fmask, max_new_tokens=8, temperature=1.0,
                  eos_token_id=EOS, pad_token_id=PAD)
        a = eng.generate(ids, num_samples=8, seed=3, **kw)
        b = eng.generate(ids, num_samples=8, seed=3, **kw)
        c = eng.generate(ids, num_samples=8, seed=4, **kw)
    finally:
        type(model).encode_audio = original
    # The encoder (and the prompt prefill) is traced for the 3 prompts, never for 3 x 8 rows, and once only.
    assert calls == [(3, 16, 32)]
    assert eng.trace_counts["prefill"] == traced_before + 1
    toks = np.asarray(a.tokens)
    assert toks.shape == (3, 8, 8)
    assert len({tuple(r) for r in toks[0]}) > 1  # the 8 samples of a prompt differ
    np.testing.assert_array_equal(toks, np.asarray(b.tokens))  # same seed, same samples
    assert (toks != np.asarray(c.tokens)).any()
    assert np.all(np.asarray(a.logprobs)[np.asarray(a.tokens) != PAD] <= 0)


def test_bad_arguments(models):
    _, model = models
    with pytest.raises(ValueError, match="num_samples=0"):
        generate(model, jnp.ones((1, 4), jnp.int32), num_samples=0, max_new_tokens=2, eos_token_id=1, pad_token_id=0)
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, length\]"):
        generate(model, jnp.ones((4,), jnp.int32), max_new_tokens=2, eos_token_id=1, pad_token_id=0)


def test_an_engine_goes_with_its_model():
    """engine_for gives one engine per live model and drops it (and the weights it holds) with the model."""
    import gc
    import weakref

    from cogito_jax.models import registry

    model = registry.build(registry.config_for({"family": "qwen2_audio", "size": "tiny"}))
    eng = engine_for(model)
    assert engine_for(model) is eng
    gone, model_gone = weakref.ref(eng), weakref.ref(model)
    del model, eng
    gc.collect()
    assert gone() is None and model_gone() is None


# ------------------------------------------------------------------------------------------- continuous batching


def _requests(ids, am, feats, fmask, *, samples=1, max_new=12, temperature=0.0, budgets=None):
    reqs = []
    for b in range(ids.shape[0]):
        n = int(fmask[b].sum())
        reqs.append(Request(id=f"p{b}", ids=ids[b][am[b] == 1].tolist(), samples=range(samples),
                            max_new_tokens=budgets[b] if budgets else max_new, temperature=temperature, top_k=40,
                            stop_ids=(EOS,), mel=feats[b].T, n_frames=n))
    return reqs


def _continuous(model, reqs, *, seed=0, **slot_kw):
    kw = dict(slots=4, page_size=4, max_context=64, prefill_chunk=16, steps_per_sync=3, block_pages=2) | slot_kw
    eng = ContinuousEngine(model, SlotConfig(**kw))
    got = {}
    stats = eng.run(reqs, lambda f: got.__setitem__((f.id, f.sample), f), seed=seed, max_frames=32)
    return got, stats, eng


def test_continuous_greedy_equals_hf_generate(models):
    """Unpadded prompts of mixed lengths with audio, 3 samples each through 4 slots (rows refilled mid-run),
    prefill in chunks smaller than the prompts, the audio encoded ahead: every sample equals HF generate's greedy
    continuation."""
    hf, model = models
    ids, feats, fmask, am = _prompts()
    ref = _hf_greedy(hf, ids, am, feats, fmask, 12)
    got, stats, eng = _continuous(model, _requests(ids, am, feats, fmask, samples=3))
    for b in range(3):
        want = ref[b, ids.shape[1]:].tolist()
        end = want.index(EOS) + 1 if EOS in want else len(want)
        for s in range(3):
            assert got[(f"p{b}", s)].tokens == want[:end]
    assert stats["samples"] == 9 and stats["decode_calls"] > 1
    assert stats["encode_calls"] == 1  # the three prompts' audio in one encoder call, ahead of their prefills
    # Refills never recompile: one decode program per width (4 slots, then 2 once few rows are left).
    assert eng.cfg.widths == (4, 2) and eng.trace_counts == {"encode": 1, "prefill": 1, "first": 1, "decode": 2}


def test_continuous_samples_depend_only_on_prompt_id_sample_and_seed(models):
    """Sampled tokens and their log-probs are the same whatever the slot count, the arrival order, the steps
    between host checks, the decode width (narrower calls once few rows are left), how many of a prompt's rows
    read its pages together, how many rows read their own pages per loop, or a KV pool so small that rows are
    preempted and generated again; a stop id and per-request budgets end rows where they should."""
    _, model = models
    ids, feats, fmask, am = _prompts(seed=5)
    reqs = _requests(ids, am, feats, fmask, samples=4, temperature=1.0, budgets=[12, 3, 9])

    def run(order, **kw):
        got, stats, _ = _continuous(model, [reqs[i] for i in order], seed=7, **kw)
        return {k: (f.tokens, f.logprobs, f.finish_reason) for k, f in got.items()}, stats

    base, _ = run([0, 1, 2])
    assert len(base) == 12 and len({tuple(v[0]) for k, v in base.items() if k[0] == "p0"}) > 1
    for (pid, _), (toks, lps, why) in base.items():
        budget = {"p0": 12, "p1": 3, "p2": 9}[pid]
        assert len(toks) == len(lps) <= budget and all(lp <= 0 for lp in lps)
        assert why == ("eos" if toks[-1] == EOS else "length") and EOS not in toks[:-1]
        assert why == "eos" or len(toks) == budget
    same, _ = run([2, 0, 1], slots=7, steps_per_sync=5)
    assert same == base
    # own pages read by pairs of rows (row_group 2), each pair to its own longest row, or row by row (1)
    wide, stats = run([0, 1, 2], slots=12, narrowest=2, row_group=2)  # every row at once, then narrower calls
    assert wide == base and len(stats["calls_by_width"]) > 1  # it did narrow
    tight, stats = run([1, 2, 0], slots=6, num_pages=21, steps_per_sync=4, row_group=1)
    assert stats["preempted"] > 0 and tight == base
    for share, group in ((1, 2), (3, 1)):  # a prompt's pages read once per row, or by 3 of its 4 rows and then 1
        alone, _ = run([0, 1, 2], share_rows=share, row_group=group)
        assert alone == base
    other, _, _ = _continuous(model, reqs, seed=8)
    assert {k: f.tokens for k, f in other.items()} != {k: v[0] for k, v in base.items()}


def test_a_decode_call_runs_on_while_a_host_check_would_change_nothing(models):
    """A call stops after ``steps_per_sync`` steps once a row has ended while a prompt waits for its slot, and
    otherwise goes on up to ``max_steps_per_sync``, or until a row needs a page the host has not given it (a pool
    with no pages to spare); the tokens and log-probs are the same in every case."""
    _, model = models
    ids, feats, fmask, am = _prompts(seed=5)
    reqs = [dataclasses.replace(r, stop_ids=()) for r in _requests(ids[:2], am[:2], feats[:2], fmask[:2], samples=4,
                                                                   temperature=1.0, budgets=[4, 20])]

    def run(**kw):
        got, stats, _ = _continuous(model, reqs, seed=3, **kw)
        return {k: (f.tokens, f.logprobs) for k, f in got.items()}, stats

    # p0's 4 rows take the 4 slots; they end after 3 steps with p1 waiting, then p1's rows run their 19 steps
    long_calls, stats = run(max_steps_per_sync=32)
    assert stats["decode_calls"] == 2 and stats["slot_steps"] == 4 * 3 + 4 * 19 and stats["utilization"] == 1.0
    default, stats = run()  # calls of at most 4 x 3 steps
    assert stats["decode_calls"] == 1 + 2 and default == long_calls
    short_calls, stats = run(max_steps_per_sync=3)
    assert stats["decode_calls"] == 1 + 7 and short_calls == long_calls
    # 30 pages: p1's rows get pages for 3 steps at a time (one 4-token page), so its calls end at page ends
    tight, stats = run(num_pages=30, max_steps_per_sync=32)
    assert stats["decode_calls"] == 1 + 5 and stats["preempted"] == 0 and tight == long_calls
    with pytest.raises(ValueError, match="max_steps_per_sync=2 must be >= steps_per_sync=3"):
        SlotConfig(max_steps_per_sync=2, steps_per_sync=3)


def test_continuous_logprobs_are_the_models(models):
    """The log-prob stored with each emitted token is log_softmax of a full forward pass over prompt + tokens."""
    _, model = models
    ids, feats, fmask, am = _prompts(seed=6)
    got, _, _ = _continuous(model, _requests(ids[:1], am[:1], feats[:1], fmask[:1], samples=2, temperature=1.0),
                            seed=3)
    for s in range(2):
        f = got[("p0", s)]
        seq = ids[0][am[0] == 1].tolist() + f.tokens
        full = np.asarray(model(jnp.asarray([seq]), jnp.asarray(feats[:1]), jnp.asarray(fmask[:1])))[0]
        top = full.max(-1, keepdims=True)
        logp = full - top - np.log(np.exp(full - top).sum(-1, keepdims=True))
        n = len(seq) - len(f.tokens)
        want = [logp[n - 1 + i, t] for i, t in enumerate(f.tokens)]
        np.testing.assert_allclose(f.logprobs, want, rtol=1e-4, atol=1e-4)


def test_shared_prompt_reads_equal_the_per_row_paged_attention():
    """Decode attention with a prompt's pages read once for the rows that share it (entries of up to 2 rows, a
    prompt with 3 rows taking two entries, entries read 2 at a time) equals the per-row page-table reads."""
    rng = np.random.default_rng(0)
    page, bp, kvh, g, h = 4, 2, 2, 2, 8
    k_pool, v_pool = (jnp.asarray(rng.normal(size=(40, page, kvh, h)), jnp.float32) for _ in range(2))
    # prompt A: 10 tokens on pages 1-3 (rows 0, 1, 3); prompt B: 5 tokens on pages 4-5 (row 2); row 4 idle.
    table = np.zeros((5, 8), np.int32)
    table[[0, 1, 3], :3] = [1, 2, 3]
    table[2, :2] = [4, 5]
    table[0, 3:6], table[1, 3], table[3, 3:5], table[2, 2:4] = [6, 7, 8], 9, [10, 11], [12, 13]
    prompt_len, gen_start = np.array([10, 10, 5, 10, 0]), np.array([12, 12, 8, 12, 0])
    slot = np.array([21, 12, 14, 19, -1])[:, None]  # generated lengths 10, 1, 7, 8 (the new token included)
    q, k_new, v_new = (jnp.asarray(rng.normal(size=(5, 1, kvh * g if i == 0 else kvh, h)), jnp.float32)
                       for i in range(3))
    view = PagedKV(k_pool, v_pool, jnp.asarray(table), jnp.asarray(slot), jnp.asarray(prompt_len),
                   jnp.asarray(gen_start), bp)
    want, k_want, _ = paged_attention(q, k_new, v_new, view, 0.3)
    shared = SharedPrompts(jnp.asarray(table[[0, 3, 2, 0, 0]]), jnp.asarray([10, 10, 5, 0, 0]),
                           jnp.asarray([[0, 1], [3, 5], [2, 5], [5, 5], [5, 5]]), jnp.int32(3), chunk=2)
    got, k_got, _ = paged_attention(q, k_new, v_new, view._replace(shared=shared), 0.3)
    np.testing.assert_allclose(np.asarray(got)[:4], np.asarray(want)[:4], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(k_got), np.asarray(k_want))
    # Own pages read row by row, each to its own last slot (the idle row 4 reads nothing): the same bits for the
    # live rows, and zeros, not NaN, for the idle one (it writes them to the null page that masked blocks read).
    alone, _, _ = paged_attention(q, k_new, v_new, view._replace(shared=shared, row_group=1), 0.3)
    np.testing.assert_array_equal(np.asarray(alone)[:4], np.asarray(got)[:4])
    np.testing.assert_array_equal(np.asarray(alone)[4], 0.0)
    with pytest.raises(ValueError, match="one token per row"):
        paged_attention(jnp.tile(q, (1, 2, 1, 1)), jnp.tile(k_new, (1, 2, 1, 1)), jnp.tile(v_new, (1, 2, 1, 1)),
                        view._replace(slot=jnp.tile(view.slot, (1, 2)), shared=shared), 0.3)

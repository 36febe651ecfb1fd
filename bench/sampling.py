"""Sampling throughput: the JAX engine vs HF transformers ``generate`` (PyTorch), same weights, same prompts.

    python bench/sampling.py [--prompts 4] [--new 64] [--samples 8] [--repeats 3] [--all-threads] [--bandwidth 3.35e12]

A random Qwen2-Audio (``--layers`` decoder layers of width ``--hidden``, a 2-layer Whisper encoder) is built
from a config with transformers, saved, and loaded into JAX with ``convert.load_hf``, so both sides run the
same fp32 weights on the same left-padded prompts with audio. No row stops early (no end token), so both
emit ``prompts x samples x new`` tokens. HF draws N samples with ``num_return_sequences=N`` (it repeats each
prompt N times, audio encoder and prefill included); the engine encodes and prefills each prompt once.
JAX compilation is excluded (one warm-up call per shape) and printed separately; times are the median of
``--repeats`` runs, the N-sample runs of both sides interleaved. Both sides get one CPU thread unless
``--all-threads``: the process is pinned to one core (XLA:CPU otherwise splits some loops and matrix products over
its own thread pool whenever a second core is idle, whatever its Eigen setting) and PyTorch gets one intra-op thread.
Each line shows the process CPU time over the wall time, which is at most 1 when a side uses at most one core.

Also printed: the engine's time at N=1, at N=8 from one prefill, and at N=1 with every prompt repeated N
times (what N samples cost without prefill sharing); whether greedy decoding equals HF token for token; and
a roofline for the released configs: the bytes one bf16 decode step must read (decoder weights, for a MoE
only the experts one token activates, plus the KV cache as the engine keeps it: ``--context`` prompt tokens once
per prompt for ``--roof-prompts`` prompts, and ``--roof-new`` generated tokens for each of the ``--roof-prompts x
--samples`` rows) over ``--bandwidth`` gives a lower bound on the step time and an upper bound on decode tokens/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

VOCAB, AUDIO_TOKEN, PAD = 8192, 8000, 0
N_MELS, MAX_FRAMES = 80, 400  # max_source_positions 200: 4 s of log-mel, 100 audio tokens


CPU_PER_WALL: dict[str, float] = {}  # the last timed() call's process CPU seconds per wall second, by label


def timed(fn, repeats: int, warmup: int = 0, label: str = "") -> tuple[float, object]:
    """(median seconds, last result) of ``fn()``, which must block until its result is ready."""
    out = None
    for _ in range(warmup):
        out = fn()
    times, cpu = [], 0.0
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t)
        cpu += time.process_time() - c
    CPU_PER_WALL[label] = cpu / sum(times)
    return statistics.median(times), out


def hf_config(layers: int, hidden: int):
    from transformers import Qwen2AudioConfig

    heads = max(hidden // 64, 1)
    return Qwen2AudioConfig(
        audio_config=dict(d_model=256, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=1024,
                          num_mel_bins=N_MELS, max_source_positions=MAX_FRAMES // 2),
        text_config=dict(model_type="qwen2", vocab_size=VOCAB, hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(heads // 2, 1),
                         max_position_embeddings=4096, tie_word_embeddings=False,
                         rope_parameters=dict(rope_theta=10000.0, rope_type="default")),
        audio_token_index=AUDIO_TOKEN)


def make_prompts(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids [n, T] left-padded with PAD, input_features [n, mels, frames], feature_attention_mask)."""
    from cogito_jax.data.chat import num_audio_tokens

    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, N_MELS, MAX_FRAMES)).astype(np.float32)
    fmask = np.zeros((n, MAX_FRAMES), np.int64)
    seqs = []
    for i in range(n):
        frames = MAX_FRAMES - 60 * (i % 4)
        fmask[i, :frames] = 1
        text = rng.integers(10, AUDIO_TOKEN - 10, 20 + 7 * i).tolist()
        seqs.append(text[:5] + [AUDIO_TOKEN] * num_audio_tokens("qwen2_audio", frames) + text[5:])
    t = max(map(len, seqs))
    ids = np.full((n, t), PAD, np.int64)
    for i, s in enumerate(seqs):
        ids[i, t - len(s):] = s
    return ids, feats, fmask


def decoder_bytes(text, bytes_per_param: int = 2) -> dict[str, float]:
    """Bytes of decoder weights one decode step reads: everything but the embedding table (one row per token is
    gathered); for a MoE, the router plus ``num_experts_per_tok`` experts (``all_experts``: every expert)."""
    h, hd = text.hidden_size, text.head_dim
    attn = h * text.num_heads * hd * 2 + h * text.num_kv_heads * hd * 2
    if text.qkv_bias:
        attn += (text.num_heads + 2 * text.num_kv_heads) * hd
    norms = 2 * h + (2 * hd if text.qk_norm else 0)
    if text.num_experts:
        expert = 3 * h * text.moe_intermediate_size
        mlp_active = h * text.num_experts + text.num_experts_per_tok * expert
        mlp_all = h * text.num_experts + text.num_experts * expert
    else:
        mlp_active = mlp_all = 3 * h * text.intermediate_size
    head = text.vocab_size * h + h
    per = lambda mlp: (text.num_layers * (attn + norms + mlp) + head) * bytes_per_param  # noqa: E731
    return {"active": per(mlp_active), "all_experts": per(mlp_all)}


def kv_bytes(text, prompts: int, samples: int, context: int, generated: int, bytes_per_value: int = 2) -> float:
    """Keys and values one decode step reads as the engine lays them out: each prompt's ``context`` tokens once
    (shared by its ``samples`` rows), plus each row's ``generated`` tokens."""
    tokens = prompts * context + prompts * samples * generated
    return tokens * text.num_layers * 2 * text.num_kv_heads * text.head_dim * bytes_per_value


def roofline(bandwidth: float, prompts: int, samples: int, context: int, generated: int) -> list[dict]:
    from cogito_jax.models import registry

    out = []
    for family, size in (("qwen2_audio", "7b"), ("qwen3_omni_thinker", "30b_a3b")):
        text = registry.config_for({"family": family, "size": size}).text
        rows = prompts * samples
        w, kv = decoder_bytes(text), kv_bytes(text, prompts, samples, context, generated)
        for which in ("active", "all_experts") if text.num_experts else ("active",):
            step = (w[which] + kv) / bandwidth
            out.append(dict(model=f"{family}:{size}" + (" (all 128 experts read)" if which == "all_experts" else ""),
                            weights_gb=w[which] / 1e9, kv_gb=kv / 1e9, step_ms=step * 1e3, tokens_per_s=rows / step,
                            weights_only_tokens_per_s=rows * bandwidth / w[which]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8, help="N samples per prompt")
    ap.add_argument("--new", type=int, default=64, help="new tokens per sample")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3, help="median of this many timed runs")
    ap.add_argument("--bandwidth", type=float, default=3.35e12, help="HBM bytes/s for the roofline (H100 SXM)")
    ap.add_argument("--context", type=int, default=2048, help="prompt tokens in the KV cache for the roofline")
    ap.add_argument("--roof-new", type=int, default=512, help="tokens each row has generated, for the roofline")
    ap.add_argument("--roof-prompts", type=int, default=16, help="prompts per batch for the roofline")
    ap.add_argument("--hbm-gb", type=float, default=80.0, help="memory of one accelerator, to flag what does not fit")
    ap.add_argument("--all-threads", action="store_true",
                    help="let PyTorch and XLA use every core (default: one core for both, which is steady on a shared "
                         "machine, where a loaded CPU slows multi-threaded PyTorch far more than XLA)")
    args = ap.parse_args()
    if not args.all_threads:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"

    import jax
    import jax.numpy as jnp
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    from cogito_jax.convert import load_hf
    from cogito_jax.sampling import engine_for
    from cogito_jax.sampling.strategies import SamplingParams, select_tokens_u, uniforms

    if not args.all_threads:
        torch.set_num_threads(1)
    n, new, b = args.samples, args.new, args.prompts
    torch.manual_seed(0)
    hf = Qwen2AudioForConditionalGeneration(hf_config(args.layers, args.hidden)).eval()
    hf.generation_config.eos_token_id = None  # every row decodes ``new`` tokens on both sides
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model, _ = load_hf(d)
    eng = engine_for(model)
    ids, feats, fmask = make_prompts(b)
    am = (ids != PAD).astype(np.int64)
    params = sum(p.numel() for p in hf.parameters())
    print(f"model: qwen2_audio, {args.layers} decoder layers, d {args.hidden}, vocab {VOCAB}, 2-layer audio encoder, "
          f"{params / 1e6:.1f}M parameters, fp32; {b} prompts of {ids.shape[1]} tokens (with "
          f"{int((ids == AUDIO_TOKEN).sum(1).max())} audio tokens), {new} new tokens per sample")
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads; process on {len(os.sched_getaffinity(0))} of {os.cpu_count()} CPUs")

    def hf_generate(samples: int, sample: bool, max_new: int = new):
        kw = dict(do_sample=True, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p) \
            if sample else dict(do_sample=False)
        with torch.no_grad():
            out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(am),
                              input_features=torch.tensor(feats), feature_attention_mask=torch.tensor(fmask),
                              max_new_tokens=max_new, num_return_sequences=samples, pad_token_id=PAD, **kw)
        assert out.shape == (b * samples, ids.shape[1] + max_new), out.shape
        return out[:, ids.shape[1]:].numpy()

    def ours(samples: int, temperature: float, input_ids=ids, features=feats, mask=fmask):
        out = eng.generate(input_ids, input_features=features, feature_attention_mask=mask, num_samples=samples,
                           max_new_tokens=new, temperature=temperature, top_k=args.top_k, top_p=args.top_p,
                           eos_token_id=[-1], pad_token_id=PAD, seed=0)
        return np.asarray(out.tokens)

    def record(name, samples, prompts, sec, cpu_per_wall, note=""):
        tokens = prompts * samples * new
        print(f"  {name:<38}{samples:>3}{prompts:>8}{sec:>9.3f}{tokens / sec:>11.0f}{cpu_per_wall:>10.2f}  {note}",
              flush=True)

    print(f"\n  {'engine':<38}{'N':>3}{'prompts':>8}{'time s':>9}{'tokens/s':>11}{'cpu/wall':>10}")
    hf_generate(n, True, 4)  # warm-up: PyTorch's first calls allocate and pick kernels
    t_hf1, hf_greedy = timed(lambda: hf_generate(1, False), 1, label="hf")
    record("HF generate, greedy", 1, b, t_hf1, CPU_PER_WALL["hf"])
    t0 = time.perf_counter()
    ours(1, 0.0)
    compile1 = time.perf_counter() - t0
    t_1g, our_greedy = timed(lambda: ours(1, 0.0), args.repeats, label="ours")
    record("cogito_jax engine, greedy", 1, b, t_1g, CPU_PER_WALL["ours"])
    t0 = time.perf_counter()
    ours(n, args.temperature)
    compile8 = time.perf_counter() - t0
    pairs, cpu = [], {"hf": [], "ours": []}
    for _ in range(args.repeats):  # interleaved, so a change in machine load hits both sides
        pairs.append((timed(lambda: hf_generate(n, True), 1, label="hf")[0],
                      timed(lambda: ours(n, args.temperature), 1, label="ours")[0]))
        for side in cpu:
            cpu[side].append(CPU_PER_WALL[side])
    t_hf8, t_8 = (statistics.median(x) for x in zip(*pairs, strict=True))
    record("HF generate, sampled", n, b, t_hf8, statistics.median(cpu["hf"]), "num_return_sequences")
    record("cogito_jax engine, sampled", n, b, t_8, statistics.median(cpu["ours"]), "one prefill per prompt")
    t_1, _ = timed(lambda: ours(1, args.temperature), args.repeats, warmup=1, label="ours")
    record("cogito_jax engine, sampled", 1, b, t_1, CPU_PER_WALL["ours"])
    rep = lambda x: np.repeat(x, n, axis=0)  # noqa: E731
    t_rep, _ = timed(lambda: ours(1, args.temperature, rep(ids), rep(feats), rep(fmask)), args.repeats, warmup=1,
                     label="ours")
    record("cogito_jax engine, prompts repeated", 1, b * n, t_rep, CPU_PER_WALL["ours"], f"{n} prefills per prompt")

    same = [bool((our_greedy[i, 0] == hf_greedy[i]).all()) for i in range(b)]
    print(f"\njit compile (excluded above; first call minus a warm one): N=1 {compile1 - t_1g:.1f} s, "
          f"N={n} {compile8 - t_8:.1f} s")
    print(f"greedy tokens equal HF generate: {sum(same)}/{b} prompts")
    ratio = t_hf8 / t_8
    ratios = sorted(h / o for h, o in pairs)
    print(f"ratio engine / HF at N={n}: {ratio:.1f}x tokens/s (interleaved pairs: {ratios[0]:.1f}x-{ratios[-1]:.1f}x; "
          f"target >= 3x: {'met' if ratio >= 3 else 'NOT met'})")
    print(f"engine N={n} vs N=1: {t_8:.3f} s vs {t_1:.3f} s ({t_8 / t_1:.2f}x the time for {n}x the tokens); "
          f"prefill shared vs repeated: {t_8:.3f} s vs {t_rep:.3f} s ({t_rep / t_8:.2f}x)")

    # Where the engine's time goes at N samples: audio encoder + prefill, then per decode step.
    mask = jnp.asarray(ids != PAD, jnp.int32)
    prefill = eng._prefill_fn((b, ids.shape[1], n, new, True))
    t_pre, _ = timed(lambda: jax.block_until_ready(prefill(eng.state, jnp.asarray(ids, jnp.int32), mask,
                                                           jnp.asarray(feats), jnp.asarray(fmask, jnp.int32))),
                     args.repeats, warmup=1)
    rows = b * n
    sp = SamplingParams.make(rows, args.temperature, args.top_k, args.top_p)
    u = uniforms(jax.random.key(0), jnp.arange(rows), 10)  # what the decode loop indexes, one column per step
    pick = jax.jit(lambda lg, u_b: select_tokens_u(lg, u_b, sp))
    logits = jax.random.normal(jax.random.key(1), (rows, VOCAB))
    t_pick, _ = timed(lambda: [jax.block_until_ready(pick(logits, u[:, i])) for i in range(10)], args.repeats,
                      warmup=1)
    step_ms = (t_8 - t_pre) / new * 1e3
    print(f"engine at N={n}: encoder + prefill {t_pre * 1e3:.0f} ms once, then {step_ms:.1f} ms per decode step for "
          f"{rows} rows, of which token selection over {VOCAB} logits takes {t_pick / 10 * 1e3:.1f} ms")

    r = args.roof_prompts * n
    print(f"\nroofline, bf16 decode step: {args.roof_prompts} prompts x {n} samples = {r} rows, {args.context} prompt "
          f"tokens (KV read once per prompt) + {args.roof_new} generated per row, {args.bandwidth / 1e12:.2f} TB/s")
    print(f"  {'model':<46}{'weights GB':>11}{'KV GB':>8}{'ms/step >=':>11}{'tokens/s <=':>12}{'no KV':>10}"
          "   (no KV: tokens/s bound from the weights alone)")
    for x in roofline(args.bandwidth, args.roof_prompts, n, args.context, args.roof_new):
        over = x["weights_gb"] + x["kv_gb"] > args.hbm_gb
        print(f"  {x['model']:<46}{x['weights_gb']:>11.2f}{x['kv_gb']:>8.2f}{x['step_ms']:>11.2f}"
              f"{x['tokens_per_s']:>12.0f}{x['weights_only_tokens_per_s']:>10.0f}"
              + (f"  (needs more than {args.hbm_gb:.0f} GB: shard or cut rows)" if over else ""))


if __name__ == "__main__":
    main()

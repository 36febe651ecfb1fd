"""Continuous batching vs static batches on a long-tailed length workload: tokens/s, slot utilisation, peak KV.

    python bench/continuous_batching.py [--prompts 64] [--samples 8] [--batch 8] [--cap 256] [--sigma 1.0]

Both engines run the same random Qwen2-Audio (``--layers`` decoder layers of width ``--hidden``, 2-layer Whisper
encoder, fp32, built from a config with transformers and loaded with ``convert.load_hf``) on the same
``--prompts`` prompts with audio, ``--samples`` (N) samples each, at temperature 1.

Workload: each prompt gets its own budget (``max_new_tokens``) drawn log-normal with median ``--cap / 8`` and
shape ``--sigma``, rounded up and capped at ``--cap``; no row stops early (no end token), so every sample emits
exactly its budget and both engines produce the same number of useful tokens.

* **static**: today's engine (:mod:`cogito_jax.sampling.engine`), ``--batch`` prompts x N rows per call, in
  arrival order. A static batch runs until its longest row ends: each call decodes exactly its largest budget
  (one compiled program per distinct value, all compiled before timing), and tokens past a row's own budget
  are wasted slot-steps. This is kinder to static than the driver, whose calls all allocate and attend over
  the run's ``max_new_tokens`` generated slots.
* **continuous**: :class:`~cogito_jax.sampling.continuous.ContinuousEngine` with ``--batch x N`` slots (the
  same number of rows at once), each prompt's own budget, pages of ``--page-size`` tokens.

Utilisation = useful tokens / slot-steps (rows x decode steps). Peak KV bytes: static, the prompt cache and
the ``rows x max_new_tokens`` generated-token cache of its largest call as allocated; continuous, the most
pages in use at once. A second run gives every prompt the same budget (``--cap / 4``): there static wastes
nothing and continuous must be no slower (>= 0.9x). Compilation is excluded (a warm-up pass over every shape
first); each side's time is the median of ``--repeats`` runs, the two sides taking turns so that a change in the
machine's load falls on both. Results go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from sampling import AUDIO_TOKEN, MAX_FRAMES, N_MELS, PAD, hf_config  # noqa: E402


def budgets(n: int, cap: int, sigma: float, seed: int) -> list[int]:
    """Per-prompt ``max_new_tokens``: log-normal, median ``cap / 8``, at least 1 and at most ``cap``."""
    rng = np.random.default_rng(seed)
    draw = np.exp(np.log(cap / 8) + sigma * rng.normal(size=n))
    return [int(min(cap, max(1, math.ceil(x)))) for x in draw]


def prompts(n: int, seed: int = 0) -> list[dict]:
    """``n`` prompts with audio: unpadded token ids (text around the audio placeholder run) and a log-mel."""
    from cogito_jax.data.chat import num_audio_tokens

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        frames = MAX_FRAMES - 60 * (i % 4)
        text = rng.integers(10, AUDIO_TOKEN - 10, 20 + 3 * (i % 8)).tolist()
        ids = text[:5] + [AUDIO_TOKEN] * num_audio_tokens("qwen2_audio", frames) + text[5:]
        mel = np.zeros((MAX_FRAMES, N_MELS), np.float32)
        mel[:frames] = rng.normal(size=(frames, N_MELS))
        out.append({"id": f"p{i:04d}", "ids": ids, "mel": mel, "frames": frames})
    return out


def run_static(eng, ps: list[dict], n: int, batch: int, per_token: int, temperature: float) -> dict:
    steps = slot_steps = useful = peak = 0
    t0 = time.perf_counter()
    for start in range(0, len(ps), batch):
        group = ps[start:start + batch]
        new = max(p["budget"] for p in group)
        t = max(len(p["ids"]) for p in group)
        ids = np.full((len(group), t), PAD, np.int64)
        for i, p in enumerate(group):
            ids[i, t - len(p["ids"]):] = p["ids"]
        feats = np.stack([p["mel"].T for p in group])
        fmask = np.zeros((len(group), MAX_FRAMES), np.int64)
        for i, p in enumerate(group):
            fmask[i, :p["frames"]] = 1
        out = eng.generate(ids, input_features=feats, feature_attention_mask=fmask, num_samples=n,
                           max_new_tokens=new, temperature=temperature, eos_token_id=[-1], pad_token_id=PAD,
                           seed=start)
        np.asarray(out.tokens)  # wait for the device
        steps += new
        slot_steps += len(group) * n * new
        useful += sum(min(p["budget"], new) for p in group) * n
        peak = max(peak, (len(group) * t + len(group) * n * new) * per_token)
    sec = time.perf_counter() - t0
    return {"seconds": sec, "tokens": useful, "tokens_per_s": useful / sec, "decode_steps": steps,
            "slot_steps": slot_steps, "utilization": useful / slot_steps, "peak_kv_bytes": peak}


def run_continuous(eng, ps: list[dict], n: int, temperature: float) -> dict:
    from cogito_jax.sampling import continuous

    reqs = [continuous.Request(id=p["id"], ids=p["ids"], samples=list(range(n)), max_new_tokens=p["budget"],
                               temperature=temperature, mel=p["mel"], n_frames=p["frames"]) for p in ps]
    got = []
    t0 = time.perf_counter()
    st = eng.run(reqs, got.append, seed=0, max_frames=MAX_FRAMES)
    sec = time.perf_counter() - t0
    useful = sum(len(f.tokens) for f in got)
    assert useful == n * sum(p["budget"] for p in ps), "a sample did not emit exactly its budget"
    return {"seconds": sec, "tokens": useful, "tokens_per_s": useful / sec, "decode_calls": st["decode_calls"],
            "slot_steps": st["slot_steps"], "utilization": st["utilization"], "peak_kv_bytes": st["peak_kv_bytes"],
            "kv_pool_bytes": st["kv_pool_bytes"], "preempted": st["preempted"]}


def median_runs(fns: dict, repeats: int) -> dict[str, dict]:
    """Each side's median run (by time) of ``repeats``, the sides taking turns (static, continuous, static, ...)
    so that a change in the machine's load during the bench falls on both; ``seconds_all`` in run order."""
    runs: dict[str, list[dict]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name].append(fn())
    out = {}
    for name, rs in runs.items():
        out[name] = dict(sorted(rs, key=lambda r: r["seconds"])[len(rs) // 2])
        out[name]["seconds_all"] = [round(r["seconds"], 3) for r in rs]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=8, help="N samples per prompt")
    ap.add_argument("--batch", type=int, default=8,
                    help="prompts per static call (sample.batch_size's default); continuous gets batch x N slots")
    ap.add_argument("--cap", type=int, default=256, help="max_new_tokens: the largest budget")
    ap.add_argument("--sigma", type=float, default=1.0, help="shape of the log-normal budget distribution")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--steps-per-sync", type=int, default=8)
    ap.add_argument("--max-steps-per-sync", type=int, default=0,
                    help="longest decode call while a host check would change nothing (0: 4 x --steps-per-sync)")
    ap.add_argument("--row-group", type=int, default=8,
                    help="rows per own-page read loop in continuous decode (0: all rows read to the longest one)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "continuous_batching_cpu.json"))
    args = ap.parse_args()

    import jax
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    from cogito_jax.convert import load_hf
    from cogito_jax.sampling import continuous, engine_for

    torch.manual_seed(0)
    hf = Qwen2AudioForConditionalGeneration(hf_config(args.layers, args.hidden)).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model, _ = load_hf(d)
    del hf
    n, b = args.samples, args.batch
    ps = prompts(args.prompts, args.seed)
    longest = max(len(p["ids"]) for p in ps)
    scfg = continuous.SlotConfig(slots=b * n, page_size=args.page_size, max_context=longest + args.cap,
                                 prefill_chunk=128, steps_per_sync=args.steps_per_sync, row_group=args.row_group,
                                 max_steps_per_sync=args.max_steps_per_sync)
    static, cont = engine_for(model), continuous.ContinuousEngine(model, scfg)
    per_token = cont.page_bytes // scfg.page_size  # keys and values of one token, every layer (same dtype)
    print(f"model: qwen2_audio, {args.layers} decoder layers, d {args.hidden}, fp32; {args.prompts} prompts of "
          f"{min(len(p['ids']) for p in ps)}-{longest} tokens with audio, N={n}; static: {b} prompts x {n} rows per "
          f"call; continuous: {scfg.slots} slots, pages of {scfg.page_size}, pool {scfg.pool_pages} pages, "
          f"{scfg.steps_per_sync} steps per host check (up to {scfg.longest_call} while a check would change nothing)")
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs")

    out = pathlib.Path(args.out).resolve()
    repo = pathlib.Path(__file__).resolve().parents[1]
    recorded = {**vars(args), "out": str(out.relative_to(repo) if out.is_relative_to(repo) else out)}
    results = {"args": recorded, "platform": jax.devices()[0].device_kind, "cpus": os.cpu_count(), "workloads": {}}
    workloads = {"long_tailed": budgets(args.prompts, args.cap, args.sigma, args.seed + 1),
                 "equal": [args.cap // 4] * args.prompts}
    for name, bud in workloads.items():
        for p, x in zip(ps, bud, strict=True):
            p["budget"] = x
        t = time.perf_counter()
        run_static(static, ps, n, b, per_token, 1.0)  # compiles every shape this workload uses
        run_continuous(cont, ps, n, 1.0)
        compile_s = time.perf_counter() - t
        med = median_runs({"static": lambda: run_static(static, ps, n, b, per_token, 1.0),
                           "continuous": lambda: run_continuous(cont, ps, n, 1.0)}, args.repeats)
        st, co = med["static"], med["continuous"]
        ratio = co["tokens_per_s"] / st["tokens_per_s"]
        q = np.percentile(bud, [50, 90, 99])
        print(f"\n{name}: budgets median {q[0]:.0f}, p90 {q[1]:.0f}, p99 {q[2]:.0f}, max {max(bud)}, "
              f"{co['tokens']} useful tokens (warm-up incl. compilation {compile_s:.0f} s)")
        for label, r in (("static", st), ("continuous", co)):
            print(f"  {label:>10}: {r['tokens_per_s']:8.0f} tok/s  {r['seconds']:6.2f} s  utilisation "
                  f"{100 * r['utilization']:5.1f}%  peak KV {r['peak_kv_bytes'] / 2**20:7.2f} MiB")
        print(f"  continuous / static tokens/s: {ratio:.2f}x")
        results["workloads"][name] = {"budgets": bud, "static": st, "continuous": co, "speedup": ratio}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()

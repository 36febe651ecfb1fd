"""The think stage's generation cost for the whole recipe, static vs continuous batching, from a decode roofline.

    python bench/recipe_cost.py [--questions 545000] [--samples 8] [--median 768] [--sigma 0.8] [--cap 4096]

Workload: ``--questions`` x ``--samples`` thinking traces, each trace's length drawn log-normal (median
``--median`` tokens, shape ``--sigma``, capped at ``--cap`` = ``max_new_tokens``), prompts of ``--prompt``
tokens (audio + question) shared by a prompt's samples.

Per chip of a deployment (weights sharded over ``chips`` chips; the rest of memory, less ``--reserve`` GB,
holds KV), for each engine:

* **rows**: the decode rows that fit. Static batching gives every row ``cap`` generated slots (plus its share
  of the prompt); continuous batching gives a row its live tokens, on average ``E[L^2] / (2 E[L])`` generated
  tokens plus its prompt share, with ``--headroom`` for growth. Both capped at ``--max-rows``.
* **step**: the larger of (weights read + KV read) / bandwidth and FLOPs / peak. Weights read: attention,
  router and head, plus the experts the chip's rows touch (``1 - (1 - k/E)^rows`` of them).
* **utilisation**: static, simulated (a batch of ``--batch`` prompts x N rows runs until its longest trace
  ends); continuous, ``--cont-util`` (``bench/continuous_batching.py`` measures 91-93% on CPU, the tail of a
  finite queue included).

Useful tokens/s per chip = rows x utilisation / step; chip-hours = total generated tokens / that / 3600.
Vendor spec numbers: H100 SXM 3.35 TB/s, 989 TFLOP/s bf16 dense, 80 GB; TPU v5p 2.765 TB/s, 459 TFLOP/s,
95 GB. A roofline bounds from above: real decode reaches a fraction of it (56% of bandwidth for the dense
slice on an H200, 15% for the MoE slice, README "Benchmarks"), the same fraction for both engines.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from sampling import decoder_bytes  # noqa: E402

CHIPS = {  # name: (bandwidth B/s, bf16 peak FLOP/s, memory GB, chips sharing the weights)
    "8 x H100 SXM": (3.35e12, 989e12, 80, 8),
    "TPU v5p-8 (4 chips)": (2.765e12, 459e12, 95, 4),
}


def lengths(n: int, median: float, sigma: float, cap: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.minimum(cap, np.ceil(median * np.exp(sigma * rng.normal(size=n)))).astype(np.int64)


def static_utilization(ls: np.ndarray, rows: int) -> float:
    """Useful token-steps / row-steps when batches of ``rows`` traces each run until their longest ends."""
    n = len(ls) // rows * rows
    b = ls[:n].reshape(-1, rows)
    return float(b.sum() / (b.max(axis=1).sum() * rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=545_000)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--median", type=float, default=768, help="median trace length, tokens")
    ap.add_argument("--sigma", type=float, default=0.8)
    ap.add_argument("--cap", type=int, default=4096, help="max_new_tokens")
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens (audio + text)")
    ap.add_argument("--batch", type=int, default=8, help="prompts per static batch")
    ap.add_argument("--cont-util", type=float, default=0.9)
    ap.add_argument("--reserve", type=float, default=8.0, help="GB per chip kept for activations and programs")
    ap.add_argument("--headroom", type=float, default=1.2)
    ap.add_argument("--max-rows", type=int, default=512, help="rows per chip at most")
    args = ap.parse_args()

    from cogito_jax.models import registry

    ls = lengths(200_000, args.median, args.sigma, args.cap)
    mean, live = ls.mean(), (ls.astype(float) ** 2).mean() / (2 * ls.mean())
    u_static = static_utilization(ls, args.batch * args.samples)
    total = args.questions * args.samples * mean
    print(f"workload: {args.questions:,} questions x {args.samples} traces, lengths log-normal median "
          f"{args.median:.0f}, sigma {args.sigma}, cap {args.cap}: mean {mean:.0f}, p90 {np.percentile(ls, 90):.0f}, "
          f"p99 {np.percentile(ls, 99):.0f} tokens; {total / 1e9:.2f} B generated tokens; prompts {args.prompt} tokens")
    print(f"utilisation: static {100 * u_static:.1f}% (batches of {args.batch} x {args.samples} rows), "
          f"continuous {100 * args.cont_util:.0f}%\n")
    print("| model | chips | engine | rows/chip | KV/chip GB | step ms | tokens/s/chip | chip-hours |")
    print("|---|---|---|---|---|---|---|---|")
    fits = []
    for family, size in (("qwen2_audio", "7b"), ("qwen3_omni_thinker", "30b_a3b")):
        text = registry.config_for({"family": family, "size": size}).text
        per_tok = text.num_layers * 2 * text.num_kv_heads * text.head_dim * 2  # bf16 K and V, every layer
        w = decoder_bytes(text)
        dense = w["active"] - (text.num_experts_per_tok * 3 * text.hidden_size * text.moe_intermediate_size
                               * text.num_layers * 2 if text.num_experts else 0)
        expert_bytes = 3 * text.hidden_size * text.moe_intermediate_size * 2 if text.num_experts else 0
        flops_per_tok = 2 * (w["active"] / 2)  # 2 FLOPs per parameter a token uses (2 bytes each in bf16)
        for chip, (bw, peak, mem, chips) in CHIPS.items():
            weights_chip = w["all_experts"] / chips
            kv_budget = (mem - args.reserve) * 1e9 - weights_chip
            for engine, tokens_per_row, util in (
                    ("static", args.prompt / args.samples + args.cap, u_static),
                    ("continuous", (args.prompt / args.samples + live) * args.headroom, args.cont_util)):
                rows = int(min(args.max_rows, kv_budget // (tokens_per_row * per_tok)))
                # KV one step reads: each row's prompt share plus its generated tokens so far (on average).
                kv_read = rows * (args.prompt / args.samples + live) * per_tok
                if text.num_experts:
                    touched = 1 - (1 - text.num_experts_per_tok / text.num_experts) ** (rows * chips)
                    w_read = (dense + touched * text.num_experts * expert_bytes * text.num_layers) / chips
                else:
                    w_read = weights_chip
                step = max((w_read + kv_read) / bw, rows * flops_per_tok / peak)
                rate = rows * util / step
                hours = total / rate / 3600
                print(f"| {family}:{size} | {chip} | {engine} | {rows} | {rows * tokens_per_row * per_tok / 1e9:.1f} "
                      f"| {step * 1e3:.1f} | {rate:,.0f} | {hours:,.0f} |")
        fits.append((family, size, per_tok, w["all_experts"]))
    print("\nrows that fit per chip with every row at a full 4,096-token context (bf16 KV):")
    for family, size, per_tok, weights in fits:
        row = 4096 * per_tok
        line = [f"{family}:{size}: {per_tok / 1024:.0f} KiB per token, {row / 1e9:.2f} GB per row"]
        for chip, (_, _, mem, chips) in {**CHIPS, "1 x H100 SXM (all weights)": (0, 0, 80, 1)}.items():
            line.append(f"{chip}: {max(0, int(((mem - args.reserve) * 1e9 - weights / chips) // row))}")
        print("  " + "; ".join(line))


if __name__ == "__main__":
    main()

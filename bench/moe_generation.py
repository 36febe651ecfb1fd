"""Sampling with a MoE thinker on this machine: generation's dropless experts against ``jax.lax.ragged_dot``.

    python bench/moe_generation.py [--experts 64] [--top-k 8] [--hidden 256] [--repeats 3] [--out F]

A Qwen3-Omni thinker at small size (2 decoder layers, ``--hidden`` wide, ``--experts`` experts of half that width,
top ``--top-k``), random weights, text prompts. ``Engine.generate`` draws ``--samples`` samples of ``--new``
tokens for each of ``--prompts`` prompts, once with the experts as generation runs them
(``moe.dropless_experts``: expert buffers for a decode step, padded row tiles for the prefill) and once through
``ragged_dot`` (every assignment times every expert's weights on CPU and GPU), alternating, ``--repeats`` times
each after a warm-up; it prints the median seconds of each and checks that both drew the same tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="JSON results")
    args = ap.parse_args(argv)

    import jax
    import numpy as np

    from cogito_jax.models import decoder, moe, registry
    from cogito_jax.sampling.engine import Engine

    mcfg = registry.config_for({"family": "qwen3_omni_thinker", "size": "tiny"})
    text = dataclasses.replace(mcfg.text, hidden_size=args.hidden, moe_intermediate_size=args.hidden // 2,
                               num_experts=args.experts, num_experts_per_tok=args.top_k, num_heads=4,
                               num_kv_heads=2, head_dim=args.hidden // 4, num_layers=2)
    mcfg = dataclasses.replace(mcfg, text=text, audio=dataclasses.replace(mcfg.audio, output_dim=args.hidden))
    model = registry.build(mcfg, 0)
    ids = np.random.default_rng(0).integers(10, text.vocab_size, (args.prompts, args.prompt_len)).astype(np.int32)
    kw = dict(num_samples=args.samples, max_new_tokens=args.new, temperature=1.0, eos_token_id=[1], pad_token_id=0,
              seed=4)
    dropless, ragged_matmul = decoder.GENERATION_MOE_IMPL, moe.ragged_matmul

    def run(which: str, engine: Engine | None = None):
        # "ragged_dot": generation through moe_impl="ragged" with its grouped matmul set to ragged_dot itself; the
        # setting is read when the engine's programs are traced, so each side keeps its own engine
        decoder.GENERATION_MOE_IMPL = dropless if which == "dropless" else "ragged"
        moe.ragged_matmul = jax.lax.ragged_dot if which == "ragged_dot" else ragged_matmul
        try:
            engine = engine or Engine(model)
            t = time.perf_counter()
            out = engine.generate(ids, **kw)
            tokens = np.asarray(jax.block_until_ready(out.tokens))
            return time.perf_counter() - t, tokens, engine
        finally:
            decoder.GENERATION_MOE_IMPL, moe.ragged_matmul = dropless, ragged_matmul

    times: dict[str, list[float]] = {"ragged_dot": [], "dropless": []}
    engines = {which: run(which)[2] for which in times}  # compiles
    tokens = {}
    for _ in range(args.repeats):
        for which in times:
            sec, tokens[which], _ = run(which, engines[which])
            times[which].append(sec)
    same = bool(np.array_equal(tokens["ragged_dot"], tokens["dropless"]))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = dict(args=vars(args), device=jax.devices()[0].device_kind, seconds=times, median_s=med,
                  speedup=med["ragged_dot"] / med["dropless"], same_tokens=same)
    print(f"{args.prompts} prompts x {args.samples} samples x {args.new} tokens, {args.experts} experts top-"
          f"{args.top_k}, hidden {args.hidden}: ragged_dot {med['ragged_dot']:.2f} s, dropless {med['dropless']:.2f} s "
          f"({result['speedup']:.1f}x); same tokens: {same}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()

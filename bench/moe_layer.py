"""One MoE layer's experts, forward and backward, per implementation: what XLA compiles for the local backend.

    python bench/moe_layer.py [--tokens 8192] [--impls tiled,capacity:1.25,ragged_dot] [--time 0] [--out F]
        [--hidden 2048 --width 768 --experts 128 --top-k 8]

By default the Qwen3-Omni-30B-A3B thinker's expert block at real size (hidden 2048, expert width 768, 128 experts,
top-8), bf16, ``--tokens`` tokens (default the recipe's micro-batch, 4 x 2048) routed uniformly at random. For each
implementation: the compiled program's temporary memory, and XLA's cost analysis (FLOPs, bytes accessed); with
``--time N``, the median of N timed runs. The useful FLOPs (three matmuls per assignment, forward and two
backward) are printed beside them, so ``flops / useful`` is what an implementation computes for nothing.

* ``tiled``: :func:`cogito_jax.models.moe.tiled_grouped_matmul` (``moe_impl="ragged"`` and ``"gmm"`` off TPU):
  dropless, groups padded to row tiles, one batched GEMM.
* ``capacity:F``: expert buffers of ``F`` x the mean load (``moe_impl="capacity"``): assignments past it drop.
* ``ragged_dot``: ``jax.lax.ragged_dot`` (``moe_impl="ragged"`` on TPU): dropless, lowered on GPU and CPU as a
  masked matmul of every row per expert.

On a CPU host these are XLA:CPU's numbers, not a GPU's: a sizing, not a measurement of an accelerator.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def layer_costs(tokens: int, impls: list[str], repeats: int, hidden: int = 2048, width: int = 768,
                experts: int = 128, top_k: int = 8) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cogito_jax.models import moe

    def experts_as(impl: str):
        name, _, factor = impl.partition(":")
        if name == "tiled":
            return lambda *a: moe.grouped_experts(*a, matmul=moe.tiled_grouped_matmul)
        if name == "capacity":
            return lambda *a: moe.capacity_experts(*a, capacity_factor=float(factor or 1.25))
        if name == "ragged_dot":
            return moe.grouped_experts
        raise SystemExit(f"--impls: unknown implementation {impl!r} (tiled, capacity[:F], ragged_dot)")

    fns = [experts_as(impl) for impl in impls]  # every name checked before the weights are drawn
    r = np.random.default_rng(0)
    bf = jnp.bfloat16
    x = jnp.asarray(r.normal(size=(tokens, hidden)), bf)
    ids = jnp.asarray(np.argsort(r.random((tokens, experts)), axis=1)[:, :top_k], jnp.int32)
    weights = jnp.full((tokens, top_k), 1.0 / top_k, bf)
    gate, up = (jnp.asarray(r.normal(size=(experts, hidden, width)) * 0.02, bf) for _ in range(2))
    down = jnp.asarray(r.normal(size=(experts, width, hidden)) * 0.02, bf)
    useful = 3 * 3 * 2 * tokens * top_k * hidden * width
    rows = []
    for impl, fn in zip(impls, fns, strict=True):
        def loss(x, gate, up, down, ids, weights, fn=fn):  # routing an argument: nothing constant-folded
            return jnp.sum(fn(x, ids, weights, gate, up, down).astype(jnp.float32) ** 2)

        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
        t0 = time.perf_counter()
        args = (x, gate, up, down, ids, weights)
        compiled = step.lower(*args).compile()
        row = dict(impl=impl, tokens=tokens, compile_s=round(time.perf_counter() - t0, 1),
                   device=jax.devices()[0].device_kind, useful_tflop=useful / 1e12)
        mem = compiled.memory_analysis()
        if mem is not None:
            row["temp_gib"] = mem.temp_size_in_bytes / 2**30
        cost = compiled.cost_analysis()
        cost = (cost[0] if isinstance(cost, list) else cost) or {}
        row["xla_tflop"] = float(cost.get("flops", 0.0)) / 1e12
        row["xla_gb_accessed"] = float(cost.get("bytes accessed", 0.0)) / 1e9
        if repeats:
            jax.block_until_ready(compiled(*args))
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                jax.block_until_ready(compiled(*args))
                times.append(time.perf_counter() - t)
            row["step_ms"] = 1e3 * statistics.median(times)
            row["useful_tflop_per_s"] = useful / statistics.median(times) / 1e12
        rows.append(row)
        print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4 * 2048)
    ap.add_argument("--impls", default="tiled,capacity:1.25,ragged_dot")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--width", type=int, default=768, help="each expert's hidden width")
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--time", type=int, default=0, help="timed runs per implementation (0: compile only)")
    ap.add_argument("--out", default=None, help="JSON results")
    args = ap.parse_args(argv)
    rows = layer_costs(args.tokens, [i for i in args.impls.split(",") if i], args.time, hidden=args.hidden,
                       width=args.width, experts=args.experts, top_k=args.top_k)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

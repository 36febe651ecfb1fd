"""Real-size slices on one accelerator: bf16 train-step MFU and decode HBM-bandwidth use.

    python bench/real_slices.py [--layers 4] [--only train|decode] [--families qwen2_audio,qwen3_omni_thinker]

Each family's released config (``configs/models/*.py``) is cut to ``--layers`` decoder (and encoder)
layers; the embedding, LM head and widths stay real. Sequences are text only: the audio encoder is not run. In the same
run it measures the card's references: a bf16 matmul (8192^3) for the peak FLOP/s and a device-to-device
copy for the memory bandwidth.

* train: full fine-tuning, fp32 parameters and AdamW state, bf16 compute, one jitted step with donated
  state; tokens/s and MFU = (training FLOPs per token from ``cogito_jax.models.flops``) x tokens/s /
  measured matmul peak. Compile time is excluded; median of ``--steps`` steps after warm-up. (XLA's own
  ``cost_analysis`` count is saved too, but on GPU it leaves out the cuBLAS/cuDNN calls.)
* decode: bf16 parameters, ``--prompts`` prompts x ``--samples`` samples (the engine prefills once and
  decodes all rows in one while_loop, no row stops early); decode tokens/s and the achieved fraction of
  the measured bandwidth, from the bytes one decode step must read: the weights it touches (for a MoE,
  the experts that the rows' top-k choices reach, in expectation under uniform routing) plus the KV cache
  (each prompt's part once, shared by its samples, and every row's generated part).
Prints one table per part and writes them as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time


def timed(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak(jnp, jax, n: int = 8192, chain: int = 16) -> float:
    """bf16 FLOP/s of ``chain`` dependent n x n matmuls in one program (no per-call dispatch in the time)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16) / n**0.5
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)

    @jax.jit
    def f(a, b):
        return jax.lax.fori_loop(0, chain, lambda _, x: (a @ x).astype(jnp.bfloat16), b)

    f(a, b).block_until_ready()
    return chain * 2 * n**3 / timed(lambda: f(a, b).block_until_ready(), 5, 2)


def copy_bandwidth(jnp, jax, gib: float = 4.0) -> float:
    x = jax.random.normal(jax.random.key(0), (int(gib * 2**30 / 4),), jnp.float32)
    f = jax.jit(lambda x: x * 1.0001)
    f(x).block_until_ready()
    return 2 * x.nbytes / timed(lambda: f(x).block_until_ready(), 10, 3)  # bytes read + written


SIZES = {"real": {"qwen2_audio": "7b", "qwen3_omni_thinker": "30b_a3b"},
         "tiny": {"qwen2_audio": "tiny", "qwen3_omni_thinker": "tiny"}}


def slice_config(family: str, layers: int, size: str = "real", moe: str = "", **overrides):
    """The released config cut to ``layers``; ``moe`` = ``impl`` or ``capacity:FACTOR`` for a MoE LLM."""
    from cogito_jax.models import registry

    cfg = registry.config_for({"family": family, "size": SIZES[size][family], **overrides})
    text = dataclasses.replace(cfg.text, num_layers=layers)
    if moe and text.num_experts:
        impl, _, factor = moe.partition(":")
        text = dataclasses.replace(text, moe_impl=impl, **({"moe_capacity_factor": float(factor)} if factor else {}))
    return dataclasses.replace(cfg, text=text, audio=dataclasses.replace(cfg.audio, num_layers=layers))


def bench_train(family: str, layers: int, batch: int, seq: int, steps: int, peak: float, attn: str,
                size: str = "real", moe: str = "") -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from cogito_jax.models import registry
    from cogito_jax.train.step import TrainState, make_train_step

    cfg = slice_config(family, layers, size, moe, dtype="bfloat16", param_dtype="float32", attn_impl=attn)
    model = registry.build(cfg)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adamw(1e-5, weight_decay=0.0)
    state = TrainState(params, tx.init(params), jnp.int32(0))
    rng = jax.random.key(1)
    ids = jax.random.randint(rng, (batch, seq), 0, cfg.text.vocab_size, jnp.int32)
    batch_d = {"input_ids": ids, "targets": jnp.roll(ids, -1, axis=1), "loss_mask": jnp.ones((batch, seq), jnp.int32),
               "attention_mask": jnp.ones((batch, seq), jnp.int32)}
    step = jax.jit(make_train_step(graphdef, tx), donate_argnums=(0,))
    t0 = time.perf_counter()
    compiled = step.lower(state, rest, batch_d).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_flops = float((cost or {}).get("flops", 0.0))
    holder = {"state": state}

    def one():
        holder["state"], m = compiled(holder["state"], rest, batch_d)
        m["loss"].block_until_ready()
        holder["loss"] = float(m["loss"])

    sec = timed(one, steps, warmup=2)
    tokens = batch * seq
    n_params = sum(x.size for x in jax.tree.leaves(params))
    raw = dict(family=family, size=size, layers=layers, attn=attn, batch=batch, seq=seq, params=n_params,
               moe=(cfg.text.moe_impl + (f":{cfg.text.moe_capacity_factor:g}" if cfg.text.moe_impl == "capacity"
                                         else "")) if cfg.text.num_experts else "",
               step_s=sec, tokens_per_s=tokens / sec, xla_flops_per_token=xla_flops / tokens, compile_s=compile_s,
               loss=holder["loss"], temp_gib=getattr(mem, "temp_size_in_bytes", 0) / 2**30 if mem else None)
    try:
        return with_mfu(raw, peak, jax.devices()[0].device_kind)
    except ImportError:  # no FLOPs model in this checkout: MFU is added later with --report
        return raw


def with_mfu(r: dict, peak: float, device: str) -> dict:
    """Adds the model FLOPs per token (``cogito_jax.models.flops``), TFLOP/s and MFU to a train result: ``mfu``
    against the vendor's dense bf16 spec of ``device`` (``flops.peak_flops``; absent for an unknown device),
    ``mfu_measured`` against ``peak``, the matmul peak measured in the same run."""
    from cogito_jax.models import flops

    cfg = slice_config(r["family"], r["layers"], r["size"])
    fpt = model_flops_per_token(cfg, r["seq"])
    achieved = fpt * r["tokens_per_s"]
    out = {**r, "model_flops_per_token": fpt, "tflops_per_s": achieved / 1e12, "mfu_measured": achieved / peak}
    out.pop("mfu", None)
    spec = flops.peak_flops(device)
    if spec:
        out["mfu"] = achieved / spec
    return out


def model_flops_per_token(cfg, seq: int) -> float:
    """Training FLOPs per text token of the LLM (the count MFU uses; ``cogito_jax.models.flops``)."""
    from cogito_jax.models import flops

    return flops.flops_per_token(cfg, seq, training=True, audio=False)


def bench_decode(family: str, layers: int, prompts: int, samples: int, prompt_len: int, new: int, bw: float,
                 size: str = "real") -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from cogito_jax.models import registry
    from cogito_jax.sampling.engine import Engine
    from cogito_jax.sampling.strategies import SamplingParams

    cfg = slice_config(family, layers, size, dtype="bfloat16", param_dtype="bfloat16")
    model = registry.build(cfg)
    eng = Engine(model)
    ids = jax.random.randint(jax.random.key(2), (prompts, prompt_len), 1, cfg.text.vocab_size, jnp.int32)
    key = (prompts, prompt_len, samples, new, False)
    feats = jnp.zeros((prompts, 1, 1), jnp.float32)
    fmask = jnp.ones((prompts, 1), jnp.int32)
    mask = jnp.ones((prompts, prompt_len), jnp.int32)
    prefill = eng._prefill_fn(key)
    logits, cache, pos = prefill(eng.state, ids, mask, feats, fmask)
    rows = prompts * samples
    params = SamplingParams.make(rows, 1.0, 0, 1.0)
    decode = eng._decode_fn(key)
    eos = jnp.asarray([-1], jnp.int32)

    def run():
        out = decode(eng.state, logits, cache, pos, params, eos, jnp.int32(0), jax.random.key(0))
        out[0].block_until_ready()
        return out

    lengths = np.asarray(run()[2])
    assert (lengths == new).all(), "rows stopped early"
    sec = timed(run, 3, warmup=0)
    per_step = sec / new
    t = cfg.text
    pbytes = 2  # bf16
    weights = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)) if x.ndim) * pbytes
    audio = sum(x.size for x in jax.tree.leaves(nnx.state(model.audio_encoder, nnx.Param))) * pbytes
    proj = (sum(x.size for x in jax.tree.leaves(nnx.state(model.projector, nnx.Param))) * pbytes
            if cfg.projector else 0)
    embed = t.vocab_size * t.hidden_size * pbytes
    read = weights - audio - proj - embed  # the token embedding is gathered, one row per token
    if t.num_experts:
        expert_bytes = 3 * t.hidden_size * t.moe_intermediate_size * pbytes * t.num_layers
        reached = t.num_experts * (1 - (1 - t.num_experts_per_tok / t.num_experts) ** rows)
        read -= expert_bytes * (t.num_experts - reached)
    # The prompt's keys/values are stored once and read by all its samples; each row reads its own generated
    # ones (on average new / 2 of them over the decode).
    kv = (prompts * prompt_len + rows * new / 2) * t.num_layers * 2 * t.num_kv_heads * t.head_dim * pbytes
    step_bytes = read + kv
    return dict(family=family, layers=layers, prompts=prompts, samples=samples, prompt_len=prompt_len, new=new,
                step_ms=per_step * 1e3, tokens_per_s=rows / per_step, weight_gb=read / 1e9, kv_gb=kv / 1e9,
                achieved_gbs=step_bytes / per_step / 1e9, bw_fraction=step_bytes / per_step / bw)


def check_attention(family: str, layers: int, impls: list[str], size: str = "real") -> dict:
    """Each implementation's max |logits - ref| / max |ref| on a left-padded batch, with bf16 compute and
    parameters, where ``ref`` is the float32 ``xla`` forward of the same parameters (so the bf16 error
    of ``xla`` itself is the yardstick)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from cogito_jax.models import registry

    base = slice_config(family, layers, size, dtype="float32", param_dtype="float32", attn_impl="xla")
    _, state = nnx.split(registry.build(base))
    b, t = 4, 256
    ids = jax.random.randint(jax.random.key(3), (b, t), 1, base.text.vocab_size, jnp.int32)
    am = (jnp.arange(t)[None, :] >= jnp.array([0, 17, 64, 200])[:, None]).astype(jnp.int32)
    fwd = jax.jit(lambda g, s, ids, am: nnx.merge(g, s)(ids, attention_mask=am), static_argnums=0)
    keep = np.asarray(am, bool)
    ref = np.asarray(fwd(nnx.split(nnx.eval_shape(lambda: registry.build(base)))[0], state, ids, am))[keep]
    state16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    out = {}
    for impl in ["xla", *impls]:
        text = dataclasses.replace(base.text, attn_impl=impl, dtype="bfloat16", param_dtype="bfloat16")
        cfg = dataclasses.replace(base, text=text)
        graphdef = nnx.split(nnx.eval_shape(lambda cfg=cfg: registry.build(cfg)))[0]
        try:
            logits = np.asarray(fwd(graphdef, state16, ids, am), np.float32)[keep]
        except Exception as e:  # noqa: BLE001 - an implementation this backend lacks
            out[impl] = f"failed: {type(e).__name__}: {str(e)[:160]}"
            continue
        out[impl] = float(np.abs(logits - ref).max() / np.abs(ref).max())
    return out


def print_tables(results: dict, train: list[dict]) -> None:
    print(f"device: {results['device']}; measured bf16 matmul peak {results['peak_flops'] / 1e12:.1f} TFLOP/s, "
          f"copy bandwidth {results['bandwidth'] / 1e12:.2f} TB/s")
    if results.get("attention"):
        print("\nattention implementations in bf16 vs the float32 xla forward (left-padded batch): "
              "max |diff| / max |ref| of the logits")
        for fam, r in results["attention"].items():
            print(f"{fam:<20}" + "  ".join(f"{k}: {v if isinstance(v, str) else f'{v:.2e}'}" for k, v in r.items()))
    if train:
        print("\ntrain step: slices of the released configs, fp32 params + AdamW, bf16 compute")
        print(f"{'family':<20}{'layers':>7}{'attn':>7}{'moe':>14}{'tokens':>12}{'params':>8}{'step ms':>9}"
              f"{'tok/s':>9}{'TFLOP/s':>9}{'MFU':>7}{'measured':>10}")
        for r in train:
            tf = (f"{r['tflops_per_s']:>9.1f}" + (f"{r['mfu']:>7.1%}" if "mfu" in r else f"{'-':>7}")
                  + f"{r['mfu_measured']:>10.1%}") if "tflops_per_s" in r else f"{'-':>9}{'-':>7}{'-':>10}"
            print(f"{r['family']:<20}{r['layers']:>7}{r['attn']:>7}{r.get('moe', '') or '-':>14}"
                  f"{r['batch']:>5}x{r['seq']:<6}"
                  f"{r['params'] / 1e9:>7.2f}B{r['step_s'] * 1e3:>9.1f}{r['tokens_per_s']:>9.0f}{tf}")
    if results.get("decode"):
        print("\ndecode: bf16 slices, prompts x samples rows, one while_loop")
        print(f"{'family':<20}{'layers':>7}{'rows':>9}{'ctx':>6}{'step ms':>9}{'tok/s':>9}{'weights GB':>11}"
              f"{'KV GB':>7}{'GB/s':>7}{'of BW':>7}")
        for r in results["decode"]:
            print(f"{r['family']:<20}{r['layers']:>7}{r['prompts']:>5}x{r['samples']:<3}{r['prompt_len']:>6}"
                  f"{r['step_ms']:>9.2f}{r['tokens_per_s']:>9.0f}{r['weight_gb']:>11.2f}{r['kv_gb']:>7.2f}"
                  f"{r['achieved_gbs']:>7.0f}{r['bw_fraction']:>7.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="qwen2_audio,qwen3_omni_thinker")
    ap.add_argument("--layers", default="4", help="comma-separated decoder layer counts")
    ap.add_argument("--size", choices=tuple(SIZES), default="real", help="tiny: a quick check on CPU")
    ap.add_argument("--only", choices=("train", "decode"), default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--attn", default="xla,cudnn", help="attention implementations to train with")
    ap.add_argument("--moe", default="ragged", help="MoE implementations to train with, comma-separated: "
                    "ragged, gmm, dense, capacity or capacity:FACTOR")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--prompt-len", default="512", help="comma-separated decode prompt lengths")
    ap.add_argument("--decode-layers", default=None, help="comma-separated decoder layer counts (default --layers)")
    ap.add_argument("--decode-families", default=None, help="default --families")
    ap.add_argument("--train-families", default=None, help="default --families")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--out", default=None, help="JSON results, rewritten after every measurement")
    ap.add_argument("--attention-check", type=int, default=1, help="0: skip the attention implementation check")
    ap.add_argument("--report", default=None, help="print the tables of a saved --out file (MFU recomputed)")
    args = ap.parse_args()
    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        print_tables(saved, [with_mfu(r, saved["peak_flops"], saved["device"]) for r in saved["train"]])
        return

    import jax
    import jax.numpy as jnp

    dev = jax.devices()[0]
    small = args.size == "tiny"
    peak, bw = matmul_peak(jnp, jax, 1024 if small else 8192), copy_bandwidth(jnp, jax, 0.25 if small else 4.0)
    results = {"device": f"{dev.device_kind} ({dev.platform}), jax {jax.__version__}", "peak_flops": peak,
               "bandwidth": bw, "attention": {}, "train": [], "decode": []}
    print(f"device: {results['device']}; matmul peak {peak / 1e12:.1f} TFLOP/s, bandwidth {bw / 1e12:.2f} TB/s",
          flush=True)
    families, layer_counts = args.families.split(","), [int(x) for x in args.layers.split(",")]

    def save():
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2)

    def attempt(what, fn):
        t = time.perf_counter()
        try:
            r = fn()
        except Exception as e:  # noqa: BLE001 - report and go on with the other settings
            print(f"{what}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            return None
        print(f"{what}: done in {time.perf_counter() - t:.0f} s: {r}", flush=True)
        return r

    for fam in families if args.attention_check else ():
        r = attempt(f"attention {fam}", lambda fam=fam: check_attention(
            fam, min(layer_counts), ["dot_product_attention", "cudnn"], args.size))
        if r:
            results["attention"][fam] = r
            save()
    decode_layers = [int(x) for x in (args.decode_layers or args.layers).split(",")]
    decode_fams = (args.decode_families or args.families).split(",") if args.only in (None, "decode") else []
    for fam in decode_fams:
        for layers in decode_layers:
            for plen in [int(x) for x in args.prompt_len.split(",")]:
                run = lambda fam=fam, layers=layers, plen=plen: bench_decode(  # noqa: E731
                    fam, layers, args.prompts, args.samples, plen, args.new, bw, args.size)
                r = attempt(f"decode {fam} {layers} layers prompt {plen}", run)
                if r:
                    results["decode"].append(r)
                    save()
    train_fams = (args.train_families or args.families).split(",") if args.only in (None, "train") else []
    for fam in train_fams:
        for layers in layer_counts:
            for attn in args.attn.split(","):
                for moe in args.moe.split(",") if fam == "qwen3_omni_thinker" else [""]:
                    run = lambda fam=fam, layers=layers, attn=attn, moe=moe: bench_train(  # noqa: E731
                        fam, layers, args.batch, args.seq, args.steps, peak, attn, args.size, moe)
                    r = attempt(f"train {fam} {layers} layers {attn} {moe}", run)
                    if r:
                        results["train"].append(r)
                        save()
    print()
    print_tables(results, results["train"])


if __name__ == "__main__":
    main()

"""Train-step speed of a config: step time, tokens/s and MFU against a matmul peak measured in the same run.

    python bench/train_step.py [--config configs/tiny.py[:arg]] [--batch 8] [--seq 192] [--steps 20]
                               [--peak-n 2048] [--set model.dtype=bfloat16 ...]

The step is the trainer's own (``trainer.prepare`` + ``trainer.compile_train_step``: jitted with explicit
shardings, state donated) on one synthetic batch of ``--batch`` rows of ``--seq`` tokens, each with one
full-window audio clip and as many placeholder tokens as the encoder gives for it; the mesh is the config's
over this machine's devices. Compilation is timed separately; the step time is the median of ``--steps``
steps. Model FLOPs come from ``cogito_jax.models.flops.step_flops`` (matmuls only, training = 3 x forward,
causal attention halved, the audio encoder's FLOPs for every clip). The peak is the best of a few jitted
``--peak-n``-cubed matmuls in float32 and bfloat16; MFU divides by the peak of the model's compute dtype.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def matmul_peak(n: int, dtype: str, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` jitted ``[n, n] @ [n, n]`` products in ``dtype``."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def synthetic_batch(mcfg, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A pipeline-shaped batch: every row holds one full-window clip and its placeholder tokens."""
    from cogito_jax.data import chat

    a = mcfg.audio
    frames = a.num_frames
    n_audio = chat.num_audio_tokens(mcfg.family, frames, getattr(a, "n_window", 50))
    if n_audio + 2 > seq:
        raise SystemExit(f"--seq {seq} cannot hold the {n_audio} audio tokens of one clip")
    rng = np.random.default_rng(seed)
    vocab = mcfg.text.vocab_size
    ids = rng.integers(0, min(vocab, mcfg.audio_token_id), (batch, seq)).astype(np.int32)
    ids[:, 1:1 + n_audio] = mcfg.audio_token_id
    targets = np.roll(ids, -1, axis=1)
    loss_mask = np.zeros((batch, seq), np.float32)
    loss_mask[:, 1 + n_audio:-1] = 1.0
    return {"input_ids": ids, "targets": targets, "loss_mask": loss_mask,
            "attention_mask": np.ones((batch, seq), np.int32),
            "input_features": rng.normal(size=(batch, a.num_mel_bins, frames)).astype(np.float32),
            "feature_attention_mask": np.ones((batch, frames), np.int32)}


def measure_step(cfg, batch: int, seq: int, steps: int, local: dict | None = None, mcfg=None) -> dict:
    """Compiles the trainer's step for ``cfg`` and times it on ``local`` (a pipeline batch without its
    bookkeeping fields; default :func:`synthetic_batch`); returns times, FLOPs and the model config."""
    import jax

    from cogito_jax import sharding
    from cogito_jax.data.pipeline import global_batch
    from cogito_jax.models import flops, registry
    from cogito_jax.train import trainer

    mcfg = mcfg or registry.config_for(cfg.model)
    mesh = sharding.make_mesh(cfg.mesh)
    rules = sharding.resolve_rules(cfg.sharding.rules)
    with sharding.use_rules(rules):
        model = sharding.create_sharded(lambda: trainer.for_training(cfg, registry.build(mcfg, cfg.seed)), mesh,
                                        rules)
    p = trainer.prepare(cfg, model, mesh, rules)
    local = synthetic_batch(mcfg, batch, seq) if local is None else local
    clips = int(np.asarray(local["feature_attention_mask"]).any(-1).sum())
    with jax.set_mesh(mesh), sharding.use_rules(rules):
        gb = global_batch(local, mesh)
        t = time.perf_counter()
        compiled = trainer.compile_train_step(p, gb, grad_accum=cfg.train.grad_accum)
        compile_s = time.perf_counter() - t
        state, frozen = p.state, p.frozen
        state, m = compiled(state, frozen, gb)  # first call: buffers, donation
        jax.block_until_ready(m)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            state, m = compiled(state, frozen, gb)
            jax.block_until_ready((state, m))
            times.append(time.perf_counter() - t)
    tokens = batch * seq
    return {"mcfg": mcfg, "compile_s": compile_s, "step_s": statistics.median(times), "tokens": tokens,
            "flops": flops.step_flops(mcfg, tokens, seq, clips=clips), "loss": float(m["loss"]),
            "devices": mesh.devices.size}


def load_config(spec: str, overrides: list[str]):
    """The config ``spec`` (a path, or one relative to the repository) with ``a.b=v`` overrides."""
    from cogito_jax import cli

    path = spec.partition(":")[0]
    if not pathlib.Path(path).exists():
        spec = str(REPO / spec)
    return cli.load_config(spec, ["train.grad_accum=1", *overrides])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/tiny.py", help="config file[:arg]")
    ap.add_argument("--batch", type=int, default=8, help="rows per step (the global batch)")
    ap.add_argument("--seq", type=int, default=0, help="tokens per row (default: the config's data.max_len)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
    ap.add_argument("--peak-n", type=int, default=2048, help="matrix size of the peak matmul")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides a.b=v")
    args = ap.parse_args()

    import jax

    cfg = load_config(args.config, [f"train.batch_size={args.batch}", *args.set])
    seq = args.seq or cfg.data.max_len
    r = measure_step(cfg, args.batch, seq, args.steps)
    peaks = {dt: matmul_peak(args.peak_n, dt) for dt in ("float32", "bfloat16")}
    mcfg = r["mcfg"]
    dtype = mcfg.text.dtype
    achieved = r["flops"] / r["step_s"]
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}) x {r['devices']} in the mesh; "
          f"jax {jax.__version__}")
    print(f"model: {mcfg.family} ({cfg.model.get('size', '')}), compute {dtype}, params {mcfg.text.param_dtype}, "
          f"remat {mcfg.text.remat}; batch {args.batch} x {seq} tokens, one {mcfg.audio.num_frames}-frame clip per row")
    print(f"compile {r['compile_s']:.2f} s; step {r['step_s'] * 1e3:.1f} ms (median of {args.steps}), "
          f"loss {r['loss']:.3f}")
    print(f"tokens/s: {r['tokens'] / r['step_s']:,.0f}   examples/s: {args.batch / r['step_s']:,.1f}")
    print(f"model FLOPs per step: {r['flops']:.3e} -> {achieved / 1e9:,.2f} GFLOP/s")
    for dt, peak in peaks.items():
        print(f"measured matmul peak {dt:<9} ({args.peak_n}^3): {peak / 1e9:,.1f} GFLOP/s")
    peak = peaks.get(dtype, peaks["float32"])
    print(f"MFU vs the {dtype} matmul peak: {100 * achieved / peak:.1f}%")


if __name__ == "__main__":
    main()

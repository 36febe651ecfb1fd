"""Input pipeline headroom: examples/s of the Grain pipeline (0 and 2 worker processes) vs what the train step
consumes, same config, same run.

    python bench/input_pipeline.py [--config configs/tiny.py[:arg]] [--workdir DIR] [--batches 40]
                                   [--workers 0 2] [--packing] [--set data.max_len=256 ...]

The corpus is the config's own (``prepare.ensure_data``: the synthetic records and tokenizer, generated once
into ``--workdir``). The pipeline side reads records, tokenises, pads and batches them
(``pipeline.make_dataset`` exactly as a run builds it) and is timed over ``--batches`` batches after the
first (which includes starting the worker processes, printed separately). The consumer side is the trainer's
compiled step on the same batch size (``bench/train_step.py``'s measurement). Prints examples/s of each and
the ratio pipeline / step; the target is >= 10x, i.e. the step never waits for data.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def make_pipeline(cfg, paths: dict, workers: int):
    """The run's training pipeline (``train.run``'s own construction) with ``workers`` worker processes."""
    from cogito_jax.data import pipeline, records, tokenizer as toklib
    from cogito_jax.train import run, trained

    tok = toklib.load(paths["tokenizer"])
    mcfg = trained.model_config(cfg, tok)
    opts = {**run.pipeline_options(cfg, mcfg), "num_workers": workers}
    ds = pipeline.make_dataset(records.RecordSource(paths["train"], "train"), tokenizer_dir=str(paths["tokenizer"]),
                               spec=run.example_spec(cfg, mcfg, tok), batch_size=cfg.train.batch_size, seed=cfg.seed,
                               **opts)
    return ds, mcfg


def pipeline_rate(cfg, paths: dict, workers: int, batches: int) -> dict:
    """Batches/s and examples/s over ``batches`` batches after the first; seconds to the first batch."""
    import numpy as np

    ds, mcfg = make_pipeline(cfg, paths, workers)
    t0 = time.perf_counter()
    it = iter(ds)
    first = next(it)
    startup = time.perf_counter() - t0
    examples = 0
    t = time.perf_counter()
    for _ in range(batches):
        examples += int((np.asarray(next(it)["index"]) >= 0).sum())
    sec = time.perf_counter() - t
    if hasattr(it, "close"):
        it.close()
    return {"batches_s": batches / sec, "examples_s": examples / sec, "startup": startup,
            "per_batch": examples / batches, "first": first, "mcfg": mcfg}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/tiny.py", help="config file[:arg]")
    ap.add_argument("--workdir", default="", help="where the synthetic corpus is generated (default: a temp dir)")
    ap.add_argument("--batches", type=int, default=40, help="timed batches per pipeline")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="worker process counts to time")
    ap.add_argument("--steps", type=int, default=10, help="timed train steps (median)")
    ap.add_argument("--num-train", type=int, default=128, help="synthetic training records to generate")
    ap.add_argument("--packing", action="store_true", help="pack several examples per row (data.packing=True)")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides a.b=v")
    args = ap.parse_args()

    from absl import flags

    flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags
    import jax
    from train_step import load_config, measure_step

    from cogito_jax.data import prepare
    from cogito_jax.data.pipeline import BOOKKEEPING

    cfg = load_config(args.config, ["data.num_heldout=0", f"data.num_train={args.num_train}", *args.set])
    if args.packing:
        cfg.data.packing = True
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        paths = prepare.ensure_data(cfg, args.workdir or tmp)
        prep_s = time.perf_counter() - t
        rates = {w: pipeline_rate(cfg, paths, w, args.batches) for w in args.workers}
    r0 = next(iter(rates.values()))
    local = {k: v for k, v in r0["first"].items() if k not in BOOKKEEPING}
    step = measure_step(cfg, cfg.train.batch_size, cfg.data.max_len, args.steps, local=local, mcfg=r0["mcfg"])
    steps_s = 1.0 / step["step_s"]
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPUs; "
          f"config {args.config}: batch {cfg.train.batch_size} x {cfg.data.max_len} tokens, "
          f"packing {bool(cfg.data.get('packing', False))}; corpus ready in {prep_s:.1f} s")
    print(f"train step (compiled, on a pipeline batch): {step['step_s'] * 1e3:.1f} ms -> consumes "
          f"{r0['per_batch'] * steps_s:,.1f} examples/s ({steps_s:.2f} batches/s)")
    for w, r in rates.items():
        print(f"pipeline, {w} worker{'' if w == 1 else 's'}: {r['examples_s']:,.1f} examples/s "
              f"({r['batches_s']:.1f} batches/s; first batch after {r['startup']:.1f} s)  "
              f"ratio pipeline / step: {r['batches_s'] / steps_s:.1f}x")


if __name__ == "__main__":
    main()

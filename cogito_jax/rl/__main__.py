"""GRPO on verifiable rewards: `python -m cogito_jax.rl --config configs/X.py[:arg] --workdir W [--config.a.b=v ...]`.

Starts from the run trained in `rl.init_workdir` (with this config's model settings), else from
`model.checkpoint`, else from the config's initialisation; takes `rl.steps` RL steps on the prompts of
`rl.pool_dir` (else the data section's training set) as described in `cogito_jax/rl/loop.py`; then answers
the held-out set greedily (first `rl.eval_limit` items, 0 = all) and writes `W/eval.jsonl` and `W/rl.json`.
Re-running the same command resumes from the newest checkpoint.
"""

from __future__ import annotations

import json
import pathlib

from absl import flags
from ml_collections import ConfigDict

from cogito_jax import cli, errors, sharding
from cogito_jax.data import prepare, records, tokenizer as toklib
from cogito_jax.errors import ConfigError
from cogito_jax.eval import predict
from cogito_jax.models import registry
from cogito_jax.rl import loop
from cogito_jax.train import trained

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints/, metrics.jsonl, rollouts/, eval.jsonl.")
cli.define_config_flag()


def start_model(cfg, workdir: pathlib.Path):
    """(model, tokenizer, model config, held-out dataset or None) the RL run starts from."""
    init = cfg.rl.init_workdir
    if init:
        if not pathlib.Path(init).is_dir():
            raise ConfigError(f"rl.init_workdir={init!r} is not a folder")
        if cfg.train.trainable != "full" and not cfg.model.get("checkpoint"):
            # a checkpoint holds only what trained: the frozen rest must come from a checkpoint folder
            raise ConfigError(f"train.trainable={cfg.train.trainable!r} from rl.init_workdir={init!r}: a partial RL "
                              "run keeps its frozen parameters from model.checkpoint; export the run "
                              "(python -m cogito_jax.export) and give it as model.checkpoint instead")
        saved = pathlib.Path(init) / "config.json"  # the run is loaded as it was trained (e.g. full, not LoRA)
        init_cfg = ConfigDict(json.loads(saved.read_text())) if saved.is_file() else cfg
        if not cfg.data.get("tokenizer"):
            cfg.data.tokenizer = str(trained.tokenizer_dir(init_cfg, init))
    with sharding.main_process_first("prepare data"):
        paths = prepare.ensure_data(cfg, workdir)
    if init:
        try:
            model, tok, mcfg = trained.load(init_cfg, init)
        except FileNotFoundError as e:
            raise ConfigError(f"rl.init_workdir={init!r}: {e}") from None
    elif cfg.model.get("checkpoint"):
        model, mcfg = trained.load_init(cfg, cfg.model.checkpoint, None)
        tok = toklib.load(paths["tokenizer"])
    else:
        tok = toklib.load(paths["tokenizer"])
        mcfg = trained.model_config(cfg, tok)
        model = registry.build(mcfg, cfg.seed)
    return model, tok, mcfg, paths


def main(cfg) -> int:
    if not _WORKDIR.value:
        errors.usage_error("--workdir is required")
    workdir = pathlib.Path(_WORKDIR.value)
    errors.writable_dir(workdir, "--workdir")
    if cfg.rl.steps < 1:
        raise ConfigError("rl.steps=0: nothing to run (set --config.rl.steps)")
    model, tok, mcfg, paths = start_model(cfg, workdir)
    pool = records.RecordSource(prepare.dataset_dir(cfg.rl.pool_dir) if cfg.rl.pool_dir else paths["train"], "train")
    cfg.data.tokenizer = str(paths["tokenizer"])  # the evaluation's trained.load reads it
    out = loop.run(cfg, workdir, model=model, tokenizer=tok, model_cfg=mcfg, pool=pool)
    if out["preempted"]:
        return errors.EXIT_PREEMPTED
    summary = {"last_step": {k: v for k, v in out.items() if k != "preempted"}}
    if paths["heldout"] is not None:
        ev = predict.evaluate_run(cfg, workdir, paths["heldout"], workdir / "eval.jsonl", limit=cfg.rl.eval_limit,
                                  batch_size=cfg.rl.sample_batch_size, max_new_tokens=cfg.rl.max_new_tokens)
        summary["heldout"] = ev
        print(f"held-out accuracy after {cfg.rl.steps} RL steps: {100 * ev['accuracy']:.1f}% "
              f"[{100 * ev['ci'][0]:.1f}, {100 * ev['ci'][1]:.1f}] (n={ev['n']})")
    (workdir / "rl.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"rl done: reward {out.get('reward', 0):.3f}, sample accuracy {out.get('accuracy', 0):.3f}; "
          f"metrics in {workdir / 'metrics.jsonl'}")
    return 0


if __name__ == "__main__":
    cli.run_main(main)

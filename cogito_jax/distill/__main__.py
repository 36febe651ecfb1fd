"""Self-distillation: `python -m cogito_jax.distill --config configs/X.py[:arg] --workdir W [--config.a.b=v ...]`.

SFT on the seed data, then `distill.rounds` rounds of: sample `distill.num_samples` traces per pool
question with the current model, score and select them (optionally retrying all-wrong prompts with the
answer as a hint), fine-tune on the accepted traces, evaluate on held-out items. Stages are recorded in
`W/rounds.json`; re-running the same command skips finished stages and resumes an interrupted one. Prints
the per-round summary (also in `W/rounds.json` and `W/rounds.png`).
"""

from __future__ import annotations

import pathlib

from absl import flags

from cogito_jax import cli, config as cfglib, errors
from cogito_jax.distill import rounds

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: rounds.json, sft/, round_<r>/, eval_<r>.jsonl.")
cli.define_config_flag()


def main(cfg) -> int:
    if not _WORKDIR.value:
        errors.usage_error("--workdir is required")
    workdir = pathlib.Path(_WORKDIR.value)
    errors.writable_dir(workdir, "--workdir")
    cfglib.dump(cfg, workdir / "config.json")
    data = rounds.run(cfg, workdir)
    print("\n".join(rounds.summary_lines(data)))
    print(f"stages done: {', '.join(data['done'])}; summary in {workdir / 'rounds.json'}")
    return 0


if __name__ == "__main__":
    cli.run_main(main)

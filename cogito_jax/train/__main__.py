"""Train: `python -m cogito_jax.train --config configs/X.py[:arg] --workdir W [--config.a.b=v ...]`.

Appends one JSON line per logged step to `W/metrics.jsonl`, keeps checkpoints in `W/checkpoints/`, and
continues from the newest checkpoint in `W` by itself (`--config.train.steps=N` is the total).
Exit status: 0 finished, 2 bad input (one line on stderr), 1 a run-time error (non-finite loss, a checkpoint
that could not be written), 143 (`errors.EXIT_PREEMPTED`) stopped by SIGTERM after saving a checkpoint.
"""

from __future__ import annotations

import sys

from absl import flags

from cogito_jax import cli, errors
from cogito_jax.train.checkpoint import CheckpointError, check_writable
from cogito_jax.train.run import train
from cogito_jax.train.trainer import NonFiniteLoss

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: metrics, checkpoints, config.json.")
cli.define_config_flag()


def main(cfg) -> int:
    if not _WORKDIR.value:
        errors.usage_error("--workdir is required")
    errors.writable_dir(_WORKDIR.value, "--workdir")

    check_writable(_WORKDIR.value)
    try:
        last = train(cfg, _WORKDIR.value)
    except (NonFiniteLoss, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if last.get("preempted"):
        print(f"preempted: checkpoint saved; rerun the same command to resume (exit {errors.EXIT_PREEMPTED})")
        return errors.EXIT_PREEMPTED
    print(f"done: {last}")
    return 0


if __name__ == "__main__":
    cli.run_main(main)

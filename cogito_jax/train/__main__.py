"""Train: `python -m cogito_jax.train --config configs/X.py[:arg] --workdir W [--config.a.b=v ...]`.

Appends one JSON line per logged step to `W/metrics.jsonl`, keeps checkpoints in `W/checkpoints/`, and
continues from the newest checkpoint in `W` by itself (`--config.train.steps=N` is the total).
Exit status: 0 finished, 2 bad input (one line on stderr), 1 a run-time error (non-finite loss, a checkpoint
that could not be written), 143 (`config.EXIT_PREEMPTED`) stopped by SIGTERM after saving a checkpoint.
"""

from __future__ import annotations

import sys

from absl import flags

from cogito_jax import config as cfglib

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: metrics, checkpoints, config.json.")
cfglib.define_config_flag()


def main(cfg) -> int:
    from cogito_jax.train.run import train

    if not _WORKDIR.value:
        cfglib.usage_error("--workdir is required")
    cfglib.writable_dir(_WORKDIR.value, "--workdir")
    from cogito_jax.train.checkpoint import CheckpointError, check_writable
    from cogito_jax.train.trainer import NonFiniteLoss

    check_writable(_WORKDIR.value)
    try:
        last = train(cfg, _WORKDIR.value)
    except (NonFiniteLoss, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if last.get("preempted"):
        print(f"preempted: checkpoint saved; rerun the same command to resume (exit {cfglib.EXIT_PREEMPTED})")
        return cfglib.EXIT_PREEMPTED
    print(f"done: {last}")
    return 0


if __name__ == "__main__":
    cfglib.run_main(main)

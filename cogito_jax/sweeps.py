"""Hyper-parameter sweeps as data: a sweep file's ``get_sweep()`` returns a list of override dicts.

    from cogito_jax.sweeps import product, sweep, zip_
    def get_sweep():
        return product(sweep("optim.lr", [1e-5, 3e-5]), zip_(sweep("train.steps", [100, 200]),
                                                              sweep("optim.warmup_steps", [10, 20])))
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

from cogito_jax.config import import_file

Overrides = dict[str, Any]


def sweep(key: str, values: Sequence[Any]) -> list[Overrides]:
    """One axis: ``[{key: v} for v in values]``."""
    return [{key: v} for v in values]


def product(*axes: list[Overrides]) -> list[Overrides]:
    """Every combination of the axes (the first axis varies slowest)."""
    return [dict(kv for d in combo for kv in d.items()) for combo in itertools.product(*axes)]


def zip_(*axes: list[Overrides]) -> list[Overrides]:
    """Axes advanced together; they must have the same length."""
    lengths = {len(a) for a in axes}
    if len(lengths) > 1:
        raise ValueError(f"zip_ needs axes of equal length, got lengths {sorted(lengths)}")
    return [dict(kv for d in combo for kv in d.items()) for combo in zip(*axes, strict=True)]


def run_name(overrides: Overrides) -> str:
    """A readable, filesystem-safe name: ``lr=3e-05,steps=200``."""
    parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in overrides.items()]
    return re.sub(r"[^\w.,=+-]", "_", ",".join(parts)) or "base"


def load_sweep(spec: str) -> list[Overrides]:
    """Imports ``file.py[:arg]`` and returns ``get_sweep(arg)`` (or ``get_sweep()``)."""

    path, _, arg = spec.partition(":")
    module = import_file(path, "sweep")
    runs = module.get_sweep(arg) if arg else module.get_sweep()
    names = [run_name(r) for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"sweep {path!r} has duplicate runs: {sorted(n for n in names if names.count(n) > 1)}")
    return runs

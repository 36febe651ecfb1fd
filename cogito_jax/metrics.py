"""Metrics writer: JSONL + TensorBoard event files (tensorboardX) + optional Weights & Biases.

The training loop hands :meth:`MetricsWriter.write` device arrays and moves on; values are pulled to
the host one step later (``write`` keeps the previous step pending), so logging never makes the host
wait for the device. Only process 0 writes unless ``all_processes=True``.

The workdir is an ``etils.epath`` path, local or ``gs://`` (epath's fsspec backend: ``gcsfs`` installed).
Object stores cannot append, and a buffered remote file is only visible once closed, so for a remote
workdir ``metrics.jsonl`` is kept in memory and the whole object rewritten at most every
``remote_flush_s`` seconds, on :meth:`MetricsWriter.flush` with ``durable=True`` (the trainer's call before
each checkpoint) and on close. Locally every line is appended and flushed at once. TensorBoard event
files go through tensorboardX, which writes ``gs://`` with ``google-cloud-storage``.

A resumed run passes ``resume_step`` (the step its checkpoint holds): lines of later steps, written before the
interruption and about to be logged again, are dropped first (the file is rewritten whole: atomically by
rename locally), so ``metrics.jsonl`` reads as one run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from etils import epath

from cogito_jax import jsonl as jsonlib
from cogito_jax.log import is_main_process, logger


def _to_python(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "size", 2) == 1:
        v = v.item()
    elif hasattr(v, "tolist"):
        v = np.asarray(v).tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep them visible as strings
    return v


def is_remote(path: str | os.PathLike) -> bool:
    """True for an object-store URI (``gs://``, ``s3://``, ...), False for a local path."""
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> epath.Path:
    """``path`` as an ``etils.epath`` path, made absolute when local (Orbax refuses relative paths)."""
    return epath.Path(path) if is_remote(path) else epath.Path(os.path.abspath(os.fspath(path)))


class _ObjectLines:
    """An append-only text object on storage without appends: the text is kept in memory and the object
    rewritten whole (at most every ``interval_s`` seconds unless forced)."""

    def __init__(self, path: epath.Path, interval_s: float):
        self.path, self.interval_s = path, interval_s
        self.text = path.read_text() if path.exists() else ""
        self._dirty, self._last = False, time.monotonic()

    def write(self, s: str) -> None:
        self.text += s
        self._dirty = True

    def flush(self, force: bool = False) -> None:
        if self._dirty and (force or time.monotonic() - self._last >= self.interval_s):
            self.path.write_text(self.text)
            self._dirty, self._last = False, time.monotonic()

    def close(self) -> None:
        self.flush(force=True)


class MetricsWriter:
    """Appends ``{"step": s, ...}`` lines to ``workdir/metrics.jsonl`` and scalars to TensorBoard."""

    def __init__(
        self,
        workdir: str | epath.Path,
        *,
        jsonl: bool = True,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "cogito-jax",
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
        all_processes: bool = False,
        remote_flush_s: float = 30.0,
        resume_step: int | None = None,
    ):
        self.workdir = epath.Path(workdir)
        self.active = all_processes or is_main_process()
        self._pending: tuple[int, dict[str, Any]] | None = None
        self._jsonl = None
        self._tb = None
        self._wandb = None
        if not self.active:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if jsonl:
            path = self.workdir / "metrics.jsonl"
            if resume_step is not None:
                _truncate(path, resume_step)
            if is_remote(path):  # a torn last line (a crash mid-write) is cut off, a complete one ended
                self._jsonl = _ObjectLines(path, remote_flush_s)
                self._jsonl.text = jsonlib.mended(self._jsonl.text)
            else:
                self._jsonl = jsonlib.open_append(path)
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(logdir=str(self.workdir / "tensorboard"))
            except ImportError:
                logger.warning("tensorboardX is not installed; TensorBoard logging is off")
        if wandb:
            try:
                import wandb as wandb_lib

                self._wandb = wandb_lib.init(project=wandb_project, name=run_name, config=dict(config or {}))
            except ImportError:
                logger.warning("metrics.wandb=True but wandb is not installed; W&B logging is off")

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Queues this step's metrics and flushes the previous step's (now surely computed) values."""
        self.flush()
        self._pending = (int(step), dict(metrics))

    def write_now(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Writes immediately (for host-side values such as eval results)."""
        self.flush()
        self._emit(int(step), dict(metrics))

    def flush(self, durable: bool = False) -> None:
        """Writes the pending step; ``durable`` also uploads a remote ``metrics.jsonl`` now."""
        if self._pending is not None:
            step, metrics = self._pending
            self._pending = None
            self._emit(step, metrics)
        if durable and isinstance(self._jsonl, _ObjectLines):
            self._jsonl.flush(force=True)

    def _emit(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.active:
            return
        values = {k: _to_python(v) for k, v in metrics.items()}
        record = {"step": step, "time": round(time.time(), 3), **values}
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        self.flush()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _truncate(path: epath.Path, step: int) -> None:
    """Drops the lines of steps after ``step`` (and a torn last line) from ``path``, rewriting it whole;
    :class:`~cogito_jax.jsonl.JsonlError` naming the line if another line is not a JSON object."""
    if not path.exists():
        return
    text = path.read_text()
    rows = jsonlib.parse(text, os.fspath(path))
    kept = [r for r in rows if not (isinstance(r.get("step"), int) and r["step"] > step)]
    if len(kept) == len(rows) and jsonlib.mended(text) == text:
        return
    content = "".join(json.dumps(r) + "\n" for r in kept)
    if is_remote(path):  # an object is replaced whole by one write
        path.write_text(content)
    else:
        tmp = path.parent / (path.name + ".tmp")
        tmp.write_text(content)
        tmp.replace(path)
    logger.info("metrics.jsonl: dropped %d line(s) after step %d, which this run logs again", len(rows) - len(kept),
                step)


def read_jsonl(path: str | epath.Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl file, local or ``gs://`` (a torn last line from a crash dropped); ``JsonlError``
    naming the line if another line is not a JSON object."""
    if not epath.Path(path).exists():
        raise FileNotFoundError(f"{os.fspath(path)!r} does not exist")
    return jsonlib.read(path)


def from_config(workdir: str | epath.Path, cfg: Any, **kw: Any) -> MetricsWriter:
    """A writer configured by the run's ``metrics`` section."""
    m = cfg.metrics
    return MetricsWriter(
        workdir, jsonl=m.jsonl, tensorboard=m.tensorboard, wandb=m.wandb, wandb_project=m.wandb_project,
        run_name=cfg.name, config=cfg.to_dict(), **kw,
    )

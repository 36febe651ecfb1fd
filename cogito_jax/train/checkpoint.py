"""Orbax checkpointing of everything a run needs to continue exactly where it stopped.

A checkpoint at step ``s`` holds ``state`` (parameters that train, optimizer state, step, RNG key
data), ``iterators`` (every process's input-iterator state, one JSON file per process: each process reads
its own slice of the data, so their positions differ), ``data`` (process 0's iterator state, as older
checkpoints have it) and ``meta`` (the config and free-form JSON). Every file goes through
``etils.epath`` and Orbax, so a ``gs://`` workdir takes the same code path as a local one.
Orbax writes each step into a temporary folder and renames it when complete, so a crash never
leaves a half-written step behind; a step that fails to restore (e.g. its files were damaged) is
skipped with a warning and the previous one is used.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from cogito_jax import metrics
from cogito_jax.log import logger


def _json_safe(state: Any) -> Any:
    """Grain iterator states are bytes (JSON) for DataLoader iterators or dicts for dataset iterators."""
    if isinstance(state, bytes):
        return {"__bytes__": state.decode("utf-8")}
    return state


def _from_json_safe(state: Any) -> Any:
    if isinstance(state, Mapping) and set(state) == {"__bytes__"}:
        return state["__bytes__"].encode("utf-8")
    return state


def _process_file() -> str:
    return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


class ProcessJsonHandler(ocp.CheckpointHandler):
    """One JSON file per process (``process_{i}-of-{n}.json``); Orbax's JSON handler writes process 0's only."""

    def save(self, directory: epath.Path, args: ProcessJsonSave) -> None:
        (epath.Path(directory) / _process_file()).write_text(json.dumps(args.item))

    def restore(self, directory: epath.Path, args: ProcessJsonRestore | None = None) -> Any:
        """This process's value, or None when the checkpoint was written by a different number of processes."""
        path = epath.Path(directory) / _process_file()
        return json.loads(path.read_text()) if path.exists() else None

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(ProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class ProcessJsonSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(ProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class ProcessJsonRestore(ocp.args.CheckpointArgs):
    pass


class Checkpointer:
    """Keep-last-K plus keep-every-M checkpoints under ``workdir/checkpoints``; async saves."""

    def __init__(self, workdir: str | epath.Path, keep_last: int = 3, keep_every: int = 0,
                 async_save: bool = True):
        self.directory = metrics.absolute(workdir) / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep_last if keep_last > 0 else None,
            keep_period=keep_every if keep_every > 0 else None,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "iterators", "meta"))

    def save(self, step: int, state: Any, data_state: Any = None, meta: Mapping[str, Any] | None = None,
             force: bool = False) -> bool:
        """Starts saving ``step`` (returns at once when async); True if a save was started."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave({"iterator": _json_safe(data_state)}),
            iterators=ProcessJsonSave({"iterator": _json_safe(data_state)}),
            meta=ocp.args.JsonSave(json.loads(json.dumps(dict(meta or {}), default=str))),
        )
        return self.manager.save(step, args=args, force=force)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, Any, dict] | None:
        """(step, state, data_state, meta) of ``step`` or the newest readable one; None if there is none.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with the target shardings, so arrays
        are restored straight into their (possibly different) sharded layout.
        """
        candidates = [step] if step is not None else list(reversed(self.steps()))
        errors = []
        for s in candidates:
            try:
                out = self.manager.restore(
                    s,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=ocp.args.JsonRestore(),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
            except Exception as e:  # damaged step: fall back to the previous one
                if step is not None:
                    raise
                reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                errors.append(f"step {s}: {reason}")
                logger.warning("checkpoint step %d in %s cannot be restored (%s); trying the previous one",
                               s, self.directory, reason)
                continue
            return s, out["state"], self._iterator_state(s, out["data"]["iterator"]), dict(out["meta"])
        if errors:  # never silently start over on top of checkpoints that exist
            raise RuntimeError(f"no checkpoint in {self.directory} can be restored ({'; '.join(errors)}); "
                               "was the model or trainable set changed? use a new workdir or remove them")
        return None

    def _iterator_state(self, step: int, process0: Any) -> Any:
        """This process's iterator state at ``step``; process 0's for checkpoints without per-process states."""
        own = None
        if (self.directory / str(step) / "iterators").exists():
            own = self.manager.restore(step, args=ocp.args.Composite(iterators=ProcessJsonRestore()))["iterators"]
        if own is not None:
            return _from_json_safe(own["iterator"])
        if jax.process_count() > 1:
            logger.warning("checkpoint step %d has no input-iterator state for process %d of %d; using process 0's, "
                           "so this process's data order does not continue exactly", step, jax.process_index(),
                           jax.process_count())
        return _from_json_safe(process0)

    def wait(self) -> None:
        """Blocks until any async save has been committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) for the arrays of ``tree``, for restoring into that layout."""

    def one(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, np.ndarray):
            return jax.ShapeDtypeStruct(x.shape, x.dtype)
        return x

    return jax.tree.map(one, tree)

"""Orbax checkpointing of everything a run needs to continue exactly where it stopped.

A checkpoint at step ``s`` holds ``state`` (parameters that train, optimizer state, step; older checkpoints
also an unused RNG key, never read), ``iterators`` (every process's input-iterator state, one JSON file per
process: each process reads its own slice of the data, so their positions differ), ``data`` (process 0's
iterator state, as older checkpoints have it) and ``meta`` (the config, free-form JSON and a checksum of every
state array). Every file goes through ``etils.epath`` and Orbax, so a ``gs://`` workdir takes the same code path
as a local one.

Orbax writes each step into a temporary folder and renames it when complete, so a crash never leaves a
half-written step behind. Damage after that is caught on restore: missing, truncated or garbled files (Orbax
and TensorStore read errors, undecodable JSON) and changed bytes (each array's :func:`state_checksums`
and each JSON item's SHA-256, saved with the step, are compared after reading it). Every process reaches
the same verdict; a damaged step is moved aside to ``<step>.corrupt-<n>`` (by process 0, between two
barriers), so it is neither restored again nor in the way of saving that step anew, and the previous step
is tried. Any other restore failure (e.g. a changed model whose shapes no longer fit, or a state with more or
fewer arrays than the saved one) stops the run with :class:`IncompatibleCheckpoint`. A save that fails in the
background (disk full, no permission) is raised as :class:`CheckpointError` by the next
:meth:`Checkpointer.check`, :meth:`~Checkpointer.save` or :meth:`~Checkpointer.close`.

:meth:`Checkpointer.restore_params` reads the parameters alone, for using a trained model: neither the optimizer
state, nor the step, nor the input-iterator state is read, and the parameters are verified like a full restore.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from cogito_jax import errors, metrics, sharding
from cogito_jax.errors import ConfigError
from cogito_jax.log import logger


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message is one line naming the step, folder and cause."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint step's files are missing, truncated, undecodable or do not match their checksums."""


class IncompatibleCheckpoint(errors.ConfigError):
    """A checkpoint step is intact but cannot be restored into this run (e.g. the model changed)."""


def check_writable(workdir: str | os.PathLike) -> None:
    """ConfigError unless the checkpoint folder of ``workdir`` can be created and written (local paths)."""
    errors.writable_dir(metrics.absolute(workdir) / "checkpoints", "checkpoint folder")


# ----------------------------------------------------------------------------- integrity


def _words(block: np.ndarray) -> np.ndarray:
    """The bits of ``block`` as uint32 words: one per element (two, in a last axis, per 64-bit element)."""
    if block.dtype == np.bool_:
        return block.astype(np.uint32)
    if block.dtype.itemsize == 8:
        return np.ascontiguousarray(block).view(np.uint32).reshape(*block.shape, 2)
    unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32}[block.dtype.itemsize]
    return np.ascontiguousarray(block).view(unsigned).astype(np.uint32)


def _block_digest(block: np.ndarray, index: tuple, shape: tuple[int, ...]) -> np.ndarray:
    """uint64[2]: two sums of the words of ``block`` (at ``index`` in an array of ``shape``) times odd weights
    of their positions in the whole array, modulo 2**32. Sums over disjoint blocks add up to the whole array's
    digest however it is cut, and changing any one element changes both."""
    words = _words(block)
    full = tuple(shape) + words.shape[len(shape):]
    starts = [sl.start or 0 for sl in index] + [0] * (words.ndim - len(index))
    pos, stride = np.zeros(words.shape, np.uint32), 1
    for d in reversed(range(words.ndim)):
        axis = np.arange(words.shape[d], dtype=np.uint32) + np.uint32(starts[d] % 2**32)
        pos += (axis * np.uint32(stride % 2**32)).reshape([-1 if i == d else 1 for i in range(words.ndim)])
        stride *= full[d]
    a = np.sum(words * (pos * np.uint32(0x9E3779B1) | 1), dtype=np.uint64)
    b = np.sum((words ^ (words >> 16)) * (pos * np.uint32(0x85EBCA77) + np.uint32(0xC2B2AE3D) | 1), dtype=np.uint64)
    return np.array([a, b], np.uint64) % 2**32


def _local_digest(x: Any) -> np.ndarray:
    """This process's share of ``x``'s digest: the shards it holds the first replica of (of an array every process
    holds whole, its own copy, as a model loaded for sampling: process 0's)."""
    if isinstance(x, jax.Array):
        mine = not x.is_fully_addressable or jax.process_index() == 0
        blocks = [(s.index, np.asarray(s.data)) for s in x.addressable_shards if s.replica_id == 0 and mine]
    else:  # a host value, the same on every process: counted once
        blocks = [((), np.asarray(x))] if jax.process_index() == 0 else []
    return sum((_block_digest(b, i, x.shape) for i, b in blocks), np.zeros(2, np.uint64)) % 2**32


def state_checksums(tree: Any) -> list[list[str]]:
    """``[path, dtype, digest]`` of every array in ``tree``, the same whatever its sharding (every process
    calls it: their shares are summed)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    arrays = [(jax.tree_util.keystr(p), x) for p, x in leaves if isinstance(x, (jax.Array, np.ndarray, np.generic))]
    local = np.stack([_local_digest(x) for _, x in arrays]) if arrays else np.zeros((0, 2), np.uint64)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        local = np.asarray(multihost_utils.process_allgather(local.astype(np.uint32)), np.uint64).sum(0)
    digests = (local % 2**32).astype(np.uint32)
    return [[path, str(x.dtype), digests[i].tobytes().hex()] for i, (path, x) in enumerate(arrays)]


def _verify_state(tree: Any, saved: list[list[str]]) -> None:
    """CorruptCheckpoint naming the arrays of ``tree`` (all or part of the saved state) whose checksum differs from
    the one saved (dtype-cast arrays aside)."""
    by_path = {path: (dtype, digest) for path, dtype, digest in saved}
    now = state_checksums(tree)
    unknown = [path for path, _, _ in now if path not in by_path]
    if unknown:
        raise CorruptCheckpoint(f"it holds no checksum of {len(unknown)} restored array(s): {', '.join(unknown[:3])}")
    bad = [path for path, dtype_now, digest_now in now
           if by_path[path][0] == dtype_now and by_path[path][1] != digest_now]
    if bad:
        raise CorruptCheckpoint(f"checksum mismatch in {len(bad)} array(s): {', '.join(bad[:3])}")


def _sha256(item: Any) -> str:
    return hashlib.sha256(json.dumps(item, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _seal(item: Mapping[str, Any]) -> dict:
    """``item`` (JSON-safe) with the SHA-256 of its canonical JSON added."""
    item = json.loads(json.dumps(dict(item), default=str))
    return {**item, "sha256": _sha256(item)}


def _unseal(item: Any, what: str, required: bool) -> dict:
    """``item`` without its SHA-256, after checking it; CorruptCheckpoint if it does not match (or is missing
    where ``required``)."""
    if not isinstance(item, Mapping):
        raise CorruptCheckpoint(f"{what} is not a JSON object")
    body = {k: v for k, v in item.items() if k != "sha256"}
    if "sha256" not in item:
        if required:
            raise CorruptCheckpoint(f"{what} has no checksum")
        return body
    if item["sha256"] != _sha256(body):
        raise CorruptCheckpoint(f"{what} does not match its checksum")
    return body


# Read errors TensorStore reports for missing, truncated or undecodable files (not e.g. UNAVAILABLE: a network
# error says nothing about the files).
_DAMAGE_STATUS = re.compile(r"(DATA_LOSS|OUT_OF_RANGE|NOT_FOUND|FAILED_PRECONDITION): ")


def _chain(e: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def error_line(e: BaseException) -> str:
    """``e`` as one line: its type and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def damage(e: BaseException) -> str | None:
    """Why ``e`` (a restore error) shows a damaged checkpoint, in one line; None when it does not."""
    for x in _chain(e):
        if isinstance(x, CorruptCheckpoint):
            return str(x)
        if isinstance(x, (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError)):
            return error_line(x)
        if isinstance(x, KeyError) and "was not found in the checkpoint" in str(x):
            return error_line(x)
        if isinstance(x, ValueError) and _DAMAGE_STATUS.match(str(x)):
            return error_line(x)
    return None


def _write_error(e: BaseException) -> str:
    """The cause of a failed save in one line (the OS error where TensorStore reports one)."""
    for x in _chain(e):
        if isinstance(x, OSError) and x.strerror:
            return f"{x.strerror} (errno {x.errno})"
        m = re.search(r"os_error_code='(\d+)'", str(x))
        if m:
            return f"{os.strerror(int(m.group(1)))} (errno {m.group(1)})"
    return error_line(e)


# ----------------------------------------------------------------------------- processes


def _agree(code: int) -> int:
    """The largest ``code`` over all processes (0 restored, 1 damaged, 2 other error)."""
    if jax.process_count() == 1:
        return code
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.int32(code))))


_ORBAX = f"{os.sep}orbax{os.sep}"


_DIRECTORIES: set[str] = set()  # the checkpoint folders of this process's Checkpointers


def _noise(exc_traceback: Any, *paths: str) -> bool:
    """True for an error raised in Orbax code (given its traceback and the paths of the code that reported it)."""
    return any(_ORBAX in f for f in [*paths, *(f.filename for f in traceback.extract_tb(exc_traceback))])


def _store_noise(exc: BaseException | None) -> bool:
    """True for a TensorStore write or read error about a file under a checkpoint folder that TensorStore set on a
    future no one awaited: it has no Python traceback (C++ set it), only its message names the file."""
    return exc is not None and exc.__traceback__ is None and any(d in str(exc) for d in _DIRECTORIES)


class _QuietOrbax(logging.Filter):
    """Drops the library tracebacks of a failed save or read (Orbax's error log records, asyncio's "exception was
    never retrieved" for its abandoned writes): :class:`Checkpointer` raises the failure itself, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.exc_info:
            return True
        return not (_noise(record.exc_info[2], record.pathname) or _store_noise(record.exc_info[1]))


_QUIET = _QuietOrbax()


def _quiet_unraisable(unraisable: Any, previous: Any) -> None:
    """Drops what TensorStore's callbacks raise into the event loop of a save or read that has already failed
    (``Event loop is closed``) and Orbax coroutines abandoned with it; passes anything else on."""
    closed = isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"
    if not (closed or _noise(unraisable.exc_traceback)):
        previous(unraisable)


def _quiet_orbax(directory: Any) -> None:
    _DIRECTORIES.add(str(directory))
    for name in ("absl", "asyncio"):
        if _QUIET not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_QUIET)
    if getattr(sys.unraisablehook, "func", None) is not _quiet_unraisable:
        sys.unraisablehook = functools.partial(_quiet_unraisable, previous=sys.unraisablehook)


# ----------------------------------------------------------------------------- JSON per process


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


# ----------------------------------------------------------------------------- what a restore reads

# Arrays that older checkpoints hold and the state no longer has, as paths in the saved tree: never read. (The
# RNG key data a TrainState carried, which nothing used.)
RETIRED = frozenset({("rng",)})


class ParamsOnly(NamedTuple):
    """The part of a saved ``TrainState`` that :meth:`Checkpointer.restore_params` reads; its array paths, and so
    the checksums saved for them, are the state's."""

    params: Any


def _key(path: tuple) -> tuple[str, ...]:
    """A JAX key path as the tuple of names that keys Orbax's flat trees."""
    return tuple(next((str(getattr(k, a)) for a in ("key", "name", "idx") if hasattr(k, a)), str(k)) for k in path)


def _listed(keys: list[tuple[str, ...]]) -> str:
    return ", ".join("/".join(k) for k in keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _restore_args(target: Any, saved: Mapping[tuple[str, ...], Any], skipped: Callable[[tuple[str, ...]], bool]):
    """Orbax restore arguments for the arrays of ``target`` (one without a sharding gets the saved one). ValueError
    unless the arrays of ``target`` are those of ``saved`` (the flat metadata tree of the saved state) but for the
    ``skipped`` ones."""
    keys = {_key(path) for path, _ in jax.tree_util.tree_flatten_with_path(target)[0]}
    missing = sorted(keys - set(saved))
    if missing:
        raise ValueError(f"Structure mismatch: the checkpoint has no {_listed(missing)}")
    extra = sorted(k for k in saved if k not in keys and not skipped(k))
    if extra:
        raise ValueError(f"Structure mismatch: the checkpoint holds {_listed(extra)}, which the state has not")

    def sharding(path, leaf):
        if getattr(leaf, "sharding", None) is not None:
            return leaf.sharding
        stored = getattr(saved[_key(path)], "sharding", None)
        return None if stored is None else stored.to_jax_sharding()

    return ocp.checkpoint_utils.construct_restore_args(target, jax.tree_util.tree_map_with_path(sharding, target))


# ----------------------------------------------------------------------------- the checkpointer


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
        self._saving: int | None = None  # the step of the save that may still be running
        _quiet_orbax(self.directory)

    def save(self, step: int, state: Any, data_state: Any = None, meta: Mapping[str, Any] | None = None,
             force: bool = False) -> bool:
        """Starts saving ``step`` (returns at once when async); True if a save was started. Raises
        :class:`CheckpointError` if this save, or the one before it, failed."""
        self.check(wait=True)
        iterator = {"iterator": _json_safe(data_state)}
        args = ocp.args.Composite(
            state=ocp.args.PyTreeSave(state),
            data=ocp.args.JsonSave(_seal(iterator)),
            iterators=ProcessJsonSave(_seal(iterator)),
            meta=ocp.args.JsonSave(_seal({"meta": dict(meta or {}), "processes": jax.process_count(),
                                          "state_checksums": state_checksums(state)})),
        )
        self._saving = step
        try:
            started = self.manager.save(step, args=args, force=force)
        except Exception as e:
            raise self._failed(step, e) from None
        if not started:
            self._saving = None
        return started

    def check(self, wait: bool = False) -> None:
        """Raises :class:`CheckpointError` if the last save has failed (cheap while it is still running; ``wait``
        blocks until it has finished)."""
        step = self._saving
        if step is None or (not wait and self.manager.is_saving_in_progress()):
            return
        self._saving = None
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._failed(step, e) from None
        if not (self.directory / str(step)).exists():
            raise CheckpointError(f"saving checkpoint step {step} in {self.directory} failed: it was not committed")

    def _failed(self, step: int, e: BaseException) -> CheckpointError:
        return CheckpointError(f"saving checkpoint step {step} in {self.directory} failed: {_write_error(e)}")

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, Any, dict] | None:
        """(step, state, data_state, meta) of ``step`` or the newest intact one; None if there is none.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with the target shardings, so arrays
        are restored straight into their (possibly different) sharded layout. It must hold exactly the saved
        arrays, but for those of older checkpoints the state no longer has (:data:`RETIRED`), which are not read.
        Without ``step``, damaged steps are moved aside and the previous one is tried; with it, damage raises
        :class:`CorruptCheckpoint`.
        """
        return self._restore(step, lambda s: self._read(s, abstract_state, lambda key: key in RETIRED, True))

    def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[int, Any] | None:
        """(step, parameters) of ``step`` or the newest intact one; None if there is none.

        Reads only the ``params`` of the saved :class:`~cogito_jax.train.step.TrainState` (``abstract_params``:
        ``jax.ShapeDtypeStruct``\\s with the target shardings), never the optimizer state, step or input-iterator
        state. The parameters are checked against their saved checksums, and damaged steps handled, as by
        :meth:`restore`.
        """
        out = self._restore(step, lambda s: self._read(s, ParamsOnly(abstract_params), lambda key: key[0] != "params",
                                                       False))
        return None if out is None else (out[0], out[1].params)

    def _restore(self, step: int | None, read: Callable[[int], tuple[tuple, list | None]]) -> tuple | None:
        """``read(s)`` of ``step``, or of the newest step whose ``read`` succeeds and whose arrays match their
        checksums (the others moved aside); its result is ``(step, state, ...)``."""
        self.check(wait=True)  # a save still running is finished (or its failure raised) first
        for s in [step] if step is not None else list(reversed(self.steps())):
            where = f"checkpoint step {s} in {self.directory}"
            out, checksums = None, None
            try:
                out, checksums = read(s)
                code, why = 0, ""
            except Exception as e:
                why = damage(e)
                code, why = (1, why) if why else (2, error_line(e))
            agreed = _agree(code)
            if agreed == 0 and checksums is not None:  # every process has the arrays: verify them together
                try:
                    _verify_state(out[1], checksums)
                except CorruptCheckpoint as e:
                    agreed, why = 1, str(e)
            if agreed == 0:
                return out
            why = why or "another process could not read it (see that process's log)"
            if agreed == 2:
                raise IncompatibleCheckpoint(
                    f"{where} cannot be restored into this run ({why}); resume with the config it was saved with, "
                    "or use a new workdir")
            if step is not None:
                raise CorruptCheckpoint(f"{where} is damaged: {why}")
            self._quarantine(s, why)
        return None

    def _read(self, step: int, target: Any, skipped: Callable[[tuple[str, ...]], bool],
              iterators: bool) -> tuple[tuple[int, Any, Any, dict], list | None]:
        """Reads the arrays of ``target`` from ``step`` (and the input-iterator state where ``iterators``) and
        checks its JSON items; returns it and the state checksums saved with it. Saved arrays that ``target`` lacks
        must be ``skipped(key)`` (a key is the array's path in the saved tree); they are not read."""
        state_dir = self.directory / str(step) / "state"
        handler = ocp.PyTreeCheckpointHandler()
        try:
            saved = ocp.tree.to_flat_dict(handler.metadata(state_dir).tree)
        finally:
            handler.close()
        items = dict(state=ocp.args.PyTreeRestore(target, restore_args=_restore_args(target, saved, skipped),
                                                  partial_restore=True),
                     meta=ocp.args.JsonRestore())
        if iterators:
            items["data"] = ocp.args.JsonRestore()
            if (self.directory / str(step) / "iterators").exists():
                items["iterators"] = ProcessJsonRestore()
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception:
            # Orbax ends a restore at a barrier; a process whose read failed joins it so the others can go on.
            if jax.process_count() > 1:
                ocp.multihost.sync_global_processes(ocp.multihost.unique_barrier_key("Checkpointer:restore"))
            raise
        sealed = isinstance(out["meta"], Mapping) and "sha256" in out["meta"]
        meta = _unseal(out["meta"], "meta", required=False)
        checksums = meta.get("state_checksums") if sealed else None
        user_meta = dict(meta["meta"]) if sealed else meta
        if not iterators:
            return (step, out["state"], None, user_meta), checksums
        data = _unseal(out["data"], "data/ (iterator state)", required=sealed).get("iterator")
        own = out["iterators"] if "iterators" in items else None
        if own is not None:
            data = _unseal(own, f"iterators/{_process_file()}", required=sealed).get("iterator")
        elif sealed and meta.get("processes") == jax.process_count():
            raise CorruptCheckpoint(f"iterators/{_process_file()} is missing")
        elif jax.process_count() > 1:
            logger.warning("checkpoint step %d has no input-iterator state for process %d of %d; using process 0's, "
                           "so this process's data order does not continue exactly", step, jax.process_index(),
                           jax.process_count())
        return (step, out["state"], _from_json_safe(data), user_meta), checksums

    def _quarantine(self, step: int, why: str) -> None:
        """Moves damaged ``step`` to ``<step>.corrupt-<n>`` (process 0, once every process has stopped reading)."""
        n = 1
        while (self.directory / f"{step}.corrupt-{n}").exists():
            n += 1
        target = self.directory / f"{step}.corrupt-{n}"
        sharding.barrier(f"cogito_quarantine_{step}_{n}_read")
        if jax.process_index() == 0:
            (self.directory / str(step)).rename(target)
        sharding.barrier(f"cogito_quarantine_{step}_{n}_moved")
        self.manager.reload()
        logger.warning("checkpoint step %d in %s is damaged (%s): moved to %s; trying the previous step", step,
                       self.directory, why, target.name)

    def wait(self) -> None:
        """Blocks until any async save has been committed; CheckpointError if it failed."""
        self.check(wait=True)

    def close(self) -> None:
        try:
            self.check(wait=True)
        finally:
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


def validate(ck: Mapping[str, Any]) -> None:
    """Checks the ``checkpoint`` section."""
    for key, low in (("every", 1), ("keep_last", 1), ("keep_every", 0)):
        if ck[key] < low:
            raise ConfigError(f"checkpoint.{key}={ck[key]} must be >= {low}")

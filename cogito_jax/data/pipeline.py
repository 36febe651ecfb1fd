"""The Grain input pipeline: records -> chat-formatted token ids + padded log-mel -> static batches.

Order of operations: global shuffle by seed -> epochs (reshuffled each epoch) -> this process's
slice (``process_index::process_count``) -> tokenise (in worker processes when ``num_workers > 0``)
-> over-long examples become placeholder rows (dropped when packing) -> [packing | bucketing by audio
length] -> batch. The batches are the same whatever the number of workers and, without packing, the
global batch of a step holds the same examples whatever the number of processes. Every shape is
static (``max_len`` tokens, ``max_frames`` mel frames or one of a few bucket widths), so the train step
compiles once per shape. The iterator's state is a small JSON
object saved in each checkpoint, so a resumed run continues with the next unseen example.

Batch (per process, ``b`` rows): ``input_ids/targets/loss_mask/answer_mask/attention_mask [b, max_len]``,
``input_features [b, n_mels, frames]`` float32, ``feature_attention_mask [b, frames]`` int32,
``index [b]`` (the example's position in the shuffled stream, to audit what was consumed).
``loss_mask`` is the record's ``weight`` on the assistant's tokens (shifted: position i predicts token
i + 1) and 0 elsewhere; ``answer_mask`` is 1 on the answer after the last ``</think>`` (for answer-token
accuracy).

Placeholder rows (``index`` -1, no loss, one attended pad token, no audio) keep the stream's positions:
an example longer than ``max_len`` becomes one instead of being dropped, so every process's slice keeps
its place in the global order; a finite stream (``num_epochs``) is padded with them to a whole number of
global batches, so every example is seen and every process runs the same number of steps.

Packing (``packing=True``): Grain's first-fit packer fills ``b`` rows of ``max_len`` tokens with
whole examples in stream order (an example that fits no row closes the batch and opens the next one),
at most ``max_clips_per_row`` per row. Added per row: ``segment_ids [b, max_len]`` (1..k, 0 for
padding), ``positions [b, max_len]`` (restarting at 0 in every segment); the loss mask and targets
stay per example, so no token predicts across a boundary. Audio becomes ``input_features
[b, max_clips_per_row, n_mels, frames]``, ``feature_attention_mask [b, max_clips_per_row, frames]``,
``clip_mask [b, max_clips_per_row]`` and ``index [b, max_clips_per_row]`` (-1 for an empty slot): the
clips of a row are in segment order, so flattening rows then clips gives the order in which the
model's ``merge_audio`` fills placeholder tokens (reading order over the batch).

Bucketing (``audio_buckets``, increasing mel-frame widths; ``max_frames`` is always the last):
without packing, windows of ``bucket_window`` batches are read, sorted by audio length (stable), cut
into batches and emitted in an order shuffled by seed and window number; each batch is padded to the
smallest bucket that holds its longest clip. Every example of a window is emitted exactly once. With
packing, each packed batch is cut to the smallest bucket that holds its longest clip.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np

from cogito_jax import sharding
from cogito_jax.data import chat, tokenizer as toklib
from cogito_jax.errors import ConfigError, is_int

BOOKKEEPING = ("index", "clip_mask")  # batch fields the model does not take


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    """Static shapes and formatting of one training example."""

    family: str
    max_len: int
    max_frames: int
    n_mels: int
    n_window: int = 50  # qwen3_omni_thinker AuT chunking (placeholder count)
    system: str | None = "default"
    use_thinking: bool = True
    pad_id: int = 0


class Tokenize(grain.transforms.Map):
    """A record -> arrays (padded, or unpadded for packing); ``{}`` for an example longer than ``max_len``.

    One output per input (dropping happens later, in the main process), so worker processes, each taking
    every ``num_workers``-th element, hand back the stream in order whatever their number.
    """

    def __init__(self, tokenizer_dir: str, spec: ExampleSpec, padded: bool = True):
        self.tokenizer_dir = tokenizer_dir
        self.spec = spec
        self.padded = padded
        self._tok = None
        self._memo = TokenMemo()

    def _tokenizer(self):
        if self._tok is None:  # loaded lazily: once per worker process
            self._tok = toklib.load(self.tokenizer_dir)
        return self._tok

    def map(self, element: tuple[int, Mapping[str, Any] | None]) -> dict[str, np.ndarray] | None:
        index, rec = element
        if rec is None:  # padding of a finite stream
            return placeholder_row(self.spec)
        encode = encode_record if self.padded else encode_unpadded
        out = encode(rec, self._tokenizer(), self.spec, index, self._memo)
        return {} if out is None else out


class TokenMemo:
    """The token ids and masks of the conversations tokenised last, by their text, in at most ``max_bytes`` (the
    arrays plus the key's text): a small dataset read for many epochs is tokenised once (the demo's SFT reads its
    600 examples 16 times; tokenising is ~1.3 ms an example, on the host, beside the train step). The oldest entry
    goes first when it is full; a dataset larger than that read in shuffled order mostly misses and is tokenised
    as without it. Each worker process holds its own."""

    def __init__(self, max_bytes: int = 64 << 20):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: dict[tuple, tuple[tuple[np.ndarray, ...], int]] = {}  # key -> (arrays, their bytes)

    def get(self, key: tuple, make) -> tuple[np.ndarray, ...]:
        """Copies of the cached arrays of ``key``, made by ``make()`` (and kept) on a miss."""
        if key in self._entries:
            hit = self._entries[key][0]
        else:
            hit = make()
            strings = [x for x in key if isinstance(x, str)] + [c for x in key if isinstance(x, tuple) for c in x]
            size = sum(map(len, strings)) + sum(a.nbytes for a in hit)
            self._entries[key] = hit, size
            self.bytes += size
            while self.bytes > self.max_bytes and len(self._entries) > 1:
                self.bytes -= self._entries.pop(next(iter(self._entries)))[1]
        return tuple(a.copy() for a in hit)


def _tokens_and_audio(rec: Mapping[str, Any], tokenizer: Any, spec: ExampleSpec, memo: TokenMemo | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(token ids [n], loss weights [n], answer mask [n], features [n_mels, max_frames], frame mask [max_frames]);
    the tokens from ``memo`` when it holds the conversation (one memo per tokenizer and ``spec``)."""
    fmt = chat.chat_format(spec.family)
    mel_fm = np.asarray(rec["mel"], np.float32)[: spec.max_frames]
    n_frames = mel_fm.shape[0]
    if mel_fm.shape[1] != spec.n_mels:
        raise ValueError(f"record {rec.get('id')!r}: mel has {mel_fm.shape[1]} bins, the model expects {spec.n_mels}")
    n_audio = chat.num_audio_tokens(spec.family, n_frames, spec.n_window)
    thinking = (rec.get("thinking") if spec.use_thinking else None) or None

    def tokens() -> tuple[np.ndarray, ...]:
        ids, mask = chat.encode_example(tokenizer, fmt, chat.mcq_text(rec["question"], rec["choices"]),
                                        rec["answer"], thinking=thinking, num_audio_tokens=n_audio, system=spec.system)
        return ids, mask, chat.answer_mask(ids, mask, tokenizer.convert_tokens_to_ids(chat.THINK_CLOSE))

    key = (rec["question"], tuple(rec["choices"]), rec["answer"], thinking, n_audio)
    ids, mask, answer = tokens() if memo is None else memo.get(key, tokens)
    weight = float(rec.get("weight", 1.0))
    if not (np.isfinite(weight) and weight >= 0):
        raise ValueError(f"record {rec.get('id')!r}: weight={weight} must be a finite number >= 0")
    feats = np.zeros((spec.n_mels, spec.max_frames), np.float32)
    feats[:, :n_frames] = mel_fm.T
    fmask = np.zeros(spec.max_frames, np.int32)
    fmask[:n_frames] = 1
    return ids, mask.astype(np.float32) * np.float32(weight), answer, feats, fmask


def encode_record(rec: Mapping[str, Any], tokenizer: Any, spec: ExampleSpec, index: int = 0,
                  memo: TokenMemo | None = None) -> dict[str, np.ndarray] | None:
    """One record as padded arrays (see module docstring), or None if it does not fit ``max_len``."""
    ids, mask, answer, feats, fmask = _tokens_and_audio(rec, tokenizer, spec, memo)
    if len(ids) > spec.max_len:
        return None
    t = spec.max_len
    input_ids = np.full(t, spec.pad_id, np.int32)
    input_ids[: len(ids)] = ids
    targets = np.full(t, spec.pad_id, np.int32)
    targets[: len(ids) - 1] = ids[1:]
    loss_mask = np.zeros(t, np.float32)
    loss_mask[: len(ids) - 1] = mask[1:]  # predict token i+1 at position i
    answer_mask = np.zeros(t, np.float32)
    answer_mask[: len(ids) - 1] = answer[1:]
    attention = np.zeros(t, np.int32)
    attention[: len(ids)] = 1
    return {"input_ids": input_ids, "targets": targets, "loss_mask": loss_mask, "answer_mask": answer_mask,
            "attention_mask": attention, "input_features": feats, "feature_attention_mask": fmask,
            "index": np.int64(index)}


def placeholder_row(spec: ExampleSpec) -> dict[str, np.ndarray]:
    """A padded row that holds a stream position without an example: no loss, no audio, ``index`` -1."""
    t = spec.max_len
    attention = np.zeros(t, np.int32)
    attention[0] = 1  # one attended pad token, so no attention row is empty
    zeros = np.zeros(t, np.float32)
    return {"input_ids": np.full(t, spec.pad_id, np.int32), "targets": np.full(t, spec.pad_id, np.int32),
            "loss_mask": zeros, "answer_mask": zeros.copy(), "attention_mask": attention,
            "input_features": np.zeros((spec.n_mels, spec.max_frames), np.float32),
            "feature_attention_mask": np.zeros(spec.max_frames, np.int32), "index": np.int64(-1)}


def encode_unpadded(rec: Mapping[str, Any], tokenizer: Any, spec: ExampleSpec, index: int = 0,
                    memo: TokenMemo | None = None) -> dict[str, np.ndarray] | None:
    """One record for the packer: token fields ``[n]`` (unpadded) and audio fields with a leading clip
    axis of 1 (``input_features [1, n_mels, max_frames]``, ``feature_attention_mask [1, max_frames]``,
    ``index [1]``); None if it does not fit ``max_len``."""
    ids, mask, answer, feats, fmask = _tokens_and_audio(rec, tokenizer, spec, memo)
    n = len(ids)
    if n > spec.max_len:
        return None
    targets = np.full(n, spec.pad_id, np.int32)
    targets[:-1] = ids[1:]
    loss_mask = np.zeros(n, np.float32)
    loss_mask[:-1] = mask[1:]
    answer_mask = np.zeros(n, np.float32)
    answer_mask[:-1] = answer[1:]
    return {"input_ids": np.asarray(ids, np.int32), "targets": targets, "loss_mask": loss_mask,
            "answer_mask": answer_mask,
            "input_features": feats[None], "feature_attention_mask": fmask[None],
            "index": np.asarray([index], np.int64)}


def _with_position(position: int, rec: Any) -> tuple[int, Any]:
    return position, rec  # position in the (shuffled, repeated) stream


class _TooLongGuard:
    """Counts examples in a row that did not fit ``max_len``; raises if nothing seems to fit, instead of spinning."""

    def __init__(self, max_len: int, limit: int):
        self.max_len, self.limit, self.in_a_row = max_len, limit, 0

    def fits(self, ex: Any) -> bool:
        if ex:
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise ValueError(f"{self.in_a_row} examples in a row are longer than max_len={self.max_len} tokens; "
                             "raise data.max_len (or shorten prompts)")
        return False


class _DropTooLong(grain.transforms.Filter, _TooLongGuard):
    """Drops examples that did not fit ``max_len`` (packing: the packer's rows keep no stream positions)."""

    def filter(self, ex: Any) -> bool:
        return self.fits(ex)


class _PlaceTooLong(grain.transforms.Map, _TooLongGuard):
    """Turns an example that did not fit ``max_len`` into a placeholder row, keeping its stream position."""

    def __init__(self, spec: ExampleSpec, limit: int):
        _TooLongGuard.__init__(self, spec.max_len, limit)
        self.spec = spec

    def map(self, ex: Any) -> dict[str, np.ndarray]:
        return ex if self.fits(ex) else placeholder_row(self.spec)


class _PadToLength(grain.MapDataset):
    """``parent`` followed by ``(-1, None)`` elements (placeholder rows) up to ``length``."""

    def __init__(self, parent: grain.MapDataset, length: int):
        super().__init__(parent)
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[index] if index < len(self._parent) else (-1, None)


# ----------------------------------------------------------------------------- bucketing


def normalise_buckets(buckets: Sequence[int], max_frames: int) -> tuple[int, ...]:
    """Sorted distinct bucket widths ending with ``max_frames``; ValueError for a bad list."""
    b = [int(x) for x in buckets]
    if any(x < 1 or x > max_frames for x in b):
        raise ValueError(f"audio buckets {tuple(b)} must lie in [1, max_frames={max_frames}]")
    return tuple(sorted(set(b) | {max_frames}))


def bucket_for(n_frames: int, buckets: Sequence[int]) -> int:
    """The smallest bucket width that holds ``n_frames`` frames (buckets sorted, last = max_frames)."""
    return buckets[min(int(np.searchsorted(buckets, n_frames, side="left")), len(buckets) - 1)]


class _CropFrames:
    """Batch function: stacks elements, then cuts the frame axis to the smallest bucket holding every clip."""

    def __init__(self, buckets: Sequence[int]):
        self.buckets = tuple(buckets)

    def __call__(self, elements: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        batch = {k: np.stack([e[k] for e in elements]) for k in elements[0]}
        fmask = batch["feature_attention_mask"]
        longest = int(fmask.reshape(-1, fmask.shape[-1]).sum(-1).max(initial=0))
        width = bucket_for(longest, self.buckets)
        batch["input_features"] = np.ascontiguousarray(batch["input_features"][..., :width])
        batch["feature_attention_mask"] = np.ascontiguousarray(fmask[..., :width])
        return batch


class _BucketOrderIterator(grain.DatasetIterator):
    """Reorders each window of ``window`` elements into length-sorted groups of ``batch_size``."""

    def __init__(self, parent: grain.DatasetIterator, window: int, batch_size: int, seed: int):
        super().__init__(parent)
        self._window, self._batch_size, self._seed = window, batch_size, seed
        self._start = self._parent.get_state()  # parent state at the current window's first element
        self._window_no = 0
        self._emitted = 0  # elements of the current window already returned
        self._buffer: list | None = None

    def _fill(self) -> None:
        elements = []
        for _ in range(self._window):
            try:
                elements.append(next(self._parent))
            except StopIteration:
                break
        if not elements:
            raise StopIteration
        frames = np.asarray([int(np.sum(e["feature_attention_mask"])) for e in elements])
        by_length = np.argsort(frames, kind="stable")
        groups = [by_length[i:i + self._batch_size] for i in range(0, len(by_length), self._batch_size)]
        full, tail = groups[:len(elements) // self._batch_size], groups[len(elements) // self._batch_size:]
        perm = np.random.default_rng([self._seed, self._window_no]).permutation(len(full))
        order = [i for g in perm for i in full[g]] + [i for g in tail for i in g]
        self._buffer = [elements[i] for i in order]

    def __next__(self):
        if self._buffer is None:
            self._fill()
        if self._emitted >= len(self._buffer):
            self._buffer, self._emitted = None, 0
            self._window_no += 1
            self._start = self._parent.get_state()
            return next(self)
        element = self._buffer[self._emitted]
        self._emitted += 1
        return element

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._start, "window": self._window_no, "emitted": self._emitted}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._start = state["parent"]
        self._window_no, self._emitted, self._buffer = state["window"], state["emitted"], None


class BucketOrderIterDataset(grain.IterDataset):
    """Groups examples of similar audio length into consecutive runs of ``batch_size`` (see module doc)."""

    def __init__(self, parent: grain.IterDataset, *, batch_size: int, window_batches: int, seed: int = 0):
        super().__init__(parent)
        self._batch_size, self._window, self._seed = batch_size, batch_size * window_batches, seed

    def __iter__(self) -> grain.DatasetIterator:
        return _BucketOrderIterator(self._parent.__iter__(), self._window, self._batch_size, self._seed)


# ----------------------------------------------------------------------------- packing

PACKED_TOKEN_FIELDS = ("input_ids", "targets", "loss_mask", "answer_mask")
PACKED_CLIP_FIELDS = ("input_features", "feature_attention_mask", "index")


class _PackedRow(grain.transforms.Map):
    """Grain's packer output -> the packed row layout of the module docstring."""

    def map(self, row: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        segment_ids = row["input_ids_segment_ids"].astype(np.int32)
        out = {k: row[k] for k in PACKED_TOKEN_FIELDS + PACKED_CLIP_FIELDS}
        out["segment_ids"] = segment_ids
        out["positions"] = row["input_ids_positions"].astype(np.int32)
        out["attention_mask"] = (segment_ids > 0).astype(np.int32)
        out["clip_mask"] = (row["index_segment_ids"] > 0).astype(np.int32)
        return out


def pack(ds: grain.IterDataset, spec: ExampleSpec, rows: int, max_clips_per_row: int) -> grain.IterDataset:
    """Packs unpadded examples (:func:`encode_unpadded`) first-fit into ``rows`` rows per group."""
    c = max_clips_per_row
    lengths = {**{k: spec.max_len for k in PACKED_TOKEN_FIELDS}, **{k: c for k in PACKED_CLIP_FIELDS}}
    padding = {"input_ids": spec.pad_id, "targets": spec.pad_id, "loss_mask": 0, "answer_mask": 0, "input_features": 0,
               "feature_attention_mask": 0, "index": -1}
    ds = grain.experimental.FirstFitPackIterDataset(ds, length_struct=lengths, num_packing_bins=rows,
                                                    shuffle_bins=False, padding_struct=padding,
                                                    max_sequences_per_bin=c)
    return ds.map(_PackedRow())


# ----------------------------------------------------------------------------- the dataset


def make_dataset(
    source: Any,
    *,
    tokenizer_dir: str,
    spec: ExampleSpec,
    batch_size: int,
    seed: int = 0,
    num_epochs: int | None = None,
    shuffle: bool = True,
    num_workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    packing: bool = False,
    max_clips_per_row: int = 4,
    audio_buckets: Sequence[int] = (),
    bucket_window: int = 8,
) -> grain.IterDataset:
    """A checkpointable iterator dataset of this process's batches (``batch_size`` = per-process rows)."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if max_clips_per_row < 1:
        raise ValueError(f"max_clips_per_row={max_clips_per_row} must be >= 1")
    buckets = normalise_buckets(audio_buckets, spec.max_frames) if audio_buckets else ()
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    ds = ds.map_with_index(_with_position)
    if num_epochs is not None and not packing:
        step_rows = batch_size * process_count
        ds = _PadToLength(ds, -(-len(ds) // step_rows) * step_rows)
    ds = ds[process_index::process_count]
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=8))
    limit = max(64, min(len(source), 1000))
    it = it.map(Tokenize(tokenizer_dir, spec, padded=not packing))
    if num_workers > 0:
        # Workers tokenise single examples and hand them back round-robin, in stream order, so the
        # batches below are the same whatever the number of workers.
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=16))
    it = it.filter(_DropTooLong(spec.max_len, limit)) if packing else it.map(_PlaceTooLong(spec, limit))
    if packing:
        it = pack(it, spec, batch_size, max_clips_per_row)
    elif buckets:
        it = BucketOrderIterDataset(it, batch_size=batch_size, window_batches=bucket_window, seed=seed)
    return it.batch(batch_size, drop_remainder=True, batch_fn=_CropFrames(buckets) if buckets else None)


def global_batch(local: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh,
                 logical: Mapping[str, Sequence[str | None]] | None = None) -> dict[str, jax.Array]:
    """Global arrays (batch dimension sharded over the data axes) from each process's local rows."""
    out = {}
    for name, arr in local.items():
        axes = (logical or {}).get(name, ("batch",) + (None,) * (arr.ndim - 1))
        spec = sharding.logical_to_spec(axes, mesh=mesh)
        sh = jax.sharding.NamedSharding(mesh, spec)
        shape = (arr.shape[0] * jax.process_count(),) + arr.shape[1:]
        out[name] = jax.make_array_from_process_local_data(sh, arr, shape)
    return out


def validate(d: Mapping[str, Any]) -> None:
    """Checks the input pipeline's keys of the ``data`` section (those of them the config sets)."""
    if "packing" in d and not isinstance(d.packing, bool):
        raise ConfigError(f"data.packing={d.packing!r} must be True or False")
    for key, low in (("max_clips_per_row", 1), ("num_workers", 0), ("max_len", 1), ("num_train", 1),
                     ("num_heldout", 0), ("seed", 0)):
        if key in d and (not is_int(d[key]) or d[key] < low):
            raise ConfigError(f"data.{key}={d[key]!r} must be an integer >= {low}")
    if "audio_buckets" in d:
        b = d.audio_buckets
        if (not isinstance(b, (tuple, list)) or any(not is_int(x) or x < 1 for x in b)
                or list(b) != sorted(set(b))):
            raise ConfigError(f"data.audio_buckets={b!r} must be increasing positive mel-frame counts, "
                              "e.g. (500, 1000)")

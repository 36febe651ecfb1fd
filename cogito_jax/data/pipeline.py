"""The Grain input pipeline: records -> chat-formatted token ids + padded log-mel -> static batches.

Order of operations: global shuffle by seed -> epochs (reshuffled each epoch) -> this process's
slice (``process_index::process_count``) -> tokenise and pad (in worker processes when
``num_workers > 0``) -> drop over-long examples -> batch (in stream order, whatever the workers).
Every shape is static (``max_len`` tokens,
``max_frames`` mel frames), so the train step compiles once. The iterator's state is a small JSON
object saved in each checkpoint, so a resumed run continues with the next unseen example.

Batch (per process, ``b`` rows): ``input_ids/targets/loss_mask/attention_mask [b, max_len]``,
``input_features [b, n_mels, max_frames]`` float32, ``feature_attention_mask [b, max_frames]`` int32,
``index [b]`` (the example's position in the shuffled stream, to audit what was consumed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np

from cogito_jax.data import chat


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
    """A record dict -> fixed-shape arrays; ``None`` for an example longer than ``max_len``."""

    def __init__(self, tokenizer_dir: str, spec: ExampleSpec):
        self.tokenizer_dir = tokenizer_dir
        self.spec = spec
        self._tok = None

    def _tokenizer(self):
        if self._tok is None:  # loaded lazily: once per worker process
            from cogito_jax.data.tokenizer import load

            self._tok = load(self.tokenizer_dir)
        return self._tok

    def map(self, element: tuple[int, Mapping[str, Any]]) -> dict[str, np.ndarray] | None:
        index, rec = element
        return encode_record(rec, self._tokenizer(), self.spec, index)


def encode_record(rec: Mapping[str, Any], tokenizer: Any, spec: ExampleSpec, index: int = 0
                  ) -> dict[str, np.ndarray] | None:
    """One record as padded arrays (see module docstring), or None if it does not fit ``max_len``."""
    fmt = chat.chat_format(spec.family)
    mel_fm = np.asarray(rec["mel"], np.float32)[: spec.max_frames]
    n_frames = mel_fm.shape[0]
    if mel_fm.shape[1] != spec.n_mels:
        raise ValueError(f"record {rec.get('id')!r}: mel has {mel_fm.shape[1]} bins, the model expects {spec.n_mels}")
    n_audio = chat.num_audio_tokens(spec.family, n_frames, spec.n_window)
    thinking = rec.get("thinking") if spec.use_thinking else None
    ids, mask = chat.encode_example(tokenizer, fmt, chat.mcq_text(rec["question"], rec["choices"]), rec["answer"],
                                    thinking=thinking or None, num_audio_tokens=n_audio, system=spec.system)
    if len(ids) > spec.max_len:
        return None
    t = spec.max_len
    input_ids = np.full(t, spec.pad_id, np.int32)
    input_ids[: len(ids)] = ids
    targets = np.full(t, spec.pad_id, np.int32)
    targets[: len(ids) - 1] = ids[1:]
    loss_mask = np.zeros(t, np.float32)
    loss_mask[: len(ids) - 1] = mask[1:]  # predict token i+1 at position i
    attention = np.zeros(t, np.int32)
    attention[: len(ids)] = 1
    feats = np.zeros((spec.n_mels, spec.max_frames), np.float32)
    feats[:, :n_frames] = mel_fm.T
    fmask = np.zeros(spec.max_frames, np.int32)
    fmask[:n_frames] = 1
    return {"input_ids": input_ids, "targets": targets, "loss_mask": loss_mask, "attention_mask": attention,
            "input_features": feats, "feature_attention_mask": fmask, "index": np.int64(index)}


def _with_position(position: int, rec: Any) -> tuple[int, Any]:
    return position, rec  # position in the (shuffled, repeated) stream


class _DropTooLong(grain.transforms.Filter):
    """Drops examples that did not fit ``max_len``; raises if nothing seems to fit, instead of spinning."""

    def __init__(self, max_len: int, limit: int):
        self.max_len, self.limit, self.in_a_row = max_len, limit, 0

    def filter(self, ex: Any) -> bool:
        if ex is not None:
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise ValueError(f"{self.in_a_row} examples in a row are longer than max_len={self.max_len} tokens; "
                             "raise data.max_len (or shorten prompts)")
        return False


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
) -> grain.IterDataset:
    """A checkpointable iterator dataset of this process's batches (``batch_size`` = per-process rows)."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    ds = ds.map_with_index(_with_position)
    ds = ds[process_index::process_count]
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=8))
    limit = max(64, min(len(source), 1000))
    it = it.map(Tokenize(tokenizer_dir, spec)).filter(_DropTooLong(spec.max_len, limit))
    if num_workers > 0:
        # Workers tokenise single examples and hand them back round-robin, in stream order, so the
        # batches below are the same whatever the number of workers.
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=16))
    return it.batch(batch_size, drop_remainder=True)


def global_batch(local: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh,
                 logical: Mapping[str, Sequence[str | None]] | None = None) -> dict[str, jax.Array]:
    """Global arrays (batch dimension sharded over the data axes) from each process's local rows."""
    from cogito_jax import sharding

    out = {}
    for name, arr in local.items():
        axes = (logical or {}).get(name, ("batch",) + (None,) * (arr.ndim - 1))
        spec = sharding.logical_to_spec(axes, mesh=mesh)
        sh = jax.sharding.NamedSharding(mesh, spec)
        shape = (arr.shape[0] * jax.process_count(),) + arr.shape[1:]
        out[name] = jax.make_array_from_process_local_data(sh, arr, shape)
    return out

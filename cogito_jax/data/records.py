"""The record schema shared by data_prep and training, msgpack encoding, ArrayRecord shards.

One record = one (audio, conversation) example. NumPy arrays are stored as raw bytes with dtype and
shape (msgpack ext type 1), so decoding is a ``frombuffer`` with no copy of the payload. Shards are
ArrayRecord files named ``<prefix>-<i:05d>-of-<n:05d>.array_record`` that Grain reads by index.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

SCHEMA_VERSION = 1
_ND_EXT = 1

# Field -> (required, type description). `mel` or `audio_embeds` carries the audio.
FIELDS: dict[str, tuple[bool, str]] = {
    "id": (True, "str"),
    "mel": (False, "float16 [frames, n_mels], unpadded log-mel"),
    "audio_embeds": (False, "float [tokens, d], pre-extracted encoder output"),
    "n_frames": (True, "int, valid mel frames (or embedding tokens)"),
    "question": (True, "str"),
    "choices": (True, "list[str], 2-6 full-text options"),
    "answer": (True, "str, one of choices"),
    "thinking": (False, "str, chain of thought (may be empty)"),
    "source": (False, "str"),
    "modality": (False, "str"),
    "category": (False, "str"),
    "sub_category": (False, "str"),
    "provenance": (False, "dict, where the record came from (stage outputs, model, seed)"),
}


class RecordError(ValueError):
    """A record that does not follow the schema; the message names the record and field."""


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        header = msgpack.packb([arr.dtype.str, list(arr.shape)])
        return msgpack.ExtType(_ND_EXT, len(header).to_bytes(4, "little") + header + arr.tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} in a record")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _ND_EXT:
        return msgpack.ExtType(code, data)
    n = int.from_bytes(data[:4], "little")
    dtype, shape = msgpack.unpackb(data[4:4 + n])
    return np.frombuffer(data, dtype=np.dtype(dtype), offset=4 + n).reshape(shape)


def encode(record: Mapping[str, Any]) -> bytes:
    """Serialises a record dict (NumPy arrays kept with dtype and shape)."""
    return msgpack.packb({"_v": SCHEMA_VERSION, **record}, default=_default, use_bin_type=True)


def decode(data: bytes) -> dict[str, Any]:
    """The inverse of :func:`encode`; arrays are read-only views of ``data``."""
    rec = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    version = rec.pop("_v", None)
    if version != SCHEMA_VERSION:
        raise RecordError(f"record schema version {version!r}, expected {SCHEMA_VERSION}")
    return rec


def validate(record: Mapping[str, Any]) -> None:
    """Raises RecordError naming the record and the bad field."""
    rid = record.get("id", "<no id>")
    for name, (required, _) in FIELDS.items():
        if required and name not in record:
            raise RecordError(f"record {rid!r}: missing field {name!r}")
    unknown = set(record) - set(FIELDS)
    if unknown:
        raise RecordError(f"record {rid!r}: unknown fields {sorted(unknown)}; schema: {sorted(FIELDS)}")
    if "mel" not in record and "audio_embeds" not in record:
        raise RecordError(f"record {rid!r}: needs 'mel' or 'audio_embeds'")
    audio = record.get("mel", record.get("audio_embeds"))
    if not isinstance(audio, np.ndarray) or audio.ndim != 2:
        raise RecordError(f"record {rid!r}: audio features must be a 2-D array, got {getattr(audio, 'shape', audio)}")
    if int(record["n_frames"]) != audio.shape[0]:
        raise RecordError(f"record {rid!r}: n_frames={record['n_frames']} but features have {audio.shape[0]} rows")
    choices = record["choices"]
    if not (2 <= len(choices) <= 6) or len(set(choices)) != len(choices):
        raise RecordError(f"record {rid!r}: choices must be 2-6 distinct strings, got {choices!r}")
    if record["answer"] not in choices:
        raise RecordError(f"record {rid!r}: answer {record['answer']!r} is not among choices {choices!r}")


def make_record(**fields: Any) -> dict[str, Any]:
    """A validated record; ``mel`` is stored as float16."""
    rec = {k: v for k, v in fields.items() if v is not None}
    if "mel" in rec:
        rec["mel"] = np.asarray(rec["mel"], np.float16)
    rec.setdefault("thinking", "")
    validate(rec)
    return rec


# ----------------------------------------------------------------------------- ArrayRecord shards


def shard_paths(directory: str | pathlib.Path, prefix: str = "data") -> list[pathlib.Path]:
    """The shards of a dataset folder, in order."""
    return sorted(pathlib.Path(directory).glob(f"{prefix}-*-of-*.array_record"))


def write_shards(records: Iterable[Mapping[str, Any]], directory: str | pathlib.Path, num_shards: int = 1,
                 prefix: str = "data", check: bool = True) -> list[pathlib.Path]:
    """Writes records round-robin into ``num_shards`` ArrayRecord files; returns their paths."""
    from array_record.python.array_record_module import ArrayRecordWriter

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{prefix}-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)]
    writers = [ArrayRecordWriter(str(p), "group_size:1") for p in paths]
    try:
        for i, rec in enumerate(records):
            if check:
                validate(rec)
            writers[i % num_shards].write(encode(rec))
    finally:
        for w in writers:
            w.close()
    return paths


@dataclasses.dataclass
class RecordSource:
    """Random access over ArrayRecord shards (a Grain ``RandomAccessDataSource``), decoded records."""

    paths: Sequence[str | pathlib.Path]

    def __post_init__(self):
        import grain

        if not self.paths:
            raise FileNotFoundError("no ArrayRecord shards given")
        self._source = grain.sources.ArrayRecordDataSource([str(p) for p in self.paths])

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return decode(self._source[index])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    @classmethod
    def from_dir(cls, directory: str | pathlib.Path, prefix: str = "data") -> RecordSource:
        paths = shard_paths(directory, prefix)
        if not paths:
            raise FileNotFoundError(f"no {prefix}-*-of-*.array_record shards in {str(directory)!r}")
        return cls(paths)

"""The record schema shared by data_prep, training and self-distillation, and its on-disk form: a TFDS
dataset in ArrayRecord files (``file_format="array_record"``), readable with ``tfds.data_source`` /
Grain and no TensorFlow. The TFDS builder that writes it (:func:`builder`) keeps the records' input order
(``disable_shuffling``): readers shuffle, writers do not have to; ``tensorflow_datasets`` is imported only
when a dataset is written or read.

One record = one (audio, conversation) example. Audio is stored as ``mel`` (float16 ``[frames,
n_mels]``, unpadded log-mel) or ``audio_embeds`` (pre-extracted encoder output ``[tokens, d]``).
"""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

DATASET_NAME = "cogito_records"
VERSION = "1.0.0"

# Field -> (required, description).
FIELDS: dict[str, tuple[bool, str]] = {
    "id": (True, "str"),
    "mel": (False, "float16 [frames, n_mels], unpadded log-mel"),
    "audio_embeds": (False, "float16 [tokens, d], pre-extracted encoder output"),
    "n_frames": (True, "int, rows of the audio features"),
    "question": (True, "str"),
    "choices": (True, "list[str], 2-6 distinct full-text options"),
    "answer": (True, "str, one of choices"),
    "thinking": (False, "str, chain of thought (may be empty)"),
    "weight": (False, "float, loss weight of the example (default 1)"),
    "source": (False, "str"),
    "modality": (False, "str"),
    "category": (False, "str"),
    "sub_category": (False, "str"),
    "provenance": (False, "dict, where the record came from (JSON-serialisable)"),
}
TEXT_FIELDS = ("id", "question", "answer", "thinking", "source", "modality", "category", "sub_category")
DEFAULTS = {"thinking": "", "weight": 1.0, "source": "", "modality": "", "category": "", "sub_category": "",
            "provenance": {}}


class RecordError(ValueError):
    """A record that does not follow the schema; the message names the record and field."""


def validate(record: Mapping[str, Any]) -> None:
    """Raises RecordError naming the record and the bad field."""
    rid = record.get("id", "<no id>")
    for name, (required, _) in FIELDS.items():
        if required and name not in record:
            raise RecordError(f"record {rid!r}: missing field {name!r}")
    unknown = set(record) - set(FIELDS)
    if unknown:
        raise RecordError(f"record {rid!r}: unknown fields {sorted(unknown)}; schema: {sorted(FIELDS)}")
    if ("mel" in record) == ("audio_embeds" in record):
        raise RecordError(f"record {rid!r}: needs exactly one of 'mel' and 'audio_embeds'")
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
    """A validated record with defaults filled in; audio features stored as float16."""
    rec = {**DEFAULTS, **{k: v for k, v in fields.items() if v is not None}}
    for key in ("mel", "audio_embeds"):
        if key in rec:
            rec[key] = np.asarray(rec[key], np.float16)
    rec["choices"] = list(rec.get("choices", []))
    validate(rec)
    return rec


def item_record(item: Mapping[str, Any], mel: np.ndarray) -> dict[str, Any]:
    """The record of one kept manifest item (``id``, ``audio_path``, ``question``, ``choices``, ``answer`` and
    optionally ``thinking``, ``modality``, ``category``, ``sub_category``, ``metadata`` with its ``source``, and
    a build's ``clip_id`` / ``question_source`` / ``trace_sample``) with its log-mel ``[frames, n_mels]``."""
    meta = item.get("metadata") or {}
    provenance = {"audio_path": str(item["audio_path"]),
                  **{k: item[k] for k in ("clip_id", "question_source", "trace_sample") if k in item}}
    return make_record(
        id=item["id"], mel=mel, n_frames=mel.shape[0], question=item["question"], choices=item["choices"],
        answer=item["answer"], thinking=item.get("thinking", ""), source=str(meta.get("source", "manifest")),
        modality=item.get("modality", ""), category=item.get("category", ""),
        sub_category=item.get("sub_category", ""), provenance=provenance,
    )


# ----------------------------------------------------------------------------- TFDS dataset


def features(audio_field: str, feat_dim: int):
    """The TFDS FeaturesDict of a dataset whose audio is ``audio_field`` with ``feat_dim`` columns."""
    import tensorflow_datasets as tfds

    tf = tfds.features
    spec = {name: tf.Text() for name in TEXT_FIELDS}
    # Stored as one bytes value: the default encoding writes an array through a protobuf float list, one Python
    # call per value (3.7 ms for a 4 s clip, ~45 ms for a 30 s one) and 4 bytes a value. A dataset written with
    # that encoding still reads: its own features.json names the encoding.
    spec[audio_field] = tf.Tensor(shape=(None, feat_dim), dtype=np.float16, encoding=tfds.features.Encoding.BYTES)
    spec["n_frames"] = tf.Scalar(dtype=np.int32)
    spec["weight"] = tf.Scalar(dtype=np.float32)
    spec["choices"] = tf.Sequence(tf.Text())
    spec["provenance"] = tf.Text()  # JSON
    return tf.FeaturesDict(spec)


def to_example(rec: Mapping[str, Any]) -> dict[str, Any]:
    """A validated record as the TFDS example the dataset stores (defaults filled, provenance as JSON)."""
    validate(rec)
    ex = {**DEFAULTS, **rec}
    ex["provenance"] = json.dumps(ex["provenance"], sort_keys=True, default=str)
    ex["n_frames"] = np.int32(ex["n_frames"])
    ex["weight"] = np.float32(ex["weight"])
    return ex


def builder(*, splits: Mapping[str, Callable[[], Iterable[Mapping[str, Any]]]] | None = None,
            audio_field: str = "mel", feat_dim: int = 128, description: str = "", **kwargs):
    """The TFDS builder of a records dataset: ``splits`` (``{split: () -> records}``) to write it with
    ``download_and_prepare``; ``kwargs`` go to TFDS (``data_dir``, ``file_format``)."""
    return _builder_class()(splits=splits, audio_field=audio_field, feat_dim=feat_dim, description_text=description,
                            **kwargs)


@functools.cache
def _builder_class():
    """The builder class, defined (and registered with TFDS) on first use."""
    import tensorflow_datasets as tfds

    version = VERSION

    class CogitoRecords(tfds.core.GeneratorBasedBuilder):
        """Audio multiple-choice reasoning records (see ``cogito_jax.data.records.FIELDS``)."""

        name = DATASET_NAME
        VERSION = tfds.core.Version(version)
        RELEASE_NOTES = {version: "Schema: id, mel|audio_embeds, n_frames, question, choices, answer, "
                                  "thinking, weight, source, modality, category, sub_category, provenance."}

        def __init__(self, *, splits=None, audio_field: str = "mel", feat_dim: int = 128, description_text: str = "",
                     **kwargs):
            self._splits = dict(splits or {})
            self._audio_field, self._feat_dim, self._description = audio_field, feat_dim, description_text
            super().__init__(**kwargs)

        def _info(self) -> tfds.core.DatasetInfo:
            return tfds.core.DatasetInfo(
                builder=self,
                description=self._description or self.__doc__,
                features=features(self._audio_field, self._feat_dim),
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            if not self._splits:
                raise ValueError("CogitoRecords needs splits={name: callable returning records} to build")
            return {name: self._generate_examples(make) for name, make in self._splits.items()}

        def _generate_examples(self, make):
            for rec in make():
                yield rec["id"], to_example(rec)

    return CogitoRecords


def write_dataset(data_dir: str | pathlib.Path, splits: Mapping[str, Callable[[], Iterable[Mapping[str, Any]]]],
                  audio_field: str = "mel", feat_dim: int = 128, description: str = "") -> pathlib.Path:
    """Writes ``{split: () -> records}`` as a TFDS array_record dataset under ``data_dir``; returns its folder."""
    b = builder(data_dir=str(data_dir), file_format="array_record", splits=splits, audio_field=audio_field,
                feat_dim=feat_dim, description=description)
    b.download_and_prepare()
    return pathlib.Path(b.data_dir)


def _normalise(ex: Mapping[str, Any]) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for k, v in ex.items():
        if isinstance(v, bytes):
            v = v.decode("utf-8")
        rec[k] = v
    rec["choices"] = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in ex["choices"]]
    rec["provenance"] = json.loads(rec.get("provenance") or "{}")
    rec["n_frames"] = int(rec["n_frames"])
    rec["weight"] = float(rec.get("weight", 1.0))
    return rec


class RecordSource:
    """Random access to one split of a dataset written by :func:`write_dataset`, as plain record dicts.

    A Grain ``RandomAccessDataSource``: ``len`` and ``__getitem__``; pickles by path for worker processes.
    """

    def __init__(self, dataset_dir: str | pathlib.Path, split: str = "train"):
        self.dataset_dir, self.split = str(dataset_dir), split
        self._source = self._open()

    def _open(self):
        import tensorflow_datasets as tfds

        path = pathlib.Path(self.dataset_dir)
        if not (path / "dataset_info.json").exists():
            raise FileNotFoundError(f"no TFDS dataset in {self.dataset_dir!r} (dataset_info.json is missing)")
        builder = tfds.builder_from_directory(self.dataset_dir)
        if self.split not in builder.info.splits:
            raise KeyError(f"dataset {self.dataset_dir!r} has no split {self.split!r}; "
                           f"it has {sorted(builder.info.splits)}")
        return builder.as_data_source(split=self.split)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _normalise(self._source[index])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def __getstate__(self):
        return {"dataset_dir": self.dataset_dir, "split": self.split}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._source = self._open()

"""A TFDS-catalog source: an audio dataset TFDS knows (nsynth, speech_commands, crema_d, librispeech, ...) that is
already prepared under a local ``data_dir`` -> wav files + a contract-6 manifest. Nothing is ever downloaded:
when the prepared files are not there, the error says where they were looked for.

``python -m data_prep.sources.tfds_source --name speech_commands --data_dir ~/tensorflow_datasets --split train
--out DIR/manifest.jsonl`` writes ``DIR/audio/<name>/<split>/<id>.wav`` and the manifest (metadata: every
non-audio feature, class labels by name), with skipped examples in ``DIR/manifest.skipped.jsonl``.

The prepared dataset is read the way ``tfds.builder(name, data_dir=...)`` / ``tfds.data_source`` read it, from
``<data_dir>/<name>[/<config>]/<version>/``: ``dataset_info.json`` (file format, splits, shard lengths),
``features.json`` (feature types, audio sample rate) and ``<key>.labels.txt`` (class names); shards are read as
array_record or tfrecord (length-prefixed frames; CRCs are not checked) and examples are parsed with TFDS's
NumPy example parser, the one ``tfds.data_source`` uses. TFDS's catalog builders and its ``Audio`` feature
import TensorFlow just to be constructed, so ``tfds.builder("nsynth")`` cannot run without TensorFlow; this
reader needs only tensorflow-datasets, array-record and protobuf.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import io
import json
import pathlib
import re
import struct
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import soundfile as sf

from data_prep.sources.adapters.common import (
    MODALITIES,
    AdapterError,
    CliParser,
    Entry,
    Row,
    Skip,
    Summary,
    run_conversion,
    slug,
    write_manifest,
)

# Audio datasets of the TFDS catalog and what they hold (others need --modality).
CATALOG_MODALITY = {
    "nsynth": "music", "groove": "music", "gtzan": "music",
    "speech_commands": "speech", "crema_d": "speech", "librispeech": "speech", "libritts": "speech",
    "ljspeech": "speech", "vctk": "speech", "savee": "speech", "spoken_digit": "speech", "tedlium": "speech",
    "yes_no": "speech", "dementiabank": "speech", "accentdb": "speech", "voxceleb": "speech", "voxforge": "speech",
    "common_voice": "speech", "user_libri_audio": "speech", "fuss": "sound",
}
MAX_LIST = 16  # array features with more elements than this (e.g. nsynth's f0 curves) stay out of the metadata
_NAME = re.compile(r"(?P<name>\w+)(?:/(?P<config>[\w.-]+))?(?::(?P<version>\d+\.\d+\.\d+))?")
_VERSION = re.compile(r"\d+\.\d+\.\d+")
_DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One stored feature: ``key`` ("a/b" when nested), kind (audio / label / text / tensor), how it is stored."""

    key: str
    kind: str
    dtype: Any
    shape: tuple
    sample_rate: int = 0
    lazy: bool = False
    names: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A prepared TFDS dataset on disk."""

    name: str
    config: str | None
    version: str
    path: pathlib.Path
    file_format: str
    splits: dict[str, dict[str, Any]]
    leaves: tuple[Leaf, ...]

    @property
    def ref(self) -> str:
        return f"{self.name}{'/' + self.config if self.config else ''}:{self.version}"

    def shards(self, split: str) -> list[pathlib.Path]:
        """The split's shard files, in order; an AdapterError names a missing split or shard."""
        if split not in self.splits:
            raise AdapterError(f"{self.ref} has no split {split!r}; prepared splits: {sorted(self.splits)}")
        info = self.splits[split]
        n = len(info.get("shardLengths", [])) or 1
        template = info.get("filepathTemplate") or _DEFAULT_TEMPLATE
        paths = [self.path / template.format(DATASET=self.name, SPLIT=split, FILEFORMAT=self.file_format,
                                             SHARD_X_OF_Y=f"{i:05d}-of-{n:05d}", SHARD_INDEX=f"{i:05d}",
                                             NUM_SHARDS=f"{n:05d}") for i in range(n)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise AdapterError(f"{self.ref} split {split!r} is incomplete under {self.path}: missing {missing}")
        return paths


def _versions(folder: pathlib.Path) -> list[str]:
    if not folder.is_dir():
        return []
    found = [p.name for p in folder.iterdir() if _VERSION.fullmatch(p.name) and (p / "dataset_info.json").is_file()]
    return sorted(found, key=lambda v: tuple(map(int, v.split("."))))


def locate(ref: str, data_dir: str | pathlib.Path) -> Prepared:
    """The prepared copy of ``name[/config][:version]`` under ``data_dir`` (latest version when not given)."""
    m = _NAME.fullmatch(ref.strip())
    if not m:
        raise AdapterError(f"TFDS name {ref!r} is not of the form name[/config][:x.y.z]")
    name, config, version = m["name"], m["config"], m["version"]
    _check_catalog(name)
    data_dir = pathlib.Path(data_dir).expanduser()
    hint = (f"prepare it first (e.g. `tfds build {ref} --data_dir {data_dir}` where TensorFlow and the network "
            "are available); this source never downloads")
    base = data_dir / name
    if not base.is_dir():
        raise AdapterError(f"{name} is not prepared under {data_dir} (no folder {base}); {hint}")
    if config is None and not _versions(base):
        configs = sorted(p.name for p in base.iterdir() if _versions(p))
        if len(configs) > 1:
            raise AdapterError(f"{name} has several prepared configs under {base}: {configs}; name one as "
                               f"{name}/<config>")
        config = configs[0] if configs else None
    folder = base / config if config else base
    versions = _versions(folder)
    if version is None and versions:
        version = versions[-1]
    if version not in versions:
        raise AdapterError(f"{ref} is not prepared under {data_dir}: no version folder with dataset_info.json in "
                           f"{folder} (found {versions or 'none'}); {hint}")
    path = folder / version
    info = _read_json(path / "dataset_info.json")
    features = _read_json(path / "features.json")
    leaves: list[Leaf] = []
    _walk(features, "", path, leaves)
    splits = {s["name"]: s for s in info.get("splits", [])}
    return Prepared(name, config, version, path, info.get("fileFormat") or "tfrecord", splits, tuple(leaves))


def _check_catalog(name: str) -> None:
    import tensorflow_datasets as tfds

    known = tfds.list_builders(with_community_datasets=False)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        raise AdapterError(f"{name!r} is not a dataset of the TFDS catalog{f'; close: {close}' if close else ''}")


def _read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise AdapterError(f"cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path} is not valid JSON: {e}") from None


def _dtype(name: str) -> Any:
    return np.object_ if name == "string" else np.dtype(name).type


def _shape(spec: dict) -> tuple:
    return tuple(None if int(d) < 0 else int(d) for d in (spec or {}).get("dimensions", []))


def _walk(feature: dict, key: str, folder: pathlib.Path, out: list[Leaf]) -> None:
    """Collects the features TFDS stored (nested FeaturesDicts flattened to "a/b" keys); kinds this reader
    cannot turn into metadata (images, sequences, encoded tensors) are left out."""
    if "featuresDict" in feature:
        for k, sub in feature["featuresDict"].get("features", {}).items():
            _walk(sub, f"{key}/{k}" if key else k, folder, out)
    elif "audio" in feature:
        a = feature["audio"]
        if a.get("encoding", "none") != "none":
            raise AdapterError(f"feature {key!r} in {folder / 'features.json'} stores audio with encoding "
                               f"{a['encoding']!r}; only 'none' is read")
        lazy = bool(a.get("lazyDecode"))
        out.append(Leaf(key, "audio", np.object_ if lazy else _dtype(a.get("dtype", "int64")),
                        () if lazy else _shape(a.get("shape")), int(a.get("sampleRate") or 0), lazy))
    elif "classLabel" in feature:
        labels = folder / f"{key.replace('/', '-')}.labels.txt"
        names = tuple(labels.read_text(encoding="utf-8").splitlines()) if labels.is_file() else ()
        out.append(Leaf(key, "label", np.int64, (), names=names))
    elif "text" in feature:
        out.append(Leaf(key, "text", np.object_, ()))
    elif "tensor" in feature and feature["tensor"].get("encoding", "none") == "none":
        t = feature["tensor"]
        out.append(Leaf(key, "tensor", _dtype(t.get("dtype", "float32")), _shape(t.get("shape"))))


def _parser(leaves: Sequence[Leaf]):
    from tensorflow_datasets.core.example_parser import ExampleParserNp
    from tensorflow_datasets.core.features.feature import TensorInfo

    specs: dict[str, Any] = {}
    for leaf in leaves:
        *parents, last = leaf.key.split("/")
        node = specs
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = TensorInfo(shape=leaf.shape, dtype=leaf.dtype)
    return ExampleParserNp(specs)


def _records(path: pathlib.Path, file_format: str, chunk: int = 256) -> Iterator[bytes]:
    if file_format == "array_record":
        from array_record.python.array_record_module import ArrayRecordReader

        reader = ArrayRecordReader(str(path), "readahead_buffer_size:0")
        try:
            n = reader.num_records()
            for start in range(0, n, chunk):
                yield from reader.read(start, min(start + chunk, n))
        finally:
            reader.close()
    elif file_format == "tfrecord":
        with open(path, "rb") as f:
            while header := f.read(12):
                if len(header) < 12:
                    raise AdapterError(f"{path} is cut short inside a record header")
                (length,) = struct.unpack("<Q", header[:8])
                data = f.read(length)
                if len(data) < length or len(f.read(4)) < 4:
                    raise AdapterError(f"{path} is cut short inside a record of {length} bytes")
                yield data
    else:
        raise AdapterError(f"{path}: file format {file_format!r} is not read (array_record or tfrecord)")


def _get(example: dict, key: str) -> Any:
    for part in key.split("/"):
        example = example[part]
    return example


def _plain(leaf: Leaf, value: Any) -> Any:
    """A JSON value for a non-audio feature, or None to leave it out."""
    if leaf.kind == "label":
        i = int(value)
        return leaf.names[i] if 0 <= i < len(leaf.names) else i
    if isinstance(value, bytes | str):
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    arr = np.asarray(value, dtype=object if leaf.dtype is np.object_ else None)
    if arr.size > MAX_LIST:
        return None
    if arr.dtype == object:
        items = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.reshape(-1)]
        return items[0] if arr.ndim == 0 else items
    return arr.item() if arr.ndim == 0 else arr.tolist()


def _write_audio(leaf: Leaf, value: Any, sample_rate: int, path: pathlib.Path) -> str | None:
    """Writes the clip as wav; returns why it could not, or None."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if leaf.lazy:
        blob = bytes(value)
        try:
            info = sf.info(io.BytesIO(blob))
            pcm16 = info.subtype in ("PCM_16", "PCM_S8", "PCM_U8")
            data, sr = sf.read(io.BytesIO(blob), dtype="int16" if pcm16 else "float32")
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            return f"undecodable_audio: {leaf.key} ({len(blob)} bytes) is not a readable audio file: {e}"
    else:
        data, sr = np.asarray(value), sample_rate
        pcm16 = data.dtype == np.int16
        if np.issubdtype(data.dtype, np.integer) and not pcm16:
            peak = int(np.abs(data.astype(np.int64)).max(initial=0))
            bits = next((b for b in (16, 24, 32) if peak <= 2 ** (b - 1)), 64)  # PCM width the samples fit
            pcm16 = bits == 16
            data = np.clip(data, -32768, 32767).astype(np.int16) if pcm16 else \
                (data / 2.0 ** (bits - 1)).astype(np.float32)
    if len(data) == 0:
        return f"empty_audio: {leaf.key} holds no samples"
    sf.write(path, data, int(sr), subtype="PCM_16" if pcm16 else "FLOAT")
    return None


def rows(prepared: Prepared, split: str, out_dir: pathlib.Path, modality: str, sample_rate: int | None = None,
         limit: int | None = None) -> Iterator[Row]:
    """Writes each example's audio under ``out_dir/audio/<name>/<split>/`` and yields its manifest Entry (or a
    Skip when the audio cannot be written)."""
    audio = [leaf for leaf in prepared.leaves if leaf.kind == "audio"]
    if not audio:
        raise AdapterError(f"{prepared.ref} has no Audio feature in {prepared.path / 'features.json'}")
    leaf, others = audio[0], [x for x in prepared.leaves if x is not audio[0]]
    rate = sample_rate or leaf.sample_rate
    if not leaf.lazy and not rate:
        raise AdapterError(f"{prepared.ref}: feature {leaf.key!r} has no sample rate in features.json; pass "
                           "--sample_rate")
    parser = _parser(prepared.leaves)
    id_leaf = next((x for x in others if x.key == "id" and x.dtype is np.object_), None)
    folder = pathlib.PurePosixPath("audio", slug(prepared.name), slug(split))
    index = 0
    for shard in prepared.shards(split):
        for record in _records(shard, prepared.file_format):
            if limit is not None and index >= limit:
                return
            example = parser.parse_example(record)
            own = _plain(id_leaf, _get(example, "id")) if id_leaf else None
            item_id = f"{prepared.name}-{slug(split)}-{slug(own) if own else f'{index:06d}'}"
            rel = folder / f"{item_id}.wav"
            why = _write_audio(leaf, _get(example, leaf.key), rate, out_dir / rel)
            if why:
                yield Skip(item_id, why)
            else:
                features = {x.key: _plain(x, _get(example, x.key)) for x in others}
                metadata = {"source": prepared.name, "tfds": prepared.ref, "split": split, "index": index,
                            **{k: v for k, v in features.items() if v is not None}}
                yield Entry(item_id, {"path": rel.as_posix()}, modality, metadata)
            index += 1


def convert(ref: str, data_dir: str | pathlib.Path, split: str, out: str | pathlib.Path, *,
            modality: str | None = None, sample_rate: int | None = None, limit: int | None = None,
            progress: bool = True) -> Summary:
    """Writes wav files + a manifest for one split of a prepared catalog dataset (see the module docstring)."""
    prepared = locate(ref, data_dir)
    modality = modality or CATALOG_MODALITY.get(prepared.name)
    if modality not in MODALITIES:
        raise AdapterError(f"modality {modality!r} for {prepared.name} is not one of {list(MODALITIES)}; pass "
                           "--modality")
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_manifest(rows(prepared, split, out.parent, modality, sample_rate, limit), ("{path}",), out.parent,
                          out, progress=progress, desc=f"{prepared.ref} {split}")


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m data_prep.sources.tfds_source",
               description="A prepared TFDS catalog audio dataset -> wav files + a manifest (never downloads).")
    p.add_argument("--name", required=True, help="name[/config][:version], e.g. speech_commands or nsynth/full")
    p.add_argument("--data_dir", "--data-dir", dest="data_dir", required=True, help="TFDS data_dir holding it")
    p.add_argument("--split", default="train", help="split to convert (default train)")
    p.add_argument("--out", required=True, help="manifest JSONL; audio goes to <its folder>/audio/<name>/<split>/")
    p.add_argument("--modality", default=None, help=f"one of {', '.join(MODALITIES)} (known for "
                                                    f"{', '.join(sorted(CATALOG_MODALITY))})")
    p.add_argument("--sample_rate", "--sample-rate", dest="sample_rate", type=int, default=None,
                   help="sample rate of the audio when features.json has none")
    p.add_argument("--limit", type=int, default=None, help="convert only the first N examples")
    p.add_argument("--no_progress", "--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_conversion(lambda: convert(args.name, args.data_dir, args.split, args.out, modality=args.modality,
                                          sample_rate=args.sample_rate, limit=args.limit, progress=args.progress),
                          args.name)


if __name__ == "__main__":
    sys.exit(main())

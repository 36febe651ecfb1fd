"""Cogito-pipe's CPU stages as an Apache Beam pipeline: the same dataset as ``data_prep.build``, on any runner.

    python -m data_prep.beam_pipeline --config configs/data/manifest.py --out DIR [--config.a.b=v] [-- BEAM OPTIONS]

``BEAM OPTIONS`` are standard pipeline options (``--runner=DataflowRunner --project=P --region=R
--temp_location=gs://...``, ``--runner=FlinkRunner``, ``--direct_num_workers=2``); they add to
``beam.options`` of the config. No runner given: DirectRunner. ``DIR`` may be local or any Beam filesystem
(``gs://``, ``s3://``). With ``runner="beam"`` in the config, ``python -m data_prep.build`` runs this too.

Stages: the launcher reads the source (``steps.source_items``) and stages the items, each with its
manifest index, as JSONL under ``DIR/cache/beam`` -> per clip, in parallel: ``clips.process_clip`` (decode,
quality filters, PCM hash, log-mel) -> GroupByKey on the audio hash (``beam.select_groups`` groups, every clip
of one hash in the same group) and ``steps.select_items`` on each group in manifest order: failed clips,
contamination, exact duplicates (the first in manifest order is kept), no question -> records written per
shard -> the launcher writes ``dataset_info.json`` and ``report.json`` as ``data_prep.build`` does.

Sharding is deterministic: shard ``s`` of ``S = ceil(items / beam.clips_per_shard)`` holds the kept items
whose manifest index lies in ``[s * items / S, (s + 1) * items / S)``, in manifest order, so shard 0, 1, ...
read in order gives the local build's record order whatever the runner's scheduling; a shard may be empty.
ArrayRecord's writer needs a local file, so each shard is written to the worker's temp folder and then
copied to its final name through Beam's FileSystems (``gs://`` from Dataflow workers included); the name and
content of a shard depend only on the input, so a retried or duplicated bundle rewrites the same bytes.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import json
import math
import os
import pathlib
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from absl import flags
from ml_collections import ConfigDict

from cogito_jax import cli, errors
from cogito_jax.data import clips, fingerprint, records
from cogito_jax.errors import ConfigError
from data_prep import report as report_lib, stages, steps
from data_prep.config import prefix_map, validate_beam_config, validate_data_config

# ----------------------------------------------------------------------------- per-element steps (run on workers)


def shard_of(index: int, num_items: int, num_shards: int) -> int:
    """The output shard of the item at manifest position ``index``: contiguous ranges of the manifest."""
    return index * num_shards // num_items


def group_of(item_id: str, row: dict, groups: int) -> int:
    """The selection group of a clip: by its audio hash (failed clips, which have none, by their id)."""
    key = row["hash"] if row["ok"] else hashlib.sha256(item_id.encode()).hexdigest()
    return int(key[:12], 16) % groups


@contextlib.contextmanager
def _readable_audio(path: str, prefix_map: tuple[tuple[str, str], ...]) -> Iterator[str]:
    """A local path with the clip's bytes: ``path`` itself, or a temp copy of its remote twin under the map."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    remote = next((dst + path[len(src):] for src, dst in prefix_map if path.startswith(src)), None)
    if remote is None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="cogito_audio_") as tmp:
        local = os.path.join(tmp, os.path.basename(path) or "clip")
        try:
            with FileSystems.open(remote, compression_type=CompressionTypes.UNCOMPRESSED) as src_f, \
                    open(local, "wb") as dst_f:
                shutil.copyfileobj(src_f, dst_f, 1 << 20)
        except OSError:
            local = path  # not there: decoding the original path reports it as unreadable
        yield local


@functools.lru_cache(maxsize=2)
def _fingerprints(path: str) -> fingerprint.Index:
    """The benchmark fingerprint index the launcher wrote to ``path`` (read once per worker process)."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        return fingerprint.Index.from_bytes(f.read())


def process(entry: dict, features: clips.Features, filters: clips.FilterConfig,
            prefix_map: tuple[tuple[str, str], ...], fingerprints: str | None = None) -> tuple[int, dict, dict, Any]:
    """``(index, item, row, mel)`` of one staged item: ``clips.process_clip`` on a readable copy of its audio,
    and the clip's fingerprint lookup in the index at ``fingerprints`` (a path) when one is given."""
    item = entry["item"]
    with _readable_audio(item["audio_path"], prefix_map) as path:
        row, mel = clips.process_clip({**item, "audio_path": path}, features, filters)
    row = {**row, **steps.match_row(_fingerprints(fingerprints) if fingerprints else None, mel)}
    return entry["index"], item, row, mel


def select(group: tuple[int, Iterable[tuple[int, dict, dict]]], cfg: ConfigDict) -> Iterator[dict]:
    """Decisions for one selection group: ``steps.select_items`` on its clips in manifest order.

    Every clip sharing an audio hash is in the group, and ``select_items`` decides each item from its own
    row, the config and the earlier items of the same hash, so the decisions equal the local run's.
    """
    members = sorted(group[1], key=lambda m: m[0])
    rows = {item["id"]: row for _, item, row in members}
    kept, rejected = steps.select_items([item for _, item, _ in members], rows, cfg)
    reasons = {r["id"]: r["reason"] for r in rejected}
    kept_ids = {item["id"] for item in kept}
    for index, item, row in members:
        if (item["id"] in kept_ids) == (item["id"] in reasons):
            how = "both kept and rejected" if item["id"] in kept_ids else "neither kept nor rejected"
            raise RuntimeError(f"select_items returned item {item['id']!r} {how}")
        yield {"index": index, "id": item["id"], "reason": reasons.get(item["id"]), "row": row}


@functools.lru_cache(maxsize=4)
def _features(n_mels: int):
    return records.features("mel", n_mels)


def write_shard(element: tuple[int, dict], dataset_dir: str, names: Sequence[str], n_mels: int) -> dict:
    """Writes one shard's kept records, in manifest order, to ``dataset_dir/names[shard]``; returns its size."""
    from tensorflow_datasets.core import file_adapters

    shard, groups = element
    kept = set(groups["kept"])
    shard_clips = sorted((c for c in groups["clip"] if c[0] in kept), key=lambda c: c[0])
    if len(shard_clips) != len(kept):
        missing = sorted(kept - {c[0] for c in shard_clips})
        raise RuntimeError(f"shard {shard}: kept manifest indices {missing[:10]} have no features")
    feats = _features(n_mels)
    size = {"shard": shard, "n": 0, "num_bytes": 0}

    def serialized():
        for _, item, mel in shard_clips:
            data = feats.serialize_example(records.to_example(records.item_record(item, mel)))
            size["n"] += 1
            size["num_bytes"] += len(data)
            yield None, data

    with tempfile.TemporaryDirectory(prefix="cogito_shard_") as tmp:
        local = os.path.join(tmp, names[shard])
        file_adapters.ArrayRecordFileAdapter.write_examples(local, serialized())
        upload(local, f"{dataset_dir}/{names[shard]}")
    return size


# ----------------------------------------------------------------------------- files through Beam's FileSystems


def is_remote(path: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.get_scheme(path) not in (None, "file")


def upload(local: str | pathlib.Path, dest: str) -> None:
    """Copies a local file to ``dest`` (local or remote); the parent folder is created where needed."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    with open(local, "rb") as src, FileSystems.create(dest, compression_type=CompressionTypes.UNCOMPRESSED) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def _delete_tree(path: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    files = [m.path for r in FileSystems.match([f"{path}/**"]) for m in r.metadata_list]
    if files:
        FileSystems.delete(files)


def check_dataset_dir(out: str) -> None:
    """``steps.check_dataset_dir`` for ``out/dataset``, local or remote: ConfigError unless it is absent, empty or
    holds the marker a build writes into it."""
    from apache_beam.io.filesystems import FileSystems

    folder = f"{out}/dataset"
    if not is_remote(out):
        return steps.check_dataset_dir(pathlib.Path(folder))
    names = {m.path[len(folder) + 1:] for r in FileSystems.match([f"{folder}/**"]) for m in r.metadata_list}
    if names and not names & set(steps.OWN_MARKERS):
        raise steps.foreign_dataset_error(folder)


def _read_jsonl(pattern: str) -> list[dict]:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    out = []
    for m in sorted((m for r in FileSystems.match([pattern]) for m in r.metadata_list), key=lambda m: m.path):
        with FileSystems.open(m.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            out.extend(json.loads(line) for line in f if line.strip())
    return out


def _write_lines(path: str, lines: Iterable[str]) -> None:
    _write_chunks(path, (line.encode() + b"\n" for line in lines))


def _write_chunks(path: str, chunks: Iterable[bytes]) -> None:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for chunk in chunks:
            f.write(chunk)


# ----------------------------------------------------------------------------- launcher


def pipeline_options(cfg: ConfigDict, extra: Sequence[str] = ()):
    """PipelineOptions from ``beam.options`` + ``extra``; ConfigError naming options Beam does not know."""
    from apache_beam.options.pipeline_options import PipelineOptions

    options = [*cfg.beam.options, *extra]
    opts = PipelineOptions(options)
    unknown = sorted(set(opts.get_all_options(retain_unknown_options=True)) - set(opts.get_all_options()))
    if unknown:
        raise ConfigError(f"unknown Beam pipeline options {['--' + u for u in unknown]} in {options}")
    return opts


def build(cfg: ConfigDict, out_dir: str, pipeline_args: Sequence[str] = ()) -> dict[str, Any]:
    """Runs the CPU stages on Beam; returns the report (also written to ``out_dir/report.json``)."""
    try:
        import apache_beam as beam
    except ImportError as e:
        raise ConfigError("runner=beam needs Apache Beam: pip install apache-beam==2.77.0 "
                          "(apache-beam[gcp] for Dataflow)") from e
    import tensorflow_datasets as tfds

    cfg = validate_beam_config(cfg)
    if stages.configured(cfg):
        raise ConfigError(f"the Beam pipeline runs the CPU stages only; annotate.model={cfg.annotate.model!r} and "
                          f"think.model={cfg.think.model!r} must be empty")
    out = out_dir.rstrip("/")
    remote = is_remote(out)
    if remote and cfg.source.kind == "synthetic":
        raise ConfigError(f"source.kind=synthetic writes its audio on this machine, which --out={out!r} workers "
                          "cannot read; write the corpus locally and build from its manifest")
    opts = pipeline_options(cfg, pipeline_args)
    check_dataset_dir(out)
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cogito_beam_") as scratch:
        t = time.time()
        items, rejected = steps.source_items(cfg, pathlib.Path(scratch if remote else out))
        times["source"] = time.time() - t

        t = time.time()
        work = f"{out}/cache/beam"
        _delete_tree(work)
        _delete_tree(f"{out}/dataset")
        _write_lines(f"{out}/dataset/{steps.DATASET_MARKER}", ["written by data_prep.beam_pipeline, which replaces "
                                                                "this folder on a re-run"])
        _write_lines(f"{work}/items.jsonl", (json.dumps({"index": i, "item": it}) for i, it in enumerate(items)))
        # the benchmark fingerprint index, built (or read from the cache) here, where the meta files are; the
        # workers read it from the work folder
        index = steps.fingerprints(cfg, pathlib.Path(scratch if remote else out) / "cache")
        index_path = None
        if index is not None:
            index_path = f"{work}/fingerprints.npz"
            _write_chunks(index_path, [index.to_bytes()])
        builder = records.builder(data_dir=f"{scratch}/tfds", file_format="array_record", feat_dim=cfg.features.n_mels,
                                  description=f"Cogito-pipe build of {cfg.source.kind} source")
        local_ds = pathlib.Path(builder.data_dir)
        dataset_dir = f"{out}/dataset/{local_ds.relative_to(f'{scratch}/tfds').as_posix()}"
        n, num_shards, groups = len(items), max(1, math.ceil(len(items) / cfg.beam.clips_per_shard)), \
            cfg.beam.select_groups
        template = tfds.core.ShardedFileTemplate(data_dir=local_ds, dataset_name=builder.name, split="train",
                                                 filetype_suffix="array_record")
        names = [template.sharded_filepath(shard_index=s, num_shards=num_shards).name for s in range(num_shards)]
        times["stage"] = time.time() - t

        t = time.time()
        with beam.Pipeline(options=opts) as p:
            clips = (p | "ReadItems" >> beam.io.ReadFromText(f"{work}/items.jsonl")
                     | "Parse" >> beam.Map(json.loads)
                     | "DecodeFilterLogMel" >> beam.Map(process, steps.feature_config(cfg), steps.filter_config(cfg),
                                                        prefix_map(cfg.beam.audio_prefix_map), index_path))
            decisions = (clips
                         | "KeyByHash" >> beam.Map(lambda c: (group_of(c[1]["id"], c[2], groups), c[:3]))
                         | "GroupByHash" >> beam.GroupByKey()
                         | "Select" >> beam.FlatMap(select, cfg))
            with_features = (clips
                             | "Decoded" >> beam.Filter(lambda c: c[3] is not None)
                             | "ClipByShard" >> beam.Map(lambda c: (shard_of(c[0], n, num_shards), (c[0], c[1], c[3]))))
            kept = (decisions
                    | "Kept" >> beam.Filter(lambda d: d["reason"] is None)
                    | "KeptByShard" >> beam.Map(lambda d: (shard_of(d["index"], n, num_shards), d["index"])))
            shards = p | "Shards" >> beam.Create([(s, None) for s in range(num_shards)])
            sizes = ({"shard": shards, "clip": with_features, "kept": kept}
                     | "JoinByShard" >> beam.CoGroupByKey()
                     | "WriteShards" >> beam.Map(write_shard, dataset_dir, names, cfg.features.n_mels))
            _ = (decisions | "DecisionJson" >> beam.Map(json.dumps)
                 | "WriteDecisions" >> beam.io.WriteToText(f"{work}/decisions", file_name_suffix=".jsonl"))
            _ = (sizes | "SizeJson" >> beam.Map(json.dumps)
                 | "WriteSizes" >> beam.io.WriteToText(f"{work}/shards", file_name_suffix=".jsonl"))
        times["beam"] = time.time() - t

        t = time.time()
        decided = sorted(_read_jsonl(f"{work}/decisions*.jsonl"), key=lambda d: d["index"])
        if [d["index"] for d in decided] != list(range(n)):
            got = {d["index"] for d in decided}
            raise RuntimeError(f"the pipeline decided {len(decided)} items for {n} staged ones "
                               f"(missing indices {sorted(set(range(n)) - got)[:10]})")
        kept_items = [items[d["index"]] for d in decided if d["reason"] is None]
        rejected += [{"id": d["id"], "reason": d["reason"]} for d in decided if d["reason"] is not None]
        rows = {d["id"]: d["row"] for d in decided}
        sizes_by_shard = {s["shard"]: s for s in _read_jsonl(f"{work}/shards*.jsonl")}
        if sorted(sizes_by_shard) != list(range(num_shards)) or \
                sum(s["n"] for s in sizes_by_shard.values()) != len(kept_items):
            raise RuntimeError(f"shards written {sorted(sizes_by_shard)} of {num_shards} hold "
                               f"{sum(s['n'] for s in sizes_by_shard.values())} records for {len(kept_items)} kept")
        if kept_items:
            builder.info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
                name="train", shard_lengths=[sizes_by_shard[s]["n"] for s in range(num_shards)],
                num_bytes=sum(s["num_bytes"] for s in sizes_by_shard.values()), filename_template=template)]))
            local_ds.mkdir(parents=True, exist_ok=True)
            builder.info.write_to_directory(local_ds)
            for f in sorted(local_ds.iterdir()):
                upload(f, f"{dataset_dir}/{f.name}")
        else:  # as build.build: no kept item, no dataset
            _delete_tree(f"{out}/dataset")
            dataset_dir = None
        times["finalize"] = time.time() - t
        report = report_lib.summarize(items, kept_items, rejected, rows, times,
                                      dataset_dir if remote or dataset_dir is None else pathlib.Path(dataset_dir))
        report_dir = pathlib.Path(scratch) / "report" if remote else pathlib.Path(out)
        report_dir.mkdir(parents=True, exist_ok=True)
        report_lib.write(report, report_dir)
        if remote:
            for f in sorted(report_dir.rglob("*")):
                if f.is_file():
                    upload(f, f"{out}/{f.relative_to(report_dir).as_posix()}")
    return report


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(our flags, Beam pipeline options): everything after a lone ``--`` goes to Beam."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def main(cfg: ConfigDict, out: str | None, pipeline_args: Sequence[str] = ()) -> int:
    if not out:
        errors.usage_error("--out is required")
    report = build(cfg, out, pipeline_args)
    reasons = collections.Counter(r["reason"].split(":")[0] for r in report["rejected"])
    where = f"dataset in {report['dataset_dir']}" if report["dataset_dir"] else "no dataset written"
    print(f"kept {report['kept']} items, rejected {len(report['rejected'])} ({dict(reasons)}); {where}")
    return 0


if __name__ == "__main__":
    from data_prep import beam_pipeline  # the functions Beam pickles, under their module's own name

    ours, beam_args = split_argv(sys.argv)
    _OUT = flags.DEFINE_string("out", None, "Output folder (dataset, report, cache): local or any Beam filesystem.")
    cli.define_config_flag()
    cli.run_main(lambda cfg: beam_pipeline.main(cfg, _OUT.value, beam_args), argv=ours, uses_devices=False,
                    validate_fn=validate_data_config)

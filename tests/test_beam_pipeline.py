"""data_prep.beam_pipeline (DirectRunner, in process) against data_prep.build on the same corpus: the same kept
items, the same rejection reasons, byte-identical records (float16 log-mel included) in the same order."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.localfilesystem import LocalFileSystem

from cogito_jax.data import clips, records, synthetic
from cogito_jax.errors import ConfigError
from data_prep import beam_pipeline, build, steps
from data_prep.config import base_data_config, validate_beam_config

REPO = pathlib.Path(__file__).resolve().parents[1]
BEAM_ARGS = ["--runner=DirectRunner"]


def _config(manifest, **beam):
    cfg = base_data_config()
    cfg.source.manifest = str(manifest)
    cfg.features.n_mels = 80
    cfg.filters.min_seconds = 0.3
    cfg.beam.clips_per_shard, cfg.beam.select_groups = 5, 3  # several shards, several hashes per group
    cfg.beam.update(beam)
    return cfg


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A synthetic corpus plus corrupt files, exact duplicates (one listed before its original, one of a clip
    without a question), a benchmark-contaminated clip and manifest lines that never reach the audio stage."""
    root = tmp_path_factory.mktemp("beam_corpus")
    synthetic.write_corpus(root, 18, seed=4)
    lines = [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines()]
    audio = {x["id"]: x["audio_path"] for x in lines}
    ids = list(audio)

    def like(base, new_id, path, question=True):
        line = {**base, "id": new_id, "audio_path": path}
        return line if question else {k: v for k, v in line.items() if k not in ("question", "choices", "answer")}

    bad = root / "bad"
    bad.mkdir()
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.float32)
    (bad / "empty.wav").write_bytes(b"")
    sf.write(bad / "trunc.wav", tone, 16000)
    (bad / "trunc.wav").write_bytes((bad / "trunc.wav").read_bytes()[:2000])
    (bad / "random.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    sf.write(bad / "nan.wav", np.full(32000, np.nan, np.float32), 16000, subtype="FLOAT")
    sf.write(bad / "zeros.wav", np.zeros(32000, np.float32), 16000)
    sf.write(bad / "tiny.wav", tone[:800], 16000)
    sf.write(bad / "sr0.wav", tone, 16000)
    (bad / "sr0.wav").write_bytes((bad / "sr0.wav").read_bytes()[:24] + bytes(8) + (bad / "sr0.wav").read_bytes()[32:])
    (bad / "a_directory.wav").mkdir()
    shutil.copy(root / audio[ids[3]], bad / "copy_of_3.wav")
    base = lines[0]
    out = [like(base, "dup_of_5_first", audio[ids[5]])]  # listed before its original: this one is kept
    out += lines[:9]
    out.append(like(base, "noq_dup_of_12", audio[ids[12]], question=False))  # rejected, so ids[12] stays
    out += lines[9:]
    out += [like(base, "dup_of_3_copied_file", "bad/copy_of_3.wav"), like(base, "dup_of_7", audio[ids[7]])]
    out += [like(base, name, f"bad/{name}.wav") for name in ("empty", "trunc", "random", "nan", "zeros", "tiny",
                                                            "sr0", "a_directory", "missing")]
    sf.write(bad / "unique_tone.wav", tone, 16000)
    sf.write(bad / "yt.wav", 0.5 * tone, 16000)
    out.append(like(base, "yt_overlap", "bad/yt.wav"))
    out[-1]["metadata"] = {**base["metadata"], "url": "https://youtu.be/abcdefghijk", "timestamp": "00:05-00:15"}
    out += [like(base, "escape", "../../etc/passwd"), like(base, "noq", "bad/unique_tone.wav", question=False)]
    text = [json.dumps(x) for x in out]
    text.insert(4, "{not json")
    (root / "manifest.jsonl").write_text("\n".join(text) + "\n")
    (root / "mmar.jsonl").write_text(json.dumps({"id": "mmar-1", "audio_path": audio[ids[10]]}) + "\n" + json.dumps(
        {"id": "mmar-2", "url": "https://www.youtube.com/watch?v=abcdefghijk", "timestamp": "00:01-00:11"}) + "\n")
    return root, ids


@pytest.fixture(scope="module")
def both(corpus, tmp_path_factory):
    root, _ = corpus
    cfg = _config(root / "manifest.jsonl")
    cfg.filters.contamination_meta = (str(root / "mmar.jsonl"),)
    out = tmp_path_factory.mktemp("builds")
    return build.build(cfg, str(out / "local")), beam_pipeline.build(cfg, str(out / "beam"), BEAM_ARGS)


def test_same_rejections_with_the_same_reasons(both, corpus):
    local, beam = both
    _, ids = corpus
    assert beam["rejected"] == local["rejected"]
    reasons = {r["id"]: r["reason"] for r in local["rejected"]}
    expected = {ids[5]: "duplicate_of:dup_of_5_first", "dup_of_7": f"duplicate_of:{ids[7]}",
                "dup_of_3_copied_file": f"duplicate_of:{ids[3]}", "noq_dup_of_12": "no_question",
                ids[10]: "contamination", "yt_overlap": "contamination: source youtube:abcdefghijk",
                "empty": "empty_file", "trunc": "truncated", "random": "corrupt",
                "nan": "non_finite", "zeros": "silent", "tiny": "too_short", "a_directory": "unreadable",
                "sr0": "corrupt: the header declares a sample rate of 0 Hz",
                "missing": "unreadable", "escape": "path_escapes_manifest_folder", "noq": "no_question",
                "line 5": "bad_json"}
    for rid, prefix in expected.items():
        assert reasons.get(rid, "").startswith(prefix), (rid, reasons.get(rid))
    assert ids[12] not in reasons and "dup_of_5_first" not in reasons


def test_same_kept_records_bit_for_bit(both):
    local, beam = both
    assert beam["kept"] == local["kept"] > 10
    a, b = records.RecordSource(local["dataset_dir"]), records.RecordSource(beam["dataset_dir"])
    assert len(a) == len(b) == local["kept"]
    for x, y in zip(a, b, strict=True):
        assert x["mel"].dtype == y["mel"].dtype == np.float16
        np.testing.assert_array_equal(x["mel"].view(np.uint16), y["mel"].view(np.uint16))
        assert {k: v for k, v in x.items() if k != "mel"} == {k: v for k, v in y.items() if k != "mel"}
    assert _raw_records(local["dataset_dir"]) == _raw_records(beam["dataset_dir"])
    num_bytes = [json.loads((pathlib.Path(r["dataset_dir"]) / "dataset_info.json").read_text())["splits"][0]["numBytes"]
                 for r in (local, beam)]
    assert num_bytes[0] == num_bytes[1]


def _raw_records(dataset_dir) -> list[bytes]:
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    info = json.loads((pathlib.Path(dataset_dir) / "dataset_info.json").read_text())
    files = sorted(str(p) for p in pathlib.Path(dataset_dir).glob("*.array_record-*"))
    src = ArrayRecordDataSource(files)
    assert len(src) == sum(int(n) for n in info["splits"][0]["shardLengths"])
    return [src[i] for i in range(len(src))]


def test_shards_are_contiguous_manifest_ranges(both):
    _, beam = both
    info = json.loads((pathlib.Path(beam["dataset_dir"]) / "dataset_info.json").read_text())
    n_items = beam["counts"]["manifest_items"]
    assert len(info["splits"][0]["shardLengths"]) == -(-n_items // 5) > 1
    shards = [beam_pipeline.shard_of(i, n_items, 7) for i in range(n_items)]
    assert shards == sorted(shards) and set(shards) == set(range(7))


def test_remote_audio_is_staged_through_the_prefix_map(corpus, tmp_path):
    root, ids = corpus
    ghost = tmp_path / "ghost"  # a manifest whose audio folder exists only under the mapped prefix
    ghost.mkdir()
    picked = ids[:3]
    lines = [x for x in (root / "manifest.jsonl").read_text().splitlines() if x.startswith("{\"id\"")]
    lines = [x for x in lines if json.loads(x)["id"] in picked]
    lines.append(json.dumps({**json.loads(lines[0]), "id": "not_there", "audio_path": "audio/nope.wav"}))
    (ghost / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    cfg = _config(ghost / "manifest.jsonl", audio_prefix_map=(f"{ghost}/audio={root}/audio",))
    report = beam_pipeline.build(cfg, str(tmp_path / "out"), BEAM_ARGS)
    assert report["kept"] == 3
    assert [(r["id"], r["reason"].split(":")[0]) for r in report["rejected"]] == [("not_there", "unreadable")]
    direct = {r["id"]: r["mel"] for r in records.RecordSource(tmp_path / "out" / "dataset" / "cogito_records" /
                                                              "1.0.0")}
    for rid in picked:
        row, mel = clips.process_clip({"id": rid, "audio_path": str(root / "audio" / f"{rid}.wav")},
                                      steps.feature_config(cfg), steps.filter_config(cfg))
        np.testing.assert_array_equal(direct[rid].view(np.uint16), mel.view(np.uint16))


class FakeRemoteFileSystem(LocalFileSystem):
    """``fakegcs://a/b`` is ``root/a/b``: an object store without folders (like gs://) over a local folder."""

    root = ""

    @classmethod
    def scheme(cls):
        return "fakegcs"

    def _local(self, path):
        return os.path.join(self.root, path.removeprefix("fakegcs://"))

    def has_dirs(self):
        return False

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/"), *paths])

    def split(self, path):
        head, _, tail = path.rpartition("/")
        return head, tail

    def mkdirs(self, path):
        pass

    def _list(self, prefix):
        for folder, _, files in os.walk(self.root):
            for f in files:
                remote = "fakegcs://" + os.path.relpath(os.path.join(folder, f), self.root)
                if remote.startswith(prefix):
                    yield self.metadata(remote)

    def metadata(self, path):
        m = super().metadata(self._local(path))
        return FileMetadata(path, m.size_in_bytes, m.last_updated_in_seconds)

    def create(self, path, *args, **kwargs):
        return super().create(self._local(path), *args, **kwargs)

    def open(self, path, *args, **kwargs):
        return super().open(self._local(path), *args, **kwargs)

    def exists(self, path):
        return super().exists(self._local(path))

    def size(self, path):
        return super().size(self._local(path))

    def delete(self, paths):
        super().delete([self._local(p) for p in paths])

    def rename(self, sources, destinations):
        super().rename([self._local(p) for p in sources], [self._local(p) for p in destinations])

    def copy(self, sources, destinations):
        super().copy([self._local(p) for p in sources], [self._local(p) for p in destinations])


def _small_manifest(corpus, folder, n=4):
    root, _ = corpus
    lines = [x for x in (root / "manifest.jsonl").read_text().splitlines() if x.startswith("{\"id\"")][:n]
    (folder / "m.jsonl").write_text("\n".join(lines) + "\n")
    for x in lines:
        rel = json.loads(x)["audio_path"]
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / rel, folder / rel)
    return folder / "m.jsonl"


def test_remote_output_is_written_through_beam_filesystems(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(FakeRemoteFileSystem, "root", str(tmp_path / "store"))
    run = tmp_path / "store" / "bucket" / "run"
    (run / "dataset").mkdir(parents=True)
    (run / "dataset" / "stale-shard").write_text("from an earlier build")
    cfg = _config(_small_manifest(corpus, tmp_path))
    with pytest.raises(ConfigError, match="fakegcs://bucket/run/dataset exists and is not a dataset folder"):
        beam_pipeline.build(cfg, "fakegcs://bucket/run", BEAM_ARGS)  # no marker: not this build's to delete
    assert (run / "dataset" / "stale-shard").exists() and not (run / "cache").exists()
    (run / "dataset" / steps.DATASET_MARKER).write_text("")
    report = beam_pipeline.build(cfg, "fakegcs://bucket/run", BEAM_ARGS)
    assert report["dataset_dir"] == "fakegcs://bucket/run/dataset/cogito_records/1.0.0"
    assert json.loads((run / "report.json").read_text())["kept"] == report["kept"] == 4
    assert (run / "report.md").exists() and (run / "plots" / "build_summary.png").exists()
    assert not (run / "dataset" / "stale-shard").exists()
    assert [r["id"] for r in records.RecordSource(run / "dataset" / "cogito_records" / "1.0.0")] == \
        [json.loads(x)["id"] for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    cfg.source.kind = "synthetic"
    with pytest.raises(ConfigError, match="source.kind=synthetic writes its audio on this machine"):
        beam_pipeline.build(cfg, "fakegcs://bucket/run2", BEAM_ARGS)


def test_a_failure_inside_one_clip_rejects_that_clip_only(corpus, tmp_path, monkeypatch):
    m = _small_manifest(corpus, tmp_path)
    victim = json.loads(m.read_text().splitlines()[1])["id"]
    real = clips._process_clip

    def fails_once(item, *args):
        if item["id"] == victim:
            raise MemoryError("cannot allocate")
        return real(item, *args)

    monkeypatch.setattr(clips, "_process_clip", fails_once)
    report = beam_pipeline.build(_config(m), str(tmp_path / "out"), BEAM_ARGS)
    assert report["kept"] == 3
    assert report["rejected"] == [{"id": victim, "reason": "processing_failed: MemoryError: cannot allocate"}]


def test_a_local_dataset_folder_the_build_did_not_write_is_kept(corpus, tmp_path):
    foreign = tmp_path / "out" / "dataset" / "notes.txt"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("mine")
    with pytest.raises(ConfigError, match="dataset exists and is not a dataset folder this build wrote"):
        beam_pipeline.build(_config(_small_manifest(corpus, tmp_path)), str(tmp_path / "out"), BEAM_ARGS)
    assert foreign.read_text() == "mine"


def test_a_manifest_with_nothing_to_keep_reports_and_writes_no_dataset(tmp_path):
    (tmp_path / "m.jsonl").write_text("{not json\n" + json.dumps({"id": "gone", "audio_path": "nope.wav"}) + "\n")
    cfg = _config(tmp_path / "m.jsonl")
    local, beam = build.build(cfg, str(tmp_path / "local")), beam_pipeline.build(cfg, str(tmp_path / "beam"), BEAM_ARGS)
    assert beam["rejected"] == local["rejected"]
    assert [(r["id"], r["reason"].split(":")[0]) for r in beam["rejected"]] == [("line 1", "bad_json"),
                                                                                ("gone", "unreadable")]
    assert beam["kept"] == local["kept"] == 0 and beam["dataset_dir"] is local["dataset_dir"] is None
    assert not (tmp_path / "beam" / "dataset").exists()
    assert json.loads((tmp_path / "beam" / "report.json").read_text())["rejected"] == beam["rejected"]


def test_config_errors_name_the_bad_value(tmp_path):
    cfg = _config(tmp_path / "m.jsonl")
    for key, value, match in (("runner", "spark", "runner='spark' must be one of local, beam"),
                              ("beam.clips_per_shard", 0, "beam.clips_per_shard=0"),
                              ("beam.audio_prefix_map", ("gs://only",), "'gs://only' must look like"),
                              ("beam.options", ("DataflowRunner",), "beam.options=")):
        bad = _config(tmp_path / "m.jsonl")
        section, _, leaf = key.rpartition(".")
        (bad[section] if section else bad)[leaf] = value
        with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace(")", r"\)")):
            validate_beam_config(bad)
    with pytest.raises(ConfigError, match="unknown Beam pipeline options.*--runer"):
        beam_pipeline.pipeline_options(cfg, ["--runer=DataflowRunner"])
    assert beam_pipeline.split_argv(["p", "--out=x", "--", "--runner=X"]) == (["p", "--out=x"], ["--runner=X"])


def test_cli_runs_with_beam_options_after_a_double_dash(corpus, tmp_path):
    _small_manifest(corpus, tmp_path)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    help_ = subprocess.run([sys.executable, "-m", "data_prep.beam_pipeline", "--help"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0 and "--out" in help_.stdout and "Apache Beam" in help_.stdout
    r = subprocess.run([sys.executable, "-m", "data_prep.beam_pipeline", "--config", "configs/data/manifest.py",
                        "--out", str(tmp_path / "out"), f"--config.source.manifest={tmp_path / 'm.jsonl'}",
                        "--config.features.n_mels=80", "--", "--runner=DirectRunner", "--direct_num_workers=1"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["kept"] + len(report["rejected"]) == 4 and "kept" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "data_prep.beam_pipeline", "--config", "configs/data/manifest.py",
                          "--out", str(tmp_path / "out2"), f"--config.source.manifest={tmp_path / 'm.jsonl'}",
                          "--", "--runer=DirectRunner"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown Beam pipeline options ['--runer']" in bad.stderr

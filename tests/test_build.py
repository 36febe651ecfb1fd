"""data_prep.build through its real CLI (contract 6): every bad item rejected with a specific reason,
every good item kept, the dataset readable with tfds.data_source, a re-run does no work."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from cogito_jax.data import records, synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]


def _line(id_, path, **kw):
    return {"id": id_, "audio_path": path, "question": "Is this a steady tone or white noise?",
            "choices": ["a steady tone", "white noise"], "answer": "a steady tone", "modality": "sound", **kw}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest_corpus")
    (root / "a").mkdir()
    t = np.arange(16000 * 2) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    good = {}
    for i in range(3):
        sf.write(root / "a" / f"good{i}.wav", tone * (0.5 + 0.2 * i), 16000)
        good[f"good{i}"] = f"a/good{i}.wav"
    sf.write(root / "a" / "dup.wav", tone * 0.5, 16000)  # same PCM as good0
    t48 = np.arange(48000 * 2) / 48000
    sf.write(root / "a" / "stereo48k.wav", np.stack([np.sin(2 * np.pi * 300 * t48)] * 2, 1).astype(np.float32) * 0.3,
             48000)
    t8 = np.arange(8000 * 2) / 8000
    sf.write(root / "a" / "mono8k.flac", (0.3 * np.sin(2 * np.pi * 300 * t8)).astype(np.float32), 8000)
    sf.write(root / "a" / "tone_named.mp3", tone, 16000, format="WAV")  # a wav with the wrong extension: kept
    (root / "a" / "empty.wav").write_bytes(b"")
    sf.write(root / "a" / "trunc.wav", tone, 16000)
    (root / "a" / "trunc.wav").write_bytes((root / "a" / "trunc.wav").read_bytes()[:2000])
    (root / "a" / "random.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "a" / "text.flac").write_text("this is not audio")
    sf.write(root / "a" / "nan.wav", np.full(32000, np.nan, np.float32), 16000, subtype="FLOAT")
    sf.write(root / "a" / "zeros.wav", np.zeros(32000, np.float32), 16000)
    sf.write(root / "a" / "tiny.wav", tone[:800], 16000)
    sf.write(root / "a" / "long.wav", np.tile(tone, 300)[: 16000 * 600], 16000)  # 10 minutes
    (root / "a" / "a_directory.wav").mkdir()
    lines = [_line(k, v) for k, v in good.items()]
    lines += [_line("dup", "a/dup.wav"), _line("stereo48k", "a/stereo48k.wav"), _line("mono8k", "a/mono8k.flac"),
              _line("wrong_ext", "a/tone_named.mp3")]
    bad = {"empty": "a/empty.wav", "trunc": "a/trunc.wav", "random": "a/random.wav", "text": "a/text.flac",
           "nan": "a/nan.wav", "zeros": "a/zeros.wav", "tiny": "a/tiny.wav", "long": "a/long.wav",
           "unreadable": "a/a_directory.wav", "missing_file": "a/nope.wav", "escape": "../../etc/passwd"}
    lines += [_line(k, v) for k, v in bad.items()]
    text = [json.dumps(x) for x in lines]
    text.insert(2, json.dumps({"id": "no_path", "question": "q"}))
    text.insert(3, "{not json")
    text.append(json.dumps(_line("bad_answer", "a/good1.wav", answer="purple")))
    (root / "manifest.jsonl").write_text("\n".join(text) + "\n")
    return root


def _build(corpus, out):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "data_prep.build", "--config", "configs/data/manifest.py", "--out",
                           str(out), f"--config.source.manifest={corpus / 'manifest.jsonl'}",
                           "--config.features.n_mels=80"], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.slow
def test_build_cli_keeps_good_rejects_bad_and_reruns_for_free(corpus, tmp_path):
    r = _build(corpus, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    reasons = {x["id"]: x["reason"] for x in report["rejected"]}
    expected = {"empty": "empty_file", "trunc": "truncated", "random": "corrupt", "text": "corrupt",
                "nan": "non_finite", "zeros": "silent", "tiny": "too_short", "long": "too_long",
                "unreadable": "unreadable", "missing_file": "unreadable", "escape": "path_escapes_manifest_folder",
                "dup": "duplicate_of", "line 3": "missing_audio_path", "line 4": "bad_json", "bad_answer": "bad_answer"}
    for rid, prefix in expected.items():
        key = rid if rid in reasons else ("no_path" if rid == "line 3" else rid)
        assert key in reasons, (rid, reasons)
        assert reasons[key].startswith(prefix), (rid, reasons[key])
    kept_ids = {"good0", "good1", "good2", "stereo48k", "mono8k", "wrong_ext"}
    assert report["kept"] == len(kept_ids) and not kept_ids & set(reasons)
    ds = next((tmp_path / "dataset").rglob("dataset_info.json")).parent
    import tensorflow_datasets as tfds

    src = tfds.builder_from_directory(str(ds)).as_data_source(split="train")
    assert {x["id"].decode() for x in src} == kept_ids
    assert records.RecordSource(ds)[0]["mel"].shape[1] == 80
    assert (tmp_path / "report.md").exists() and (tmp_path / "plots" / "build_summary.png").stat().st_size > 5000
    mtime = (ds / "dataset_info.json").stat().st_mtime
    r2 = _build(corpus, tmp_path)
    assert report["counts"]["audio_processed_this_run"] == report["counts"]["manifest_items"] > 0
    assert r2.returncode == 0
    again = json.loads((tmp_path / "report.json").read_text())
    assert again["counts"]["audio_processed_this_run"] == 0 and again["kept"] == report["kept"]  # all from cache
    assert (ds / "dataset_info.json").stat().st_mtime == mtime


def test_missing_manifest_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "data_prep.build", "--config", "configs/data/manifest.py", "--out",
                        str(tmp_path), "--config.source.manifest=/nonexistent.jsonl"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "manifest '/nonexistent.jsonl' does not exist" in r.stderr


def test_synthetic_corpus_is_deterministic_and_splits_are_disjoint():
    a, b = synthetic.make_item(5, seed=3), synthetic.make_item(5, seed=3)
    np.testing.assert_array_equal(a["audio"], b["audio"])
    assert a["question"] == b["question"] and a["answer"] in a["choices"] and a["answer"] in a["thinking"]
    for i in range(64):
        it = synthetic.make_item(i, seed=1, split="heldout")
        assert it["answer"] in it["choices"] and 2 <= len(it["choices"]) <= 4
        assert len(it["audio"]) <= 4 * 16000
    with pytest.raises(ValueError, match="split='dev'"):
        synthetic.make_item(0, split="dev")


def test_split_grids_share_no_value():
    rng = np.random.default_rng(0)
    grid = synthetic._semitones(200, 24)
    train = {synthetic._grid(grid, "train", rng) for _ in range(300)}
    held = {synthetic._grid(grid, "heldout", rng) for _ in range(300)}
    assert train and held and not train & held


def test_long_clips_are_cut_or_chunked_as_the_thinker_family_takes_them(tmp_path):
    """40 s of audio: ``truncate`` keeps 30 s (3,000 frames); ``chunks`` keeps every 30 s window's log-mel end to
    end (3,000 + 1,000 frames); ``auto`` follows think.model's family; changing the mode redoes the features."""
    from cogito_jax import audio
    from data_prep import build, steps
    from data_prep.config import base_data_config

    rng = np.random.default_rng(0)
    wave = (0.2 * np.sin(2 * np.pi * 330 * np.arange(16000 * 40) / 16000) * (1 + rng.random(16000 * 40))).astype(
        np.float32) / 2
    sf.write(tmp_path / "long.wav", wave, 16000, subtype="FLOAT")
    (tmp_path / "manifest.jsonl").write_text(json.dumps(_line("long", "long.wav")) + "\n")
    cfg = base_data_config()
    cfg.source.manifest, cfg.features.n_mels, cfg.features.max_seconds = str(tmp_path / "manifest.jsonl"), 80, 45.0
    for family, mode in (("qwen2_audio", "truncate"), ("qwen3_omni_moe_thinker", "chunks")):
        (tmp_path / family).mkdir()
        (tmp_path / family / "config.json").write_text(json.dumps({"model_type": family}))
        cfg.think.model = str(tmp_path / family)
        assert steps.long_clip_mode(cfg) == mode
    cfg.think.model = ""
    assert steps.long_clip_mode(cfg) == "truncate"
    mels = {}
    for mode in ("truncate", "chunks"):
        cfg.features.long_clips = mode
        report = build.build(cfg, str(tmp_path / "out"))
        assert report["kept"] == 1
        mels[mode] = records.RecordSource(report["dataset_dir"])[0]["mel"].astype(np.float32)
    assert mels["truncate"].shape == (3000, 80) and mels["chunks"].shape == (4000, 80)
    np.testing.assert_array_equal(mels["chunks"][:3000], mels["truncate"])
    tail = audio.log_mel_frames(wave[16000 * 30:], n_mels=80).T.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(mels["chunks"][3000:], tail)


def _tone_file(path, freq, seconds=1.0, sr=16000):
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32), sr)


def _manifest_config(root, lines, **filters):
    from data_prep.config import base_data_config

    (root / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = base_data_config()
    cfg.source.manifest, cfg.features.n_mels = str(root / "manifest.jsonl"), 80
    cfg.filters.update(filters)
    return cfg


def _files_under(root):
    return {p for p in root.rglob("*") if p.is_file()}


def test_any_id_stays_an_id_and_never_names_a_file(tmp_path):
    """Ids that climb out of --out, hold a slash or NUL, or run to 300 characters are kept as they are in the
    records; every file the build writes stays inside --out."""
    from data_prep import build

    root = tmp_path / "m"
    (root / "a").mkdir(parents=True)
    ids = ["../../../../../../../../tmp/escaped/ESCAPED", "a/b", "nul\x00id", "L" * 300, "plain"]
    for i in range(len(ids)):
        _tone_file(root / "a" / f"{i}.wav", 300 + 50 * i)
    cfg = _manifest_config(root, [_line(x, f"a/{i}.wav") for i, x in enumerate(ids)])
    before = _files_under(tmp_path)
    report = build.build(cfg, str(tmp_path / "out"))
    assert report["kept"] == len(ids) and report["rejected"] == []
    assert sorted(r["id"] for r in records.RecordSource(report["dataset_dir"])) == sorted(ids)
    assert all((tmp_path / "out") in p.parents for p in _files_under(tmp_path) - before)
    assert not pathlib.Path("/tmp/escaped/ESCAPED.npy").exists()


def test_a_clip_is_redone_when_its_file_or_settings_change(tmp_path):
    """The audio cache is keyed by the file (path, size, mtime) and the feature + filter settings: new audio under
    the same id or the same path, and changed thresholds, redo the clip, whether it was kept or rejected."""
    from cogito_jax import audio
    from data_prep import build

    (tmp_path / "a").mkdir()
    _tone_file(tmp_path / "a" / "x.wav", 440)
    _tone_file(tmp_path / "a" / "y.wav", 660, seconds=2.0)
    out = str(tmp_path / "out")

    def mel_of(report):
        rec = records.RecordSource(report["dataset_dir"])[0]
        return rec["mel"].astype(np.float32)

    def expected(path):
        return audio.log_mel_frames(audio.decode(path)[0], n_mels=80).T.astype(np.float16).astype(np.float32)

    cfg = _manifest_config(tmp_path, [_line("clip", "a/x.wav")])
    np.testing.assert_array_equal(mel_of(build.build(cfg, out)), expected(tmp_path / "a" / "x.wav"))
    cfg = _manifest_config(tmp_path, [_line("clip", "a/y.wav")])  # same id, another file
    np.testing.assert_array_equal(mel_of(build.build(cfg, out)), expected(tmp_path / "a" / "y.wav"))
    _tone_file(tmp_path / "a" / "y.wav", 880, seconds=1.5)  # same path, new content
    np.testing.assert_array_equal(mel_of(build.build(cfg, out)), expected(tmp_path / "a" / "y.wav"))
    cfg.filters.min_seconds = 1.6  # a kept clip now rejected ...
    report = build.build(cfg, out)
    assert report["kept"] == 0 and report["rejected"][0]["reason"].startswith("too_short")
    cfg.filters.min_seconds = 0.5  # ... and a rejected one kept again
    np.testing.assert_array_equal(mel_of(build.build(cfg, out)), expected(tmp_path / "a" / "y.wav"))


def test_a_failure_inside_one_clip_rejects_that_clip_only(tmp_path, monkeypatch):
    from cogito_jax import audio
    from data_prep import build

    (tmp_path / "a").mkdir()
    for name, freq in (("ok", 440), ("boom", 660)):
        _tone_file(tmp_path / "a" / f"{name}.wav", freq)
    cfg = _manifest_config(tmp_path, [_line("boom", "a/boom.wav"), _line("ok", "a/ok.wav")])
    real, calls = audio.log_mel_frames, []

    def flaky(wave, *args, **kwargs):  # clips are processed in manifest order: "boom" first
        calls.append(len(wave))
        if len(calls) == 1:
            raise ZeroDivisionError("division by zero\nsecond line")
        return real(wave, *args, **kwargs)

    monkeypatch.setattr(audio, "log_mel_frames", flaky)
    report = build.build(cfg, str(tmp_path / "out"))
    assert report["kept"] == 1
    assert report["rejected"] == [{"id": "boom", "reason": "processing_failed: ZeroDivisionError: division by zero"}]


def test_a_dataset_folder_the_build_did_not_write_is_never_deleted(tmp_path):
    from cogito_jax.errors import ConfigError
    from data_prep import build

    (tmp_path / "a").mkdir()
    _tone_file(tmp_path / "a" / "x.wav", 440)
    cfg = _manifest_config(tmp_path, [_line("x", "a/x.wav")])
    foreign = tmp_path / "out" / "dataset" / "precious.txt"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("keep me")
    with pytest.raises(ConfigError, match="dataset exists and is not a dataset folder this build wrote"):
        build.build(cfg, str(tmp_path / "out"))
    assert foreign.read_text() == "keep me" and not (tmp_path / "out" / "cache").exists()
    foreign.unlink()  # an empty folder holds nothing to lose; the build's own folder is replaced on a re-run
    first = build.build(cfg, str(tmp_path / "out"))
    cfg.features.n_mels = 64
    second = build.build(cfg, str(tmp_path / "out"))
    assert first["dataset_dir"] == second["dataset_dir"] and records.RecordSource(second["dataset_dir"])[0][
        "mel"].shape == (100, 64)


def test_a_damaged_stage_cache_stops_the_cli_with_file_and_line(corpus, tmp_path):
    """A torn last line of ``cache/audio.jsonl`` is a crash's doing: its clip is redone. A bad line before it is
    damage: the build stops with one line naming the file and line, exit 2, and leaves the file as it is."""
    r = _build(corpus, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    kept = json.loads((tmp_path / "report.json").read_text())["kept"]
    cache = tmp_path / "cache" / "audio.jsonl"
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # torn by a crash
    r = _build(corpus, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "report.json").read_text())["kept"] == kept
    assert cache.read_text().splitlines()[:-1] == lines[:-1] and json.loads(cache.read_text().splitlines()[-1])
    damaged = "\n".join([lines[0], lines[1][:30], *lines[2:]]) + "\n"
    cache.write_text(damaged)
    r = _build(corpus, tmp_path)
    errors = [x for x in r.stderr.splitlines() if "error:" in x]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(errors) == 1 and f"{cache}:2: not a JSON line" in errors[0], r.stderr[-2000:]
    assert cache.read_text() == damaged

"""The audio-fingerprint contamination guard: altered copies of benchmark clips are caught, distinct clips are not,
and data_prep.build rejects them naming the benchmark item and the score."""

import json
import pathlib
import shutil

import numpy as np
import pytest
import soundfile as sf

from cogito_jax import audio
from cogito_jax.data import fingerprint
from data_prep import filters
from data_prep.config import FINGERPRINT_MIN_LANDMARKS, FINGERPRINT_THRESHOLD
from tests.conftest import bench_module
from tests.prereq import require, require_module

SPEECH = pathlib.Path("/usr/share/pocketsphinx/test/data")


@pytest.fixture(scope="module")
def contamination():
    require(shutil.which("espeak-ng"), "synthesised speech needs espeak-ng (apt-get install -y espeak-ng)")
    require_module("av", "AAC encoding needs PyAV (requirements-test.txt)")
    require(SPEECH.is_dir(), "real speech needs pocketsphinx-testdata (apt-get install -y pocketsphinx-testdata)")
    return bench_module("contamination")


@pytest.mark.slow
def test_altered_copies_are_caught_and_distinct_clips_are_not(contamination, tmp_path):
    """Real and synthesised speech and synthetic music / event clips, each benchmark clip altered by every
    perturbation (codecs at 64 kbit/s, resampling, +-10 dB, noise at 20 dB SNR, a 5 s cut, a longer recording
    around it): all caught, naming the right clip; held-out clips of the same voices and sound classes, under the
    same perturbations, match nothing (bench/contamination.py runs the larger corpus)."""
    bench, held, kinds = contamination.corpus(18, 36, tmp_path)
    assert all(k["benchmark"] >= 2 and k["held_out"] >= 2 for k in kinds.values()), kinds
    out = contamination.evaluate(bench, held, FINGERPRINT_THRESHOLD, FINGERPRINT_MIN_LANDMARKS)
    table = {k: (r["caught"], r["missed"], r["wrong_item"], r["false_positive_queries"])
             for k, r in out["per_perturbation"].items()}
    print(json.dumps(table))
    assert set(table) == set(contamination.PERTURBATIONS)
    assert all(missed == wrong == fp == 0 for _, missed, wrong, fp in table.values()), table
    assert out["pairs"] >= 1000 and out["recall"] == 1.0 and out["false_positive_rate"] == 0.0
    for kind in ("mp3_64k", "opus_64k", "aac_64k"):  # the codecs ran at about 64 kbit/s
        assert 50 < out["per_perturbation"][kind]["kbps_mean"] < 80


def _speech(seconds: float) -> np.ndarray:
    waves = [audio.decode(p)[0] for p in sorted((SPEECH / "librivox").glob("*.wav"))]
    return np.concatenate(waves)[: int(seconds * audio.SAMPLE_RATE)]


def test_lookup_finds_a_cut_and_a_quieter_copy_and_where_it_starts():
    require(SPEECH.is_dir(), "real speech needs pocketsphinx-testdata (apt-get install -y pocketsphinx-testdata)")
    w = _speech(20.0)
    other = np.random.default_rng(0).normal(0, 0.05, 16000 * 8).astype(np.float32)
    mel = lambda x: filters.benchmark_mel(x, 80)  # noqa: E731
    index = fingerprint.Index.build([("bench:a", mel(w)), ("bench:noise", mel(other))])
    cut = index.match(mel(0.3 * w[6 * 16000: 13 * 16000]))
    assert cut.ref == "bench:a" and cut.score > 0.3 and abs(cut.offset_s - 6.0) <= 0.05
    reversed_speech = index.match(mel(_speech(3.0)[::-1].copy()))  # the same sounds, not the same recording
    assert reversed_speech is None or reversed_speech.score < 0.05
    index2 = fingerprint.Index.from_bytes(index.to_bytes())
    assert index2.match(mel(0.3 * w[6 * 16000: 13 * 16000])) == cut and index2.refs == index.refs


def _line(id_, path):
    return {"id": id_, "audio_path": path, "question": "What is heard?", "choices": ["speech", "music"],
            "answer": "speech", "modality": "speech"}


def test_build_rejects_altered_copies_naming_the_item_and_caches_the_index(tmp_path, monkeypatch):
    """data_prep.build with a benchmark meta file: a half-gain MP3 copy and a 6 s cut of a benchmark clip are
    rejected with the item, score and landmarks in the reason (the exact-hash guard misses both); other speech
    is kept. The index is built once and reused; without the meta file the same cached clips are kept (their
    lookup redone from the cached log-mel, no decoding)."""
    require(SPEECH.is_dir(), "real speech needs pocketsphinx-testdata (apt-get install -y pocketsphinx-testdata)")
    from data_prep import build
    from data_prep.config import base_data_config

    w = _speech(16.0)
    (tmp_path / "mmar" / "audio").mkdir(parents=True)
    sf.write(tmp_path / "mmar" / "audio" / "q1.wav", w, 16000)
    meta = tmp_path / "mmar" / "MMAR-meta.json"
    meta.write_text(json.dumps([{"id": "q1", "audio_path": "./audio/q1.wav", "url": "null", "timestamp": "null"}]))
    (tmp_path / "a").mkdir()
    sf.write(tmp_path / "a" / "copy.mp3", 0.5 * w, 16000, format="MP3", subtype="MPEG_LAYER_III")
    sf.write(tmp_path / "a" / "cut.wav", w[5 * 16000: 11 * 16000], 16000)
    sf.write(tmp_path / "a" / "other.wav", audio.decode(SPEECH / "cards" / "001.wav")[0], 16000)
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(_line(i, f"a/{i}.{ext}")) + "\n" for i, ext in (
        ("copy", "mp3"), ("cut", "wav"), ("other", "wav"))))
    cfg = base_data_config()
    cfg.source.manifest, cfg.features.n_mels = str(tmp_path / "manifest.jsonl"), 80
    cfg.filters.contamination_meta = (str(meta),)
    out = str(tmp_path / "out")
    report = build.build(cfg, out)
    reasons = {r["id"]: r["reason"] for r in report["rejected"]}
    assert set(reasons) == {"copy", "cut"} and report["kept"] == 1
    for rid in ("copy", "cut"):
        assert reasons[rid].startswith("contamination: audio matches MMAR-meta.json:q1 (fingerprint score "), reasons
    assert abs(float(reasons["cut"].split(", at ")[1].split(" s of it")[0]) - 5.0) <= 0.05  # where the cut starts
    cached = list((tmp_path / "out" / "cache").glob("fingerprints-*.npz"))
    assert len(cached) == 1

    calls = []
    monkeypatch.setattr(filters, "benchmark_mel", lambda *a: calls.append(a) or pytest.fail("index rebuilt"))
    monkeypatch.setattr(audio, "decode", lambda *a, **k: pytest.fail("a cached clip decoded again"))
    assert build.build(cfg, out)["rejected"] == report["rejected"]  # the cached index and rows
    cfg.filters.contamination_meta = ()
    assert build.build(cfg, out)["kept"] == 3
    assert not calls


@pytest.mark.parametrize("key, value, message", [
    ("fingerprint_threshold", 1.5, "filters.fingerprint_threshold=1.5 must be a finite number in [0, 1]"),
    ("fingerprint_min_landmarks", 0, "filters.fingerprint_min_landmarks=0 must be a finite number that is a whole "
                                     "number >= 1"),
])
def test_fingerprint_settings_are_checked(key, value, message):
    from cogito_jax.errors import ConfigError
    from data_prep.config import base_data_config, validate_data_config

    cfg = base_data_config()
    cfg.source.manifest = "m.jsonl"
    cfg.filters[key] = value
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_data_config(cfg)

"""Whisper log-mel equals WhisperFeatureExtractor; the JAX batch path equals NumPy; decode errors."""

import subprocess

import numpy as np
import pytest
import soundfile as sf

from cogito_jax import audio


def _speech_files():
    try:
        out = subprocess.run(["dpkg", "-L", "pocketsphinx-testdata"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    return sorted(p for p in out.splitlines() if p.endswith(".wav"))


def _hf(n_mels):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=n_mels)


def _signals():
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 3) / 16000
    return {
        "tone": 0.5 * np.sin(2 * np.pi * 440 * t),
        "noise": 0.3 * rng.normal(size=16000 * 2),
        "silence": np.zeros(16000),
        "short_0.5s": 0.2 * np.sin(2 * np.pi * 1000 * t[:8000]),
        "chirp": 0.4 * np.sin(2 * np.pi * (200 + 900 * t) * t),
    }


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_feature_extractor(n_mels):
    fe = _hf(n_mels)
    sigs = dict(_signals())
    speech = _speech_files()
    if speech:
        wav, sr = sf.read(speech[0], dtype="float32")
        sigs["speech"] = audio.resample(wav, sr)
    for name, w in sigs.items():
        w = w.astype(np.float32)
        ref = fe(w, sampling_rate=16000, return_tensors="np").input_features[0]
        ours = audio.whisper_log_mel(w, n_mels=n_mels)
        assert ours.shape == (n_mels, 3000) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0, err_msg=name)


def test_real_speech_available_or_skip():
    files = _speech_files()
    if not files:
        pytest.skip("pocketsphinx-testdata is not installed (apt-get install pocketsphinx-testdata)")
    fe = _hf(128)
    for f in files[:3]:
        w, info = audio.decode(f)
        assert info["orig_sr"] == 16000 and w.dtype == np.float32
        ref = fe(w, sampling_rate=16000, return_tensors="np").input_features[0]
        np.testing.assert_allclose(audio.whisper_log_mel(w), ref, atol=1e-4, rtol=0, err_msg=f)


def test_45s_clip_is_chunked_and_each_chunk_matches():
    fe = _hf(80)
    rng = np.random.default_rng(1)
    w = (0.1 * rng.normal(size=16000 * 45)).astype(np.float32)
    chunks = audio.chunk_waveform(w)
    assert [len(c) for c in chunks] == [480000, 240000]
    for c in chunks:
        ref = fe(c, sampling_rate=16000, return_tensors="np").input_features[0]
        np.testing.assert_allclose(audio.whisper_log_mel(c, n_mels=80), ref, atol=1e-4, rtol=0)
    assert audio.num_frames(len(chunks[1])) == 1500 and audio.num_frames(10**7) == 3000


def test_jax_batch_equals_numpy_and_ignores_batch_mates():
    sigs = [audio.pad_or_trim(s) for s in _signals().values()]
    batch = np.stack(sigs)
    out = np.asarray(audio.whisper_log_mel_batch(batch, n_mels=80))
    for i, s in enumerate(sigs):
        np.testing.assert_allclose(out[i], audio.whisper_log_mel(s, n_mels=80), atol=1e-4, rtol=0)
    # A loud batch-mate does not change a quiet example's features (the max is per example).
    loud = np.stack([sigs[2], 100 * sigs[0]])
    np.testing.assert_allclose(np.asarray(audio.whisper_log_mel_batch(loud, n_mels=80))[0], out[2], atol=1e-5)


@pytest.mark.parametrize("kind, reason", [("empty", "empty_file"), ("random", "corrupt"), ("truncated", "truncated"),
                                          ("missing", "unreadable"), ("nan", "non_finite")])
def test_decode_errors(tmp_path, kind, reason):
    p = tmp_path / "clip.wav"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "random":
        p.write_bytes(np.random.default_rng(0).bytes(3000))
    elif kind == "truncated":
        sf.write(p, np.zeros(16000, np.float32), 16000)
        p.write_bytes(p.read_bytes()[:100])
    elif kind == "nan":
        sf.write(p, np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(audio.AudioError) as e:
        audio.decode(p)
    assert e.value.reason == reason


def test_decode_resamples_and_downmixes(tmp_path):
    t = np.arange(48000) / 48000
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1).astype(np.float32) * 0.5
    sf.write(tmp_path / "s48.wav", stereo, 48000)
    sf.write(tmp_path / "m8.flac", stereo[:8000, 0], 8000)
    w, info = audio.decode(tmp_path / "s48.wav")
    assert info == {"orig_sr": 48000, "channels": 2, "seconds": 1.0} and len(w) == 16000
    w8, info8 = audio.decode(tmp_path / "m8.flac")
    assert info8["orig_sr"] == 8000 and len(w8) == 16000


@pytest.mark.parametrize("seconds", [0.05, 0.5, 1.013, 3.9, 29.99, 31.0])
def test_unpadded_frames_equal_the_full_features(seconds):
    rng = np.random.default_rng(int(seconds * 1000))
    w = (0.2 * rng.normal(size=int(16000 * seconds))).astype(np.float32)
    n = audio.num_frames(len(w))
    np.testing.assert_allclose(audio.log_mel_frames(w, 80), audio.whisper_log_mel(w, 80)[:, :n], atol=1e-6, rtol=0)
    silent = np.zeros(int(16000 * seconds), np.float32)
    np.testing.assert_array_equal(audio.log_mel_frames(silent, 80), audio.whisper_log_mel(silent, 80)[:, :n])

"""Whisper log-mel equals WhisperFeatureExtractor; the JAX batch path equals NumPy; decode errors are specific."""

import functools
import subprocess

import numpy as np
import pytest
import soundfile as sf

from cogito_jax import audio
from tests.prereq import require

SR = 16000


def _speech_files() -> list[str]:
    try:
        out = subprocess.run(["dpkg", "-L", "pocketsphinx-testdata"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    return sorted(p for p in out.splitlines() if p.endswith(".wav"))


NO_SPEECH = "real speech needs the Debian package pocketsphinx-testdata (apt-get install -y pocketsphinx-testdata)"


@functools.cache
def _hf(n_mels: int):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=n_mels)


def _hf_features(w: np.ndarray, n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    """(the extractor's own call, its NumPy code path) for one waveform."""
    fe = _hf(n_mels)
    called = fe(w, sampling_rate=SR, return_tensors="np").input_features[0]
    numpy_path = fe._np_extract_fbank_features(audio.pad_or_trim(w)[None], "cpu")[0]
    return called, numpy_path


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(SR * 3) / SR
    return {
        "tone": 0.5 * np.sin(2 * np.pi * 440 * t),
        "noise": 0.3 * rng.normal(size=SR * 2),
        "silence": np.zeros(SR),
        "short_0.5s": 0.2 * np.sin(2 * np.pi * 1000 * t[: SR // 2]),
        "chirp": 0.4 * np.sin(2 * np.pi * (200 + 900 * t) * t),
        "quiet_click": np.pad([1e-3], (4000, 4000)),
    }


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_equal_hf(n_mels):
    np.testing.assert_allclose(audio.mel_filters(n_mels), _hf(n_mels).mel_filters.T, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_feature_extractor(n_mels):
    for name, w in _signals().items():
        w = w.astype(np.float32)
        ours = audio.whisper_log_mel(w, n_mels=n_mels)
        assert ours.shape == (n_mels, 3000) and ours.dtype == np.float32
        for ref in _hf_features(w, n_mels):
            np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_on_real_speech(n_mels):
    files = _speech_files()
    require(files, NO_SPEECH)
    for f in files[:3] + files[-2:]:
        w, info = audio.decode(f)
        assert info["orig_sr"] == SR and w.dtype == np.float32 and len(w) > SR
        for ref in _hf_features(w, n_mels):
            np.testing.assert_allclose(audio.whisper_log_mel(w, n_mels=n_mels), ref, atol=1e-4, rtol=0, err_msg=f)


def test_45s_clip_is_chunked_and_each_chunk_matches():
    rng = np.random.default_rng(1)
    t = np.arange(SR * 45) / SR
    w = (0.1 * rng.normal(size=t.size) + 0.3 * np.sin(2 * np.pi * 300 * t) * (t > 35)).astype(np.float32)
    chunks = audio.chunk_waveform(w)
    assert [len(c) for c in chunks] == [480000, 240000]
    np.testing.assert_array_equal(np.concatenate(chunks), w)
    for c, mel in zip(chunks, audio.log_mel_chunks(w, n_mels=80), strict=True):
        ref = _hf(80)(c, sampling_rate=SR, return_tensors="np").input_features[0]
        np.testing.assert_allclose(audio.whisper_log_mel(c, n_mels=80), ref, atol=1e-4, rtol=0)
        np.testing.assert_allclose(mel, ref[:, : audio.num_frames(len(c))], atol=1e-4, rtol=0)
    assert [m.shape[1] for m in audio.log_mel_chunks(w, n_mels=80)] == [3000, 1500]
    assert [len(c) for c in audio.chunk_waveform(w[:SR], seconds=0.4)] == [6400, 6400, 3200]
    assert [len(c) for c in audio.chunk_waveform(np.zeros(0))] == [0]


@pytest.mark.parametrize("n", [1, 159, 160, 161, 8000, 16001, 479999, 480000, 500000])
def test_num_frames_equals_the_extractor_attention_mask(n):
    w = np.full(n, 0.1, np.float32)
    mask = _hf(80)(w, sampling_rate=SR, return_attention_mask=True, return_tensors="np").attention_mask[0]
    assert audio.num_frames(n) == int(mask.sum())
    assert mask[: audio.num_frames(n)].all()


def test_jax_batch_equals_numpy_and_ignores_batch_mates():
    sigs = list(_signals().values())
    batch, frames = audio.pad_batch(sigs)
    assert batch.shape == (len(sigs), 480000) and frames.tolist() == [audio.num_frames(len(s)) for s in sigs]
    out = np.asarray(audio.whisper_log_mel_batch(batch, n_mels=80))
    assert out.shape == (len(sigs), 80, 3000) and out.dtype == np.float32
    for i, s in enumerate(sigs):
        np.testing.assert_allclose(out[i], audio.whisper_log_mel(s, n_mels=80), atol=1e-4, rtol=0)
    # A quiet example's features do not depend on its batch-mates (the max is per example, never per batch).
    quiet = 2  # silence
    for mates in ([batch[0] * 100], [batch[1], batch[4]]):
        again = np.asarray(audio.whisper_log_mel_batch(np.stack([*mates, batch[quiet]]), n_mels=80))[-1]
        np.testing.assert_allclose(again, out[quiet], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"\[B, 480000\]"):
        audio.whisper_log_mel_batch(batch[:, :1000], n_mels=80)


@pytest.mark.parametrize("seconds", [0.05, 0.5, 1.013, 3.9, 29.99, 31.0])
def test_unpadded_frames_equal_the_full_features(seconds):
    rng = np.random.default_rng(int(seconds * 1000))
    w = (0.2 * rng.normal(size=int(SR * seconds))).astype(np.float32)
    n = audio.num_frames(len(w))
    np.testing.assert_allclose(audio.log_mel_frames(w, 80), audio.whisper_log_mel(w, 80)[:, :n], atol=1e-6, rtol=0)
    silent = np.zeros(int(SR * seconds), np.float32)
    np.testing.assert_array_equal(audio.log_mel_frames(silent, 80), audio.whisper_log_mel(silent, 80)[:, :n])


def test_contract_rejects_wrong_rate_and_shape():
    with pytest.raises(ValueError, match="sampling_rate=8000"):
        audio.whisper_log_mel(np.zeros(100), sampling_rate=8000)
    with pytest.raises(ValueError, match=r"shape \(2, 100\)"):
        audio.whisper_log_mel(np.zeros((2, 100)))


def _tone(seconds: float, sr: int, freq: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def _write_bad(p, kind):
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "random":
        p.write_bytes(np.random.default_rng(0).bytes(3000))
    elif kind == "truncated":
        sf.write(p, _tone(1, SR), SR)
        p.write_bytes(p.read_bytes()[:1000])
    elif kind == "cut_header":
        sf.write(p, _tone(1, SR), SR)
        p.write_bytes(p.read_bytes()[:30])
    elif kind == "nan":
        sf.write(p, np.full(1600, np.nan, np.float32), SR, subtype="FLOAT")
    elif kind == "inf":
        sf.write(p, np.r_[np.zeros(100), np.inf, -np.inf].astype(np.float32), SR, subtype="FLOAT")
    elif kind == "directory":
        p.mkdir()
    elif kind == "no_samples":
        sf.write(p, np.zeros(0, np.float32), SR)


@pytest.mark.parametrize("kind, error, detail", [
    ("empty", audio.EmptyFileError, "0 bytes"),
    ("random", audio.CorruptFileError, "cannot decode"),
    ("truncated", audio.TruncatedFileError, "data chunk declares 32000 bytes, file holds 956"),
    ("cut_header", audio.TruncatedFileError, "header cut short (30 bytes)"),
    ("missing", audio.UnreadableFileError, "No such file"),
    ("directory", audio.UnreadableFileError, "is a directory"),
    ("nan", audio.NonFiniteError, "1600 NaN/Inf samples"),
    ("inf", audio.NonFiniteError, "2 NaN/Inf samples"),
    ("no_samples", audio.NoSamplesError, "no audio samples"),
])
def test_decode_errors(tmp_path, kind, error, detail):
    p = tmp_path / "clip.wav"
    _write_bad(p, kind)
    with pytest.raises(error) as e:
        audio.decode(p)
    assert isinstance(e.value, audio.AudioError) and e.value.reason == error.reason
    assert detail in e.value.detail and str(p) in str(e.value) and str(p) not in e.value.report_reason()


def test_decode_unknown_format_and_compressed_formats(tmp_path):
    (tmp_path / "notes.txt").write_text("not audio at all")
    with pytest.raises(audio.UnknownFormatError, match="extension '.txt'"):
        audio.decode(tmp_path / "notes.txt")
    (tmp_path / "text.flac").write_text("not audio at all")  # an audio name with no audio inside: corrupt
    with pytest.raises(audio.CorruptFileError):
        audio.decode(tmp_path / "text.flac")
    tone = _tone(2, SR)
    for fmt, ext in (("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")):
        sf.write(tmp_path / f"t.{ext}", tone, SR, format=fmt)
        w, info = audio.decode(tmp_path / f"t.{ext}")
        assert len(w) == 2 * SR and info["orig_sr"] == SR
        assert np.sqrt(np.mean(w[SR // 2:] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
    full = (tmp_path / "t.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(full[: len(full) // 3])
    with pytest.raises(audio.TruncatedFileError):
        audio.decode(tmp_path / "cut.flac")
    sf.write(tmp_path / "wav_named.mp3", tone, SR, format="WAV")  # wrong extension: decoded by its content
    np.testing.assert_allclose(audio.decode(tmp_path / "wav_named.mp3")[0], tone, atol=1e-4)


def test_decode_resamples_and_downmixes(tmp_path):
    t48 = np.arange(48000) / 48000
    left, right = np.sin(2 * np.pi * 440 * t48), np.sin(2 * np.pi * 1000 * t48)
    sf.write(tmp_path / "s48.wav", (0.4 * np.stack([left, right], axis=1)).astype(np.float32), 48000)
    sf.write(tmp_path / "m8.flac", _tone(1, 8000, 300.0), 8000)
    w, info = audio.decode(tmp_path / "s48.wav")
    assert info == {"orig_sr": 48000, "channels": 2, "seconds": 1.0, "clip_ratio": 0.0} and len(w) == SR
    t = np.arange(SR) / SR
    expected = 0.2 * (np.sin(2 * np.pi * 440 * t) + np.sin(2 * np.pi * 1000 * t))  # mean of the two channels
    np.testing.assert_allclose(w[500:-500], expected[500:-500], atol=2e-3)
    w8, info8 = audio.decode(tmp_path / "m8.flac")
    assert info8["orig_sr"] == 8000 and len(w8) == SR and w8.dtype == np.float32
    np.testing.assert_allclose(w8[500:-500], 0.5 * np.sin(2 * np.pi * 300 * t)[500:-500], atol=2e-3)


def test_decode_measures_clipping_before_resampling(tmp_path):
    square = np.sign(np.sin(2 * np.pi * 50 * np.arange(44100) / 44100)).astype(np.float32)
    sf.write(tmp_path / "sq.wav", square, 44100, subtype="FLOAT")
    _, info = audio.decode(tmp_path / "sq.wav")
    assert info["clip_ratio"] == pytest.approx(np.mean(np.abs(square) >= 0.999))


def _opened_within(fn, seconds: float = 20.0) -> bool:
    """Whether ``fn()`` returns (or raises) within ``seconds`` (it runs in a daemon thread)."""
    import threading

    t = threading.Thread(target=lambda: pytest.raises(audio.AudioError, fn), daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive()


def test_decode_never_opens_a_fifo_or_a_device(tmp_path):
    import os

    fifo = tmp_path / "clip.wav"
    os.mkfifo(fifo)
    try:
        assert _opened_within(lambda: audio.decode(fifo)), "decode blocked on a FIFO"
    finally:
        try:  # a reader still blocked in open() (a failed run) is released by a writer
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    with pytest.raises(audio.UnreadableFileError, match="is a FIFO, not a regular file"):
        audio.decode(fifo)
    with pytest.raises(audio.UnreadableFileError, match="is a character device, not a regular file"):
        audio.decode("/dev/zero")


def test_a_zero_sample_rate_header_is_corrupt(tmp_path):
    p = tmp_path / "sr0.wav"
    sf.write(p, _tone(1, SR), SR)
    b = bytearray(p.read_bytes())
    b[24:32] = bytes(8)  # sample rate and byte rate 0
    p.write_bytes(bytes(b))
    with pytest.raises(audio.CorruptFileError, match="sample rate of 0 Hz"):
        audio.decode(p)


@pytest.mark.parametrize("name", ["shadow", "shadow.txt", "shadow.wav", "shadow.flac", "shadow.mp3", "shadow.m4a"])
def test_decode_errors_never_quote_the_file(tmp_path, name):
    secret = "root:$6$Zq9secretSALT$hashhashhash:19000:0:99999:7:::\n"
    p = tmp_path / name
    p.write_text(secret)
    with pytest.raises(audio.AudioError) as e:
        audio.decode(p)
    said = e.value.report_reason()
    quoted = [secret[i:i + 4] for i in range(len(secret) - 4)]
    hexed = [secret.encode()[i:i + 3].hex() for i in range(len(secret) - 3)]
    assert not [q for q in quoted + hexed if q in said], said

"""Clip quality checks: each check rejects the clip it should, with its specific reason; the PCM hash."""

import hashlib

import numpy as np
import pytest
import soundfile as sf

from cogito_jax import audio
from cogito_jax.data import clips
from cogito_jax.data.clips import FilterConfig

SR = 16000
CFG = FilterConfig()


def _sine(seconds: float, amp: float = 0.3, freq: float = 997.0, sr: int = SR) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def _reason(wave, cfg=CFG, **kw):
    problem = clips.quality_problem(wave, cfg, **kw)
    return None if problem is None else problem.report_reason()


def test_a_clean_clip_passes_and_is_hashed_from_its_pcm16_bytes():
    w = (np.rint(_sine(2.0) * 32768) / 32768).astype(np.float32)  # as decoded from a PCM16 file
    r = clips.check_clip("a", w, CFG)
    assert r.ok and r.reason is None and r.waveform.dtype == np.float32
    pcm = np.rint(w.astype(np.float64) * 32768).astype("<i2").tobytes()
    assert r.pcm_hash == hashlib.sha256(pcm).hexdigest()
    assert clips.pcm_hash(w + 1e-6) == r.pcm_hash != clips.pcm_hash(w * 0.9)
    assert clips.pcm16(np.array([1.0, -1.0, 2.0, 0.5 / 32768 - 1e-9])) == np.array(
        [32767, -32768, 32767, 0], "<i2").tobytes()


@pytest.mark.parametrize("wave, kw, reason", [
    (_sine(0.05), {}, "too_short: 0.05 s < 0.5 s"),
    (_sine(61.5), {}, "too_long: 61.5 s > 60 s"),
    (_sine(2.0), {"orig_sr": 6000}, "low_sample_rate: 6000 Hz < 8000 Hz"),
    (np.r_[_sine(1.0), np.nan, np.inf].astype(np.float32), {}, "non_finite: 2 NaN/Inf samples"),
    (np.zeros(SR), {}, "silent: digital silence (every sample is 0 at 16-bit resolution)"),
    (np.full(SR, 1e-5, np.float32), {}, "silent: digital silence (every sample is 0 at 16-bit resolution)"),
    (np.r_[np.zeros(SR * 4), _sine(0.1)].astype(np.float32), {}, "mostly_silent: 2.4% active frames < 5%"),
    (np.r_[np.ones(1600), -np.ones(100), _sine(1.0)].astype(np.float32), {},
     "clipped: 9.60% of samples at full scale > 5%"),
    (_sine(1.0), {"clip_ratio": 0.2}, "clipped: 20.00% of samples at full scale > 5%"),
])
def test_each_check_rejects_with_its_reason(wave, kw, reason):
    assert _reason(wave, **kw) == reason
    assert reason.split(":")[0] in clips.LABELS


def test_duration_bounds_are_inclusive_and_configurable():
    cfg = FilterConfig(min_seconds=1.0, max_seconds=2.0)
    assert _reason(_sine(1.0), cfg) is None and _reason(_sine(2.0), cfg) is None
    assert _reason(_sine(0.99), cfg) == "too_short: 0.99 s < 1 s"
    assert _reason(_sine(2.5), cfg) == "too_long: 2.5 s > 2 s"


def test_active_frames_use_absolute_and_relative_thresholds():
    # Half the clip at -10 dBFS, half at -60 dBFS: the quiet half is 50 dB down, below the -35 dB threshold.
    w = np.r_[_sine(1.0, amp=0.45), _sine(1.0, amp=0.0014)]
    assert clips.active_ratio(w, CFG) == pytest.approx(0.5, abs=0.01)
    assert clips.active_ratio(w, FilterConfig(active_rel_db=-60.0)) == 1.0
    assert clips.active_ratio(_sine(1.0, amp=2e-4), CFG) == 0.0  # -77 dBFS: under the -70 dBFS floor
    assert _reason(w, FilterConfig(min_active_ratio=0.6)) == "mostly_silent: 50.0% active frames < 60%"


def test_loudness_against_the_bs1770_sine_reference():
    # A full-scale 997 Hz sine reads -3.01 LUFS (ITU-R BS.1770); its loudness follows 20 log10(amplitude).
    for amp in (1.0, 0.1, 0.0045):
        assert clips.loudness_lufs(_sine(3.0, amp)) == pytest.approx(-3.01 + 20 * np.log10(amp), abs=0.1)
    quiet = _sine(3.0, 10 ** ((-50 + 3.01) / 20))
    assert _reason(quiet, FilterConfig(min_lufs=-40.0)) == "too_quiet: -50.1 LUFS < -40 LUFS"
    assert _reason(_sine(3.0, 0.9), FilterConfig(max_lufs=-12.0)) == "too_loud: -4.0 LUFS > -12 LUFS"
    gated = _sine(3.0, 10 ** ((-80 + 3.01) / 20))
    assert _reason(gated, FilterConfig(active_floor_dbfs=-100.0)) == "too_quiet: below the -70 LUFS gate"


def test_loudness_guards_short_clips_and_silence():
    assert clips.loudness_lufs(_sine(0.39)) is None
    assert _reason(_sine(0.3), FilterConfig(min_seconds=0.1, min_lufs=0.0)) is None  # too short to measure
    assert clips.loudness_lufs(np.zeros(SR)) == -np.inf
    assert _reason(np.zeros(SR), FilterConfig(min_lufs=-20.0)).startswith("silent:")


def test_check_file_reports_decode_errors_and_uses_source_clipping(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    r = clips.check_file("e", tmp_path / "empty.wav", CFG)
    assert not r.ok and r.reason == "empty_file: file has 0 bytes"
    square = np.sign(_sine(2.0, freq=50.0, sr=44100))
    sf.write(tmp_path / "sq.wav", square, 44100, subtype="FLOAT")
    r = clips.check_file("sq", tmp_path / "sq.wav", CFG)
    assert r.reason == f"clipped: {100 * np.mean(np.abs(square) >= 0.999):.2f}% of samples at " \
                                      "full scale > 5%"
    sf.write(tmp_path / "st48.wav", np.stack([_sine(2.0, sr=48000), _sine(2.0, sr=48000, freq=500.0)], 1), 48000)
    r = clips.check_file("st48", tmp_path / "st48.wav", CFG)
    assert r.ok and len(r.waveform) == 2 * SR and (r.info["orig_sr"], r.info["channels"]) == (48000, 2)
    sf.write(tmp_path / "ok.flac", _sine(2.0, sr=8000), 8000)
    r = clips.check_file("ok", tmp_path / "ok.flac", CFG)
    assert r.ok and len(r.waveform) == 2 * SR and r.info["orig_sr"] == 8000
    assert clips.check_file("lo", tmp_path / "ok.flac", FilterConfig(min_sample_rate=16000)).reason \
        == "low_sample_rate: 8000 Hz < 16000 Hz"


def test_from_mapping_ignores_non_threshold_keys():
    cfg = FilterConfig.from_mapping({"min_seconds": 0.3, "dedup": True, "contamination_meta": ()})
    assert cfg == FilterConfig(min_seconds=0.3)


def test_decoded_error_reasons_are_stable_labels_and_quote_no_content(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    r = clips.check_file("x", tmp_path / "x.txt", CFG)
    assert isinstance(r.rejection, audio.UnknownFormatError)
    assert r.reason == "unknown_format: not a recognised audio format (extension '.txt', " \
                                      "no known audio signature in its first bytes)"


def test_a_header_declaring_hours_is_too_long_before_any_decoding(tmp_path, monkeypatch):
    """An 8-hour WAV (sparse: the header and data size are real, the disk holds nothing) is rejected from its
    header: decoding it would take gigabytes."""
    path = tmp_path / "eight_hours.wav"
    sf.write(path, _sine(1.0), SR, subtype="PCM_16")
    data_bytes = 8 * 3600 * SR * 2
    head = bytearray(path.read_bytes()[:44])
    head[4:8], head[40:44] = (36 + data_bytes).to_bytes(4, "little"), data_bytes.to_bytes(4, "little")
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(44 + data_bytes)

    def no_decoding(*args, **kwargs):
        raise AssertionError("the clip was decoded")

    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    r = clips.check_file("long", path, CFG)
    assert r.reason == "too_long: 2.88e+04 s > 60 s (declared by the header; not decoded)"

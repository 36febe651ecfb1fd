"""The benchmark-contamination guard: by audio hash and by source url + time span."""

import json

import numpy as np
import pytest
import soundfile as sf

from cogito_jax import audio
from cogito_jax.data import clips
from cogito_jax.data.clips import FilterConfig
from data_prep import filters
from data_prep.filters import ContaminationGuard

SR = 16000
CFG = FilterConfig()


def _sine(seconds: float, amp: float = 0.3, freq: float = 997.0, sr: int = SR) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def _sine(seconds: float, amp: float = 0.3, freq: float = 997.0, sr: int = SR) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def test_contamination_by_hash_and_by_source_span(tmp_path):
    bench = tmp_path / "mmar"
    (bench / "audio").mkdir(parents=True)
    clip = _sine(2.0, freq=440.0)
    sf.write(bench / "audio" / "m1.wav", clip, SR)
    meta = [{"id": "m1", "audio_path": "./audio/m1.wav", "url": "https://www.youtube.com/watch?v=abc123&t=5",
             "timestamp": "00:01-00:11"},
            {"id": "m2", "audio_path": "./audio/m2.wav", "url": "https://freesound.org/s/123/", "timestamp": ""},
            {"id": "m3", "audio_path": "./audio/m3.wav", "url": "null", "timestamp": "null"}]
    (bench / "MMAR-meta.json").write_text(json.dumps(meta))
    mmau = tmp_path / "mmau.jsonl"
    sf.write(tmp_path / "u1.flac", _sine(1.0, freq=300.0), SR)
    mmau.write_text(json.dumps({"id": "u1", "audio_id": "./u1.flac", "question": "q"}) + "\n")
    guard = ContaminationGuard.from_meta([bench / "MMAR-meta.json", mmau])
    assert len(guard.by_hash) == 2 and set(guard.by_source) == {"youtube:abc123", "freesound.org/s/123"}
    # The same clip re-encoded elsewhere (PCM16 wav) has the same 16 kHz PCM16 bytes.
    sf.write(tmp_path / "copy.wav", clip, SR, subtype="PCM_16")
    copy_hash = clips.check_file("x", tmp_path / "copy.wav", CFG).pcm_hash
    assert guard.check(copy_hash) == "contamination: audio identical to MMAR-meta.json:m1"
    u1_hash = clips.pcm_hash(audio.decode(tmp_path / "u1.flac")[0])
    assert guard.check(u1_hash) == "contamination: audio identical to mmau.jsonl:u1"
    assert guard.check(clips.pcm_hash(clip * 0.5)) is None
    assert guard.check(url="https://youtu.be/abc123", timestamp="00:00:05-00:00:20") == (
        "contamination: source youtube:abc123 (5-20 s) overlaps MMAR-meta.json:m1 (1-11 s)")
    assert guard.check(url="youtube.com/shorts/abc123", timestamp="[11, 30]") is None  # touching, not overlapping
    assert guard.check(url="https://m.youtube.com/watch?v=abc123") is not None  # no span: the whole video
    assert guard.check(url="http://freesound.org/s/123", timestamp="40-50").endswith("(whole source)")
    assert guard.check(url="https://youtu.be/other", timestamp="00:01-00:11") is None
    item = {"id": "t", "metadata": {"url": "https://www.youtube.com/watch?v=abc123", "timestamp": "0:08-0:09"}}
    assert guard.check_item(item).startswith("contamination: source youtube:abc123")


@pytest.mark.parametrize("ts, span", [("00:01-00:11", (1.0, 11.0)), ("1:02:03.5 - 1:02:13", (3723.5, 3733.0)),
                                      ("12.5-22", (12.5, 22.0)), ([30, 10], (10.0, 30.0)), ("7", (7.0, 7.0)),
                                      ("", None), (None, None), ("null", None), ("1-2-3", None)])
def test_parse_span(ts, span):
    assert filters.parse_span(ts) == span

"""One audio clip to training features: decode, quality checks, PCM hash, log-mel.

Every rejection has a stable label and a specific detail (``"too_short: 0.05 s < 0.5 s"``). Checks, in
order: decoding (the ``cogito_jax.audio`` reasons; a header that declares more than ``max_seconds`` is
``too_long`` before any decoding), source sample rate, NaN/Inf, duration bounds,
digital silence, active-frame ratio, clipping (measured on the source samples when decoded from a file),
integrated loudness (ITU-R BS.1770 LUFS via pyloudnorm, for clips of at least 0.4 s). Exact duplicates
share the SHA-256 of their 16 kHz PCM16 bytes (:func:`pcm_hash`).

:func:`process_clip` runs all of it on one manifest item with explicit :class:`Features` settings; clips over
30 s are either cut to the first 30 s (``truncate``: the one window qwen2_audio's Whisper encoder takes) or
kept up to ``max_seconds`` as the log-mel of each 30 s window concatenated along frames (``chunks``:
qwen3_omni_thinker's AuT encoder windows a whole clip itself).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from cogito_jax import audio

LABELS = ("low_sample_rate", "non_finite", "too_short", "too_long", "silent", "mostly_silent", "clipped",
          "too_quiet", "too_loud", "duplicate_of", "contamination")
LUFS_MIN_SECONDS = 0.4  # one BS.1770 gating block
FRAME = 400  # 25 ms at 16 kHz, for the active-frame ratio
LONG_CLIP_MODES = ("truncate", "chunks")


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """Thresholds of the quality checks (``filters`` in configs/data/*.py)."""

    min_seconds: float = 0.5
    max_seconds: float = 60.0
    min_sample_rate: int = 8000
    min_active_ratio: float = 0.05  # fraction of 25 ms frames that must be active
    active_floor_dbfs: float = -70.0  # a frame is active above this RMS level ...
    active_rel_db: float = -35.0  # ... and above the loudest frame's RMS plus this
    max_clip_ratio: float = 0.05  # fraction of samples at full scale (|x| >= 0.999)
    min_lufs: float = -70.0
    max_lufs: float | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FilterConfig:
        """The fields of ``values`` that are thresholds (other keys, e.g. ``dedup``, are ignored)."""
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


@dataclasses.dataclass(frozen=True)
class Features:
    """What a clip's log-mel is: ``n_mels`` bins of at most ``max_seconds`` of audio; clips over 30 s are cut
    (``long_clips="truncate"``) or chunked (``"chunks"``), see the module doc."""

    n_mels: int = 128
    max_seconds: float = 30.0
    long_clips: str = "truncate"

    def __post_init__(self):
        if self.long_clips not in LONG_CLIP_MODES:
            raise ValueError(f"long_clips={self.long_clips!r} must be one of {LONG_CLIP_MODES}")

    def key(self) -> str:
        """What a clip's log-mel depends on besides its audio."""
        return f"n_mels={self.n_mels} long_clips={self.long_clips} max_seconds={self.max_seconds}"


class QualityError(audio.AudioError):
    """A clip that decodes but fails a quality check; ``reason`` is one of LABELS."""


@dataclasses.dataclass
class Result:
    """One clip after the checks: the 16 kHz waveform and its hash, or the rejection."""

    id: str
    waveform: np.ndarray | None = None
    info: dict = dataclasses.field(default_factory=dict)
    pcm_hash: str = ""
    rejection: audio.AudioError | None = None

    @property
    def ok(self) -> bool:
        return self.rejection is None

    @property
    def reason(self) -> str | None:
        """``"label: detail"`` of the rejection (None for a clip that passed)."""
        return None if self.rejection is None else self.rejection.report_reason()


def pcm16(wave: np.ndarray) -> bytes:
    """Little-endian 16-bit PCM of a float waveform: ``rint(x * 32768)`` clipped to the int16 range, so a
    PCM16 file decoded to float (``k / 32768``) gives back exactly its own samples."""
    return np.clip(np.rint(np.asarray(wave, np.float64) * 32768), -32768, 32767).astype("<i2").tobytes()


def pcm_hash(wave: np.ndarray) -> str:
    """SHA-256 (hex) of the 16 kHz PCM16 bytes: equal for clips that are the same once decoded."""
    return hashlib.sha256(pcm16(wave)).hexdigest()


@functools.lru_cache(maxsize=1)
def _meter():
    import pyloudnorm  # its import (scipy) is slow: only when a clip is measured

    return pyloudnorm.Meter(audio.SAMPLE_RATE)


def loudness_lufs(wave: np.ndarray) -> float | None:
    """Integrated loudness (LUFS) of a 16 kHz clip; None below 0.4 s; -inf when every block is gated."""
    if len(wave) < LUFS_MIN_SECONDS * audio.SAMPLE_RATE:
        return None
    return float(_meter().integrated_loudness(np.asarray(wave, np.float64)))


def active_ratio(wave: np.ndarray, cfg: FilterConfig) -> float:
    """Fraction of 25 ms frames whose RMS is above both the absolute floor and the relative threshold."""
    n = max(len(wave) // FRAME, 1)
    frames = np.pad(wave, (0, max(n * FRAME - len(wave), 0)))[: n * FRAME].reshape(n, FRAME)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    threshold = max(10 ** (cfg.active_floor_dbfs / 20), rms.max() * 10 ** (cfg.active_rel_db / 20))
    return float(np.mean(rms > threshold))


def short(x: float) -> str:
    """A number in a rejection detail: three significant digits."""
    return f"{x:.3g}"


def quality_problem(wave: np.ndarray, cfg: FilterConfig, *, orig_sr: int = audio.SAMPLE_RATE,
                    clip_ratio: float | None = None) -> QualityError | None:
    """The first failed check of a mono 16 kHz clip, or None. ``clip_ratio`` defaults to the waveform's own."""
    w = np.asarray(wave, np.float32).reshape(-1)
    if orig_sr < cfg.min_sample_rate:
        return QualityError(f"{orig_sr} Hz < {cfg.min_sample_rate} Hz", reason="low_sample_rate")
    bad = int(w.size - np.count_nonzero(np.isfinite(w)))
    if bad:
        return QualityError(f"{bad} NaN/Inf samples", reason="non_finite")
    seconds = len(w) / audio.SAMPLE_RATE
    if seconds < cfg.min_seconds:
        return QualityError(f"{short(seconds)} s < {short(cfg.min_seconds)} s", reason="too_short")
    if seconds > cfg.max_seconds:
        return QualityError(f"{short(seconds)} s > {short(cfg.max_seconds)} s", reason="too_long")
    if float(np.max(np.abs(w))) < 0.5 / 32768:
        return QualityError("digital silence (every sample is 0 at 16-bit resolution)", reason="silent")
    active = active_ratio(w, cfg)
    if active < cfg.min_active_ratio:
        return QualityError(f"{100 * active:.1f}% active frames < {short(100 * cfg.min_active_ratio)}%",
                            reason="mostly_silent")
    clipped = float(np.mean(np.abs(w) >= audio.CLIP_LEVEL)) if clip_ratio is None else clip_ratio
    if clipped > cfg.max_clip_ratio:
        return QualityError(f"{100 * clipped:.2f}% of samples at full scale > {short(100 * cfg.max_clip_ratio)}%",
                            reason="clipped")
    lufs = loudness_lufs(w)
    if lufs is not None and lufs < cfg.min_lufs:
        detail = f"{lufs:.1f} LUFS < {short(cfg.min_lufs)} LUFS" if np.isfinite(lufs) else "below the -70 LUFS gate"
        return QualityError(detail, reason="too_quiet")
    if lufs is not None and cfg.max_lufs is not None and lufs > cfg.max_lufs:
        return QualityError(f"{lufs:.1f} LUFS > {short(cfg.max_lufs)} LUFS", reason="too_loud")
    return None


def check_clip(item_id: str, wave: np.ndarray, cfg: FilterConfig, info: dict | None = None) -> Result:
    """Checks a decoded 16 kHz clip (``info`` as ``audio.decode`` gives it, or None for a 16 kHz source)."""
    info = dict(info or {})
    problem = quality_problem(wave, cfg, orig_sr=info.get("orig_sr", audio.SAMPLE_RATE),
                              clip_ratio=info.get("clip_ratio"))
    if problem is not None:
        return Result(item_id, info=info, rejection=problem)
    w = np.asarray(wave, np.float32).reshape(-1)
    return Result(item_id, w, info, pcm_hash(w))


def check_file(item_id: str, path: str | pathlib.Path, cfg: FilterConfig) -> Result:
    """Decodes and checks one clip; ``rejection`` is the AudioError when it fails (a clip whose header declares
    more than ``cfg.max_seconds`` is rejected before it is decoded)."""
    try:
        wave, info = audio.decode(path, max_seconds=cfg.max_seconds)
    except audio.AudioError as e:
        return Result(item_id, rejection=e)
    return check_clip(item_id, wave, cfg, info)


def process_clip(item: Mapping[str, Any], features: Features, filters: FilterConfig) -> tuple[dict, Any]:
    """Decode + quality checks + log-mel of one item (``id``, ``audio_path``): ``(row, mel [frames, n_mels]
    float16)``. The row holds ``id``, ``ok`` and, for a kept clip, ``seconds``, ``hash`` (:func:`pcm_hash`) and
    ``n_frames``; a rejected clip has ``ok`` False, its ``reason`` and mel None. Whatever fails inside rejects this
    clip alone (``processing_failed``, with the exception's type)."""
    try:
        return _process_clip(item, features, filters)
    except Exception as e:  # one bad clip must never stop a build
        return {"id": item["id"], "ok": False, "reason": failure_reason(e)}, None


def failure_reason(e: Exception) -> str:
    """``processing_failed: <type>: <first line of the message>``, short; a text-decoding error's message is left
    out (it quotes the bytes it could not read)."""
    msg = "" if isinstance(e, UnicodeError) else (str(e).strip().splitlines() or [""])[0][:120]
    return f"processing_failed: {type(e).__name__}" + (f": {msg}" if msg else "")


def _process_clip(item: Mapping[str, Any], features: Features, filters: FilterConfig) -> tuple[dict, Any]:
    result = check_file(item["id"], item["audio_path"], filters)
    if result.rejection is not None:
        return {"id": item["id"], "ok": False, "reason": result.reason}, None
    wave = result.waveform[: int(features.max_seconds * audio.SAMPLE_RATE)]
    if features.long_clips == "chunks":
        mel_mf = np.concatenate(audio.log_mel_chunks(wave, n_mels=features.n_mels), axis=1)
    else:
        wave = wave[: audio.N_SAMPLES]
        mel_mf = audio.log_mel_frames(wave, n_mels=features.n_mels)
    row = {"id": item["id"], "ok": True, "seconds": len(wave) / audio.SAMPLE_RATE, "hash": result.pcm_hash,
           "n_frames": mel_mf.shape[1]}
    return row, mel_mf.T.astype(np.float16)

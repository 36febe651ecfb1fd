"""Per-clip quality checks; each rejection carries a specific, stable reason.

Checks, in order: decoding (``cogito_jax.audio.decode`` reasons), source sample rate, NaN/Inf,
duration bounds, digital silence / active-frame ratio, clipping ratio, and (for clips of at least
0.4 s) integrated loudness (LUFS, pyloudnorm when installed). Exact duplicates are found by the
SHA-256 of the 16 kHz PCM16 bytes, and ``contamination_hashes`` gives the hashes of benchmark clips
(MMAR/MMAU meta files) that must never be trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from collections.abc import Iterable

import numpy as np

from cogito_jax import audio


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    min_seconds: float = 0.5
    max_seconds: float = 60.0
    min_sample_rate: int = 8000
    min_active_ratio: float = 0.05
    max_clip_ratio: float = 0.05
    min_lufs: float = -70.0


@dataclasses.dataclass
class Result:
    id: str
    waveform: np.ndarray | None = None
    info: dict | None = None
    pcm_hash: str = ""
    rejection: audio.AudioError | None = None


def pcm_hash(wave: np.ndarray) -> str:
    pcm = (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()
    return hashlib.sha256(pcm).hexdigest()


def _lufs(wave: np.ndarray) -> float | None:
    try:
        import pyloudnorm
    except ImportError:
        return None
    return float(pyloudnorm.Meter(audio.SAMPLE_RATE).integrated_loudness(wave.astype(np.float64)))


def check_waveform(wave: np.ndarray, info: dict, cfg: FilterConfig) -> str | None:
    """The rejection reason for a decoded clip, or None if it passes."""
    seconds = len(wave) / audio.SAMPLE_RATE
    if info.get("orig_sr", audio.SAMPLE_RATE) < cfg.min_sample_rate:
        return f"low_sample_rate: {info['orig_sr']} Hz < {cfg.min_sample_rate} Hz"
    if seconds < cfg.min_seconds:
        return f"too_short: {seconds:.2f} s < {cfg.min_seconds} s"
    if seconds > cfg.max_seconds:
        return f"too_long: {seconds:.1f} s > {cfg.max_seconds} s"
    if not np.any(wave):
        return "silent: all samples are zero"
    frames = wave[: len(wave) // 400 * 400].reshape(-1, 400)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    active = float(np.mean(rms > max(1e-4, 0.01 * rms.max())))
    if active < cfg.min_active_ratio:
        return f"mostly_silent: {100 * active:.1f}% active frames < {100 * cfg.min_active_ratio:.0f}%"
    clipped = float(np.mean(np.abs(wave) >= 0.999))
    if clipped > cfg.max_clip_ratio:
        return f"clipped: {100 * clipped:.1f}% of samples at full scale"
    if seconds >= 0.4:
        lufs = _lufs(wave)
        if lufs is not None and np.isfinite(lufs) and lufs < cfg.min_lufs:
            return f"too_quiet: {lufs:.1f} LUFS < {cfg.min_lufs} LUFS"
    return None


def check_file(item_id: str, path: str | pathlib.Path, cfg: FilterConfig) -> Result:
    """Decode and check one clip; ``rejection`` is set when it fails."""
    try:
        wave, info = audio.decode(path)
    except audio.AudioError as e:
        return Result(item_id, rejection=e)
    reason = check_waveform(wave, info, cfg)
    if reason:
        return Result(item_id, info=info, rejection=audio.AudioError(reason))
    return Result(item_id, wave, info, pcm_hash(wave))


def contamination_hashes(meta_files: Iterable[str]) -> set[str]:
    """PCM hashes of the clips referenced by benchmark meta files (JSONL or JSON array, ``audio_path``)."""
    out: set[str] = set()
    for meta in meta_files:
        p = pathlib.Path(meta)
        text = p.read_text()
        recs = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x]
        for r in recs:
            clip = (p.parent / r.get("audio_path", "")).resolve()
            if clip.is_file():
                try:
                    out.add(pcm_hash(audio.decode(clip)[0]))
                except audio.AudioError:
                    continue
    return out

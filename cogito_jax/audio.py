"""Audio front end: decode, downmix, resample to 16 kHz, Whisper log-mel (NumPy and batched JAX).

``whisper_log_mel(waveform, n_mels=128)`` (contract 3) equals HF's ``WhisperFeatureExtractor``: the
waveform is padded/cut to 30 s, a centred STFT (n_fft 400, hop 160, periodic Hann, reflect padding)
gives the power spectrum, Slaney mel filters map it to ``n_mels`` bins, the last frame is dropped,
then ``log10(max(x, 1e-10))``, ``max(x, x.max() - 8)`` per example and ``(x + 4) / 4``.
``whisper_log_mel_batch`` is the jitted JAX version over ``[B, 480000]`` (the max is per example).
"""

from __future__ import annotations

import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000
N_FRAMES = N_SAMPLES // HOP  # 3000


class AudioError(ValueError):
    """An audio file that cannot be used; ``reason`` is a short, stable label."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@functools.lru_cache(maxsize=8)
def mel_filters(n_mels: int) -> np.ndarray:
    """Slaney-style mel filter bank ``[n_mels, n_fft // 2 + 1]`` (float32), as Whisper uses."""
    import librosa

    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels, norm="slaney", htk=False,
                               dtype=np.float64).astype(np.float32)


def _hann() -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic


def pad_or_trim(waveform: np.ndarray, length: int = N_SAMPLES) -> np.ndarray:
    w = np.asarray(waveform, np.float32).reshape(-1)
    return w[:length] if w.shape[0] >= length else np.pad(w, (0, length - w.shape[0]))


def _check(waveform: np.ndarray, sampling_rate: int) -> np.ndarray:
    if sampling_rate != SAMPLE_RATE:
        raise ValueError(f"sampling_rate={sampling_rate}: resample to {SAMPLE_RATE} Hz first (see decode)")
    w = np.asarray(waveform)
    if w.ndim != 1:
        raise ValueError(f"waveform must be 1-D, got shape {w.shape}")
    return w


def _log_mel(w30: np.ndarray, n_mels: int, n_frames: int) -> np.ndarray:
    """Log-mel of the first ``n_frames`` frames of a waveform already padded/cut to 30 s (before scaling)."""
    padded = np.pad(w30, (N_FFT // 2, N_FFT // 2), mode="reflect")[: (n_frames - 1) * HOP + N_FFT]
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]  # [n_frames, 400]
    spec = np.fft.rfft(frames * _hann(), axis=-1)
    power = spec.real.astype(np.float32) ** 2 + spec.imag.astype(np.float32) ** 2
    return np.log10(np.maximum(mel_filters(n_mels) @ power.T, 1e-10))


def _normalise(log_spec: np.ndarray, peak: float) -> np.ndarray:
    return ((np.maximum(log_spec, peak - 8.0) + 4.0) / 4.0).astype(np.float32)


def whisper_log_mel(waveform: np.ndarray, n_mels: int = 128, sampling_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``[n_mels, 3000]`` float32 log-mel of a 1-D 16 kHz waveform (contract 3)."""
    log_spec = _log_mel(pad_or_trim(_check(waveform, sampling_rate)), n_mels, N_FRAMES)
    return _normalise(log_spec, log_spec.max())


def log_mel_frames(waveform: np.ndarray, n_mels: int = 128, sampling_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``whisper_log_mel(waveform)[:, :num_frames(len(waveform))]``, computed only where the clip is.

    Frames past the clip (plus the STFT window's reach) see only zeros, whose log-mel is ``log10(1e-10)``,
    so the per-example maximum needs no more frames than those that overlap the clip.
    """
    w = _check(waveform, sampling_rate)
    n = num_frames(len(w))
    reach = min(N_FRAMES, math.ceil((len(w) + N_FFT // 2) / HOP) + 1)
    log_spec = _log_mel(pad_or_trim(w), n_mels, reach)
    peak = max(float(log_spec.max()), -10.0) if reach < N_FRAMES else float(log_spec.max())
    return _normalise(log_spec[:, :n], peak)


@functools.partial(jax.jit, static_argnames=("n_mels",))
def whisper_log_mel_batch(waveforms_bn: jax.Array, n_mels: int = 128) -> jax.Array:
    """``[B, n_mels, 3000]`` for ``[B, 480000]`` waveforms (already padded/cut to 30 s)."""
    w = jnp.asarray(waveforms_bn, jnp.float32)
    padded = jnp.pad(w, ((0, 0), (N_FFT // 2, N_FFT // 2)), mode="reflect")
    idx = jnp.arange(N_FRAMES)[:, None] * HOP + jnp.arange(N_FFT)[None, :]  # last (dropped) frame never built
    frames = padded[:, idx] * jnp.asarray(_hann())
    spec = jnp.fft.rfft(frames, axis=-1)
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2  # [B, 3000, 201]
    mel = jnp.einsum("mf,btf->bmt", jnp.asarray(mel_filters(n_mels)), power, precision=jax.lax.Precision.HIGHEST)
    log_spec = jnp.log10(jnp.maximum(mel, 1e-10))
    log_spec = jnp.maximum(log_spec, log_spec.max(axis=(1, 2), keepdims=True) - 8.0)
    return (log_spec + 4.0) / 4.0


def num_frames(n_samples: int) -> int:
    """Valid mel frames of a clip (what the feature extractor's attention mask marks), at most 3000."""
    return min(math.ceil(n_samples / HOP), N_FRAMES)


def chunk_waveform(waveform: np.ndarray, seconds: float = CHUNK_SECONDS) -> list[np.ndarray]:
    """Consecutive pieces of at most ``seconds`` (for clips longer than the encoder's 30 s window)."""
    size = int(seconds * SAMPLE_RATE)
    w = np.asarray(waveform, np.float32)
    return [w[i:i + size] for i in range(0, max(len(w), 1), size)]


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    if orig_sr == target_sr:
        return np.asarray(waveform, np.float32)
    import soxr

    return soxr.resample(np.asarray(waveform, np.float32), orig_sr, target_sr, quality="HQ").astype(np.float32)


def decode(path: str | pathlib.Path, target_sr: int = SAMPLE_RATE) -> tuple[np.ndarray, dict]:
    """(mono float32 waveform at ``target_sr``, info with ``orig_sr``, ``channels``, ``seconds``).

    wav/flac/ogg go through soundfile, anything else (mp3, ...) through librosa. Raises AudioError with
    reason ``unreadable``, ``empty_file``, ``truncated``, ``corrupt``, ``no_samples`` or ``non_finite``.
    """
    p = pathlib.Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise AudioError("unreadable", f"{p}: {e.strerror or e}") from e
    if size == 0:
        raise AudioError("empty_file", str(p))
    try:
        with open(p, "rb"):
            pass
    except OSError as e:
        raise AudioError("unreadable", f"{p}: {e.strerror or e}") from e
    _check_wav_complete(p)
    data, sr = _read(p)
    if data.size == 0:
        raise AudioError("no_samples", str(p))
    channels = 1 if data.ndim == 1 else data.shape[1]
    mono = data if data.ndim == 1 else data.mean(axis=1)
    if not np.all(np.isfinite(mono)):
        raise AudioError("non_finite", f"{p}: NaN or Inf samples")
    wave = resample(mono, sr, target_sr)
    return wave, {"orig_sr": int(sr), "channels": int(channels), "seconds": len(wave) / target_sr}


def _check_wav_complete(p: pathlib.Path) -> None:
    """A RIFF/WAVE file whose data chunk declares more bytes than the file holds was cut short."""
    import struct

    with open(p, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        pos, size = 12, p.stat().st_size
        while pos + 8 <= size:
            f.seek(pos)
            cid, clen = struct.unpack("<4sI", f.read(8))
            if cid == b"data":
                if clen != 0xFFFFFFFF and pos + 8 + clen > size:
                    raise AudioError("truncated", f"{p}: data chunk declares {clen} bytes, file has {size - pos - 8}")
                return
            pos += 8 + clen + (clen & 1)


def _read(p: pathlib.Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=False)
        return np.asarray(data, np.float32), int(sr)
    except Exception as sf_error:  # not a format soundfile knows (or broken): try librosa's decoders
        try:
            import warnings

            import librosa

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data, sr = librosa.load(str(p), sr=None, mono=False)
            data = np.asarray(data, np.float32)
            return (data.T if data.ndim == 2 else data), int(sr)
        except Exception as e:
            raise AudioError("corrupt", f"{p}: {str(sf_error).splitlines()[0][:120]} / {type(e).__name__}") from e

"""Audio front end: decode, downmix, resample to 16 kHz, Whisper log-mel (NumPy and batched JAX).

``whisper_log_mel(waveform, n_mels=128)`` (contract 3) equals HF's ``WhisperFeatureExtractor``: the
waveform is padded/cut to 30 s, a centred STFT (n_fft 400, hop 160, periodic Hann, reflect padding)
gives the power spectrum, Slaney mel filters map it to ``n_mels`` bins, the last frame is dropped,
then ``log10(max(x, 1e-10))``, ``max(x, x.max() - 8)`` per example and ``(x + 4) / 4``.
``whisper_log_mel_batch`` is the jitted JAX version over ``[B, 480000]`` (the max is per example).
``decode`` raises an :class:`AudioError` subclass whose ``reason`` is a short, stable label.
"""

from __future__ import annotations

import functools
import math
import pathlib
import stat
import struct
import warnings

import jax
import jax.numpy as jnp
import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000
N_FRAMES = N_SAMPLES // HOP  # 3000
CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped

# Extensions and leading bytes of formats we expect to decode (anything else is "unknown_format").
AUDIO_EXTENSIONS = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif",
                              ".aiff", ".au", ".snd", ".caf", ".w64", ".rf64", ".webm", ".mp4", ".wma"})
_MAGIC = (b"RIFF", b"RF64", b"fLaC", b"OggS", b"ID3", b"FORM", b".snd", b"caff", b"\x1aE\xdf\xa3")


class AudioError(ValueError):
    """A clip that cannot be used: ``reason`` is a stable label, ``detail`` says what exactly."""

    reason = "audio_error"

    def __init__(self, detail: str = "", *, path: str | pathlib.Path | None = None, reason: str | None = None):
        if reason is not None:
            self.reason = reason
        self.detail = detail
        self.path = None if path is None else str(path)
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{self.reason}: {where}{detail}" if detail or where else self.reason)

    def report_reason(self) -> str:
        """``"reason: detail"`` without the path (the item id already names the clip)."""
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


class UnreadableFileError(AudioError):
    reason = "unreadable"


class EmptyFileError(AudioError):
    reason = "empty_file"


class NoSamplesError(AudioError):
    reason = "no_samples"


class TruncatedFileError(AudioError):
    reason = "truncated"


class CorruptFileError(AudioError):
    reason = "corrupt"


class UnknownFormatError(AudioError):
    reason = "unknown_format"


class NonFiniteError(AudioError):
    reason = "non_finite"


class TooLongError(AudioError):
    reason = "too_long"


# ----------------------------------------------------------------------------------------------- features


@functools.lru_cache(maxsize=8)
def mel_filters(n_mels: int) -> np.ndarray:
    """Slaney mel filter bank ``[n_mels, 201]`` (float32), as ``librosa.filters.mel(norm="slaney")``."""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp

    def hz_to_mel(f):
        f = np.asarray(f, np.float64)
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)

    def mel_to_hz(m):
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fft_hz = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_hz = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    ramps = mel_hz[:, None] - fft_hz[None, :]
    fdiff = np.diff(mel_hz)
    weights = np.maximum(0.0, np.minimum(-ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None]))
    weights *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]
    return weights.astype(np.float32)


def _hann() -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic


def pad_or_trim(waveform: np.ndarray, length: int = N_SAMPLES) -> np.ndarray:
    """Float32 copy of a 1-D waveform zero-padded or cut to ``length`` samples."""
    w = np.asarray(waveform, np.float32).reshape(-1)
    return w[:length].copy() if w.shape[0] >= length else np.pad(w, (0, length - w.shape[0]))


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


def log_mel_chunks(waveform: np.ndarray, n_mels: int = 128, seconds: float = CHUNK_SECONDS) -> list[np.ndarray]:
    """Unpadded log-mel ``[n_mels, frames_i]`` of each ``seconds``-long window of a clip (see chunk_waveform)."""
    return [log_mel_frames(c, n_mels) for c in chunk_waveform(waveform, seconds)]


@functools.partial(jax.jit, static_argnames=("n_mels",))
def whisper_log_mel_batch(waveforms_bn: jax.Array, n_mels: int = 128) -> jax.Array:
    """``[B, n_mels, 3000]`` for ``[B, 480000]`` waveforms (already padded/cut to 30 s, see pad_batch)."""
    w = jnp.asarray(waveforms_bn, jnp.float32)
    if w.ndim != 2 or w.shape[1] != N_SAMPLES:
        raise ValueError(f"waveforms_bn must be [B, {N_SAMPLES}] (pad_batch pads), got {w.shape}")
    padded = jnp.pad(w, ((0, 0), (N_FFT // 2, N_FFT // 2)), mode="reflect")
    idx = jnp.arange(N_FRAMES)[:, None] * HOP + jnp.arange(N_FFT)[None, :]  # last (dropped) frame never built
    frames_btn = padded[:, idx] * jnp.asarray(_hann())
    spec_btf = jnp.fft.rfft(frames_btn, axis=-1)
    power_btf = jnp.real(spec_btf) ** 2 + jnp.imag(spec_btf) ** 2
    # [B, T, M] is a plain GEMM on CPU (about 4x faster than producing [B, M, T]); transpose once at the end.
    mel_btm = jnp.matmul(power_btf, jnp.asarray(mel_filters(n_mels).T), precision=jax.lax.Precision.HIGHEST)
    log_btm = jnp.log10(jnp.maximum(mel_btm, 1e-10))
    log_btm = jnp.maximum(log_btm, log_btm.max(axis=(1, 2), keepdims=True) - 8.0)  # per example
    return jnp.swapaxes((log_btm + 4.0) / 4.0, 1, 2)


def pad_batch(waveforms: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(``[B, 480000]`` float32 padded/cut waveforms, ``[B]`` int32 valid frames) for whisper_log_mel_batch."""
    out = np.zeros((len(waveforms), N_SAMPLES), np.float32)
    for i, w in enumerate(waveforms):
        w = np.asarray(w, np.float32).reshape(-1)[:N_SAMPLES]
        out[i, : len(w)] = w
    return out, np.array([num_frames(len(np.asarray(w).reshape(-1))) for w in waveforms], np.int32)


def num_frames(n_samples: int) -> int:
    """Valid mel frames of a clip: ``ceil(n / 160)``, at most 3000 (the extractor's attention-mask sum)."""
    return min(math.ceil(n_samples / HOP), N_FRAMES)


def chunk_waveform(waveform: np.ndarray, seconds: float = CHUNK_SECONDS) -> list[np.ndarray]:
    """Consecutive windows of at most ``seconds`` (the last may be shorter); one empty window for no samples."""
    size = int(seconds * SAMPLE_RATE)
    if size <= 0:
        raise ValueError(f"seconds={seconds} must be at least one sample long")
    w = np.asarray(waveform, np.float32).reshape(-1)
    return [w[i:i + size] for i in range(0, max(len(w), 1), size)]


# ----------------------------------------------------------------------------------------------- decoding


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Float32 waveform resampled with soxr (HQ); returned as is when the rates agree."""
    if orig_sr == target_sr:
        return np.asarray(waveform, np.float32)
    import soxr

    return soxr.resample(np.asarray(waveform, np.float32), orig_sr, target_sr, quality="HQ").astype(np.float32)


def decode(path: str | pathlib.Path, target_sr: int = SAMPLE_RATE, max_seconds: float | None = None
           ) -> tuple[np.ndarray, dict]:
    """(mono float32 waveform at ``target_sr``, info) for an audio file.

    info: ``orig_sr``, ``channels``, ``seconds`` (at ``target_sr``) and ``clip_ratio`` (fraction of source
    samples at full scale, measured before resampling). wav/flac/ogg/mp3/aiff go through soundfile,
    anything it cannot open through librosa. Only regular files are opened (a FIFO or device never blocks).
    With ``max_seconds``, a clip whose header declares more is rejected before decoding, and a format without
    a length in its header is decoded no further than just past it. Raises UnreadableFileError,
    EmptyFileError, NoSamplesError, TruncatedFileError, CorruptFileError, UnknownFormatError, NonFiniteError or
    TooLongError (all AudioError); no message quotes the file's content.
    """
    p = pathlib.Path(path)
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFileError(f"{_file_kind(st.st_mode)}, not a regular file", path=p)
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise UnreadableFileError(e.strerror or type(e).__name__, path=p) from e
    if st.st_size == 0:
        raise EmptyFileError("file has 0 bytes", path=p)
    _check_riff(p, head, st.st_size)
    data, sr = _read(p, head, max_seconds)
    if data.size == 0:
        raise NoSamplesError("the file holds no audio samples", path=p)
    channels = 1 if data.ndim == 1 else data.shape[1]
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise NonFiniteError(f"{bad} NaN/Inf samples", path=p)
    clip_ratio = float(np.mean(np.max(np.abs(data.reshape(len(data), -1)), axis=1) >= CLIP_LEVEL))
    mono = data if data.ndim == 1 else data.mean(axis=1)
    wave = resample(mono, sr, target_sr)
    return wave, {"orig_sr": int(sr), "channels": int(channels), "seconds": len(wave) / target_sr,
                  "clip_ratio": clip_ratio}


def _file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    kinds = ((stat.S_ISDIR, "is a directory"), (stat.S_ISFIFO, "is a FIFO"), (stat.S_ISSOCK, "is a socket"),
             (stat.S_ISCHR, "is a character device"), (stat.S_ISBLK, "is a block device"))
    return next((words for test, words in kinds if test(mode)), "is a special file")


def _check_rate_and_length(p: pathlib.Path, sr: int, seconds: float, max_seconds: float | None, how: str) -> None:
    """CorruptFileError for a sample rate below 1 Hz; TooLongError when ``seconds`` (``how`` it was measured)
    exceed ``max_seconds``."""
    if sr < 1:
        raise CorruptFileError(f"the header declares a sample rate of {sr} Hz", path=p)
    if max_seconds is not None and seconds > max_seconds:
        raise TooLongError(f"{seconds:.3g} s > {max_seconds:.3g} s ({how})", path=p)


def _check_riff(p: pathlib.Path, head: bytes, size: int) -> None:
    """A RIFF/WAVE file with a cut header, or whose data chunk declares more bytes than it holds, was cut short."""
    if head[:4] not in (b"RIFF", b"RF64"):
        return
    if size < 44 or head[8:12] != b"WAVE":
        if size < 44:
            raise TruncatedFileError(f"WAV header cut short ({size} bytes)", path=p)
        return
    with open(p, "rb") as f:
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            cid, clen = struct.unpack("<4sI", f.read(8))
            if cid == b"data":
                if clen != 0xFFFFFFFF and pos + 8 + clen > size:
                    raise TruncatedFileError(f"data chunk declares {clen} bytes, file holds {size - pos - 8}", path=p)
                return
            pos += 8 + clen + (clen & 1)
    raise TruncatedFileError("no data chunk before the end of the file", path=p)


def _known(p: pathlib.Path, head: bytes) -> bool:
    """Whether the name or the first bytes say this is meant to be audio."""
    mpeg_sync = len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0
    return p.suffix.lower() in AUDIO_EXTENSIONS or head.startswith(_MAGIC) or mpeg_sync or head[4:8] == b"ftyp"


def _read(p: pathlib.Path, head: bytes, max_seconds: float | None) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        f = sf.SoundFile(str(p))
    except Exception as sf_error:  # a format soundfile does not know (or a broken file): try librosa
        return _read_librosa(p, head, sf_error, max_seconds)
    with f:
        declared, sr, fmt = f.frames, f.samplerate, f.format
        estimate = 0.95 if fmt == "MP3" else 1.0  # mp3 frame counts are estimates
        _check_rate_and_length(p, sr, estimate * declared / max(sr, 1), max_seconds,
                               "declared by the header; not decoded")
        try:
            data = f.read(dtype="float32", always_2d=False)
        except Exception as e:
            raise TruncatedFileError(f"decoding stopped before the end ({_decoder_error(e)})", path=p) from e
    got = len(data)
    if got < estimate * declared:
        raise TruncatedFileError(f"read {got} of the {declared} frames the header declares", path=p)
    return np.asarray(data, np.float32), int(sr)


def _read_librosa(p: pathlib.Path, head: bytes, sf_error: Exception, max_seconds: float | None
                  ) -> tuple[np.ndarray, int]:
    try:
        import librosa

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # decoding stops just past max_seconds: enough to tell that the clip is longer
            data, sr = librosa.load(str(p), sr=None, mono=False,
                                    duration=None if max_seconds is None else max_seconds + 1.0)
    except Exception as e:
        if not _known(p, head):
            raise UnknownFormatError(f"not a recognised audio format (extension {p.suffix or 'none'!r}, no known "
                                     "audio signature in its first bytes)", path=p) from e
        raise CorruptFileError(f"cannot decode: {_decoder_error(sf_error)}", path=p) from e
    data = np.asarray(data, np.float32)
    data = data.T if data.ndim == 2 else data
    _check_rate_and_length(p, int(sr), len(data) / max(int(sr), 1), max_seconds, "decoding stopped there")
    return data, int(sr)


def _decoder_error(e: Exception) -> str:
    """What a decoder said, without quoting the file: libsndfile's fixed error text, else the exception's type."""
    import soundfile as sf

    if isinstance(e, sf.LibsndfileError):
        return e.error_string.strip()[:160]
    return type(e).__name__

"""Per-clip quality checks, exact dedup and the benchmark-contamination guard.

Every rejection has a stable label and a specific detail (``"too_short: 0.05 s < 0.5 s"``). Checks, in
order: decoding (the ``cogito_jax.audio`` reasons; a header that declares more than ``max_seconds`` is
``too_long`` before any decoding), source sample rate, NaN/Inf, duration bounds,
digital silence, active-frame ratio, clipping (measured on the source samples when decoded from a file),
integrated loudness (ITU-R BS.1770 LUFS via pyloudnorm, for clips of at least 0.4 s). Exact duplicates
share the SHA-256 of their 16 kHz PCM16 bytes; the contamination guard drops clips whose audio hash, or
whose (source url, time span), matches a clip of a benchmark meta file (MMAR / MMAU).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import pathlib
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from cogito_jax import audio
from data_prep.sources.manifest import Rejection

LABELS = ("low_sample_rate", "non_finite", "too_short", "too_long", "silent", "mostly_silent", "clipped",
          "too_quiet", "too_loud", "duplicate_of", "contamination")
LUFS_MIN_SECONDS = 0.4  # one BS.1770 gating block
FRAME = 400  # 25 ms at 16 kHz, for the active-frame ratio


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

    def as_rejection(self) -> Rejection | None:
        return None if self.rejection is None else Rejection(self.id, self.rejection.report_reason())


def pcm16(wave: np.ndarray) -> bytes:
    """Little-endian 16-bit PCM of a float waveform: ``rint(x * 32768)`` clipped to the int16 range, so a
    PCM16 file decoded to float (``k / 32768``) gives back exactly its own samples."""
    return np.clip(np.rint(np.asarray(wave, np.float64) * 32768), -32768, 32767).astype("<i2").tobytes()


def pcm_hash(wave: np.ndarray) -> str:
    """SHA-256 (hex) of the 16 kHz PCM16 bytes: equal for clips that are the same once decoded."""
    return hashlib.sha256(pcm16(wave)).hexdigest()


@functools.lru_cache(maxsize=1)
def _meter():
    import pyloudnorm

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


def _g(x: float) -> str:
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
        return QualityError(f"{_g(seconds)} s < {_g(cfg.min_seconds)} s", reason="too_short")
    if seconds > cfg.max_seconds:
        return QualityError(f"{_g(seconds)} s > {_g(cfg.max_seconds)} s", reason="too_long")
    if float(np.max(np.abs(w))) < 0.5 / 32768:
        return QualityError("digital silence (every sample is 0 at 16-bit resolution)", reason="silent")
    active = active_ratio(w, cfg)
    if active < cfg.min_active_ratio:
        return QualityError(f"{100 * active:.1f}% active frames < {_g(100 * cfg.min_active_ratio)}%",
                            reason="mostly_silent")
    clipped = float(np.mean(np.abs(w) >= audio.CLIP_LEVEL)) if clip_ratio is None else clip_ratio
    if clipped > cfg.max_clip_ratio:
        return QualityError(f"{100 * clipped:.2f}% of samples at full scale > {_g(100 * cfg.max_clip_ratio)}%",
                            reason="clipped")
    lufs = loudness_lufs(w)
    if lufs is not None and lufs < cfg.min_lufs:
        detail = f"{lufs:.1f} LUFS < {_g(cfg.min_lufs)} LUFS" if np.isfinite(lufs) else "below the -70 LUFS gate"
        return QualityError(detail, reason="too_quiet")
    if lufs is not None and cfg.max_lufs is not None and lufs > cfg.max_lufs:
        return QualityError(f"{lufs:.1f} LUFS > {_g(cfg.max_lufs)} LUFS", reason="too_loud")
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


def find_duplicates(id_hashes: Iterable[tuple[str, str]]) -> list[Rejection]:
    """Rejections for every clip whose PCM hash an earlier clip already has (the first one is kept)."""
    first: dict[str, str] = {}
    out = []
    for item_id, h in id_hashes:
        if h in first:
            out.append(Rejection(item_id, f"duplicate_of: {first[h]}"))
        else:
            first[h] = item_id
    return out


# ------------------------------------------------------------------------------------ contamination guard


def normalise_url(url: Any) -> str:
    """A canonical source key: ``youtube:<video id>`` for YouTube links, else host + path (no ``www.``)."""
    u = "" if url is None else str(url).strip()
    if not u or u.lower() in ("null", "none", "nan", "n/a"):
        return ""
    parts = urllib.parse.urlsplit(u if "://" in u else f"https://{u}")
    host = parts.netloc.lower().split("@")[-1].split(":")[0].removeprefix("www.").removeprefix("m.")
    path = parts.path.rstrip("/")
    video = ""
    if host == "youtu.be":
        video = path.strip("/").split("/")[0]
    elif host.endswith("youtube.com"):
        query = urllib.parse.parse_qs(parts.query)
        seg = path.strip("/").split("/")
        video = query["v"][0] if "v" in query else (seg[1] if len(seg) > 1 and seg[0] in ("shorts", "embed",
                                                                                              "v", "live") else "")
    if video:
        return f"youtube:{video}"
    return f"{host}{path}" + (f"?{parts.query}" if parts.query else "")


def parse_span(timestamp: Any) -> tuple[float, float] | None:
    """(start, end) seconds of ``"00:01-00:11"``, ``"1:02:03.5 - 1:02:13"``, ``"12.5-22"``, ``[12, 22]``;
    None when absent or unreadable (then the whole source counts)."""
    if isinstance(timestamp, list | tuple):
        timestamp = "-".join(str(x) for x in timestamp)
    if timestamp is None:
        return None
    times = []
    for tok in re.findall(r"\d+(?::\d+){0,2}(?:\.\d+)?", str(timestamp)):
        secs = 0.0
        for part in tok.split(":"):
            secs = secs * 60 + float(part)
        times.append(secs)
    if len(times) not in (1, 2):
        return None
    return min(times), max(times)


def _overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    """Whether two spans share time (an unknown span covers the whole source; touching ends do not count)."""
    if a is None or b is None:
        return True
    if a[0] == a[1] or b[0] == b[1]:  # a point in time
        return a[0] <= b[1] and b[0] <= a[1]
    return a[0] < b[1] and b[0] < a[1]


@dataclasses.dataclass
class ContaminationGuard:
    """Benchmark clips that training data must not contain: by PCM hash and by (source url, span)."""

    by_hash: dict[str, str] = dataclasses.field(default_factory=dict)  # hash -> "file:id"
    by_source: dict[str, list[tuple[tuple[float, float] | None, str]]] = dataclasses.field(default_factory=dict)

    def add(self, ref: str, *, pcm_hash: str = "", url: Any = None, timestamp: Any = None) -> None:
        """Registers one benchmark clip (``ref`` names it in rejection reasons)."""
        if pcm_hash:
            self.by_hash.setdefault(pcm_hash, ref)
        key = normalise_url(url)
        if key:
            self.by_source.setdefault(key, []).append((parse_span(timestamp), ref))

    def check(self, pcm_hash: str = "", url: Any = None, timestamp: Any = None) -> str | None:
        """The contamination reason for a clip, or None."""
        if pcm_hash and pcm_hash in self.by_hash:
            return f"contamination: audio identical to {self.by_hash[pcm_hash]}"
        key = normalise_url(url)
        span = parse_span(timestamp)
        for other, ref in self.by_source.get(key, []) if key else []:
            if _overlap(span, other):
                return f"contamination: source {key} {_span_text(span)} overlaps {ref} {_span_text(other)}"
        return None

    def check_item(self, item: Mapping[str, Any], pcm_hash: str = "") -> str | None:
        """``check`` with the url / timestamp from a manifest item (its ``metadata`` or top level)."""
        meta = item.get("metadata") or {}
        url = meta.get("url") or meta.get("source_url") or item.get("url")
        return self.check(pcm_hash, url, meta.get("timestamp", item.get("timestamp")))

    @classmethod
    def from_meta(cls, meta_files: Iterable[str | pathlib.Path],
                  audio_dir: str | pathlib.Path | None = None) -> ContaminationGuard:
        """From MMAR (``audio_path``, ``url``, ``timestamp``) / MMAU (``audio_id``) meta files (JSONL or array);
        clips resolve against ``audio_dir`` or the meta file's folder, and missing ones add no hash."""
        from cogito_jax.eval.benchmarks import read_records, resolve_audio

        guard = cls()
        for meta in meta_files:
            meta = pathlib.Path(meta)
            for _, rec in read_records(meta):
                rid = str(rec.get("id", ""))
                rel = rec.get("audio_path") or rec.get("audio_id") or (f"./audio/{rid}.wav" if rid else "")
                h = ""
                if rel:
                    path, missing = resolve_audio(str(rel), meta.parent, audio_dir)
                    try:
                        h = "" if missing else pcm_hash(audio.decode(path)[0])
                    except audio.AudioError:
                        h = ""
                guard.add(f"{meta.name}:{rid}", pcm_hash=h, url=rec.get("url"), timestamp=rec.get("timestamp"))
        return guard


def _span_text(span: tuple[float, float] | None) -> str:
    return "(whole source)" if span is None else f"({_g(span[0])}-{_g(span[1])} s)"


def contamination_hashes(meta_files: Iterable[str | pathlib.Path]) -> set[str]:
    """PCM hashes of the clips referenced by benchmark meta files (see ContaminationGuard.from_meta)."""
    return set(ContaminationGuard.from_meta(meta_files).by_hash)

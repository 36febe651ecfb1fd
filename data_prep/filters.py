"""The benchmark-contamination guard: drops clips whose audio hash (``cogito_jax.data.clips.pcm_hash``), whose
(source url, time span), or whose audio fingerprint (``cogito_jax.data.fingerprint``: re-encoded, resampled,
re-levelled, noisy or trimmed copies, and recordings that contain the clip) matches a clip of a benchmark meta
file (MMAR / MMAU / MMSU). The per-clip quality checks are in :mod:`cogito_jax.data.clips`.

The fingerprint index of the benchmark clips is built once per (meta files, log-mel bins, landmark settings) and
cached as ``fingerprints-<key>.npz`` in the build's cache folder; each clip is looked up where its log-mel is
made, and the best match goes into the clip's row (``match``), which the selection step compares with
``filters.fingerprint_threshold`` and ``filters.fingerprint_min_landmarks``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cogito_jax import audio
from cogito_jax.data import fingerprint
from cogito_jax.data.clips import pcm_hash, short
from cogito_jax.eval.benchmarks import read_records, resolve_audio


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

    def check(self, pcm_hash: str = "", url: Any = None, timestamp: Any = None, match: Mapping | None = None,
              threshold: float = 0.0, min_landmarks: int = 0) -> str | None:
        """The contamination reason for a clip, or None. ``match`` is the clip's best fingerprint match
        (``fingerprint.Match.as_row()``); it counts at ``threshold`` (> 0) and ``min_landmarks``."""
        if pcm_hash and pcm_hash in self.by_hash:
            return f"contamination: audio identical to {self.by_hash[pcm_hash]}"
        if match and threshold > 0 and match["score"] >= threshold and match["landmarks"] >= min_landmarks:
            return (f"contamination: audio matches {match['ref']} (fingerprint score {match['score']:.3f}, "
                    f"{match['landmarks']} landmarks, at {match['offset_s']:g} s of it)")
        key = normalise_url(url)
        span = parse_span(timestamp)
        for other, ref in self.by_source.get(key, []) if key else []:
            if _overlap(span, other):
                return f"contamination: source {key} {_span_text(span)} overlaps {ref} {_span_text(other)}"
        return None

    def check_item(self, item: Mapping[str, Any], pcm_hash: str = "", match: Mapping | None = None,
                   threshold: float = 0.0, min_landmarks: int = 0) -> str | None:
        """``check`` with the url / timestamp from a manifest item (its ``metadata`` or top level)."""
        meta = item.get("metadata") or {}
        url = meta.get("url") or meta.get("source_url") or item.get("url")
        return self.check(pcm_hash, url, meta.get("timestamp", item.get("timestamp")), match, threshold,
                          min_landmarks)

    @classmethod
    def from_meta(cls, meta_files: Iterable[str | pathlib.Path],
                  audio_dir: str | pathlib.Path | None = None) -> ContaminationGuard:
        """From MMAR (``audio_path``, ``url``, ``timestamp``) / MMAU (``audio_id``) meta files (JSONL or array);
        clips resolve against ``audio_dir`` or the meta file's folder, and missing ones add no hash."""
        guard = cls()
        for ref, rec, wave in benchmark_clips(meta_files, audio_dir):
            guard.add(ref, pcm_hash="" if wave is None else pcm_hash(wave), url=rec.get("url"),
                      timestamp=rec.get("timestamp"))
        return guard


def benchmark_clips(meta_files: Iterable[str | pathlib.Path], audio_dir: str | pathlib.Path | None = None
                    ) -> Iterator[tuple[str, Mapping[str, Any], np.ndarray | None]]:
    """``(ref "file:id", record, 16 kHz waveform or None when missing or undecodable)`` of every record of the
    meta files."""
    for meta in meta_files:
        meta = pathlib.Path(meta)
        for _, rec in read_records(meta):
            rid = str(rec.get("id", ""))
            rel = rec.get("audio_path") or rec.get("audio_id") or (f"./audio/{rid}.wav" if rid else "")
            wave = None
            if rel:
                path, missing = resolve_audio(str(rel), meta.parent, audio_dir)
                try:
                    wave = None if missing else audio.decode(path)[0]
                except audio.AudioError:
                    wave = None
            yield f"{meta.name}:{rid}", rec, wave


def benchmark_mel(wave: np.ndarray, n_mels: int) -> np.ndarray:
    """A benchmark clip's log-mel ``[n_mels, frames]`` as the pipeline makes it for a long clip (every 30 s
    window, ``long_clips=chunks``), whatever its length: a candidate may hold any part of it."""
    return np.concatenate(audio.log_mel_chunks(wave, n_mels=n_mels), axis=1)


def fingerprint_index(meta_files: Iterable[str | pathlib.Path], n_mels: int, cache_dir: str | pathlib.Path,
                      audio_dir: str | pathlib.Path | None = None) -> fingerprint.Index:
    """The fingerprint index of the benchmark clips of ``meta_files`` (see the module docstring): loaded from
    ``cache_dir`` when a build with the same meta files (path, size, modification time), log-mel bins and landmark
    settings made it, else built (a progress bar per clip) and saved there (written beside, then renamed). The
    benchmark audio files themselves are not looked at for the key: replacing them under unchanged meta files
    needs the cached index deleted."""
    metas = [pathlib.Path(m) for m in meta_files]
    stats = []
    for m in metas:
        st = m.stat()
        stats.append([str(m.resolve()), st.st_size, st.st_mtime_ns])
    key = fingerprint.index_key([stats, None if audio_dir is None else str(audio_dir)], n_mels)
    path = pathlib.Path(cache_dir) / f"fingerprints-{key[:16]}.npz"
    if path.is_file():
        try:
            index = fingerprint.Index.from_bytes(path.read_bytes())
            if index.key == key:
                return index
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is rebuilt
    clips = tqdm(benchmark_clips(metas, audio_dir), desc="fingerprint benchmark clips", unit="clip")
    index = fingerprint.Index.build(((ref, benchmark_mel(w, n_mels)) for ref, _, w in clips if w is not None),
                                    key=key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_bytes(index.to_bytes())
    os.replace(tmp, path)
    return index


def _span_text(span: tuple[float, float] | None) -> str:
    return "(whole source)" if span is None else f"({short(span[0])}-{short(span[1])} s)"


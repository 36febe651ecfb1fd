"""The benchmark-contamination guard: drops clips whose audio hash (``cogito_jax.data.clips.pcm_hash``), or
whose (source url, time span), matches a clip of a benchmark meta file (MMAR / MMAU). The per-clip quality
checks are in :mod:`cogito_jax.data.clips`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from cogito_jax import audio
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
    return "(whole source)" if span is None else f"({short(span[0])}-{short(span[1])} s)"


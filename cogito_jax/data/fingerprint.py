"""Audio fingerprints for the benchmark-contamination guard: landmark (peak-pair) hashes on the log-mel the
pipeline computes, an index of benchmark clips, and a lookup that survives re-encoding, resampling, gain, noise
and trimming.

A clip's landmarks: the local maxima of its log-mel ``[n_mels, frames]`` (10 ms frames) that stand out in a
``PEAK_FREQ x PEAK_TIME`` neighbourhood, within ``FLOOR`` of the clip's loudest bin, thinned to the
``peaks_per_second`` strongest of each second. Each peak (the anchor) is paired with the next ``fan_out`` peaks
at most ``max_dt`` frames later and ``max_df`` bins away; a pair's hash packs (anchor bin, other bin, time
difference), the bins halved so that a peak moved by one bin (re-encoding, resampling) often keeps its hash.
The anchor's frame goes with the hash. Gain shifts the whole log-mel and moves no peak; noise at 20 dB SNR and
lossy codecs remove some peaks and keep most; a trimmed copy keeps the peaks of the part it kept, at frames
shifted by one offset.

A lookup finds the index entries that share the query's hashes and counts, per benchmark clip, the pairs whose
frame offset (benchmark frame - query frame) agrees with that clip's most common offset (within one bin of two
frames). A copy has hundreds of landmarks at one offset; unrelated audio shares a few hashes at scattered
offsets. The score is that count over the smaller landmark count of the two clips: a trimmed copy (the query is
part of the benchmark clip) and a longer recording that contains the clip both score near the share of
landmarks that survived the perturbation.

Why not Chromaprint (AcoustID): its fingerprint is built for whole-track identification, it is not installed
here (neither ``fpcalc`` nor the library), and it would decode every clip a second time; these landmarks reuse
the log-mel each clip already has and find sub-segments natively.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import ndimage

PEAK_FREQ, PEAK_TIME = 9, 9  # neighbourhood a peak is the maximum of: mel bins x frames
FLOOR = 0.75  # peaks at most this far below the clip's loudest bin (normalised log-mel units: 1.0 = 40 dB)
OFFSET_BIN = 2  # frames per offset bin of a lookup
ONSET_LAG = 3  # frames over which an onset peak's rise is measured
ONSET_FLOOR = 0.1  # smallest rise (or fall) of an onset peak (normalised log-mel units: 4 dB)
ONSET_RANGE = 0.75  # onset peaks only in bins at most this far below the clip's loudest (30 dB)


@dataclasses.dataclass(frozen=True)
class Params:
    peaks_per_second: int = 20
    fan_out: int = 6
    max_dt: int = 126  # frames (1.26 s; hashed in steps of 2)
    max_df: int = 48  # mel bins

    def key(self) -> str:
        return json.dumps([dataclasses.asdict(self), PEAK_FREQ, PEAK_TIME, FLOOR, OFFSET_BIN], sort_keys=True)


def _peaks(m: np.ndarray, floor: float, peaks_per_second: int) -> tuple[np.ndarray, np.ndarray]:
    """(bins, frames) in frame order of the local maxima of ``m`` above ``floor``, the strongest
    ``peaks_per_second`` of each second (100 frames)."""
    local = ndimage.maximum_filter(m, size=(PEAK_FREQ, PEAK_TIME), mode="constant", cval=-np.inf)
    f, t = np.nonzero((m == local) & (m > floor))
    strength = m[f, t]
    second = t // 100
    order = np.lexsort((-strength, second))
    first = np.searchsorted(second[order], second[order], side="left")
    keep = np.sort(order[np.arange(len(order)) - first < peaks_per_second])
    f, t = f[keep], t[keep]
    order = np.lexsort((f, t))
    return f[order].astype(np.int32), t[order].astype(np.int32)


def peaks(mel_fm: np.ndarray, peaks_per_second: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The landmark peaks of a log-mel, two kinds: spectral peaks (bins loud for their neighbourhood), and onset
    peaks (bins that rose most over the last ``ONSET_LAG`` frames): a steady tone has no stable spectral peak
    in time (any frame of it is as loud as the next, so noise decides), but its onset and its end are sharp."""
    m = np.asarray(mel_fm, np.float32)
    if m.size == 0 or m.shape[1] <= ONSET_LAG:
        return [(np.zeros(0, np.int32), np.zeros(0, np.int32))] * 2
    smooth = ndimage.uniform_filter(m, size=(3, 3), mode="nearest")
    before, after = smooth[:, :-ONSET_LAG], smooth[:, ONSET_LAG:]
    change = np.zeros_like(m)  # onsets and ends of bins loud on either side
    change[:, ONSET_LAG:] = np.where(np.maximum(before, after) > m.max() - ONSET_RANGE, np.abs(after - before), 0)
    return [_peaks(m, m.max() - FLOOR, peaks_per_second), _peaks(change, ONSET_FLOOR, peaks_per_second)]


def _pairs(f: np.ndarray, t: np.ndarray, kind: int, params: Params) -> tuple[np.ndarray, np.ndarray]:
    n = len(t)
    hashes, times = [], []
    taken = np.zeros(n, np.int32)  # pairs made so far per anchor
    for step in range(1, min(n, 4 * params.fan_out + 1)):  # candidates in frame order after each anchor
        a, b = np.arange(n - step), np.arange(step, n)
        dt, df = t[b] - t[a], np.abs(f[b] - f[a])
        ok = (dt >= 1) & (dt <= params.max_dt) & (df <= params.max_df) & (taken[a] < params.fan_out)
        a, b, dt = a[ok], b[ok], dt[ok]
        taken[a] += 1
        hashes.append(np.uint32(kind << 20) | ((f[a] >> 1).astype(np.uint32) << 13)
                      | ((f[b] >> 1).astype(np.uint32) << 6) | (dt >> 1).astype(np.uint32))
        times.append(t[a])
    if not hashes:
        return np.zeros(0, np.uint32), np.zeros(0, np.int32)
    return np.concatenate(hashes), np.concatenate(times).astype(np.int32)


def landmarks(mel_fm: np.ndarray, params: Params = Params()) -> tuple[np.ndarray, np.ndarray]:
    """(hashes ``uint32``, anchor frames ``int32``) of a log-mel ``[n_mels, frames]``."""
    parts = [_pairs(f, t, kind, params) for kind, (f, t) in enumerate(peaks(mel_fm, params.peaks_per_second))]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@dataclasses.dataclass(frozen=True)
class Match:
    ref: str  # the benchmark clip
    score: float  # landmarks at the agreed offset / the smaller landmark count of the two clips
    landmarks: int  # landmarks at the agreed offset
    offset_s: float  # where the query starts in the benchmark clip (negative: the benchmark starts later)

    def as_row(self) -> dict[str, Any]:
        return {"ref": self.ref, "score": round(self.score, 4), "landmarks": self.landmarks,
                "offset_s": round(self.offset_s, 2)}


class Index:
    """Landmarks of benchmark clips, sorted by hash for lookups; saved to and loaded from one ``.npz``."""

    def __init__(self, refs: list[str], counts: np.ndarray, hashes: np.ndarray, items: np.ndarray,
                 times: np.ndarray, key: str):
        self.refs, self.counts, self.hashes, self.items, self.times, self.key = refs, counts, hashes, items, times, key

    @classmethod
    def build(cls, entries: Iterable[tuple[str, np.ndarray]], params: Params = Params(), key: str = "") -> Index:
        """From ``(ref, log-mel [n_mels, frames])`` pairs."""
        refs, counts, hs, its, ts = [], [], [], [], []
        for k, (ref, mel) in enumerate(entries):
            h, t = landmarks(mel, params)
            refs.append(ref), counts.append(len(h)), hs.append(h), ts.append(t)
            its.append(np.full(len(h), k, np.int32))
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
        h, items, times = cat(hs, np.uint32), cat(its, np.int32), cat(ts, np.int32)
        order = np.argsort(h, kind="stable")
        return cls(refs, np.asarray(counts, np.int64), h[order], items[order], times[order], key)

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def nbytes(self) -> int:
        return self.hashes.nbytes + self.items.nbytes + self.times.nbytes + self.counts.nbytes

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, hashes=self.hashes, items=self.items, times=self.times, counts=self.counts,
                 refs=np.asarray(json.dumps(self.refs)), key=np.asarray(self.key))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Index:
        z = np.load(io.BytesIO(data))
        return cls(json.loads(str(z["refs"])), z["counts"], z["hashes"], z["items"], z["times"], str(z["key"]))

    def match(self, mel_fm: np.ndarray, params: Params = Params()) -> Match | None:
        """The benchmark clip a log-mel agrees with best (see the module docstring), or None without any shared
        landmark."""
        h, t = landmarks(mel_fm, params)
        lo, hi = np.searchsorted(self.hashes, h, "left"), np.searchsorted(self.hashes, h, "right")
        hits = hi - lo
        if not hits.sum():
            return None
        query = np.repeat(np.arange(len(h)), hits)
        pos = np.repeat(lo - np.cumsum(hits) + hits, hits) + np.arange(hits.sum())
        item = self.items[pos].astype(np.int64)
        offset = np.floor_divide(self.times[pos] - t[query], OFFSET_BIN).astype(np.int64)
        span = int(offset.max() - offset.min()) + 3
        key = item * span + (offset - offset.min() + 1)
        bins, count = np.unique(key, return_counts=True)
        # each clip's best offset bin together with its two neighbours
        near = count.copy()
        for d in (-1, 1):
            j = np.searchsorted(bins, bins + d)
            found = (j < len(bins)) & (bins[np.minimum(j, len(bins) - 1)] == bins + d)
            near = near + np.where(found, count[np.minimum(j, len(bins) - 1)], 0)
        k = int(np.argmax(near))
        clip, best = int(bins[k] // span), int(near[k])
        off = int(bins[k] % span) - 1 + int(offset.min())
        return Match(self.refs[clip], min(1.0, best / max(1, min(len(h), int(self.counts[clip])))), best,
                     off * OFFSET_BIN / 100.0)


def index_key(sources: Iterable[Any], n_mels: int, params: Params = Params()) -> str:
    """What an index depends on: its sources (e.g. meta files with sizes and times), the log-mel bins, the
    landmark settings."""
    return hashlib.sha256(json.dumps([list(sources), n_mels, params.key()], default=str).encode()).hexdigest()

"""How well the audio-fingerprint contamination guard catches altered copies of benchmark clips, and how often it
flags distinct audio.

    python bench/contamination.py [--sentences 120] [--synthetic 240] [--index-clips 3000] [--json OUT.json]

Sources: the real speech recordings of the Debian package ``pocketsphinx-testdata``, sentences synthesised with
``espeak-ng`` (one voice: different utterances by the same voice), and the synthetic corpus's music-like and
event clips (``cogito_jax.data.synthetic``: different takes of the same sound class are draws of the same task;
a draw that repeats another's sound, the generator's parameters coming from grids, is kept once).
Benchmark clips are concatenations of three distinct source clips of one kind (5-20 s); held-out clips are made
the same way from source clips no benchmark clip uses.

* Recall: every benchmark clip altered by each perturbation (MP3, Ogg Vorbis, Opus and AAC at about 64 kbit/s,
  resampled through 44.1 kHz, gain -10 / +10 dB, white noise at 20 dB SNR, a 5 s sub-segment, and a recording
  that contains it between 3 s of other audio on each side) must match that clip.
* False positives: every held-out clip, and every perturbation of it, is looked up; a match above the
  threshold is a false positive of each pair (query, benchmark clip) it names. Pairs = queries x benchmark clips.

Prints the confusion counts per perturbation; then, for an index of ``--index-clips`` benchmark-sized clips (about
15 s each), its size, its build time and the CPU cost of one lookup for 5, 10 and 30 s clips.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cogito_jax import audio  # noqa: E402
from cogito_jax.data import fingerprint, synthetic  # noqa: E402
from data_prep import filters  # noqa: E402

SR = audio.SAMPLE_RATE
PERTURBATIONS = ("none", "mp3_64k", "vorbis_64k", "opus_64k", "aac_64k", "resample_44k", "gain_-10dB", "gain_+10dB",
                 "noise_20dB", "trim_5s", "contained")
VOCABULARY = ("apple river quietly seven yellow engine window garden thunder pencil silver morning distant "
              "captain orange bottle market whisper forest rocket violin blanket harbor mountain copper "
              "ticket shadow meadow lantern pocket spider marble cotton bridge dragon pepper velvet "
              "island hammer candle rabbit mirror planet wagon ladder tomato crystal feather jungle "
              "puzzle castle saddle museum walnut beacon cactus glacier summit tunnel compass parade "
              "orchard falcon anchor basket biscuit canyon circus dolphin emerald fossil goblet helmet "
              "iceberg jacket kettle lemon magnet napkin oyster paddle quartz riddle sandal trumpet "
              "umbrella vessel wizard zipper acorn bamboo cobalt denim ember fiddle gravel hazel").split()
def speech_recordings() -> list[np.ndarray]:
    """The utterances of pocketsphinx-testdata, 16 kHz (raw files are 16 kHz 16-bit little-endian)."""
    out = []
    for path in sorted(glob.glob("/usr/share/pocketsphinx/test/data/**/*.wav", recursive=True)
                       + glob.glob("/usr/share/pocketsphinx/test/data/**/*.raw", recursive=True)):
        if path.endswith(".raw"):
            out.append(np.fromfile(path, "<i2").astype(np.float32) / 32768)
        else:
            out.append(audio.decode(path)[0])
    return [w for w in out if len(w) > SR // 2]


def espeak(n: int, folder: pathlib.Path, seed: int = 0) -> list[np.ndarray]:
    """``n`` utterances of espeak-ng's default voice, each nine words drawn without repetition from a vocabulary
    of a hundred: different utterances by one voice share words at most, never a phrase."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        text = " ".join(rng.choice(VOCABULARY, 9, replace=False))
        path = folder / f"s{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        out.append(audio.decode(path)[0])
    return out


def synthetic_clips(n: int) -> list[np.ndarray]:
    """``n`` synthetic clips that are different sounds: the generator draws its parameters from grids, so two
    draws of a task can be the same sound at another level and noise floor; such a repeat is kept once."""
    out, seen, i = [], set(), 0
    while len(out) < n:
        item = synthetic.make_item(i, seed=7)
        i += 1
        sound = (item["task"], item["answer"], json.dumps({k: v for k, v in item["params"].items()
                                                           if k not in ("floor", "gain")}, sort_keys=True))
        if sound not in seen:
            seen.add(sound)
            out.append(item["audio"])
    return out


def groups_of_three(clips: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(len(clips))
    return [np.concatenate([clips[j] for j in order[i:i + 3]]) for i in range(0, len(order) - 2, 3)]


def _codec(w: np.ndarray, fmt: str, subtype: str, level: float, sr: int = SR) -> tuple[np.ndarray, float]:
    """(decoded, kbit/s) of ``w`` through a lossy codec at compression ``level``."""
    buf = io.BytesIO()
    kw = {"bitrate_mode": "CONSTANT"} if fmt == "MP3" else {}
    sf.write(buf, w, sr, format=fmt, subtype=subtype, compression_level=level, **kw)
    kbps = len(buf.getvalue()) * 8 / (len(w) / sr) / 1000
    buf.seek(0)
    x, got_sr = sf.read(buf, dtype="float32")
    x = x.mean(1) if x.ndim > 1 else x
    return audio.resample(x, got_sr)[: len(w)], kbps


def _aac(w: np.ndarray, kbps: int = 64) -> tuple[np.ndarray, float]:
    """(decoded, kbit/s) of ``w`` through AAC-LC in an ADTS stream (PyAV's FFmpeg; libsndfile has no AAC)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="adts") as out:
        stream = out.add_stream("aac", rate=SR, layout="mono")
        stream.bit_rate = kbps * 1000
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(w, np.float32)[None], format="flt", layout="mono")
        frame.sample_rate = SR
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    rate = len(buf.getvalue()) * 8 / (len(w) / SR) / 1000
    buf.seek(0)
    with av.open(buf, "r") as inp:
        x = np.concatenate([f.to_ndarray().reshape(-1) for f in inp.decode(audio=0)])
    return x[: len(w)].astype(np.float32), rate


def perturb(w: np.ndarray, kind: str, rng: np.random.Generator, other: np.ndarray) -> tuple[np.ndarray, dict]:
    """``w`` altered by ``kind`` (one of PERTURBATIONS); ``other`` is unrelated audio for ``contained``."""
    if kind == "none":
        return w, {}
    if kind == "mp3_64k":
        x, kbps = _codec(w, "MP3", "MPEG_LAYER_III", 0.64)
        return x, {"kbps": kbps}
    if kind == "vorbis_64k":
        x, kbps = _codec(audio.resample(w, SR, 44100), "OGG", "VORBIS", 0.55, 44100)
        return x, {"kbps": kbps}
    if kind == "opus_64k":
        x, kbps = _codec(w, "OGG", "OPUS", 0.77)
        return x, {"kbps": kbps}
    if kind == "aac_64k":
        x, kbps = _aac(w)
        return x, {"kbps": kbps}
    if kind == "resample_44k":
        return audio.resample(audio.resample(w, SR, 44100), 44100, SR), {}
    if kind.startswith("gain_"):
        db = float(kind[5:-2])
        return np.clip(w * 10 ** (db / 20), -1, 1).astype(np.float32), {}
    if kind == "noise_20dB":
        power = float(np.mean(w ** 2))
        return (w + rng.normal(0, np.sqrt(power / 100), len(w))).astype(np.float32), {}
    if kind == "trim_5s":
        start = int(rng.integers(0, max(1, len(w) - 5 * SR)))
        return w[start:start + 5 * SR], {}
    if kind == "contained":
        pad = other[: 3 * SR]
        return np.concatenate([pad, w, other[-3 * SR:]]), {}
    raise ValueError(kind)


def mel(w: np.ndarray, n_mels: int = 128) -> np.ndarray:
    """The log-mel the pipeline computes for a clip (``long_clips=chunks``), as the index takes it."""
    return filters.benchmark_mel(w, n_mels)


def evaluate(bench: list[np.ndarray], held: list[np.ndarray], threshold: float, min_landmarks: int,
             seed: int = 0, perturbations=PERTURBATIONS) -> dict:
    rng = np.random.default_rng(seed)
    t0 = time.time()
    index = fingerprint.Index.build((f"b{i}", mel(w)) for i, w in enumerate(bench))
    build_s = time.time() - t0
    hit = lambda m: m is not None and m.score >= threshold and m.landmarks >= min_landmarks  # noqa: E731
    rows, lookups, lookup_s, kbps = {}, 0, 0.0, {}
    for kind in perturbations:
        tp = fn = wrong = fp = 0
        pos_scores, neg_scores, pos_landmarks, neg_landmarks = [], [], [], []
        for i, w in enumerate(bench):
            q, info = perturb(w, kind, rng, held[i % len(held)])
            t = time.time()
            m = index.match(mel(q))
            lookup_s, lookups = lookup_s + time.time() - t, lookups + 1
            kbps.setdefault(kind, []).append(info.get("kbps", 0.0))
            pos_scores.append(0.0 if m is None or m.ref != f"b{i}" else m.score)
            pos_landmarks.append(0 if m is None or m.ref != f"b{i}" else m.landmarks)
            if hit(m) and m.ref == f"b{i}":
                tp += 1
            elif hit(m):
                wrong += 1
            else:
                fn += 1
        for j, w in enumerate(held):
            q, _ = perturb(w, kind, rng, bench[j % len(bench)] if kind == "contained" else held[(j + 1) % len(held)])
            if kind == "contained":  # unrelated audio around a held-out clip
                q = np.concatenate([held[(j + 1) % len(held)][: 3 * SR], w, held[(j + 2) % len(held)][-3 * SR:]])
            m = index.match(mel(q))
            neg_scores.append(0.0 if m is None else m.score)
            neg_landmarks.append(0 if m is None else m.landmarks)
            fp += int(hit(m))
        rows[kind] = {"benchmark_clips": len(bench), "caught": tp, "missed": fn, "wrong_item": wrong,
                      "recall": tp / len(bench), "negative_queries": len(held), "pairs": len(held) * len(bench),
                      "false_positive_queries": fp, "false_positive_rate_pairs": fp / (len(held) * len(bench)),
                      "min_score_caught": float(min(pos_scores)),
                      "max_score_distinct": float(max(neg_scores)),
                      "min_landmarks_caught": int(min(pos_landmarks)),
                      "max_landmarks_distinct": int(max(neg_landmarks))}
        if any(kbps[kind]):
            rows[kind]["kbps_mean"] = float(np.mean(kbps[kind]))
    total_pos = sum(r["benchmark_clips"] for r in rows.values())
    total_pairs = sum(r["pairs"] for r in rows.values())
    return {"threshold": threshold, "min_landmarks": min_landmarks, "per_perturbation": rows,
            "recall": sum(r["caught"] for r in rows.values()) / total_pos,
            "false_positive_rate": sum(r["false_positive_queries"] for r in rows.values()) / total_pairs,
            "pairs": total_pairs, "index_clips": len(index), "index_landmarks": int(len(index.hashes)),
            "index_mib": index.nbytes / 2**20, "index_build_s": build_s,
            "benchmark_seconds": sum(len(w) for w in bench) / SR, "lookup_ms_per_clip": 1000 * lookup_s / lookups}


def corpus(sentences: int, synthetic_n: int, folder: pathlib.Path, seed: int = 0) -> tuple[list, list, dict]:
    """(benchmark clips, held-out clips, counts by kind): each kind's groups of three split half / half."""
    rng = np.random.default_rng(seed)
    bench, held, kinds = [], [], {}
    sources = (("speech (pocketsphinx)", speech_recordings()), ("speech (espeak-ng)", espeak(sentences, folder)),
               ("synthetic music / events", synthetic_clips(synthetic_n)))
    for kind, clips in sources:
        groups = groups_of_three(clips, rng)
        half = (len(groups) + 1) // 2
        bench += groups[:half]
        held += groups[half:]
        kinds[kind] = {"source_clips": len(clips), "benchmark": half, "held_out": len(groups) - half}
    return bench, held, kinds


def scale_index(n: int, seconds: float = 15.0, n_mels: int = 128) -> tuple[fingerprint.Index, float, float]:
    """(index, build seconds, audio seconds) of ``n`` benchmark-sized clips: synthetic clips concatenated to about
    ``seconds`` each (the clips are generated untimed; the log-mel and the landmarks are timed)."""
    clips, i = [], 0
    for _ in range(n):
        parts, total = [], 0
        while total < seconds * SR:
            w = synthetic.make_item(i, seed=11)["audio"]
            parts.append(w)
            total += len(w)
            i += 1
        clips.append(np.concatenate(parts))
    t0 = time.process_time()
    index = fingerprint.Index.build((f"x{k}", mel(w, n_mels)) for k, w in enumerate(clips))
    return index, time.process_time() - t0, sum(len(w) for w in clips) / SR


def lookup_cost(index: fingerprint.Index, seconds: float, n: int = 10, n_mels: int = 128) -> float:
    """CPU seconds of one lookup (landmarks + search) of a ``seconds``-long clip's log-mel, the log-mel itself not
    counted (the pipeline has it already); the mean over ``n`` clips of speech-like noise bursts."""
    rng = np.random.default_rng(int(seconds))
    total = 0.0
    for _ in range(n):
        t = np.arange(int(seconds * SR)) / SR
        x = (0.2 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) * (np.sin(2 * np.pi * 3 * t) > 0)
             + 0.05 * rng.normal(size=t.size)).astype(np.float32)
        m = mel(x, n_mels)
        start = time.process_time()
        index.match(m)
        total += time.process_time() - start
    return total / n


def main() -> int:
    from data_prep.config import FINGERPRINT_MIN_LANDMARKS, FINGERPRINT_THRESHOLD

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sentences", type=int, default=120)
    p.add_argument("--synthetic", type=int, default=240)
    p.add_argument("--threshold", type=float, default=FINGERPRINT_THRESHOLD)
    p.add_argument("--min-landmarks", type=int, default=FINGERPRINT_MIN_LANDMARKS)
    p.add_argument("--index-clips", type=int, default=3000, help="clips of the index whose size, build time and "
                   "lookup cost are measured (0: skip)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if not shutil.which("espeak-ng") or not speech_recordings():
        print("needs espeak-ng and pocketsphinx-testdata (apt-get install espeak-ng pocketsphinx-testdata)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        bench, held, kinds = corpus(a.sentences, a.synthetic, pathlib.Path(tmp))
    out = evaluate(bench, held, a.threshold, a.min_landmarks)
    out["sources"] = kinds
    print(f"benchmark clips {len(bench)} ({out['benchmark_seconds']:.0f} s), held-out clips {len(held)}; "
          f"threshold score >= {a.threshold} with >= {a.min_landmarks} landmarks")
    print(f"{'perturbation':14s} {'caught':>7s} {'missed':>7s} {'wrong':>6s} {'recall':>7s} {'FP q':>5s} "
          f"{'pairs':>6s} {'min score':>9s} {'max distinct':>12s} {'min lm':>6s} {'max lm':>6s}")
    for kind, r in out["per_perturbation"].items():
        print(f"{kind:14s} {r['caught']:7d} {r['missed']:7d} {r['wrong_item']:6d} {100 * r['recall']:6.1f}% "
              f"{r['false_positive_queries']:5d} {r['pairs']:6d} {r['min_score_caught']:9.3f} "
              f"{r['max_score_distinct']:12.3f} {r['min_landmarks_caught']:6d} {r['max_landmarks_distinct']:6d}"
              + (f"  ({r['kbps_mean']:.0f} kbit/s)" if "kbps_mean" in r else ""))
    print(f"recall {100 * out['recall']:.2f}% over every perturbation; false positives "
          f"{100 * out['false_positive_rate']:.3f}% of {out['pairs']} pairs of distinct clips")
    print(f"index: {out['index_clips']} clips, {out['index_landmarks']:,} landmarks, {out['index_mib']:.1f} MiB, "
          f"built in {out['index_build_s']:.1f} s; lookup {out['lookup_ms_per_clip']:.1f} ms per clip "
          "(log-mel + landmarks + lookup)")
    if a.index_clips:
        index, build_s, audio_s = scale_index(a.index_clips)
        costs = {f"{s:g} s": lookup_cost(index, s) for s in (5.0, 10.0, 30.0)}
        out["scale"] = {"index_clips": len(index), "audio_hours": audio_s / 3600, "landmarks": int(len(index.hashes)),
                        "index_mib": index.nbytes / 2**20, "npz_mib": len(index.to_bytes()) / 2**20,
                        "build_cpu_s": build_s, "lookup_cpu_ms": {k: 1000 * v for k, v in costs.items()}}
        sc = out["scale"]
        print(f"index of {sc['index_clips']} clips ({sc['audio_hours']:.1f} h): {sc['landmarks']:,} landmarks, "
              f"{sc['index_mib']:.0f} MiB in memory, {sc['npz_mib']:.0f} MiB on disk, built in {build_s:.0f} CPU s "
              "(log-mel + landmarks); lookup per clip (landmarks + search, its log-mel not counted): "
              + ", ".join(f"{k} {v:.1f} ms" for k, v in sc["lookup_cpu_ms"].items()))
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Cogito-pipe build throughput: the Beam pipeline (DirectRunner) vs the local data_prep.build, same clips, same run.

    python bench/build_throughput.py [--clips 1000] [--n-mels 128] [--beam-args "--direct_num_workers=2
        --direct_running_mode=multi_processing"] [--json OUT.json]

Both sides build the same synthetic manifest (written once, untimed) from scratch into their own folders:
source -> decode + filters + log-mel -> dedup / selection -> TFDS array_record dataset + report. Each is timed
end to end (wall clock, and CPU seconds of this process and its reaped children), after one warm-up clip in
this process (librosa's numba compile); with ``--repeats R`` the two alternate R times and the fastest of
each counts. Prints clips/s of each, the ratio, CPU ms per clip, each side's stage seconds, and the per-clip
cost of ``clips.process_clip`` on 5 / 10 / 30 s clips (16 kHz wav, 44.1 kHz stereo flac and mp3) and of each
clip's contamination-fingerprint lookup in an index of ``--fingerprint-index`` benchmark clips, the numbers
docs/SCALE.md extrapolates from. Checks that both builds kept and rejected the same items.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shlex
import tempfile
import time

# name -> (sample rate, channels, container, subtype) of the clips the per-clip cost is measured on
COST_FORMATS = {"wav 16 kHz mono": (16000, 1, "WAV", "PCM_16"),
                "flac 44.1 kHz stereo": (44100, 2, "FLAC", "PCM_16"),
                "mp3 44.1 kHz stereo": (44100, 2, "MP3", "MPEG_LAYER_III")}


def clip_cost(seconds: float, fmt: str, n: int, cfg, folder: pathlib.Path, index=None) -> tuple[float, float]:
    """Mean CPU seconds (all threads) of ``clips.process_clip`` on ``n`` tone-in-noise clips of ``seconds`` in
    ``fmt`` (a key of COST_FORMATS), and of the fingerprint lookup of each clip's log-mel in ``index`` (0 without
    one)."""
    import numpy as np
    import soundfile as sf

    from cogito_jax.data import clips
    from data_prep import steps

    sr, channels, container, subtype = COST_FORMATS[fmt]
    rng = np.random.default_rng(int(seconds))
    features, fcfg = steps.feature_config(cfg), steps.filter_config(cfg)
    total = lookups = 0.0
    for i in range(n):
        t = np.arange(int(seconds * sr)) / sr
        x = 0.2 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.05 * rng.normal(size=t.size)
        path = folder / f"cost_{seconds:g}s_{i}.{container.lower()}"
        sf.write(path, np.stack([x] * channels, 1).astype(np.float32), sr, format=container, subtype=subtype)
        start = time.process_time()
        row, mel = clips.process_clip({"id": path.stem, "audio_path": str(path)}, features, fcfg)
        total += time.process_time() - start
        if not row["ok"]:
            raise RuntimeError(f"cost clip {path.name} was rejected: {row['reason']}")
        start = time.process_time()
        steps.match_row(index, mel)
        lookups += time.process_time() - start
    return total / n, lookups / n


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process and its reaped children, result) of ``fn()``."""
    t0, c0 = time.perf_counter(), os.times()
    out = fn()
    c1 = os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system) + (c1.children_user - c0.children_user) + \
        (c1.children_system - c0.children_system)
    return time.perf_counter() - t0, cpu, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=1000, help="synthetic clips in the manifest")
    ap.add_argument("--n-mels", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--beam-args", default="--runner=DirectRunner", help="Beam pipeline options, one string")
    ap.add_argument("--repeats", type=int, default=1, help="alternating runs of each side; the fastest counts")
    ap.add_argument("--cost-clips", type=int, default=4, help="clips per length for the per-clip cost (0: skip)")
    ap.add_argument("--fingerprint-index", type=int, default=3000, help="benchmark clips (about 15 s each) of the "
                    "contamination index each cost clip is looked up in (0: no lookup)")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    if args.clips < 1 or args.repeats < 1:
        ap.error(f"--clips={args.clips} and --repeats={args.repeats} must be >= 1")

    import apache_beam  # noqa: F401  (import time is not build time)

    from cogito_jax.data import clips, synthetic
    from data_prep import beam_pipeline, build, steps
    from data_prep.config import base_data_config

    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="build_throughput_") as tmp:
        root = pathlib.Path(tmp)
        t = time.perf_counter()
        manifest = synthetic.write_corpus(root / "corpus", args.clips, seed=args.seed)
        corpus_s = time.perf_counter() - t
        cfg = base_data_config()
        cfg.source.manifest, cfg.features.n_mels, cfg.filters.min_seconds = str(manifest), args.n_mels, 0.3
        first = json.loads(manifest.read_text().splitlines()[0])
        clips.process_clip({**first, "audio_path": str(manifest.parent / first["audio_path"])},
                           steps.feature_config(cfg), steps.filter_config(cfg))  # warm-up

        runs: dict[str, list] = {"local": [], "beam": []}
        for r in range(args.repeats):
            runs["local"].append(timed(lambda r=r: build.build(cfg, str(root / f"local{r}"))))
            runs["beam"].append(timed(lambda r=r: beam_pipeline.build(cfg, str(root / f"beam{r}"),
                                                                      shlex.split(args.beam_args))))
        (local_s, local_cpu, local), (beam_s, beam_cpu, beam) = (min(runs[k], key=lambda x: x[0]) for k in runs)
        if beam["rejected"] != local["rejected"] or beam["kept"] != local["kept"]:
            raise RuntimeError(f"the builds differ: kept {beam['kept']} vs {local['kept']}, "
                               f"{len(beam['rejected'])} vs {len(local['rejected'])} rejected")
        costs, index = {}, None
        if args.cost_clips:
            (root / "cost").mkdir()
            if args.fingerprint_index:
                from contamination import scale_index

                index = scale_index(args.fingerprint_index, n_mels=args.n_mels)[0]
            costs = {(f, s): clip_cost(s, f, args.cost_clips, cfg, root / "cost", index)
                     for f in COST_FORMATS for s in (5.0, 10.0, 30.0)}

    audio_s = local["durations"]["total_seconds"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{load0[0]:.1f} before / {os.getloadavg()[0]:.1f} after; {args.clips} synthetic clips "
          f"({audio_s / max(local['kept'], 1):.2f} s mean of the {local['kept']} kept), {args.n_mels} mels; "
          f"corpus written in {corpus_s:.1f} s (untimed)")
    for name, wall, cpu, rep in (("local data_prep.build", local_s, local_cpu, local),
                                 (f"Beam {args.beam_args}", beam_s, beam_cpu, beam)):
        print(f"{name}: {args.clips / wall:8.1f} clips/s, {1e3 * cpu / args.clips:5.1f} CPU ms/clip "
              f"({wall:.1f} s; stages {rep['stage_seconds']})")
    print(f"ratio Beam / local: {local_s / beam_s:.2f}x clips/s, {beam_cpu / local_cpu:.2f}x CPU per clip")
    for (f, s), (c, fp) in costs.items():
        print(f"process_clip, {s:4g} s {f:20s}: {1e3 * c:6.1f} CPU ms ({c / s * 1e3:.1f} ms per audio second)"
              + (f"; fingerprint lookup in {len(index)} benchmark clips {1e3 * fp:.1f} ms" if index else ""))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({
            "clips": args.clips, "n_mels": args.n_mels, "cores": os.cpu_count(), "beam_args": args.beam_args,
            "repeats": args.repeats, "load_before": load0, "load_after": os.getloadavg(),
            "local_s": local_s, "beam_s": beam_s, "local_cpu_s": local_cpu, "beam_cpu_s": beam_cpu,
            "local_clips_per_s": args.clips / local_s,
            "beam_clips_per_s": args.clips / beam_s, "ratio": local_s / beam_s, "kept": local["kept"],
            "kept_audio_seconds": audio_s, "local_stages": local["stage_seconds"],
            "beam_stages": beam["stage_seconds"],
            "process_clip_cpu_s": {f"{f}, {s:g} s": v[0] for (f, s), v in costs.items()},
            "fingerprint_index_clips": len(index) if index else 0,
            "fingerprint_lookup_cpu_s": {f"{f}, {s:g} s": v[1] for (f, s), v in costs.items()},
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()

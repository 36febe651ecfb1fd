"""Whisper log-mel throughput: the jitted JAX batch path vs HF's WhisperFeatureExtractor, same clips, same run.

    python bench/features.py --clips 64 [--batch 32] [--n-mels 128] [--repeats 3]

Both sides start from a list of 1-D 16 kHz float32 clips (1-30 s) and end with ``[n_mels, 3000]`` float32
NumPy features per clip: padding, host-device copies and the result transfer are timed on both sides;
JAX compilation is timed separately. Prints clips/s of each, the ratio, and the largest difference.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def make_clips(n: int, seed: int = 0) -> list[np.ndarray]:
    """Speech-like test clips: tones, chirps and noise bursts of 1-30 s."""
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(n):
        seconds = float(rng.uniform(1, 30))
        t = np.arange(int(seconds * 16000)) / 16000
        f0 = rng.uniform(100, 2000)
        x = 0.3 * np.sin(2 * np.pi * (f0 + rng.uniform(-50, 50) * t) * t) + 0.05 * rng.normal(size=t.size)
        x *= (np.sin(2 * np.pi * rng.uniform(0.5, 4) * t) > -0.5)  # on/off envelope
        clips.append(x.astype(np.float32))
    return clips


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32, help="clips per jitted call")
    ap.add_argument("--n-mels", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")
    args = ap.parse_args()

    import jax
    from transformers import WhisperFeatureExtractor
    from transformers.utils import is_torch_available

    from cogito_jax import audio

    clips = make_clips(args.clips)
    fe = WhisperFeatureExtractor(feature_size=args.n_mels)

    def hf():
        return np.concatenate([fe(clips[i:i + args.batch], sampling_rate=16000, return_tensors="np").input_features
                               for i in range(0, len(clips), args.batch)])

    def ours():
        out = []
        for i in range(0, len(clips), args.batch):
            chunk = clips[i:i + args.batch]
            w_bn, _ = audio.pad_batch(chunk + [chunk[-1]] * (args.batch - len(chunk)))  # one static shape
            out.append(np.asarray(audio.whisper_log_mel_batch(w_bn, n_mels=args.n_mels))[: len(chunk)])
        return np.concatenate(out)

    t = time.perf_counter()
    audio.whisper_log_mel_batch(np.zeros((args.batch, audio.N_SAMPLES), np.float32), n_mels=args.n_mels)
    compile_s = time.perf_counter() - t
    t_hf, ref = _best(hf, args.repeats)
    t_jax, got = _best(ours, args.repeats)
    diff = float(np.abs(got - ref).max())
    backend = "torch" if is_torch_available() else "numpy"
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {args.clips} clips, batch {args.batch}, "
          f"{args.n_mels} mels; jit compile {compile_s:.2f} s")
    print(f"WhisperFeatureExtractor ({backend} backend): {args.clips / t_hf:8.1f} clips/s")
    print(f"whisper_log_mel_batch (JAX):          {args.clips / t_jax:8.1f} clips/s")
    print(f"ratio JAX / HF: {t_hf / t_jax:.2f}x   max |diff| {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit(f"features differ from WhisperFeatureExtractor by {diff:.2e} > 1e-4")


if __name__ == "__main__":
    main()

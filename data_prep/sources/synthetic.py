"""A procedurally generated audio-reasoning corpus: the embedded default dataset of the demo.

Eight task families over MMAR's layers and modalities, each clip synthesised with NumPy at 16 kHz
(at most 4 s), each item with a question, 2-4 full-text choices, the answer, and a reference chain of
thought derived from the generating parameters. Seeded: the same (seed, split, index) gives the same
audio bytes and text. The ``train`` and ``heldout`` splits draw every frequency, duration, level and
tempo from disjoint grids (even vs odd grid points), so held-out items share no generating parameter
with training.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

import numpy as np

SR = 16_000
MAX_SECONDS = 4.0
NUMBERS = ["one", "two", "three", "four"]


def _grid(values, split: str, rng) -> float:
    pick = values[0::2] if split == "train" else values[1::2]
    return float(pick[rng.integers(len(pick))])


def _semitones(lo: float, n: int) -> np.ndarray:
    return lo * 2 ** (np.arange(n) / 12)


def _tone(freq: float, seconds: float, amp: float = 0.4) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    env = np.minimum(1.0, np.minimum(t, seconds - t) / 0.01)  # 10 ms fades, no clicks
    return amp * env * np.sin(2 * np.pi * freq * t)


def _place(canvas: np.ndarray, clip: np.ndarray, start: float) -> None:
    i = int(start * SR)
    canvas[i:i + len(clip)] += clip[: max(len(canvas) - i, 0)]


def _noise(rng, seconds: float, amp: float) -> np.ndarray:
    return amp * rng.normal(size=int(seconds * SR))


def _hz(f: float) -> str:
    return f"about {int(round(f, -1))} Hz"


def count_beeps(rng, split):
    n = int(rng.integers(1, 5))
    f = _grid(_semitones(600, 12), split, rng)
    dur = _grid(np.linspace(0.08, 0.2, 8), split, rng)
    gap = (MAX_SECONDS - 0.4) / n
    starts = [0.2 + k * gap + rng.uniform(0, gap - dur - 0.05) for k in range(n)]
    canvas = np.zeros(int(3.8 * SR))
    for s in starts:
        _place(canvas, _tone(f, dur), s)
    answer = f"{NUMBERS[n - 1]} beep" + ("s" if n > 1 else "")
    choices = [f"{w} beep" + ("s" if i else "") for i, w in enumerate(NUMBERS)]
    times = ", ".join(f"{s:.1f} s" for s in starts)
    think = (f"I listen for short tones at {_hz(f)}. There is a beep at {times}. "
             f"Counting them gives {NUMBERS[n - 1]}, so the answer is {answer}.")
    return canvas, "How many beeps do you hear?", choices, answer, think, ("sound", "Perception Layer", "counting")


def pitch_direction(rng, split):
    f1 = _grid(_semitones(200, 24), split, rng)
    up = bool(rng.integers(2))
    k = int(rng.integers(3, 8))
    f2 = f1 * 2 ** ((k if up else -k) / 12)
    canvas = np.zeros(int(2.0 * SR))
    _place(canvas, _tone(f1, 0.7), 0.1)
    _place(canvas, _tone(f2, 0.7), 1.1)
    answer = "higher" if up else "lower"
    think = (f"The first tone is at {_hz(f1)} and the second at {_hz(f2)}. The second tone is {k} semitones "
             f"{'above' if up else 'below'} the first, so it is {answer}.")
    q = "Is the second tone higher or lower than the first?"
    return canvas, q, ["higher", "lower"], answer, think, ("music", "Perception Layer", "pitch")


def loudness_change(rng, split):
    seconds = _grid(np.linspace(1.5, 3.5, 10), split, rng)
    louder = bool(rng.integers(2))
    ramp = np.linspace(0.02, 0.5, int(seconds * SR))
    if not louder:
        ramp = ramp[::-1]
    canvas = _noise(rng, seconds, 1.0) * ramp
    answer = "louder" if louder else "quieter"
    think = (f"The noise lasts {seconds:.1f} s. It starts {'soft' if louder else 'loud'} and ends "
             f"{'loud' if louder else 'soft'}, so the sound gets {answer}.")
    return (canvas, "Does the sound get louder or quieter?", ["louder", "quieter"], answer, think,
            ("sound", "Signal Layer", "loudness"))


def tone_or_noise(rng, split):
    seconds = _grid(np.linspace(1.0, 3.0, 10), split, rng)
    tone = bool(rng.integers(2))
    f = _grid(_semitones(300, 24), split, rng)
    canvas = _tone(f, seconds, 0.3) if tone else _noise(rng, seconds, 0.15)
    answer = "a steady tone" if tone else "white noise"
    think = (f"The energy sits in one narrow band near {_hz(f)} for {seconds:.1f} s, so it is {answer}." if tone else
             f"The energy is spread over all frequencies for {seconds:.1f} s with no pitch, so it is {answer}.")
    return (canvas, "Is this a steady tone or white noise?", ["a steady tone", "white noise"], answer, think,
            ("sound", "Signal Layer", "timbre"))


def longer_tone(rng, split):
    f = _grid(_semitones(400, 12), split, rng)
    short = _grid(np.linspace(0.2, 0.5, 8), split, rng)
    long = short * float(rng.uniform(2.2, 3.0))
    first_long = bool(rng.integers(2))
    d1, d2 = (long, short) if first_long else (short, long)
    canvas = np.zeros(int((d1 + d2 + 0.6) * SR))
    _place(canvas, _tone(f, d1), 0.1)
    _place(canvas, _tone(f, d2), 0.1 + d1 + 0.4)
    answer = "the first tone" if first_long else "the second tone"
    think = (f"The first tone lasts about {d1:.1f} s and the second about {d2:.1f} s, so {answer} lasts longer.")
    return (canvas, "Which tone lasts longer?", ["the first tone", "the second tone"], answer, think,
            ("sound", "Perception Layer", "duration"))


def tempo(rng, split):
    fast = bool(rng.integers(2))
    bpm = _grid(np.arange(150, 200, 5) if fast else np.arange(50, 80, 3), split, rng)
    period = 60.0 / bpm
    canvas = np.zeros(int(3.6 * SR))
    t = 0.1
    n = 0
    while t < 3.4:
        _place(canvas, _tone(1500, 0.03, 0.5), t)
        t += period
        n += 1
    answer = "fast" if fast else "slow"
    think = f"I count {n} clicks in about 3.5 seconds, roughly {bpm:.0f} per minute, so the tempo is {answer}."
    return canvas, "Is the tempo slow or fast?", ["slow", "fast"], answer, think, ("music", "Semantic Layer", "tempo")


def chord_quality(rng, split):
    root = _grid(_semitones(220, 12), split, rng)
    major = bool(rng.integers(2))
    third = root * 2 ** ((4 if major else 3) / 12)
    fifth = root * 2 ** (7 / 12)
    canvas = sum(_tone(f, 1.5, 0.2) for f in (root, third, fifth))
    answer = "major" if major else "minor"
    think = (f"The chord has a root near {_hz(root)}, a third {4 if major else 3} semitones above it and a fifth. "
             f"A {'major' if major else 'minor'} third means the chord is {answer}.")
    return canvas, "Is this chord major or minor?", ["major", "minor"], answer, think, ("music", "Semantic Layer",
                                                                                        "harmony")


def event_order(rng, split):
    f = _grid(_semitones(300, 24), split, rng)
    d = _grid(np.linspace(0.4, 0.9, 8), split, rng)
    noise_first = bool(rng.integers(2))
    canvas = np.zeros(int((2 * d + 0.7) * SR))
    a, b = (_noise(rng, d, 0.15), _tone(f, d, 0.3)) if noise_first else (_tone(f, d, 0.3), _noise(rng, d, 0.15))
    _place(canvas, a, 0.1)
    _place(canvas, b, 0.1 + d + 0.4)
    answer = "the noise" if noise_first else "the tone"
    first, second = ("a burst of noise", f"a tone at {_hz(f)}") if noise_first else (f"a tone at {_hz(f)}",
                                                                                    "a burst of noise")
    think = f"First I hear {first}, then {second}. So {answer} comes first."
    return (canvas, "Which comes first, the noise or the tone?", ["the noise", "the tone"], answer, think,
            ("mix-sound-music", "Semantic Layer", "temporal order"))


TASKS: dict[str, Callable] = {f.__name__: f for f in (count_beeps, pitch_direction, loudness_change, tone_or_noise,
                                                         longer_tone, tempo, chord_quality, event_order)}


def make_item(index: int, seed: int = 0, split: str = "train", tasks: tuple[str, ...] = tuple(TASKS)) -> dict:
    """One item: ``audio`` (float32 16 kHz), question, choices, answer, thinking, modality, category, ..."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split={split!r} must be 'train' or 'heldout'")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
    name = tasks[index % len(tasks)]
    audio, question, choices, answer, thinking, (modality, category, sub) = TASKS[name](rng, split)
    audio = audio + 0.003 * rng.normal(size=len(audio))  # a faint noise floor
    audio *= float(rng.uniform(0.6, 1.0))
    order = rng.permutation(len(choices))
    return {"id": f"syn-{split}-{seed}-{index:06d}", "audio": np.clip(audio, -1, 1).astype(np.float32)[: int(
        MAX_SECONDS * SR)], "question": question, "choices": [choices[i] for i in order], "answer": answer,
        "thinking": thinking, "modality": modality, "category": category, "sub_category": sub, "task": name}


def write_corpus(folder: str | pathlib.Path, n: int, seed: int = 0, split: str = "train") -> pathlib.Path:
    """Writes ``n`` items as 16-bit wav files plus a contract-6 ``manifest.jsonl``; returns the manifest."""
    import soundfile as sf

    folder = pathlib.Path(folder)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        it = make_item(i, seed, split)
        rel = f"audio/{it['id']}.wav"
        sf.write(folder / rel, it["audio"], SR, subtype="PCM_16")
        lines.append(json.dumps({"id": it["id"], "audio_path": rel, "question": it["question"],
                                 "choices": it["choices"], "answer": it["answer"], "modality": it["modality"],
                                 "category": it["category"], "metadata": {"thinking": it["thinking"],
                                                                          "sub_category": it["sub_category"],
                                                                          "task": it["task"], "source": "synthetic"}}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest

"""A procedurally generated audio-reasoning corpus: the embedded default dataset of the demo, and
:func:`build_dataset`, which turns it into a records dataset (runs with ``data.source="synthetic"``, the
self-distillation pool, the demo).

Thirteen task families over MMAR's layers (Signal, Perception, Semantic) and modalities (sound, music,
mix-sound-music): counting beeps or notes, which of two events is longer / louder / first, tone vs noise
vs clicks, loudness direction, pitch direction, melodic contour, tempo, major vs minor, a note hidden
in noise. Each clip is synthesised with NumPy at 16 kHz (1-4 s); each item has a question, 2-4
full-text choices (MMAR style), the answer, and a short reference chain of thought derived from the
generating parameters that reasons to the answer.

Deterministic: the same (seed, split, index) gives the same audio bytes and text, for any number of
items. Every generating parameter except the answer itself (frequencies, durations, gaps, intervals,
levels, tempi, gain, noise floor) is drawn from a grid whose even points belong to ``train`` and odd
points to ``heldout``, so held-out items share no generating parameter value with training; the drawn
values are kept in ``item["params"]``.

``build_dataset`` writes the corpus as 16-bit wav files + a contract-6 manifest, then decodes, quality-filters
(:data:`FILTERS`) and takes the log-mel of every clip (:mod:`cogito_jax.data.clips`), keeps the first of clips
with the same PCM hash, and writes the records dataset, the same records as ``python -m data_prep.build`` with
``source.kind=synthetic`` and ``filters.min_seconds=0.3`` would.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from collections.abc import Callable, Iterator

import numpy as np
import soundfile as sf

from cogito_jax.data import clips, records
from cogito_jax.errors import ConfigError
from cogito_jax.log import logger

SR = 16_000
MIN_SECONDS, MAX_SECONDS = 1.0, 4.0
SPLITS = ("train", "heldout")
NUMBERS = ("zero", "one", "two", "three", "four", "five")


def _semitones(lo: float, n: int) -> np.ndarray:
    """``n`` equal-tempered pitches from ``lo`` Hz upwards."""
    return lo * 2 ** (np.arange(n) / 12)


def _grid(values, split: str, rng: np.random.Generator) -> float:
    """A value from the split's half of a grid: even points for train, odd points for heldout."""
    pick = values[0::2] if split == "train" else values[1::2]
    return float(pick[rng.integers(len(pick))])


class _Draw:
    """The random choices of one item; grid values are split-disjoint and recorded in ``params``."""

    def __init__(self, rng: np.random.Generator, split: str):
        self.rng, self.split, self.params = rng, split, {}

    def grid(self, name: str, values) -> float:
        v = _grid(np.asarray(values, np.float64), self.split, self.rng)
        key = name if name not in self.params else f"{name}_{sum(k.startswith(name) for k in self.params)}"
        self.params[key] = round(v, 6)
        return v

    def label(self, n: int) -> int:
        """The answer's index among ``n`` classes (shared by both splits)."""
        return int(self.rng.integers(n))

    def noise(self, seconds: float, amp: float) -> np.ndarray:
        return amp * self.rng.normal(size=int(seconds * SR))


def _env(n: int, fade: float = 0.01) -> np.ndarray:
    t = np.arange(n) / SR
    return np.clip(np.minimum(t, n / SR - t) / fade, 0.0, 1.0)


def _tone(freq: float, seconds: float, amp: float = 0.3) -> np.ndarray:
    """A pure sine with 10 ms fades (a beep)."""
    n = int(seconds * SR)
    return amp * _env(n) * np.sin(2 * np.pi * freq * np.arange(n) / SR)


def _note(freq: float, seconds: float, amp: float = 0.3) -> np.ndarray:
    """A musical note: fundamental plus two harmonics, gently decaying."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    wave = sum(w * np.sin(2 * np.pi * k * freq * t) for k, w in ((1, 1.0), (2, 0.4), (3, 0.2))) / 1.6
    return amp * _env(n) * np.exp(-1.5 * t) * wave


def _canvas(seconds: float) -> np.ndarray:
    return np.zeros(int(min(max(seconds, MIN_SECONDS), MAX_SECONDS) * SR))


def _place(canvas: np.ndarray, clip: np.ndarray, start: float) -> None:
    i = int(start * SR)
    canvas[i:i + len(clip)] += clip[: max(len(canvas) - i, 0)]


def _hz(f: float) -> str:
    return f"{int(round(f, -1))} Hz"


def _sequence(clips: list[np.ndarray], lead: float, gaps: list[float]) -> tuple[np.ndarray, list[float]]:
    """Clips one after another (``gaps`` seconds apart, starting at ``lead``); returns (canvas, start times)."""
    starts, t = [], lead
    for k, c in enumerate(clips):
        starts.append(t)
        t += len(c) / SR + (gaps[k] if k < len(gaps) else 0.0)
    canvas = _canvas(t + 0.2)
    for c, s in zip(clips, starts, strict=True):
        _place(canvas, c, s)
    return canvas, starts


Spec = tuple[np.ndarray, str, list[str], str, str]  # audio, question, choices, answer, thinking


# ------------------------------------------------------------------------------------------------ sound


def count_beeps(d: _Draw) -> Spec:
    n = 1 + d.label(4)
    f, dur = d.grid("freq", _semitones(500, 16)), d.grid("beep_s", np.linspace(0.08, 0.2, 8))
    clips = [_tone(f, dur) for _ in range(n)]
    audio, starts = _sequence(clips, d.grid("lead_s", np.linspace(0.1, 0.4, 8)),
                              [d.grid("gap_s", np.linspace(0.15, 0.5, 8)) for _ in range(n - 1)])
    choices = [f"{NUMBERS[k]} beep{'s' if k > 1 else ''}" for k in range(1, 5)]
    times = ", ".join(f"{s:.1f}" for s in starts)
    think = (f"I hear short {_hz(f)} beeps starting at {times} s, with silence between them. "
             f"Counting them gives {NUMBERS[n]}, so the answer is {choices[n - 1]}.")
    return audio, "How many beeps do you hear?", choices, choices[n - 1], think


def event_duration(d: _Draw) -> Spec:
    first_long = d.label(2) == 0
    f = d.grid("freq", _semitones(400, 16))
    short = d.grid("short_s", np.linspace(0.15, 0.45, 8))
    long = short * d.grid("ratio", np.linspace(2.0, 3.0, 6))
    d1, d2 = (long, short) if first_long else (short, long)
    audio, _ = _sequence([_tone(f, d1), _tone(f, d2)], 0.2, [d.grid("gap_s", np.linspace(0.3, 0.6, 6))])
    answer = "the first tone" if first_long else "the second tone"
    think = (f"The first tone lasts about {d1:.2f} s and the second about {d2:.2f} s. "
             f"The longer one is {answer}.")
    return audio, "Which tone lasts longer?", ["the first tone", "the second tone"], answer, think


def tone_noise_clicks(d: _Draw) -> Spec:
    kind = d.label(3)
    seconds = d.grid("seconds", np.linspace(1.0, 3.0, 10))
    if kind == 0:
        f = d.grid("freq", _semitones(300, 24))
        audio = _tone(f, seconds, d.grid("tone_amp", np.linspace(0.15, 0.4, 6)))
        why = f"The energy stays in one narrow band near {_hz(f)} the whole time, with no breaks"
    elif kind == 1:
        audio = d.noise(seconds, d.grid("noise_amp", np.linspace(0.06, 0.15, 6))) * _env(int(seconds * SR))
        why = "The energy is spread evenly over all frequencies with no pitch and no breaks"
    else:
        rate = d.grid("rate_hz", np.linspace(3.0, 9.0, 7))
        audio = _canvas(seconds)[: int(seconds * SR)]
        for t in np.arange(0.05, seconds - 0.05, 1.0 / rate):
            _place(audio, d.noise(0.012, 0.2) * np.hanning(int(0.012 * SR)), t)
        why = f"There are brief broadband bursts about {rate:.0f} times per second with silence between them"
    choices = ["a steady tone", "white noise", "a train of clicks"]
    think = f"{why}. That is {choices[kind]}."
    return audio, "What kind of sound is this?", choices, choices[kind], think


def loudness_direction(d: _Draw) -> Spec:
    louder = d.label(2) == 0
    seconds = d.grid("seconds", np.linspace(1.5, 3.5, 10))
    span_db = d.grid("span_db", np.linspace(20, 36, 9))
    ramp = 10 ** (np.linspace(-span_db, 0, int(seconds * SR)) / 20) * 0.15
    audio = d.noise(seconds, 1.0) * (ramp if louder else ramp[::-1])
    answer = "louder" if louder else "quieter"
    think = (f"The noise starts {'soft' if louder else 'loud'} and ends {'loud' if louder else 'soft'}, "
             f"about {span_db:.0f} dB apart, so it gets {answer}.")
    return audio, "Does the sound get louder or quieter?", ["louder", "quieter"], answer, think


def louder_event(d: _Draw) -> Spec:
    first_loud = d.label(2) == 0
    f = d.grid("freq", _semitones(300, 20))
    dur = d.grid("dur_s", np.linspace(0.4, 0.9, 6))
    diff = d.grid("diff_db", np.linspace(10, 22, 7))
    amps = (0.4, 0.4 * 10 ** (-diff / 20))
    a1, a2 = amps if first_loud else amps[::-1]
    audio, _ = _sequence([_tone(f, dur, a1), _tone(f, dur, a2)], 0.2, [d.grid("gap_s", np.linspace(0.3, 0.6, 6))])
    answer = "the first tone" if first_loud else "the second tone"
    think = (f"Both tones are at {_hz(f)}. The {'first' if first_loud else 'second'} one is about {diff:.0f} dB "
             f"stronger, so {answer} is louder.")
    return audio, "Which tone is louder?", ["the first tone", "the second tone"], answer, think


# ------------------------------------------------------------------------------------------------ music


def pitch_direction(d: _Draw) -> Spec:
    up = d.label(2) == 0
    f1, k = d.grid("freq", _semitones(200, 24)), int(d.grid("interval", np.arange(2, 10)))
    f2 = f1 * 2 ** ((k if up else -k) / 12)
    dur = d.grid("dur_s", np.linspace(0.5, 0.9, 6))
    audio, _ = _sequence([_note(f1, dur), _note(f2, dur)], 0.1, [d.grid("gap_s", np.linspace(0.1, 0.4, 6))])
    answer = "higher" if up else "lower"
    think = (f"The first note is near {_hz(f1)} and the second near {_hz(f2)}, {k} semitones "
             f"{'up' if up else 'down'}. So the second note is {answer}.")
    return audio, "Is the second note higher or lower than the first?", ["higher", "lower"], answer, think


def melody_contour(d: _Draw) -> Spec:
    shape = d.label(3)
    base, step = d.grid("freq", _semitones(250, 16)), int(d.grid("step", np.arange(2, 6)))
    steps = [[0, 1, 2, 3], [3, 2, 1, 0], [0, 1, 2, 0]][shape]
    freqs = [base * 2 ** (s * step / 12) for s in steps]
    dur = d.grid("dur_s", np.linspace(0.3, 0.55, 6))
    audio, _ = _sequence([_note(f, dur) for f in freqs], 0.1, [0.05] * 3)
    choices = ["rising", "falling", "rising then falling"]
    path = " then ".join(_hz(f) for f in freqs)
    think = f"The four notes go {path}. The melody is {choices[shape]}."
    return audio, "How does the melody move?", choices, choices[shape], think


def count_notes(d: _Draw) -> Spec:
    n = 2 + d.label(4)
    base, step = d.grid("freq", _semitones(220, 18)), int(d.grid("step", np.arange(2, 6)))
    freqs = [base * 2 ** (step * s / 12) for s in (0, 2, 1, 3, 2)[:n]]  # neighbours always differ
    dur = d.grid("dur_s", np.linspace(0.25, 0.45, 6))
    audio, _ = _sequence([_note(f, dur) for f in freqs], d.grid("lead_s", np.linspace(0.1, 0.3, 6)),
                         [d.grid("gap_s", np.linspace(0.08, 0.2, 6))] * (n - 1))
    choices = [f"{NUMBERS[k]} notes" for k in range(2, 6)]
    think = f"I hear separate notes at {', '.join(_hz(f) for f in freqs)}. That is {choices[n - 2]}."
    return audio, "How many notes are played?", choices, choices[n - 2], think


def tempo(d: _Draw) -> Spec:
    fast = d.label(2) == 0
    bpm = d.grid("bpm", np.arange(150, 210, 5) if fast else np.arange(48, 84, 3))
    f = d.grid("freq", _semitones(1000, 12))
    audio = _canvas(3.6)
    starts = np.arange(0.1, 3.4, 60.0 / bpm)
    for t in starts:
        _place(audio, _note(f, 0.05, 0.5), t)
    answer = "fast" if fast else "slow"
    think = f"There are {len(starts)} beats in about 3.5 s, around {bpm:.0f} per minute. The tempo is {answer}."
    return audio, "Is the tempo slow or fast?", ["slow", "fast"], answer, think


def chord_quality(d: _Draw) -> Spec:
    major = d.label(2) == 0
    root = d.grid("freq", _semitones(700, 12))
    freqs = [root, root * 2 ** ((4 if major else 3) / 12), root * 2 ** (7 / 12)]
    dur = d.grid("dur_s", np.linspace(0.3, 0.45, 4))
    arpeggio = [_tone(f, dur, 0.3) for f in freqs]
    block = sum(_tone(f, 1.2, 0.15) for f in freqs)
    audio, _ = _sequence(arpeggio + [block], 0.1, [0.05, 0.05, 0.15])
    answer = "major" if major else "minor"
    think = (f"The notes are {_hz(freqs[0])}, {_hz(freqs[1])} and {_hz(freqs[2])}, then played together. "
             f"The third is {4 if major else 3} semitones above the root, a {answer} third, so the chord is {answer}.")
    return audio, "Is this chord major or minor?", ["major", "minor"], answer, think


# ------------------------------------------------------------------------------------------------ mixtures


def event_order(d: _Draw) -> Spec:
    noise_first = d.label(2) == 0
    f, dur = d.grid("freq", _semitones(300, 20)), d.grid("dur_s", np.linspace(0.4, 0.9, 8))
    burst = d.noise(dur, d.grid("noise_amp", np.linspace(0.06, 0.14, 6))) * _env(int(dur * SR))
    melody = np.concatenate([_note(f, dur / 2), _note(f * 2 ** (4 / 12), dur / 2)])
    clips = [burst, melody] if noise_first else [melody, burst]
    audio, _ = _sequence(clips, 0.1, [d.grid("gap_s", np.linspace(0.2, 0.5, 6))])
    answer = "the noise burst" if noise_first else "the melody"
    other = "the melody" if noise_first else "the noise burst"
    think = f"First I hear {answer}, then {other} starting near {_hz(f)}. So {answer} comes first."
    return audio, "Which comes first, the noise burst or the melody?", ["the noise burst", "the melody"], answer, think


def note_in_noise(d: _Draw) -> Spec:
    present = d.label(2) == 0
    seconds = d.grid("seconds", np.linspace(1.5, 3.5, 8))
    noise_amp = d.grid("noise_amp", np.linspace(0.03, 0.08, 6))
    audio = d.noise(seconds, noise_amp)
    f = d.grid("freq", _semitones(300, 20))
    snr = d.grid("snr_db", np.linspace(0, 12, 7))
    if present:
        start = d.grid("start_s", np.linspace(0.2, 0.6, 5))
        _place(audio, _tone(f, seconds - start - 0.2, noise_amp * np.sqrt(2) * 10 ** (snr / 20)), start)
    answer = "yes" if present else "no"
    think = (f"Over the steady noise there is a narrow line near {_hz(f)} that starts at {start:.1f} s. "
             f"So the answer is {answer}." if present else
             "The noise is spread evenly over all frequencies and no narrow line appears in it. "
             f"So the answer is {answer}.")
    return audio, "Is there a musical note hidden in the noise?", ["yes", "no"], answer, think


def melody_in_noise(d: _Draw) -> Spec:
    up = d.label(2) == 0
    seconds = d.grid("seconds", np.linspace(2.0, 3.6, 6))
    audio = d.noise(seconds, d.grid("noise_amp", np.linspace(0.02, 0.05, 6)))
    base, step = d.grid("freq", _semitones(300, 16)), int(d.grid("step", np.arange(3, 7)))
    freqs = [base * 2 ** (s * step / 12) for s in ((0, 1, 2) if up else (2, 1, 0))]
    for k, f in enumerate(freqs):
        _place(audio, _note(f, 0.45, 0.35), 0.2 + 0.55 * k)
    answer = "rising" if up else "falling"
    think = (f"Behind the noise three notes play: {', '.join(_hz(f) for f in freqs)}. "
             f"Each is {'higher' if up else 'lower'} than the last, so the melody is {answer}.")
    return audio, "Is the melody behind the noise rising or falling?", ["rising", "falling"], answer, think


@dataclasses.dataclass(frozen=True)
class Task:
    make: Callable[[_Draw], Spec]
    modality: str
    category: str
    sub_category: str


TASKS: dict[str, Task] = {t.make.__name__: t for t in (
    Task(count_beeps, "sound", "Perception Layer", "event counting"),
    Task(event_duration, "sound", "Perception Layer", "duration comparison"),
    Task(tone_noise_clicks, "sound", "Signal Layer", "sound type"),
    Task(loudness_direction, "sound", "Signal Layer", "loudness change"),
    Task(louder_event, "sound", "Signal Layer", "loudness comparison"),
    Task(pitch_direction, "music", "Perception Layer", "pitch direction"),
    Task(melody_contour, "music", "Perception Layer", "melodic contour"),
    Task(count_notes, "music", "Perception Layer", "note counting"),
    Task(tempo, "music", "Semantic Layer", "tempo"),
    Task(chord_quality, "music", "Semantic Layer", "harmony"),
    Task(event_order, "mix-sound-music", "Semantic Layer", "temporal order"),
    Task(note_in_noise, "mix-sound-music", "Signal Layer", "detection in noise"),
    Task(melody_in_noise, "mix-sound-music", "Perception Layer", "melody in noise"),
)}


def make_item(index: int, seed: int = 0, split: str = "train", tasks: tuple[str, ...] | None = None) -> dict:
    """One item: ``id``, ``audio`` (float32, 16 kHz, 1-4 s), ``question``, ``choices``, ``answer``,
    ``thinking``, ``modality``, ``category``, ``sub_category``, ``task``, ``params``."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {SPLITS}")
    tasks = tuple(tasks or TASKS)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown synthetic tasks {unknown}; known: {', '.join(TASKS)}")
    name = tasks[index % len(tasks)]
    d = _Draw(np.random.default_rng([seed, SPLITS.index(split), index]), split)
    audio, question, choices, answer, thinking = TASKS[name].make(d)
    audio = audio + d.grid("floor", np.linspace(0.001, 0.004, 8)) * d.rng.normal(size=len(audio))
    audio = np.clip(audio * d.grid("gain", np.linspace(0.6, 1.0, 9)), -1, 1)[: int(MAX_SECONDS * SR)]
    order = d.rng.permutation(len(choices))
    t = TASKS[name]
    return {"id": f"syn-{split}-{seed}-{index:06d}", "audio": audio.astype(np.float32), "question": question,
            "choices": [choices[i] for i in order], "answer": answer, "thinking": thinking,
            "modality": t.modality, "category": t.category, "sub_category": t.sub_category, "task": name,
            "params": d.params}


def items(n: int, seed: int = 0, split: str = "train", start: int = 0,
          tasks: tuple[str, ...] | None = None) -> Iterator[dict]:
    """Items ``start .. start + n - 1`` (tasks round-robin, so every task is equally represented)."""
    for i in range(start, start + n):
        yield make_item(i, seed, split, tasks)


def write_corpus(folder: str | pathlib.Path, n: int, seed: int = 0, split: str = "train", start: int = 0,
                 tasks: tuple[str, ...] | None = None) -> pathlib.Path:
    """Writes ``n`` items as 16-bit wav files under ``folder/audio`` plus a contract-6 ``folder/manifest.jsonl``
    (thinking, sub_category, task and params in ``metadata``); returns the manifest's path."""
    folder = pathlib.Path(folder)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for it in items(n, seed, split, start, tasks):
        rel = f"audio/{it['id']}.wav"
        sf.write(folder / rel, it["audio"], SR, subtype="PCM_16")
        meta = {"thinking": it["thinking"], "sub_category": it["sub_category"], "task": it["task"],
                "source": "synthetic", "split": split, "params": it["params"]}
        lines.append(json.dumps({"id": it["id"], "audio_path": rel, "question": it["question"],
                                 "choices": it["choices"], "answer": it["answer"], "modality": it["modality"],
                                 "category": it["category"], "metadata": meta}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


# ------------------------------------------------------------------------------------------------ dataset

# The quality checks of a synthetic build: data_prep's defaults (configs/data) with clips from 0.3 s.
FILTERS = clips.FilterConfig(min_seconds=0.3)
DONE_MARKER = "SYNTHETIC_DONE"  # inside DIR/dataset, written last: the arguments of the finished dataset
STARTED_MARKER = "SYNTHETIC_STARTED"  # inside DIR/dataset, written first: the folder is build_dataset's
# a folder with any of these is build_dataset's to replace (COGITO_BUILD, BUILD_KEY: earlier versions, which
# built the synthetic corpus through data_prep.build)
OWN_MARKERS = (DONE_MARKER, STARTED_MARKER, "COGITO_BUILD", "BUILD_KEY")
DATASET_FORMAT = 1  # changes when the same arguments give other records


def build_dataset(out: str | pathlib.Path, num_items: int, *, seed: int = 0, split: str = "train",
                  n_mels: int = 128, max_seconds: float = 30.0) -> pathlib.Path:
    """Builds ``num_items`` synthetic items into ``out/dataset`` (the corpus under ``out/dataset/corpus``, then
    decode + :data:`FILTERS` + ``n_mels``-bin log-mel of at most ``max_seconds`` (clips over 30 s truncated),
    exact dedup by PCM hash with the first kept, the records dataset); returns the dataset folder (the one
    holding ``dataset_info.json``). A finished dataset of the same arguments is reused; any other folder there
    (another build's, or one left half-written) is replaced, and a folder this function did not write is an
    error, never deleted."""
    out = pathlib.Path(out)
    folder = out / "dataset"
    key = json.dumps({"num_items": num_items, "seed": seed, "split": split, "n_mels": n_mels,
                      "max_seconds": max_seconds, "format": DATASET_FORMAT}, sort_keys=True)
    done = folder / DONE_MARKER
    if done.is_file() and done.read_text() == key:
        found = sorted(folder.rglob("dataset_info.json"))
        if found:
            return found[0].parent
    _clear(folder)
    folder.mkdir(parents=True)
    (folder / STARTED_MARKER).write_text("written by cogito_jax.data.synthetic.build_dataset, which replaces this "
                                         "folder when it is not finished or was built with other arguments\n")
    logger.info("building %d synthetic %s items (seed %d) into %s", num_items, split, seed, folder)
    manifest = write_corpus(folder / "corpus", num_items, seed, split)
    manifest_items = [_item(json.loads(line), manifest.parent.resolve()) for line in manifest.read_text().splitlines()]
    features = clips.Features(n_mels=n_mels, max_seconds=max_seconds, long_clips="truncate")

    def make_records():
        seen: set[str] = set()
        for item in manifest_items:
            row, mel = clips.process_clip(item, features, FILTERS)
            if mel is None or row["hash"] in seen:
                continue
            seen.add(row["hash"])
            yield records.item_record(item, mel)

    path = records.write_dataset(folder, {"train": make_records}, feat_dim=n_mels,
                                 description=f"Synthetic audio-reasoning corpus ({split} split, seed {seed})")
    done.write_text(key)
    return path


def _item(entry: dict, root: pathlib.Path) -> dict:
    """The build item of one manifest line this module wrote, as ``data_prep``'s manifest reader makes it."""
    meta = entry["metadata"]
    return {"id": entry["id"], "audio_path": str(root / entry["audio_path"]), "question": entry["question"].strip(),
            "choices": [c.strip() for c in entry["choices"]], "answer": entry["answer"].strip(),
            "modality": entry["modality"], "category": entry["category"], "sub_category": meta["sub_category"],
            "thinking": meta["thinking"], "metadata": meta}


def _clear(folder: pathlib.Path) -> None:
    """Removes ``folder`` when it is build_dataset's (or empty); ConfigError for anything else there."""
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_dir() and not folder.is_symlink() and (
            any((folder / m).is_file() for m in OWN_MARKERS) or not any(folder.iterdir())):
        shutil.rmtree(folder)
        return
    raise ConfigError(f"{folder} exists and is not a synthetic dataset folder (no {STARTED_MARKER} inside); it is "
                      "left as it is: move it away or choose another folder")

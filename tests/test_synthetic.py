"""Synthetic corpus: deterministic, well-formed, splits disjoint, audio that matches its label, CoT that concludes
with the answer (scored by the official MMAR rule), manifest written to contract 6."""

import collections
import json
import re

import numpy as np
import pytest
import soundfile as sf

from cogito_jax.data import synthetic as syn
from cogito_jax.eval.score import is_correct
from data_prep.sources.manifest import Rejection, read_manifest

SR = 16000
N_TASKS = len(syn.TASKS)


@pytest.fixture(scope="module")
def corpus():
    return {split: list(syn.items(N_TASKS * 16, seed=3, split=split)) for split in syn.SPLITS}


def test_same_seed_same_bytes_other_seed_other_audio():
    for i in range(N_TASKS):
        a, b = syn.make_item(i, seed=7), syn.make_item(i, seed=7)
        assert a["audio"].tobytes() == b["audio"].tobytes()
        assert {k: v for k, v in a.items() if k != "audio"} == {k: v for k, v in b.items() if k != "audio"}
        c = syn.make_item(i, seed=8)
        assert c["task"] == a["task"] and c["audio"].tobytes() != a["audio"].tobytes()
    assert syn.make_item(5, seed=1, split="train")["id"] == "syn-train-1-000005"
    assert syn.make_item(5, seed=1, split="heldout")["id"] == "syn-heldout-1-000005"


def test_items_are_well_formed(corpus):
    for its in corpus.values():
        assert collections.Counter(it["task"] for it in its) == {t: 16 for t in syn.TASKS}
        for it in its:
            a = it["audio"]
            assert a.dtype == np.float32 and syn.MIN_SECONDS * SR <= len(a) <= syn.MAX_SECONDS * SR
            assert np.isfinite(a).all() and np.abs(a).max() < 0.99, it["id"]
            assert 2 <= len(it["choices"]) <= 4 and len(set(it["choices"])) == len(it["choices"])
            assert it["answer"] in it["choices"] and it["question"].endswith("?")
            assert it["modality"] in ("sound", "music", "mix-sound-music")
            assert it["category"] in ("Signal Layer", "Perception Layer", "Semantic Layer")
            json.dumps(it["params"])
    kinds = {(t.modality, t.category) for t in syn.TASKS.values()}
    assert {m for m, _ in kinds} == {"sound", "music", "mix-sound-music"}
    assert {c for _, c in kinds} == {"Signal Layer", "Perception Layer", "Semantic Layer"}
    # Every answer position is used (choices are shuffled), and every class of every task occurs.
    assert {it["choices"].index(it["answer"]) for it in corpus["train"]} == {0, 1, 2, 3}
    for task in syn.TASKS:
        answers = {it["answer"] for it in corpus["train"] + corpus["heldout"] if it["task"] == task}
        assert len(answers) == len(next(it for it in corpus["train"] if it["task"] == task)["choices"]), task


def test_heldout_shares_no_generating_parameter_with_train(corpus):
    values = {split: collections.defaultdict(set) for split in syn.SPLITS}
    for split, its in corpus.items():
        for it in its:
            assert it["params"], it["id"]
            for key, v in it["params"].items():
                values[split][(it["task"], re.sub(r"_\d+$", "", key))].add(v)
    assert set(values["train"]) == set(values["heldout"])
    for key, train_values in values["train"].items():
        assert train_values and values["heldout"][key] and not train_values & values["heldout"][key], key


def test_thinking_concludes_with_the_answer(corpus):
    for it in corpus["train"] + corpus["heldout"]:
        think = it["thinking"]
        assert it["answer"] in think and 8 <= len(think.split()) <= 60, think
        conclusion = re.split(r"(?<=\.) ", think.strip())[-1]
        assert is_correct(conclusion, it["answer"], it["choices"]), (conclusion, it["answer"], it["choices"])
        for other in set(it["choices"]) - {it["answer"]}:
            assert not is_correct(conclusion, other, it["choices"])


def _segments(audio: np.ndarray, rel_db: float = -20.0, min_gap_frames: int = 3) -> list[tuple[int, int]]:
    """Runs (>= 30 ms) of 10 ms frames above the loudest frame + rel_db; shorter gaps than min_gap_frames bridged."""
    n = len(audio) // 160
    rms = np.sqrt(np.mean(audio[: n * 160].reshape(n, 160) ** 2, axis=1))
    on = rms > rms.max() * 10 ** (rel_db / 20)
    runs, start, gap = [], None, 0
    for i, a in enumerate(on):
        if a:
            start, gap = (i if start is None else start), 0
        elif start is not None:
            gap += 1
            if gap >= min_gap_frames:
                runs.append((start, i - gap + 1))
                start, gap = None, 0
    if start is not None:
        runs.append((start, n - gap))
    return [(s, e) for s, e in runs if e - s >= 3]  # at least 30 ms


def _peak_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=1 << 16))
    return float(np.argmax(spec) * SR / (1 << 16))


WORD_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}


def test_audio_matches_its_label(corpus):
    for it in corpus["train"] + corpus["heldout"]:
        task, a, ans = it["task"], it["audio"].astype(np.float64), it["answer"]
        if task in ("count_beeps", "count_notes"):
            assert len(_segments(a)) == WORD_NUMBERS[ans.split()[0]], it["id"]
        elif task == "event_duration":
            (s1, e1), (s2, e2) = _segments(a)
            assert ((e1 - s1) > (e2 - s2)) == (ans == "the first tone"), it["id"]
        elif task == "louder_event":
            (s1, e1), (s2, e2) = _segments(a, rel_db=-27)
            rms1, rms2 = (np.sqrt(np.mean(a[s * 160:e * 160] ** 2)) for s, e in ((s1, e1), (s2, e2)))
            assert (rms1 > rms2) == (ans == "the first tone"), it["id"]
        elif task == "loudness_direction":
            q = len(a) // 4
            assert (np.std(a[-q:]) > np.std(a[:q])) == (ans == "louder"), it["id"]
        elif task == "pitch_direction":
            (s1, e1), (s2, e2) = _segments(a, rel_db=-27)
            f1, f2 = _peak_hz(a[s1 * 160:e1 * 160]), _peak_hz(a[s2 * 160:e2 * 160])
            assert (f2 > f1) == (ans == "higher"), it["id"]
        elif task == "tempo":
            beats_per_s = len(_segments(a, min_gap_frames=2)) / (len(a) / SR)
            assert (beats_per_s > 2.0) == (ans == "fast"), (it["id"], beats_per_s)
        elif task == "tone_noise_clicks":
            power = np.sort(np.abs(np.fft.rfft(a)) ** 2)[::-1]
            peak_share = power[: len(power) // 200].sum() / power.sum()  # energy in the top 0.5% of bins
            assert (peak_share > 0.5) == (ans == "a steady tone"), (it["id"], peak_share)


def test_write_corpus_gives_a_clean_contract6_manifest(tmp_path):
    manifest = syn.write_corpus(tmp_path / "c", N_TASKS, seed=2, split="heldout")
    again = syn.write_corpus(tmp_path / "d", N_TASKS, seed=2, split="heldout")
    assert manifest.read_text() == again.read_text()
    entries = list(read_manifest(manifest))
    assert not [e for e in entries if isinstance(e, Rejection)] and len(entries) == N_TASKS
    for entry in entries:
        item = syn.make_item(int(entry["id"].rsplit("-", 1)[1]), seed=2, split="heldout")
        assert (tmp_path / "c" / "audio" / f"{item['id']}.wav").read_bytes() == \
            (tmp_path / "d" / "audio" / f"{item['id']}.wav").read_bytes()
        wave, sr = sf.read(entry["audio_path"], dtype="float32")
        assert sr == SR and sf.info(entry["audio_path"]).subtype == "PCM_16"
        np.testing.assert_allclose(wave, item["audio"], atol=1.5 / 32768)
        assert (entry["answer"], entry["choices"], entry["thinking"]) == (item["answer"], item["choices"],
                                                                          item["thinking"])
        assert entry["sub_category"] == item["sub_category"] and entry["metadata"]["params"] == item["params"]
    shifted = list(read_manifest(syn.write_corpus(tmp_path / "e", 2, seed=2, split="heldout", start=5)))
    assert [e["id"] for e in shifted] == ["syn-heldout-2-000005", "syn-heldout-2-000006"]


def test_task_subset_and_bad_arguments():
    its = list(syn.items(6, tasks=("tempo", "chord_quality")))
    assert [it["task"] for it in its] == ["tempo", "chord_quality"] * 3
    with pytest.raises(ValueError, match="split='dev'"):
        syn.make_item(0, split="dev")
    with pytest.raises(ValueError, match=r"unknown synthetic tasks \['nope'\]"):
        syn.make_item(0, tasks=("nope",))


def _records(dataset_dir):
    from cogito_jax.data import records

    return list(records.RecordSource(dataset_dir, "train"))


def test_build_dataset_gives_the_records_of_a_data_prep_build_of_the_same_corpus(tmp_path):
    """The library build equals ``data_prep.build`` with ``source.kind=synthetic`` and ``filters.min_seconds=0.3``:
    the same ids in the same order, bit-identical log-mel, the same text fields (the audio's path may differ)."""
    from data_prep import build, steps
    from data_prep.config import base_data_config

    cfg = base_data_config()
    cfg.source.kind, cfg.source.num_items, cfg.source.split, cfg.seed = "synthetic", N_TASKS + 3, "heldout", 4
    cfg.features.n_mels, cfg.features.max_seconds, cfg.filters.min_seconds = 80, 2.5, 0.3
    assert steps.filter_config(cfg) == syn.FILTERS
    ours = _records(syn.build_dataset(tmp_path / "lib", N_TASKS + 3, seed=4, split="heldout", n_mels=80,
                                      max_seconds=2.5))
    theirs = _records(build.build(cfg, str(tmp_path / "pipe"))["dataset_dir"])
    assert [r["id"] for r in ours] == [r["id"] for r in theirs] and len(ours) > N_TASKS
    for a, b in zip(ours, theirs, strict=True):
        assert a["mel"].dtype == b["mel"].dtype == np.float16 and a["mel"].shape[1] == 80
        np.testing.assert_array_equal(a["mel"].view(np.uint16), b["mel"].view(np.uint16))
        assert a["provenance"].keys() == b["provenance"].keys() == {"audio_path"}
        assert {k: v for k, v in a.items() if k not in ("mel", "provenance")} == \
            {k: v for k, v in b.items() if k not in ("mel", "provenance")}


def test_build_dataset_reuses_a_finished_dataset_and_redoes_any_other(tmp_path):
    from cogito_jax.errors import ConfigError

    out = tmp_path / "d"
    first = syn.build_dataset(out, 3, n_mels=80, max_seconds=2.0)
    done = out / "dataset" / syn.DONE_MARKER
    stamp = done.stat().st_mtime_ns
    assert syn.build_dataset(out, 3, n_mels=80, max_seconds=2.0) == first and done.stat().st_mtime_ns == stamp
    assert [r["id"] for r in _records(first)] == [f"syn-train-0-{i:06d}" for i in range(3)]
    other = syn.build_dataset(out, 2, seed=1, n_mels=80, max_seconds=2.0)  # other arguments: built again
    assert [r["id"] for r in _records(other)] == [f"syn-train-1-{i:06d}" for i in range(2)]
    done.unlink()  # as if it stopped before finishing: never trusted, built again
    (other / "dataset_info.json").write_text("half-written")
    again = syn.build_dataset(out, 2, seed=1, n_mels=80, max_seconds=2.0)
    assert done.is_file() and [r["id"] for r in _records(again)] == [f"syn-train-1-{i:06d}" for i in range(2)]
    foreign = tmp_path / "f" / "dataset" / "notes.txt"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("mine")
    with pytest.raises(ConfigError, match="is not a synthetic dataset folder"):
        syn.build_dataset(tmp_path / "f", 2)
    assert foreign.read_text() == "mine"

"""Source adapters (data_prep.sources.adapters) on small fixtures in each dataset's real metadata layout
(tests/fixtures/sources), read back with the contract-6 manifest reader; and the TFDS-catalog source
(data_prep.sources.tfds_source) on tiny TFDS datasets prepared here on disk."""

import json
import pathlib
import shutil
import struct

import numpy as np
import pytest
import soundfile as sf

from data_prep.filters import ContaminationGuard
from data_prep.sources.adapters import AdapterError, convert
from data_prep.sources.adapters.__main__ import main as adapters_main
from data_prep.sources.manifest import Rejection, read_manifest
from tests.prereq import require

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "sources"
SR = 16_000


def _wav(path: pathlib.Path, seconds: float = 0.1, fmt: str | None = None) -> pathlib.Path:
    """A short tone at ``path`` (format from the extension unless ``fmt`` says otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    fmt = fmt or "WAV"
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR, format=fmt,
             subtype="PCM_16" if fmt in ("WAV", "FLAC") else None)
    return path


def _read(manifest: pathlib.Path) -> dict[str, dict]:
    """Items of a manifest by id, asserting the reader rejects none of its lines."""
    out = list(read_manifest(manifest))
    rejected = [x for x in out if isinstance(x, Rejection)]
    assert not rejected, rejected
    return {x["id"]: x for x in out}


def _skipped(manifest: pathlib.Path) -> dict[str, str]:
    path = manifest.with_name(f"{manifest.stem}.skipped.jsonl")
    return {r["id"]: r["reason"] for r in map(json.loads, path.read_text().splitlines())}


def test_audiocaps_one_item_per_clip_with_its_captions_and_missing_audio_recorded(tmp_path):
    audio = tmp_path / "data" / "audio"
    _wav(audio / "vfY_TJq7n_U.wav")
    _wav(audio / "uYT5gxnyMWM_50.flac", fmt="FLAC")
    _wav(audio / "107897.wav")  # named by audiocap_id
    out = tmp_path / "data" / "audiocaps.jsonl"
    summary = convert("audiocaps", FIXTURES / "audiocaps" / "val.csv", audio, out, progress=False)
    assert (summary.written, len(summary.skipped), summary.filtered) == (3, 1, 0)
    items = _read(out)
    assert set(items) == {"audiocaps-vfY_TJq7n_U-130", "audiocaps-uYT5gxnyMWM-50", "audiocaps-yVPZ2MNWpms-0"}
    clip = items["audiocaps-uYT5gxnyMWM-50"]
    assert clip["audio_path"] == str((audio / "uYT5gxnyMWM_50.flac").resolve())
    assert json.loads(out.read_text().splitlines()[1])["audio_path"] == "audio/uYT5gxnyMWM_50.flac"
    assert clip["metadata"]["captions"] == ["A young female speaks, followed by spraying and a female screaming",
                                            "A girl speaks followed by a scream and more girls talking"]
    assert clip["metadata"]["audiocap_ids"] == ["107890", "109274"]
    assert clip["metadata"]["url"] == "https://www.youtube.com/watch?v=uYT5gxnyMWM"
    assert clip["metadata"]["timestamp"] == "50-60" and clip["metadata"]["split"] == "val"
    assert clip["modality"] == "sound" and clip["question"] == "" and clip["choices"] == []
    assert items["audiocaps-yVPZ2MNWpms-0"]["audio_path"].endswith("audio/107897.wav")
    assert all("question" not in json.loads(line) for line in out.read_text().splitlines())
    reason = _skipped(out)["audiocaps-tdWhHV3X25Q-60"]
    assert reason.startswith("missing_audio: ") and "tdWhHV3X25Q" in reason

    guard = ContaminationGuard()
    guard.add("MMAR-meta.jsonl:7", url="https://youtu.be/uYT5gxnyMWM", timestamp="00:55-01:05")
    assert "overlaps MMAR-meta.jsonl:7" in guard.check_item(clip)
    assert guard.check_item(items["audiocaps-vfY_TJq7n_U-130"]) is None
    far = ContaminationGuard()
    far.add("MMAR-meta.jsonl:8", url="https://www.youtube.com/watch?v=uYT5gxnyMWM", timestamp="01:00-01:10")
    assert far.check_item(clip) is None


def test_clotho_captions_absolute_paths_outside_the_manifest_folder(tmp_path):
    audio = tmp_path / "clotho_audio_evaluation"
    _wav(audio / "Santa Motor.wav")
    _wav(audio / "Radio Garble.wav")
    out = tmp_path / "manifests" / "clotho.jsonl"
    summary = convert("clotho", FIXTURES / "clotho" / "clotho_captions_evaluation.csv", audio, out, progress=False)
    assert (summary.written, summary.reasons()) == (2, {"missing_audio": 1})
    items = _read(out)
    santa = next(v for k, v in items.items() if k.startswith("clotho-Santa_Motor-"))
    assert " " not in santa["id"] and santa["audio_path"] == str((audio / "Santa Motor.wav").resolve())
    assert santa["metadata"]["captions"][4] == "While rhythmically punching or stamping, a machine whines and squeals."
    assert santa["metadata"]["split"] == "evaluation" and santa["modality"] == "sound"
    assert "clotho-105bpm.wav" not in items and list(_skipped(out)) == ["clotho-105bpm"]


def test_audioset_labels_named_from_the_ontology_and_modality_from_its_subtrees(tmp_path):
    audio = tmp_path / "audio"
    _wav(audio / "Y--PJHxphWEs.wav")
    _wav(audio / "--ZhevVpy1s_50.wav")
    _wav(audio / "balanced" / "--aE2O5G5WE.flac", fmt="FLAC")  # found by its unique base name
    out = tmp_path / "audioset.jsonl"
    meta = FIXTURES / "audioset" / "balanced_train_segments.csv"
    summary = convert("audioset", meta, audio, out, ontology=FIXTURES / "audioset" / "ontology.json", progress=False)
    assert (summary.written, summary.reasons()) == (3, {"missing_audio": 1})
    items = _read(out)
    speech = items["audioset---PJHxphWEs-30"]
    assert speech["metadata"]["labels"] == ["/m/09x0r", "/t/dd00088"]
    assert speech["metadata"]["label_names"] == ["Speech", "Gush"]
    assert speech["metadata"]["timestamp"] == "30-40" and speech["metadata"]["split"] == "balanced_train"
    assert speech["metadata"]["url"] == "https://www.youtube.com/watch?v=--PJHxphWEs"
    assert {k: v["modality"] for k, v in items.items()} == {
        "audioset---PJHxphWEs-30": "mix-sound-speech", "audioset---ZhevVpy1s-50": "sound",
        "audioset---aE2O5G5WE-0": "mix-sound-music-speech"}
    assert "audioset--3pPrlCm6gg-30" in _skipped(out)
    _wav(audio / "-3pPrlCm6gg.wav")
    convert("audioset", meta, audio, out, ontology=FIXTURES / "audioset" / "ontology.json", progress=False)
    clarinet = _read(out)["audioset--3pPrlCm6gg-30"]  # Clarinet < Woodwind < Musical instrument < Music
    assert (clarinet["modality"], clarinet["metadata"]["label_names"]) == ("music", ["Clarinet"])
    with pytest.raises(AdapterError, match="--ontology"):
        convert("audioset", meta, audio, out, progress=False)


def test_musicbench_features_and_youtube_source(tmp_path):
    _wav(tmp_path / "data" / "sUjAb0SfppQ.wav")
    _wav(tmp_path / "data" / "h7ty6D1LunA.wav")
    out = tmp_path / "musicbench.jsonl"
    summary = convert("musicbench", FIXTURES / "musicbench" / "MusicBench_test_A.json", tmp_path, out,
                      progress=False)
    assert (summary.written, list(_skipped(out))) == (2, ["musicbench-data-ckOe-8qdaew"])
    item = _read(out)["musicbench-data-sUjAb0SfppQ"]
    meta = item["metadata"]
    assert item["audio_path"] == str(tmp_path.resolve() / "data" / "sUjAb0SfppQ.wav") and item["modality"] == "music"
    assert (meta["bpm"], meta["key"], meta["chords"], meta["split"]) == (67, "Ab major", ["Bb6"], "test_A")
    assert meta["caption"].startswith("The song is a low-quality recording") and meta["youtube_id"] == "sUjAb0SfppQ"
    assert meta["url"] == "https://www.youtube.com/watch?v=sUjAb0SfppQ" and "timestamp" not in meta


def test_fma_two_row_header_genres_and_subset(tmp_path):
    audio = tmp_path / "fma_small"
    try:
        _wav(audio / "000" / "000002.mp3", fmt="MP3")
    except (sf.LibsndfileError, TypeError, ValueError):
        require(False, "libsndfile here cannot write MP3")
    _wav(audio / "000" / "000005.wav")  # another extension of the expected name
    meta, genres = FIXTURES / "fma" / "tracks.csv", FIXTURES / "fma" / "genres.csv"
    out = tmp_path / "fma.jsonl"
    summary = convert("fma", meta, audio, out, genres=genres, subset="small", progress=False)
    assert (summary.written, summary.filtered, list(_skipped(out))) == (2, 1, ["fma-000010"])
    items = _read(out)
    food = items["fma-000002"]
    assert food["audio_path"].endswith("fma_small/000/000002.mp3") and food["modality"] == "music"
    assert {k: food["metadata"][k] for k in ("title", "artist", "genre_top", "genre_ids", "genres", "subset",
                                             "split", "album")} == {
        "title": "Food", "artist": "AWOL", "genre_top": "Hip-Hop", "genre_ids": [21], "genres": ["Hip-Hop"],
        "subset": "small", "split": "training", "album": "AWOL - A Way Of Life"}
    summary = convert("fma", meta, audio, out, progress=False)
    assert (summary.written, summary.filtered, sorted(_skipped(out))) == (2, 0, ["fma-000003", "fma-000010"])
    assert "genres" not in _read(out)["fma-000002"]["metadata"]
    flat = tmp_path / "flat_tracks.csv"
    flat.write_text("track_id,title,genre_top\n2,Food,Hip-Hop\n")
    with pytest.raises(AdapterError, match="track_id"):
        convert("fma", flat, audio, out, progress=False)
    with pytest.raises(AdapterError, match="'tiny'"):
        convert("fma", meta, audio, out, subset="tiny", progress=False)


def test_medley_solos_db_file_naming_and_split_filter(tmp_path):
    for name in ("test-0_cda6a71e-c3a3-5541-fc67-f597a16b17be", "test-4_9e6d4c17-d6a6-596b-f2df-826cbfb7b455",
                 "validation-3_d07b1fc0-567d-52c2-fef4-239f31c9d40e"):
        _wav(tmp_path / "audio" / f"Medley-solos-DB_{name}.wav")
    out = tmp_path / "medley.jsonl"
    meta = FIXTURES / "medley_solos_db" / "Medley-solos-DB_metadata.csv"
    summary = convert("medley_solos_db", meta, tmp_path / "audio", out, split="test", progress=False)
    assert (summary.written, summary.filtered) == (2, 1)
    assert list(_skipped(out)) == ["medley_solos_db-0f702455-0aea-5177-f462-529afc6ae69b"]
    clarinet = _read(out)["medley_solos_db-cda6a71e-c3a3-5541-fc67-f597a16b17be"]
    assert clarinet["metadata"] == {"source": "medley_solos_db", "split": "test", "instrument": "clarinet",
                                    "instrument_id": 0, "song_id": 0}
    assert clarinet["audio_path"].endswith("Medley-solos-DB_test-0_cda6a71e-c3a3-5541-fc67-f597a16b17be.wav")


def test_meld_utterances_with_split_in_the_id_and_episode_time(tmp_path):
    for name in ("dia0_utt0", "dia0_utt1", "dia1_utt0", "dia9_utt3"):
        _wav(tmp_path / "dev_splits_complete" / f"{name}.wav")  # audio taken out of the .mp4 clips
    out = tmp_path / "meld.jsonl"
    meta = FIXTURES / "meld" / "dev_sent_emo.csv"
    summary = convert("meld", meta, tmp_path / "dev_splits_complete", out, progress=False)
    assert (summary.written, list(_skipped(out))) == (4, ["meld-dev-dia1_utt1"])
    items = _read(out)
    first = items["meld-dev-dia0_utt0"]["metadata"]
    assert first == {"source": "meld", "split": "dev", "transcript": "Oh my God, he’s lost it. He’s totally lost it.",
                     "speaker": "Phoebe", "emotion": "sadness", "sentiment": "negative", "dialogue_id": 0,
                     "utterance_id": 0, "episode": "Friends S04E07", "timestamp": "00:20:57.256-00:21:00.049"}
    assert items["meld-dev-dia9_utt3"]["metadata"]["transcript"] == \
        '"Wanted. Female roommate, non-smoker, non-ugly." Nice!'
    assert items["meld-dev-dia0_utt0"]["modality"] == "speech"
    _wav(tmp_path / "train_splits" / "dia0_utt0.wav")  # ids restart per split: the base name alone is ambiguous
    summary = convert("meld", meta, tmp_path, out, progress=False)
    assert summary.written == 3 and summary.reasons() == {"ambiguous_audio": 1, "missing_audio": 1}
    assert "2 files named dia0_utt0" in _skipped(out)["meld-dev-dia0_utt0"]
    odd = tmp_path / "meld_utterances.csv"
    shutil.copy(meta, odd)
    with pytest.raises(AdapterError, match="meld_utterances.csv"):
        convert("meld", odd, tmp_path / "dev_splits_complete", out, progress=False)
    assert convert("meld", odd, tmp_path / "dev_splits_complete", out, split="test", progress=False).written == 4
    assert "meld-test-dia0_utt0" in _read(out)


def test_dailytalk_turns_from_the_nested_metadata(tmp_path):
    root = tmp_path / "dailytalk"
    for dia, utt, spk in ((0, 0, 1), (0, 1, 0), (0, 2, 1), (1, 0, 0)):
        _wav(root / "data" / str(dia) / f"{utt}_{spk}_d{dia}.wav")
        (root / "data" / str(dia) / f"{utt}_{spk}_d{dia}.txt").write_text("transcript")
    shutil.copy(FIXTURES / "dailytalk" / "metadata.json", root / "metadata.json")
    out = root / "manifest.jsonl"
    summary = convert("dailytalk", root / "metadata.json", root, out, progress=False)
    assert (summary.written, list(_skipped(out))) == (4, ["dailytalk-d1-1"])
    items = _read(out)
    assert [json.loads(line)["audio_path"] for line in out.read_text().splitlines()] == [
        "data/0/0_1_d0.wav", "data/0/1_0_d0.wav", "data/0/2_1_d0.wav", "data/1/0_0_d1.wav"]
    assert items["dailytalk-d0-0"]["metadata"] == {
        "source": "dailytalk", "transcript": "Say, Jim, how about going for a few beers after dinner?", "speaker": 1,
        "emotion": "no emotion", "act": "directive", "dialog_id": 0, "utterance_id": 0}


def test_covost2_unquoted_tsv_with_escapes(tmp_path):
    _wav(tmp_path / "clips" / "common_voice_en_19664034.wav")  # the .mp3 converted to wav
    _wav(tmp_path / "clips" / "common_voice_en_17279.flac", fmt="FLAC")
    out = tmp_path / "covost.jsonl"
    summary = convert("covost2", FIXTURES / "covost2" / "covost_v2.en_de.dev.tsv", tmp_path, out, progress=False)
    assert (summary.written, list(_skipped(out))) == (2, ["covost2-common_voice_en_19741709"])
    items = _read(out)
    first = items["covost2-common_voice_en_19664034"]["metadata"]
    assert first["transcript"] == 'These data components in turn serve as the "building blocks" of data exchanges.'
    assert first["translation"].startswith("Diese Datenkomponenten")
    assert (first["source_lang"], first["target_lang"], first["split"]) == ("en", "de", "dev")
    assert items["covost2-common_voice_en_17279"]["metadata"]["transcript"] == "It has a back slash \\ in it."


def test_bad_rows_duplicates_and_custom_patterns(tmp_path):
    meta = tmp_path / "train.csv"
    meta.write_text((FIXTURES / "audiocaps" / "val.csv").read_text() + "5,abcdefghijk,later,A bad start time\n")
    _wav(tmp_path / "clips" / "vfY_TJq7n_U-130.ogg", fmt="OGG")
    out = tmp_path / "m.jsonl"
    summary = convert("audiocaps", meta, tmp_path / "clips", out, patterns=["{youtube_id}-{start_time}.ogg"],
                      progress=False)
    assert summary.written == 1 and summary.reasons() == {"bad_row": 1, "missing_audio": 3}
    assert "start_time 'later'" in _skipped(out)["line 7"]
    assert _read(out)["audiocaps-vfY_TJq7n_U-130"]["metadata"]["split"] == "train"
    segments = tmp_path / "eval_segments.csv"
    segments.write_text((FIXTURES / "audioset" / "balanced_train_segments.csv").read_text()
                        + 'badrow, soon, 10.000, "/m/09x0r"\n')
    convert("audioset", segments, tmp_path / "clips", out, ontology=FIXTURES / "audioset" / "ontology.json",
            progress=False)
    assert _skipped(out)["line 8"].startswith("bad_row: start/end 'soon', '10.000'")
    with pytest.raises(AdapterError, match=r"unknown field\(s\) \['ytid'\]"):
        convert("audiocaps", meta, tmp_path / "clips", out, patterns=["{ytid}.wav"], progress=False)
    twice = tmp_path / "clotho_captions_development.csv"
    lines = (FIXTURES / "clotho" / "clotho_captions_evaluation.csv").read_text().splitlines()
    twice.write_text("\n".join([*lines, lines[1], "../outside.wav,a,b,c,d,e"]) + "\n")
    _wav(tmp_path / "clips" / "Santa Motor.wav")
    _wav(tmp_path / "outside.wav")
    summary = convert("clotho", twice, tmp_path / "clips", out, progress=False)
    assert summary.written == 1
    assert summary.reasons() == {"duplicate_id": 1, "missing_audio": 2, "path_escapes_audio_folder": 1}


def test_cli_summary_and_errors_name_the_bad_value(tmp_path, capsys):
    _wav(tmp_path / "audio" / "vfY_TJq7n_U.wav")
    out = tmp_path / "m.jsonl"
    meta = str(FIXTURES / "audiocaps" / "val.csv")
    assert adapters_main(["--kind", "audiocaps", "--meta", meta, "--audio_dir", str(tmp_path / "audio"),
                          "--out", str(out), "--no_progress"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"audiocaps: wrote 1 items to {out}; skipped 3 (missing_audio: 3)"), line
    assert len(_read(out)) == 1

    def fails(args, *needles):
        with pytest.raises(SystemExit) as e:
            adapters_main(args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and all(n in err for n in needles), err

    base = ["--audio_dir", str(tmp_path / "audio"), "--out", str(out)]
    fails(["--kind", "audiocapz", "--meta", meta, *base], "audiocapz", "audiocaps")
    fails(["--kind", "clotho", "--meta", meta, *base], "caption_1", "val.csv")
    fails(["--kind", "clotho", "--meta", str(tmp_path / "nope.csv"), *base], "nope.csv")
    fails(["--kind", "meld", "--meta", str(tmp_path), *base], str(tmp_path))
    fails(["--kind", "audiocaps", "--meta", meta, "--audio_dir", str(tmp_path / "none"), "--out", str(out)],
          str(tmp_path / "none"))
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"audiocap_id,youtube_id,start_time,caption\n1,a,0,\xff\xfe\n")
    fails(["--kind", "audiocaps", "--meta", str(binary), *base], "binary.csv", "UTF-8")
    assert len(_read(out)) == 1  # a failed run leaves the earlier manifest as it was
    with pytest.raises(SystemExit) as e:
        adapters_main(["--help"])
    assert e.value.code == 0 and "github.com/mdeff/fma" in capsys.readouterr().out


# --- TFDS-catalog source ------------------------------------------------------------------------------------------

AUDIO_FEATURE = "tensorflow_datasets.core.features.audio_feature.Audio"


def _prepare_tfds(data_dir: pathlib.Path, ds_name: str, features: dict, splits: dict[str, list[dict]],
                  audio: dict[str, dict], version: str = "1.0.0") -> pathlib.Path:
    """Prepares a tiny dataset called ``ds_name`` with TFDS itself (array_record files), then declares the keys in
    ``audio`` as Audio features in features.json, as the catalog builder would (a non-lazy Audio stores its
    samples exactly like the int Tensor written here; a lazy one stores the file bytes)."""
    import tensorflow_datasets as tfds

    class Tiny(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = ds_name
        VERSION = tfds.core.Version(version)

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            return {s: self._generate_examples(s) for s in splits}

        def _generate_examples(self, split):
            yield from enumerate(splits[split])

    builder = Tiny(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    folder = data_dir / ds_name / version
    spec = json.loads((folder / "features.json").read_text())
    for key, audio_json in audio.items():
        spec["featuresDict"]["features"][key] = {"pythonClassName": AUDIO_FEATURE, "audio": audio_json}
    (folder / "features.json").write_text(json.dumps(spec))
    return folder


def _tone_i16(n: int, hz: float) -> np.ndarray:
    return (8000 * np.sin(2 * np.pi * hz * np.arange(n) / SR)).astype(np.int16)


def test_tfds_source_writes_wavs_and_manifest_from_array_record_and_tfrecord(tmp_path):
    import tensorflow_datasets as tfds

    from data_prep.sources import tfds_source

    clips = {"yes": _tone_i16(1600, 300), "no": _tone_i16(2400, 500), "_silence_": np.zeros(800, np.int16)}
    folder = _prepare_tfds(
        tmp_path / "tfds", "speech_commands",
        {"audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
         "label": tfds.features.ClassLabel(names=["yes", "no", "_silence_"])},
        {"train": [{"audio": a, "label": k} for k, a in clips.items()],
         "test": [{"audio": clips["no"], "label": "no"}]},
        {"audio": {"shape": {"dimensions": ["-1"]}, "dtype": "int16", "fileFormat": "wav", "sampleRate": "16000",
                   "encoding": "none"}})
    out = tmp_path / "sc" / "manifest.jsonl"
    summary = tfds_source.convert("speech_commands", tmp_path / "tfds", "train", out, progress=False)
    assert (summary.written, summary.skipped) == (3, [])
    items = _read(out)
    assert sorted(items) == ["speech_commands-train-000000", "speech_commands-train-000001",
                             "speech_commands-train-000002"]
    for item in items.values():
        label = item["metadata"]["label"]
        data, sr = sf.read(item["audio_path"], dtype="int16")
        assert sr == SR and np.array_equal(data, clips[label]), label
        assert item["modality"] == "speech" and item["metadata"]["tfds"] == "speech_commands:1.0.0"
        assert item["audio_path"].startswith(str((tmp_path / "sc" / "audio" / "speech_commands" / "train").resolve()))
    by_label = {v["metadata"]["label"]: v["metadata"]["index"] for v in items.values()}

    from array_record.python.array_record_module import ArrayRecordReader

    shard = folder / "speech_commands-train.array_record-00000-of-00001"
    reader = ArrayRecordReader(str(shard))
    frames = b"".join(struct.pack("<Q", len(r)) + b"\0" * 4 + r + b"\0" * 4 for r in reader.read_all())
    reader.close()
    (folder / "speech_commands-train.tfrecord-00000-of-00001").write_bytes(frames)
    shard.unlink()
    info = json.loads((folder / "dataset_info.json").read_text())
    info.pop("fileFormat")  # tfrecord, TFDS's default
    (folder / "dataset_info.json").write_text(json.dumps(info))
    out2 = tmp_path / "sc2" / "manifest.jsonl"
    assert tfds_source.convert("speech_commands:1.0.0", tmp_path / "tfds", "train", out2, progress=False,
                               limit=2).written == 2
    for item in _read(out2).values():
        assert by_label[item["metadata"]["label"]] == item["metadata"]["index"] < 2
        assert np.array_equal(sf.read(item["audio_path"], dtype="int16")[0], clips[item["metadata"]["label"]])
    (folder / "speech_commands-train.tfrecord-00000-of-00001").write_bytes(frames[:-10])
    with pytest.raises(AdapterError, match="cut short"):
        tfds_source.convert("speech_commands", tmp_path / "tfds", "train", out2, progress=False)


def test_tfds_source_lazy_audio_ids_text_and_undecodable_clips(tmp_path):
    import io

    import tensorflow_datasets as tfds

    from data_prep.sources import tfds_source

    def flac(samples):
        buf = io.BytesIO()
        sf.write(buf, samples, SR, format="FLAC", subtype="PCM_16")
        return buf.getvalue()

    one, two = _tone_i16(1200, 220), _tone_i16(1000, 440)
    _prepare_tfds(
        tmp_path / "tfds", "librispeech",
        {"speech": tfds.features.Tensor(shape=(), dtype=np.object_), "text": tfds.features.Text(),
         "speaker_id": tfds.features.Scalar(dtype=np.int64), "chapter_id": tfds.features.Scalar(dtype=np.int64),
         "id": tfds.features.Text()},
        {"dev_clean": [{"speech": flac(one), "text": "HE HOPED THERE WOULD BE STEW", "speaker_id": 1272,
                        "chapter_id": 128104, "id": "1272-128104-0000"},
                       {"speech": flac(two), "text": "NOR IS MISTER QUILTER'S MANNER", "speaker_id": 1272,
                        "chapter_id": 128104, "id": "1272-128104-0001"},
                       {"speech": b"not audio", "text": "X", "speaker_id": 1, "chapter_id": 2, "id": "1-2-3"}]},
        {"speech": {"shape": {"dimensions": ["-1"]}, "dtype": "int16", "fileFormat": "flac", "sampleRate": "16000",
                    "encoding": "none", "lazyDecode": True}})
    out = tmp_path / "ls" / "manifest.jsonl"
    summary = tfds_source.convert("librispeech", tmp_path / "tfds", "dev_clean", out, progress=False)
    assert summary.written == 2 and summary.reasons() == {"undecodable_audio": 1}
    assert list(_skipped(out)) == ["librispeech-dev_clean-1-2-3"]
    item = _read(out)["librispeech-dev_clean-1272-128104-0000"]
    assert {k: item["metadata"][k] for k in ("text", "speaker_id", "chapter_id", "id", "split")} == {
        "text": "HE HOPED THERE WOULD BE STEW", "speaker_id": 1272, "chapter_id": 128104, "id": "1272-128104-0000",
        "split": "dev_clean"}
    assert np.array_equal(sf.read(item["audio_path"], dtype="int16")[0], one)


def test_tfds_source_errors_name_what_is_missing_and_never_download(tmp_path, capsys):
    import tensorflow_datasets as tfds

    from data_prep.sources import tfds_source

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AdapterError, match="nsynth is not prepared under .*never downloads"):
        tfds_source.convert("nsynth", empty, "train", tmp_path / "m.jsonl", progress=False)
    assert list(empty.iterdir()) == []
    with pytest.raises(AdapterError, match="'speech_comands' is not a dataset of the TFDS catalog.*speech_commands"):
        tfds_source.convert("speech_comands", empty, "train", tmp_path / "m.jsonl", progress=False)
    assert set(tfds_source.CATALOG_MODALITY) <= set(tfds.list_builders(with_community_datasets=False))

    _prepare_tfds(tmp_path / "tfds", "crema_d",
                  {"audio": tfds.features.Tensor(shape=(None,), dtype=np.int64),
                   "label": tfds.features.ClassLabel(names=["NEU", "HAP", "SAD", "ANG", "FEA", "DIS"]),
                   "speaker_id": tfds.features.Text()},
                  {"train": [{"audio": _tone_i16(800, 300).astype(np.int64), "label": "ANG", "speaker_id": "1001"}]},
                  {"audio": {"shape": {"dimensions": ["-1"]}, "dtype": "int64", "fileFormat": "wav",
                             "sampleRate": "16000", "encoding": "none"}})
    with pytest.raises(AdapterError, match=r"no split 'validation'; prepared splits: \['train'\]"):
        tfds_source.convert("crema_d", tmp_path / "tfds", "validation", tmp_path / "m.jsonl", progress=False)
    with pytest.raises(AdapterError, match="modality 'noise'"):
        tfds_source.convert("crema_d", tmp_path / "tfds", "train", tmp_path / "m.jsonl", modality="noise",
                            progress=False)
    with pytest.raises(AdapterError, match=r"found \['1.0.0'\]"):
        tfds_source.convert("crema_d:2.0.0", tmp_path / "tfds", "train", tmp_path / "m.jsonl", progress=False)

    out = tmp_path / "cd" / "m.jsonl"
    assert tfds_source.main(["--name", "crema_d", "--data_dir", str(tmp_path / "tfds"), "--out", str(out),
                             "--no_progress"]) == 0
    assert "crema_d: wrote 1 items" in capsys.readouterr().out
    item = _read(out)["crema_d-train-000000"]
    assert (item["metadata"]["label"], item["metadata"]["speaker_id"]) == ("ANG", "1001")
    assert np.array_equal(sf.read(item["audio_path"], dtype="int16")[0], _tone_i16(800, 300))
    next((tmp_path / "tfds" / "crema_d" / "1.0.0").glob("*train.array_record*")).unlink()
    with pytest.raises(SystemExit) as e:
        tfds_source.main(["--name", "crema_d", "--data_dir", str(tmp_path / "tfds"), "--out", str(out)])
    assert e.value.code == 2 and "missing ['crema_d-train.array_record-00000-of-00001']" in capsys.readouterr().err

"""Hostile manifests through the real CLI (`python -m data_prep.build`, contract 6): ids that would climb out of
--out or are not file names, a WAV with sample rate 0, a FIFO, a header that declares hours, a text file with
secrets as audio, a dataset folder the build did not write. Each bad item is one rejection (or a kept item)
in report.json, the build finishes, nothing is written outside --out, no file content is quoted."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

REPO = pathlib.Path(__file__).resolve().parents[1]
SECRET = "root:$6$Zq9secretSALT$hashhashhash:19000:0:99999:7:::\n"
QA = {"question": "Is this a steady tone or white noise?", "choices": ["a steady tone", "white noise"],
      "answer": "a steady tone"}
EIGHT_HOURS = 8 * 3600


# Runs a command and writes its peak resident memory (KiB) to argv[1]. The build is this small process's child:
# a child forked straight from the test process would count the test process's own memory in its peak (Linux
# keeps the high-water mark of the memory a process had before exec).
_PEAK = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
         "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(rc)")


def run_cli(out: pathlib.Path, manifest: pathlib.Path, timeout: float = 300) -> tuple[int, str, str, int]:
    """(exit code, stdout, stderr, peak resident memory in MiB) of one build; killed after ``timeout`` seconds."""
    logs = out.parent / f"{out.name}.log"
    peak = out.parent / f"{out.name}.peak"
    with open(f"{logs}.out", "w") as so, open(f"{logs}.err", "w") as se:
        p = subprocess.Popen([sys.executable, "-c", _PEAK, str(peak), sys.executable, "-m", "data_prep.build",
                              "--config", "configs/data/manifest.py", "--out", str(out),
                              f"--config.source.manifest={manifest}", "--config.features.n_mels=80"],
                             cwd=REPO, stdout=so, stderr=se, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                             start_new_session=True)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    kib = int(peak.read_text()) if peak.exists() else 0
    peak.unlink(missing_ok=True)
    return p.returncode, pathlib.Path(f"{logs}.out").read_text(), pathlib.Path(f"{logs}.err").read_text(), kib // 1024


def _tone(path: pathlib.Path, freq: float) -> None:
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * np.arange(16000) / 16000)).astype(np.float32), 16000)


def _files(root: pathlib.Path) -> set[pathlib.Path]:
    return {p for p in root.rglob("*") if not p.is_dir()}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """One build of a manifest full of hostile items: (report, exit code, stderr, peak MiB, ids, files written
    outside --out, the root)."""
    root = tmp_path_factory.mktemp("hostile")
    clips, out = root / "clips", root / "out"
    clips.mkdir()
    (root / "escaped").mkdir()  # where the escaping id would land: out/cache/mel/../../../escaped/ESCAPED.npy
    ids = {"escape": "../../../escaped/ESCAPED", "slash": "a/b/c", "nul": "nul\x00id", "long": "L" * 300}
    for i in range(len(ids)):
        _tone(clips / f"{i}.wav", 300 + 60 * i)
    _tone(clips / "sr0.wav", 880)
    raw = (clips / "sr0.wav").read_bytes()
    (clips / "sr0.wav").write_bytes(raw[:24] + bytes(8) + raw[32:])  # sample rate and byte rate 0
    os.mkfifo(clips / "fifo.wav")
    data_bytes = EIGHT_HOURS * 16000 * 2  # a real 8-hour PCM16 header over a sparse file: no disk, no decode
    _tone(clips / "hours.wav", 500)
    head = bytearray((clips / "hours.wav").read_bytes()[:44])
    head[4:8], head[40:44] = (36 + data_bytes).to_bytes(4, "little"), data_bytes.to_bytes(4, "little")
    with open(clips / "hours.wav", "wb") as f:
        f.write(head)
        f.truncate(44 + data_bytes)
    (root / "etc").mkdir()
    for name in ("shadow", "shadow.wav"):
        (root / "etc" / name).write_text(SECRET)
    lines = [{"id": rid, "audio_path": f"clips/{i}.wav", **QA} for i, rid in enumerate(ids.values())]
    lines += [{"id": "sr0", "audio_path": "clips/sr0.wav", **QA}, {"id": "fifo", "audio_path": "clips/fifo.wav", **QA},
              {"id": "hours", "audio_path": "clips/hours.wav", **QA},
              {"id": "etc", "audio_path": str(root / "etc" / "shadow"), **QA},
              {"id": "etc_wav", "audio_path": str(root / "etc" / "shadow.wav"), **QA}]
    (root / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    before = _files(root)
    try:
        rc, _, err, peak = run_cli(out, root / "m.jsonl")
    finally:
        try:  # a build blocked on the FIFO (it is killed) leaves no reader; a writer would not block either way
            os.close(os.open(clips / "fifo.wav", os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    outside = {p for p in _files(root) - before if out not in p.parents and not p.name.startswith("out.log")}
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return report, rc, err, peak, ids, outside, root


def _reasons(hostile) -> dict[str, str]:
    report, rc, err = hostile[:3]
    assert rc == 0 and report is not None, err[-3000:]
    return {r["id"]: r["reason"] for r in report["rejected"]}


def test_ids_that_are_not_file_names_are_kept_and_write_nothing_outside_out(hostile):
    from cogito_jax.data import records

    reasons = _reasons(hostile)
    report, ids, outside = hostile[0], hostile[4], hostile[5]
    assert not set(ids.values()) & set(reasons) and report["kept"] == len(ids)
    assert sorted(r["id"] for r in records.RecordSource(report["dataset_dir"])) == sorted(ids.values())
    assert outside == set()


def test_a_zero_sample_rate_wav_is_one_rejection(hostile):
    assert _reasons(hostile)["sr0"] == "corrupt: the header declares a sample rate of 0 Hz"


def test_a_fifo_is_rejected_without_blocking(hostile):
    assert _reasons(hostile)["fifo"] == "unreadable: is a FIFO, not a regular file"


def test_a_header_declaring_hours_is_rejected_before_decoding(hostile):
    assert _reasons(hostile)["hours"] == "too_long: 2.88e+04 s > 60 s (declared by the header; not decoded)"
    assert hostile[3] < 1500, f"peak memory {hostile[3]} MiB: the 8-hour clip was decoded"  # decoding: > 1.8 GB


def test_a_text_file_as_audio_is_rejected_without_quoting_it(hostile):
    reasons = _reasons(hostile)
    assert reasons["etc"].startswith("unknown_format: ") and reasons["etc_wav"].startswith("corrupt: ")
    written = "".join(p.read_text(errors="replace") for p in (hostile[6] / "out").glob("report.*"))
    pieces = [SECRET[i:i + 5] for i in range(len(SECRET) - 5)] + \
        [SECRET.encode()[i:i + 3].hex() for i in range(len(SECRET) - 3)]
    assert not [p for p in pieces if p in written]


def test_a_dataset_folder_the_build_did_not_write_stops_it_with_one_line(tmp_path):
    _tone(tmp_path / "x.wav", 440)
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "x", "audio_path": "x.wav", **QA}) + "\n")
    dataset = tmp_path / "out" / "dataset"
    dataset.mkdir(parents=True)
    (dataset / "thesis.tex").write_text("years of work")
    before = _files(tmp_path)
    rc, out, err, _ = run_cli(tmp_path / "out", tmp_path / "m.jsonl", timeout=120)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{dataset} exists and is not a dataset folder this build wrote" in err
    assert _files(tmp_path) - before == {tmp_path / "out.log.out", tmp_path / "out.log.err"}
    assert (dataset / "thesis.tex").read_text() == "years of work"

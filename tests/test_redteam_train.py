"""Hostile conditions for `python -m cogito_jax.train` and `python -m cogito_jax.distill`, through the real entry
points: an unusable checkpoint folder, a garbled stage record, a damaged latest checkpoint, a workdir whose
checkpoints no longer fit the config, a save the disk refuses. Each ends in one clear line (exit 2
for bad input, 1 for a run-time failure) or in a recovery that is logged in one line, and writes nothing
outside the run's folder."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN = ["--config", "configs/tiny.py", "--config.data.num_train=64", "--config.data.num_heldout=0",
         "--config.checkpoint.every=4", "--config.checkpoint.async_save=False", "--config.train.steps=8"]


def _env():
    return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}


def _cli(module, *args, max_file_kib=None):
    """Runs ``python -m module args``; ``max_file_kib`` caps the size of any file it writes (``ulimit -f``: a
    longer write fails with EFBIG, as a write to a full disk fails with ENOSPC)."""
    argv, env = [sys.executable, "-m", module, *args], _env()
    if max_file_kib is not None:
        argv = ["bash", "-c", f"ulimit -f {max_file_kib}; trap '' XFSZ; exec \"$@\"", "bash", *argv]
        env.pop("JAX_COMPILATION_CACHE_DIR", None)  # its entries would hit the cap too, and warn
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _usage_error(r, *needles):
    """Exit 2 and exactly one line on stderr, holding every needle."""
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def _the_error_line(r, status):
    """Exit ``status``, no traceback, and one error line on stderr (progress logging above it is allowed)."""
    assert r.returncode == status, r.stdout[-2000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, r.stderr[-3000:]
    return errors[0]


def _steps(workdir):
    return [json.loads(ln)["step"] for ln in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("make", ["file", "under_a_file", "read_only"])
def test_an_unusable_checkpoint_folder_is_one_line_before_any_work(tmp_path, make):
    w = tmp_path / "run"
    w.mkdir()
    if make == "file":
        (w / "checkpoints").write_text("")
        expected = "is not a folder"
    elif make == "under_a_file":
        (tmp_path / "file").write_text("")
        (w / "checkpoints").symlink_to(tmp_path / "file" / "checkpoints")  # a folder that cannot be made
        expected = "is not writable: "
    else:
        (w / "checkpoints").mkdir()
        (w / "checkpoints").chmod(0o555)
        if os.access(w / "checkpoints", os.W_OK):
            pytest.skip("running as root: a read-only folder is still writable")
        expected = "is not writable: Permission denied"
    before = _files(tmp_path)
    r = _cli("cogito_jax.train", *TRAIN, "--workdir", str(w))
    _usage_error(r, f"checkpoint folder '{w}/checkpoints'", expected)
    assert _files(tmp_path) == before  # no data generated, no config.json, nothing anywhere else


@pytest.mark.parametrize("content", ['{"done": ["train_0", "eval_0"], "rounds": {"0": {"acc', "\x00" * 64, "[1, 2]"])
def test_a_damaged_rounds_json_is_one_line(tmp_path, content):
    w = tmp_path / "distill"
    w.mkdir()
    (w / "rounds.json").write_text(content)
    r = _cli("cogito_jax.distill", "--config", "configs/distill_tiny.py", "--workdir", str(w))
    _usage_error(r, f"{w / 'rounds.json'} is not a readable stage record", "delete it to run every stage again")
    assert (w / "rounds.json").read_text() == content
    assert _files(tmp_path) == ["distill", "distill/config.json", "distill/rounds.json"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 8-step run (checkpoints at steps 4 and 8) and its generated data."""
    w = tmp_path_factory.mktemp("redteam_train") / "run"
    r = _cli("cogito_jax.train", *TRAIN, "--workdir", str(w))
    assert r.returncode == 0, r.stderr[-3000:]
    return w


def _data(trained):
    """Flags that train on the data and tokenizer ``trained`` generated."""
    return ["--config.data.source=records", f"--config.data.dir={trained}/data/train",
            f"--config.data.tokenizer={trained}/tokenizer"]


def _copy(trained, tmp_path):
    w = tmp_path / "run"
    shutil.copytree(trained, w)
    return w, _data(trained)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["iterator_garbage", "flipped_array_bytes"])
def test_a_damaged_latest_checkpoint_is_moved_aside_and_retrained(trained, tmp_path, damage):
    w, data = _copy(trained, tmp_path)
    step8 = w / "checkpoints" / "8"
    if damage == "iterator_garbage":
        (step8 / "iterators" / "process_0-of-1.json").write_text("garbage")
    else:
        path = max((p for p in (step8 / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x10
        path.write_bytes(bytes(raw))
    r = _cli("cogito_jax.train", *TRAIN, *data, "--workdir", str(w))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    [warning] = [ln for ln in r.stderr.splitlines() if "is damaged" in ln]
    assert f"checkpoint step 8 in {w}/checkpoints is damaged (" in warning and "moved to 8.corrupt-1" in warning
    assert "resumed from step 4" in r.stderr
    assert {"8", "8.corrupt-1"} <= {p.name for p in (w / "checkpoints").iterdir()}
    assert _steps(w) == list(range(1, 9))
    # Steps 5-8 trained again from step 4 give the losses of the undamaged run.
    losses = lambda d: [json.loads(ln)["loss"] for ln in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert losses(w) == losses(trained)
    # And the re-run after that finds step 8 intact: nothing to do, nothing moved.
    r = _cli("cogito_jax.train", *TRAIN, *data, "--workdir", str(w))
    assert r.returncode == 0 and "is damaged" not in r.stderr and "resumed from step 8" in r.stderr, r.stderr[-3000:]


@pytest.mark.slow
def test_checkpoints_that_no_longer_fit_the_config_stop_with_one_line(trained, tmp_path):
    w, data = _copy(trained, tmp_path)
    before = _files(w / "checkpoints")
    r = _cli("cogito_jax.train", *TRAIN, *data, "--config.train.trainable=lora", "--config.train.steps=12",
             "--workdir", str(w))
    line = _the_error_line(r, 2)
    assert f"checkpoint step 8 in {w}/checkpoints cannot be restored into this run (" in line
    assert line.endswith("resume with the config it was saved with, or use a new workdir")
    assert _files(w / "checkpoints") == before and _steps(w) == list(range(1, 9))


@pytest.mark.slow
def test_a_save_the_disk_refuses_stops_the_run_with_its_cause(trained, tmp_path):
    """The files of the step-2 save cannot be written (here: over the file-size limit; a full disk fails the same
    way, with ENOSPC): the run stops a step or two later with one line naming the cause, instead of training on
    and printing the failure's tracebacks at every save."""
    w = tmp_path / "run"
    r = _cli("cogito_jax.train", *TRAIN, *_data(trained), "--config.checkpoint.async_save=True",
             "--config.checkpoint.every=2", "--config.train.steps=40", "--workdir", str(w), max_file_kib=100)
    line = _the_error_line(r, 1)
    assert line == f"error: saving checkpoint step 2 in {w}/checkpoints failed: File too large (errno 27)"
    assert max(_steps(w)) <= 4 and not [p for p in (w / "checkpoints").iterdir() if p.name.isdigit()]
    assert not [ln for ln in r.stderr.splitlines() if "rror" in ln and ln != line], r.stderr  # no library noise

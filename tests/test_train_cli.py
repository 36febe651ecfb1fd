"""`python -m cogito_jax.train` (contract 5): kill -9 and resume gives the same per-step losses and
examples as an uninterrupted run; SIGTERM saves the current step and exits 0."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--config", "configs/tiny.py", "--config.data.num_train=64", "--config.data.num_heldout=0",
        "--config.checkpoint.every=3", "--config.checkpoint.async_save=False", "--config.train.steps=12"]


def _start(workdir, *extra, data=None):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    args = [*ARGS, *extra]
    if data is not None:  # reuse one generated corpus + tokenizer
        args += ["--config.data.source=records", f"--config.data.dir={data}/data/train",
                 f"--config.data.tokenizer={data}/tokenizer"]
    return subprocess.Popen([sys.executable, "-m", "cogito_jax.train", *args, "--workdir", str(workdir)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _rows(workdir):
    rows = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[r["step"]] = (r["loss"], r["data_index_sum"])
    return dict(sorted(rows.items()))


def _wait_for_step(workdir, step, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if (workdir / "metrics.jsonl").exists() and max(_rows(workdir), default=0) >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    w = tmp_path_factory.mktemp("train_ref")
    p = _start(w)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    return w, _rows(w)


@pytest.mark.slow
def test_kill9_and_resume_is_exact(reference, tmp_path):
    ref_dir, ref = reference
    assert list(ref) == list(range(1, 13))
    assert ref[12][0] < ref[1][0]
    p = _start(tmp_path, data=ref_dir)
    _wait_for_step(tmp_path, 8, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p = _start(tmp_path, data=ref_dir)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    assert "resumed from step" in out
    assert _rows(tmp_path) == ref  # same loss bitwise and the same examples at every step


@pytest.mark.slow
def test_sigterm_saves_and_exits_zero(reference, tmp_path):
    ref_dir, _ = reference
    p = _start(tmp_path, "--config.train.steps=500", "--config.checkpoint.every=1000", data=ref_dir)
    _wait_for_step(tmp_path, 4, p)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
    steps = sorted(int(d.name) for d in (tmp_path / "checkpoints").iterdir() if d.name.isdigit())
    assert steps and 4 <= steps[-1] < 500
    assert max(_rows(tmp_path)) == steps[-1]  # the checkpoint is at the step it stopped on

"""The metrics writer: JSONL lines per step, TensorBoard events, previous-step flushing."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from cogito_jax import jsonl, metrics


def test_jsonl_and_tensorboard(tmp_path):
    with metrics.MetricsWriter(tmp_path, tensorboard=True) as w:
        for step in range(1, 4):
            w.write(step, {"loss": jnp.float32(1.0 / step), "lr": 0.1 * step, "grad_norm": np.float32(2.0)})
            # The current step is held back until the next write: the host never waits on the device.
            lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
            assert len(lines) == step - 1
        w.write_now(3, {"eval_loss": 0.25, "bad": float("nan")})
    rows = metrics.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 3]
    np.testing.assert_allclose([r["loss"] for r in rows[:3]], [1.0, 0.5, 1 / 3], rtol=1e-6)
    assert rows[3]["eval_loss"] == 0.25 and rows[3]["bad"] == "nan"
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100


def test_appends_across_restarts_and_skips_torn_line(tmp_path):
    with metrics.MetricsWriter(tmp_path, tensorboard=False) as w:
        w.write(1, {"loss": 2.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # a crash mid-write
    with metrics.MetricsWriter(tmp_path, tensorboard=False) as w:
        w.write(2, {"loss": 1.5})
    rows = metrics.read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 2.0), (2, 1.5)]  # the torn line alone is dropped
    text = (tmp_path / "metrics.jsonl").read_text()
    assert [json.loads(line)["loss"] for line in text.splitlines()] == [2.0, 1.5]  # the torn line was cut off


def test_inactive_on_non_main_process(tmp_path, monkeypatch):
    monkeypatch.setenv("COGITO_PROCESS_ID", "1")
    with metrics.MetricsWriter(tmp_path / "w", tensorboard=False) as w:
        w.write(1, {"loss": 1.0})
    assert not (tmp_path / "w" / "metrics.jsonl").exists()


def test_a_resumed_run_drops_the_lines_it_logs_again(tmp_path):
    """Killed after logging steps 1-5 (and half of 6) with its checkpoint at step 4: the resumed writer keeps
    steps 1-4 only, so after the rerun every step is in the file once."""
    with metrics.MetricsWriter(tmp_path, tensorboard=False) as w:
        for step in range(1, 6):
            w.write(step, {"loss": 1.0 / step})
        w.write_now(4, {"eval_loss": 0.5})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')
    with metrics.MetricsWriter(tmp_path, tensorboard=False, resume_step=4) as w:
        assert [r["step"] for r in metrics.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 4]
        for step in range(5, 7):
            w.write(step, {"loss": 2.0 / step})
    rows = metrics.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 4, 5, 6] and rows[-1]["loss"] == 2.0 / 6
    assert not (tmp_path / "metrics.jsonl.tmp").exists()
    before = (tmp_path / "metrics.jsonl").stat().st_mtime_ns
    metrics.MetricsWriter(tmp_path, tensorboard=False, resume_step=6).close()  # nothing to drop: left as it is
    assert (tmp_path / "metrics.jsonl").stat().st_mtime_ns == before
    metrics.MetricsWriter(tmp_path, tensorboard=False, resume_step=0).close()  # restarted from scratch
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_a_bad_line_inside_metrics_is_named_not_skipped(tmp_path):
    """Only a torn last line is a crash's doing: a line in the middle that is not a JSON object stops reading
    and resuming with one message naming the file and line; the file is left as it is."""
    path = tmp_path / "metrics.jsonl"
    damaged = '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": \n{"step": 3, "loss": 1.0}\n'
    path.write_text(damaged)
    with pytest.raises(jsonl.JsonlError, match=r"metrics.jsonl:2: not a JSON line"):
        metrics.read_jsonl(path)
    with pytest.raises(jsonl.JsonlError, match=r"metrics.jsonl:2: not a JSON line"):
        metrics.MetricsWriter(tmp_path, tensorboard=False, resume_step=1)
    assert path.read_text() == damaged


@pytest.mark.slow
def test_train_cli_on_a_damaged_metrics_file_is_one_line_exit_2(tmp_path):
    import os
    import pathlib
    import subprocess
    import sys

    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n[1, 2]\n{"step": 2}\n')
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    r = subprocess.run([sys.executable, "-m", "cogito_jax.train", "--config", "configs/tiny.py",
                        "--config.data.num_train=16", "--config.data.num_heldout=0", "--config.train.steps=2",
                        "--workdir", str(tmp_path)], cwd=pathlib.Path(__file__).resolve().parents[1], env=env,
                       capture_output=True, text=True, timeout=600)
    lines = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1 and "metrics.jsonl:2: a row must be a JSON object, got list" in lines[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr

"""launch/local.sh joins N processes into one JAX job (contract 9)."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(n, args, tmp_path, timeout=180):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(COGITO_LOG_DIR=str(tmp_path / "logs"), JAX_PLATFORMS="cpu")
    return subprocess.run(["bash", str(REPO / "launch/local.sh"), str(n), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_processes_reduce_over_one_mesh(tmp_path):
    r = _run(2, [sys.executable, "tests/scripts/mp_allreduce.py"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    outs = []
    for i in range(2):
        lines = (tmp_path / "logs" / f"process_{i}.log").read_text().splitlines()
        outs.append(json.loads(next(ln for ln in lines if ln.startswith("{"))))
    expected = float(sum(v * v for v in range(16)))
    assert [o["process"] for o in outs] == [0, 1]
    assert all(o["processes"] == 2 and o["devices"] == 8 and o["total"] == expected for o in outs)


def test_usage_error():
    r = subprocess.run(["bash", str(REPO / "launch/local.sh"), "x", "true"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage: launch/local.sh N CMD" in r.stderr


def test_failure_propagates(tmp_path):
    r = _run(2, ["bash", "-c", 'exit $((COGITO_PROCESS_ID + 3))'], tmp_path, timeout=60)
    assert r.returncode in (3, 4)


@pytest.mark.slow
def test_an_error_in_one_process_ends_the_job(tmp_path):
    """Process 1 raises while process 0 waits for it in a collective: the job ends with the error in process 1's
    log at once, not when JAX's heartbeat timeout (100 s) or shutdown barrier (300 s) gives up."""
    start = time.monotonic()
    r = _run(2, [sys.executable, "tests/scripts/mp_one_fails.py"], tmp_path, timeout=240)
    took = time.monotonic() - start
    assert r.returncode != 0
    assert "ValueError: process 1 fails on purpose" in (tmp_path / "logs" / "process_1.log").read_text()
    assert "process 1 exited with status 1; stopping the others" in r.stderr
    assert took < 60, f"the job took {took:.0f} s to end"

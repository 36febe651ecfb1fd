"""A missing prerequisite skips a test on a developer's machine and fails it under CI=1 (`.ci/run` sets it)."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PROBE = '''
from tests.prereq import require, require_module

def test_needs_a_package():
    require([], "the package is not installed")

def test_needs_a_module():
    require_module("no_such_module_here")

def test_has_what_it_needs():
    require(["x"], "never shown")
'''


@pytest.mark.parametrize("ci, outcome", [("", "1 passed, 2 skipped"), ("1", "2 failed, 1 passed")])
def test_missing_prerequisite_skips_or_fails_under_ci(tmp_path, ci, outcome):
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci else {})
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-q", "-p", "no:cacheprovider",
                        "--rootdir", str(tmp_path), str(probe)], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
    assert outcome in r.stdout, r.stdout + r.stderr
    if ci:
        assert "missing prerequisite (CI=1 requires it): the package is not installed" in r.stdout

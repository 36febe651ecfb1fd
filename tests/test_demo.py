"""The demo's smoke version through its real CLI (contract 8): every stage runs, the report is complete."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_quick_writes_report(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    r = subprocess.run([sys.executable, "-m", "cogito_jax.demo", "--workdir", str(tmp_path), "--quick"], cwd=REPO,
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert 0 < report["chance"] < 1
    assert [s["name"] for s in report["stages"]] == ["sft", "distill_1"]
    assert all(s["n"] == 40 and 0.0 <= s["accuracy"] <= 1.0 for s in report["stages"])
    (gain,) = report["gain"]
    assert gain["stage"] == "distill_1" and gain["se"] >= 0  # 0 when both stages score 0% or 100%
    assert gain["delta"] == report["stages"][1]["accuracy"] - report["stages"][0]["accuracy"]
    assert 0 < report["peak_rss_gib"] < 6
    rounds = json.loads((tmp_path / "rounds.json").read_text())
    assert rounds["done"] == ["train_0", "eval_0", "sample_1", "select_1", "train_1", "eval_1"]
    assert rounds["rounds"]["1"]["prompts"] == 48  # every pool question was answered and audited
    assert (tmp_path / "round_1" / "decisions.jsonl").exists()
    for png in ("accuracy.png", "training.png"):
        assert (tmp_path / png).stat().st_size > 5000
    assert "| sft |" in (tmp_path / "report.md").read_text()
    # Re-running finds every stage done and does no work.
    r2 = subprocess.run([sys.executable, "-m", "cogito_jax.demo", "--workdir", str(tmp_path), "--quick"], cwd=REPO,
                        capture_output=True, text=True, env=env, timeout=300)
    assert r2.returncode == 0 and "decode + filter" not in r2.stderr
    assert json.loads((tmp_path / "report.json").read_text())["stages"] == report["stages"]

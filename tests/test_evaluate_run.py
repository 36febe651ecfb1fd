"""`evaluate run` end to end: a tiny trained model answers an MMAR-format set of synthetic audio."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import soundfile as sf

from cogito_jax.data import synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN = ["--config.data.num_train=32", "--config.data.num_heldout=0", "--config.train.steps=4",
         "--config.checkpoint.async_save=False"]


@pytest.mark.slow
def test_evaluate_run_on_synthetic_mmar(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "cogito_jax.train", "--config", "configs/tiny.py", *TRAIN,
                        "--workdir", str(run)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    bench = tmp_path / "mmar"
    (bench / "audio").mkdir(parents=True)
    metas = []
    for i in range(12):
        it = synthetic.make_item(i, seed=5, split="heldout")
        rid = f"mmar{i:03d}"
        if i != 11:  # the last item's audio is missing
            sf.write(bench / "audio" / f"{rid}.wav", it["audio"], 16000)
        metas.append({"id": rid, "audio_path": f"./audio/{rid}.wav", "question": it["question"],
                      "choices": it["choices"], "answer": it["answer"], "modality": it["modality"],
                      "category": it["category"], "sub-category": it["sub_category"], "language": "en",
                      "source": "synthetic", "url": "", "timestamp": "", "thinking": it["thinking"], "cue": [],
                      "rubric": []})
    (bench / "MMAR-meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metas))
    args = [sys.executable, "-m", "cogito_jax.evaluate", "run", "--benchmark", "mmar", "--meta",
            str(bench / "MMAR-meta.jsonl"), "--out", str(tmp_path / "eval"), "--workdir", str(run), "--config",
            "configs/tiny.py", "--override", "data.num_train=32", "--override", "data.num_heldout=0",
            "--system", "default", "--max-new-tokens", "16", "--batch-size", "4"]
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text())
    assert scores["overall"]["total"] == 12 and scores["missing"]["total"] == 1
    assert [m["id"] for m in scores["missing_audio"]] == ["mmar011"]
    preds = [json.loads(x) for x in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 11 and all(set(p) == {"id", "thinking_prediction", "answer_prediction"} for p in preds)
    official = [json.loads(x) for x in (tmp_path / "eval" / "official.jsonl").read_text().splitlines()]
    assert len(official) == 12 and all("answer_prediction" in o and "rubric" in o for o in official)
    assert (tmp_path / "eval" / "report" / "report.md").exists()
    # A second run reuses the samples (resumable): no new generation.
    before = (tmp_path / "eval" / "samples.jsonl").read_text()
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and (tmp_path / "eval" / "samples.jsonl").read_text() == before

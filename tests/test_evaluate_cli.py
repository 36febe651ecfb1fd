"""`python -m cogito_jax.evaluate` through a subprocess: score files, the official JSONL, reports, bad input."""

import json
import os
import subprocess
import sys

import pytest

from cogito_jax import evaluate
from tests.test_score import make_mmar, ref_correct, ref_tally

MODALITIES = ["sound", "music", "speech", "mix-sound-music", "mix-sound-speech", "mix-music-speech",
              "mix-sound-music-speech"]
LAYERS = ["Signal Layer", "Perception Layer", "Semantic Layer", "Cultural Layer"]


def cli(*args, cwd=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "cogito_jax.evaluate", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=env)


def official_loop(path) -> tuple[float, int, dict]:
    """What MMAR's code/evaluation.py computes on a JSONL file: items without the key are skipped."""
    data = [json.loads(line.strip()) for line in open(path)]
    per_mod = {m: [0, 0] for m in MODALITIES}
    per_cat = {c: [0, 0] for c in LAYERS}
    correct = total = 0
    for rec in data:
        if "answer_prediction" not in rec:
            continue
        ok = ref_correct(rec["answer_prediction"], rec["answer"], rec["choices"])
        correct += ok
        total += 1
        per_mod[rec["modality"]][0] += ok
        per_mod[rec["modality"]][1] += 1
        per_cat[rec["category"]][0] += ok
        per_cat[rec["category"]][1] += 1
    return correct / total * 100, total, {"modality": per_mod, "category": per_cat}


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    meta, preds = make_mmar(240, seed=11)
    (d / "MMAR-meta.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in meta))
    lines = [{"id": k, "answer_prediction": v, "thinking_prediction": f"thinking about {k}"} for k, v in preds.items()]
    (d / "pred.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    res = cli("score", "--benchmark", "mmar", "--meta", d / "MMAR-meta.jsonl", "--predictions", d / "pred.jsonl",
              "--out", d / "out" / "OUT.json", "--resamples", 200)
    assert res.returncode == 0, res.stderr
    return d, meta, preds, res


def test_score_file_matches_reference(scored):
    d, meta, preds, res = scored
    out = json.loads((d / "out" / "OUT.json").read_text())
    ref = ref_tally(meta, preds)
    assert out["benchmark"] == "mmar"
    for key in ("overall", "modality", "category", "sub-category"):
        assert out[key] == ref[key], key
    for g in [out["overall"], *out["modality"].values(), *out["category"].values()]:
        assert set(g) == {"correct", "total", "accuracy"} and 0.0 <= g["accuracy"] <= 1.0
    missing_ids = [r["id"] for r in meta if r["id"] not in preds]
    assert len(missing_ids) > 5
    assert out["missing"]["total"] == len(missing_ids) and out["missing"]["ids"] == missing_ids
    assert out["overall"]["total"] == len(meta)
    lo, hi = out["ci"]["overall"]
    assert lo < out["overall"]["accuracy"] < hi
    items = [json.loads(x) for x in (d / "out" / "OUT.items.jsonl").read_text().splitlines()]
    assert [(i["id"], i["missing"]) for i in items] == [(r["id"], r["id"] not in preds) for r in meta]
    assert f"accuracy {100 * ref['overall']['accuracy']:.2f}%" in res.stdout


def test_official_jsonl_gives_the_same_accuracy(scored):
    d, meta, preds, _ = scored
    out = json.loads((d / "out" / "OUT.json").read_text())
    official = d / "out" / "OUT.official.jsonl"
    records = [json.loads(x) for x in official.read_text().splitlines()]
    for m, r in zip(meta, records, strict=True):
        assert {k: r[k] for k in m} == m
        assert r["answer_prediction"] == preds.get(m["id"], "")
        assert r["thinking_prediction"] == (f"thinking about {m['id']}" if m["id"] in preds else "")
    acc, total, per = official_loop(official)
    assert total == len(meta)
    assert acc == pytest.approx(100 * out["overall"]["accuracy"], abs=1e-12)
    for key in ("modality", "category"):
        for name, (c, t) in per[key].items():
            g = out[key].get(name, {"correct": 0, "total": 0})
            assert (c, t) == (g["correct"], g["total"])


def test_two_scores_in_one_folder_keep_their_own_official_files(scored, tmp_path):
    d, meta, preds, _ = scored
    half = dict(list(preds.items())[::2])
    (tmp_path / "half.jsonl").write_text("".join(json.dumps({"id": k, "answer_prediction": v}) + "\n"
                                                 for k, v in half.items()))
    for name, pred in (("A", d / "pred.jsonl"), ("B", tmp_path / "half.jsonl")):
        assert evaluate.main(["score", "--benchmark", "mmar", "--meta", str(d / "MMAR-meta.jsonl"), "--predictions",
                              str(pred), "--out", str(tmp_path / f"{name}.json"), "--resamples", "10"]) == 0
    for name, expected in (("A", preds), ("B", half)):
        records = [json.loads(x) for x in (tmp_path / f"{name}.official.jsonl").read_text().splitlines()]
        assert [r["answer_prediction"] for r in records] == [expected.get(m["id"], "") for m in meta]
        acc, _, _ = official_loop(tmp_path / f"{name}.official.jsonl")
        out = json.loads((tmp_path / f"{name}.json").read_text())
        assert acc == pytest.approx(100 * out["overall"]["accuracy"], abs=1e-12)
    assert not (tmp_path / "official.jsonl").exists()


def test_mmsu_official_file_scored_as_its_script_does(tmp_path):
    from tests.test_score import make_mmsu, ref_mmsu

    records = make_mmsu(120, seed=2)
    path = tmp_path / "mmsu_with_responses.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    res = cli("score", "--benchmark", "mmsu", "--meta", path, "--predictions", path, "--out", tmp_path / "mmsu.json",
              "--resamples", 10)
    assert res.returncode == 0, res.stderr
    out = json.loads((tmp_path / "mmsu.json").read_text())
    _, (correct, total), table = ref_mmsu(records)
    assert (out["answered"]["correct"], out["answered"]["total"]) == (correct, total)
    assert {n: [g["correct"], g["total"]] for n, g in out["answered_groups"]["category/sub-category"].items()} == table
    assert out["overall"]["total"] == len(records) and out["overall"]["correct"] == correct
    assert f"official script {100 * correct / total:.2f}% ({correct}/{total})" in res.stdout
    assert not (tmp_path / "mmsu.official.jsonl").exists()


def test_report_with_comparison(scored, tmp_path):
    d, meta, preds, _ = scored
    other = {k: v for k, v in list(preds.items())[::2]}
    (tmp_path / "pred2.jsonl").write_text("".join(json.dumps({"id": k, "answer_prediction": v}) + "\n"
                                                  for k, v in other.items()))
    assert evaluate.main(["score", "--benchmark", "mmar", "--meta", str(d / "MMAR-meta.jsonl"), "--predictions",
                          str(tmp_path / "pred2.jsonl"), "--out", str(tmp_path / "B.json"), "--resamples", "100"]) == 0
    res = cli("report", "--scores", d / "out" / "OUT.json", "--compare", tmp_path / "B.json", "--names", "run-a,run-b",
              "--out", tmp_path / "rep")
    assert res.returncode == 0, res.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    a = json.loads((d / "out" / "OUT.json").read_text())
    b = json.loads((tmp_path / "B.json").read_text())
    assert f"Overall accuracy **{100 * a['overall']['accuracy']:.1f} %**" in md
    assert f"{100 * (a['overall']['accuracy'] - b['overall']['accuracy']):+.1f} points" in md
    for section in ("## By modality", "## By category", "## By sub-category", "## Published results"):
        assert section in md
    assert "Audio-Cogito" in md and "arXiv 2604.12527" in md
    layer_rows = [line for line in md.splitlines() if line.startswith("| Signal Layer")]
    g = a["category"]["Signal Layer"]
    assert layer_rows and layer_rows[0].startswith(f"| Signal Layer | {g['total']} | {g['correct']} |")
    for png in ("accuracy_modality.png", "accuracy_category.png", "accuracy_sub-category.png", "compare.png"):
        data = (tmp_path / "rep" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png


def test_bad_input_exits_2_with_one_line(scored, tmp_path):
    d, meta, _, _ = scored
    (tmp_path / "bad.jsonl").write_text('{"id": "item0000", "answer_prediction": "x"}\n{"id": "item0001", \n')
    (tmp_path / "stranger.jsonl").write_text('{"id": "nobody", "answer_prediction": "x"}\n')
    base = ["--meta", d / "MMAR-meta.jsonl", "--out", tmp_path / "o.json"]
    cases = [
        (["score", "--benchmark", "mmar", "--meta", tmp_path / "none.jsonl", "--predictions", d / "pred.jsonl",
          "--out", tmp_path / "o.json"], "none.jsonl: no such file"),
        (["score", "--benchmark", "mmar", *base, "--predictions", tmp_path / "bad.jsonl"],
         "bad.jsonl:2: malformed JSON line"),
        (["score", "--benchmark", "mmarr", *base, "--predictions", d / "pred.jsonl"],
         "unknown benchmark 'mmarr'; known: mmar, mmau, mmsu"),
        (["score", "--benchmark", "mmar", *base, "--predictions", tmp_path / "stranger.jsonl"],
         "1 prediction id(s) not in the benchmark, first 'nobody'"),
        (["score", "--benchmark", "mmar", "--meta", d / "MMAR-meta.jsonl"], "required"),
        (["run", "--benchmark", "mmar", *base], "give exactly one of --checkpoint HF_DIR or --workdir RUN"),
    ]
    for args, fragment in cases:
        res = cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0] and lines[0].startswith("cogito_jax.evaluate: error:"), (
            args, res.stderr)
    assert not (tmp_path / "o.json").exists()


def test_help_works():
    res = cli("--help")
    assert res.returncode == 0 and "score" in res.stdout and "report" in res.stdout and "run" in res.stdout

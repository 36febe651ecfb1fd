"""Bad input to every `python -m cogito_jax.evaluate` subcommand: exit 2, one line naming the bad value, no files."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from cogito_jax import evaluate
from tests.test_benchmarks import MMAR, MMSU

REPO = pathlib.Path(__file__).resolve().parents[1]


def cli(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "cogito_jax.evaluate", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=env)


def tree(root: pathlib.Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("redteam")
    (d / "meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MMAR))
    (d / "pred.jsonl").write_text(json.dumps({"id": "a1", "answer_prediction": "two"}) + "\n")
    (d / "other_key.jsonl").write_text(json.dumps({"id": "a1", "prediction": "two"}) + "\n")
    (d / "stranger.jsonl").write_text(json.dumps({"id": "zz", "answer_prediction": "two"}) + "\n")
    (d / "rubric.jsonl").write_text("".join(json.dumps({**r, "rubric": MMAR[0]["rubric"]}) + "\n" for r in MMAR))
    (d / "no_rubric.jsonl").write_text("".join(json.dumps({**r, "rubric": []}) + "\n" for r in MMAR))
    (d / "mmsu_letters.jsonl").write_text(json.dumps({**MMSU[0], "answer_gt": "B"}) + "\n")
    (d / "not_scores.json").write_text(json.dumps({"overall": 0.5}))
    (d / "scores.json").write_text(json.dumps({"overall": {"correct": 1, "total": 2, "accuracy": 0.5}}))
    (d / "a_file").write_text("x")
    (d / "a_folder").mkdir()
    (d / "hf").mkdir()  # a folder without config.json
    (d / "run").mkdir()  # a workdir without checkpoints/
    return d


SCORE = ["score", "--benchmark", "mmar", "--meta", "{d}/meta.jsonl", "--predictions", "{d}/pred.jsonl"]
RUN = ["run", "--meta", "{d}/meta.jsonl", "--checkpoint", "{d}/hf"]
RUBRICS = ["rubrics", "--meta", "{d}/rubric.jsonl", "--predictions", "{d}/pred.jsonl", "--judge-url", "http://127.0.0.1:9"]

CASES = [
    (SCORE + ["--out", "{d}/o.json", "--resamples", "0"], "--resamples: expected an integer >= 1, got '0'"),
    (SCORE + ["--out", "{d}/o.json", "--resamples", "-5"], "--resamples: expected an integer >= 1, got '-5'"),
    (SCORE + ["--out", "{d}/o.json", "--resamples", "many"], "--resamples: expected an integer >= 1, got 'many'"),
    (SCORE + ["--out", "{d}/o.json", "--seed", "-1"], "--seed: expected an integer >= 0, got '-1'"),
    (SCORE + ["--out", "{d}/a_folder"], "--out {d}/a_folder is a folder; give the path of a file"),
    (SCORE + ["--out", "{d}/a_file/o.json"], "--out {d}/a_file/o.json: {d}/a_file is a file, not a folder"),
    (SCORE + ["--out", "{d}/o.json", "--official", "{d}/a_folder"], "--official {d}/a_folder is a folder"),
    (["score", "--benchmark", "mmau", "--meta", "{d}/meta.jsonl", "--predictions", "{d}/pred.jsonl", "--out",
      "{d}/o.json", "--official", "{d}/x.jsonl"], "--official is written for --benchmark mmar only, not 'mmau'"),
    (SCORE + ["--out", "{d}/o.json", "--audio-dir", "{d}/a_file"], "--audio-dir {d}/a_file is not a folder"),
    (["score", "--benchmark", "mmar", "--meta", "{d}/meta.jsonl", "--predictions", "{d}/other_key.jsonl", "--out",
      "{d}/o.json"], "no prediction has any of answer_prediction, model_output (the first has id, prediction)"),
    (["score", "--benchmark", "mmsu", "--meta", "{d}/mmsu_letters.jsonl", "--predictions", "{d}/pred.jsonl",
      "--out", "{d}/o.json"], "'answer_gt' must be the text of one of choice_a, choice_b, choice_c, choice_d"),
    (["report", "--scores", "{d}/scores.json", "--out", "{d}/a_file"], "--out {d}/a_file is a file; give a folder"),
    (["report", "--scores", "{d}/not_scores.json", "--out", "{d}/rep"],
     "not_scores.json: not a score file (no 'overall' with correct, total, accuracy)"),
    (["report", "--scores", "{d}/a_folder", "--out", "{d}/rep"], "{d}/a_folder is a folder; give a score file"),
    (["report", "--scores", "{d}/scores.json", "--names", "a,", "--out", "{d}/rep"],
     "--names must be two non-empty comma-separated names, got 'a,'"),
    (RUN + ["--out", "{d}/ev", "--num-samples", "0"], "--num-samples/--num_samples: expected an integer >= 1, got '0'"),
    (RUN + ["--out", "{d}/ev", "--batch-size", "0"], "--batch-size/--batch_size: expected an integer >= 1, got '0'"),
    (RUN + ["--out", "{d}/ev", "--max-new-tokens", "-1"],
     "--max-new-tokens/--max_new_tokens: expected an integer >= 1, got '-1'"),
    (RUN + ["--out", "{d}/ev", "--temperature", "-0.5"], "--temperature: expected a number >= 0, got '-0.5'"),
    (RUN + ["--out", "{d}/ev", "--temperature", "nan"], "--temperature: expected a number >= 0, got 'nan'"),
    (RUN + ["--out", "{d}/a_file"], "--out {d}/a_file is a file; give a folder"),
    (RUN + ["--out", "{d}/ev"], "--checkpoint {d}/hf has no config.json; give an HF checkpoint folder"),
    (["run", "--meta", "{d}/meta.jsonl", "--workdir", "{d}/run", "--config", "configs/tiny.py", "--out", "{d}/ev"],
     "--workdir {d}/run has no checkpoints/ folder"),
    (RUBRICS + ["--out", "{d}/r.json", "--timeout", "0"], "--timeout: expected a number > 0, got '0'"),
    (RUBRICS + ["--out", "{d}/r.json", "--retries", "-1"], "--retries: expected an integer >= 0, got '-1'"),
    (RUBRICS + ["--out", "{d}/r.json", "--rate", "-2"], "--rate: expected a number >= 0, got '-2'"),
    (RUBRICS + ["--out", "{d}/a_folder"], "--out {d}/a_folder is a folder; give the path of a file"),
    (["rubrics", "--meta", "{d}/no_rubric.jsonl", "--predictions", "{d}/pred.jsonl", "--judge-url", "http://x",
      "--out", "{d}/r.json"], "no_rubric.jsonl: record 'a1' needs 'rubric', a non-empty list of rubric points"),
    (["rubrics", "--meta", "{d}/rubric.jsonl", "--predictions", "{d}/stranger.jsonl", "--judge-url", "http://x",
      "--out", "{d}/r.json"], "1 prediction id(s) not in the benchmark, first 'zz'"),
    (["rubrics", "--meta", "{d}/rubric.jsonl", "--predictions", "{d}/pred.jsonl", "--judge-checkpoint", "{d}/hf",
      "--out", "{d}/r.json"], "--judge-checkpoint {d}/hf has no config.json"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args,fragment", CASES, ids=[f"{c[0][0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_value_is_one_line_and_writes_nothing(files, args, fragment):
    before = tree(files)
    res = cli(*(a.format(d=files) for a in args))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("cogito_jax.evaluate: error:"), res.stderr
    assert fragment.format(d=files) in lines[0], lines[0]
    assert tree(files) == before


def test_unwritable_out_is_one_line(files, monkeypatch, capsys):
    locked = files / "locked"
    real_access = os.access
    monkeypatch.setattr(evaluate.os, "access", lambda p, mode: pathlib.Path(p) != locked and real_access(p, mode))
    locked.mkdir()
    before = tree(files)
    for argv, fragment in [(["score", "--benchmark", "mmar", "--meta", str(files / "meta.jsonl"), "--predictions",
                             str(files / "pred.jsonl"), "--out", str(locked / "sub" / "o.json")],
                            f"--out {locked / 'sub' / 'o.json'}: {locked} is not writable"),
                           (["report", "--scores", str(files / "scores.json"), "--out", str(locked)],
                            f"--out {locked} is not writable")]:
        with pytest.raises(SystemExit) as e:
            evaluate.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and fragment in err[0], err
    assert tree(files) == before
    locked.rmdir()

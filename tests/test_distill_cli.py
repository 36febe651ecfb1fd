"""`python -m cogito_jax.distill`: a one-round run on the tiny config and synthetic data is SIGKILLed in
round 1's sampling, re-run with the same command, and finishes without redoing a finished stage; round 1
lifts held-out accuracy by more than twice the gain's standard error (what a later round trains on is checked in
tests/test_distill_select.py). Bad input: one line, exit 2."""

import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from cogito_jax import jsonl

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/distill_tiny.py"
STAGES = ["train_0", "eval_0", "sample_1", "hint_1", "select_1", "train_1", "eval_1"]


def _env(cache=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user's run
    if cache is not None:  # stages and the restarted process reuse each other's compiled programs
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    return env


def _start(workdir, log):
    return subprocess.Popen([sys.executable, "-m", "cogito_jax.distill", "--config", CONFIG, "--workdir", str(workdir),
                             "--config.distill.rounds=1"],
                            cwd=REPO, env=_env(workdir.parent / "jax_cache"), stdout=log, stderr=subprocess.STDOUT,
                            text=True)


def _state(workdir):
    try:
        return json.loads((workdir / "rounds.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _lines(path):
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.slow
def test_a_round_killed_in_its_sampling_resumes_and_gains(tmp_path):
    w = tmp_path / "run"
    samples = w / "round_1" / "samples_order0.jsonl"
    t0 = time.time()
    with open(tmp_path / "first.log", "w") as log:
        p = _start(w, log)
        while True:  # until round 1's sampling has written its first batch
            st = _state(w)
            if st and "sample_1" in st["stages"] and (_lines(samples) or "sample_1" in st["done"]):
                break
            assert p.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() - t0 < 1500, "round 1's sampling never started"
            time.sleep(0.1)
        p.send_signal(signal.SIGKILL)
        p.wait()
    killed = _state(w)
    at_kill = samples.read_text() if samples.exists() else ""
    interrupted = next(s for s in STAGES if s not in killed["done"])
    assert interrupted in killed["stages"] and "finished" not in killed["stages"][interrupted]
    assert killed["done"] == STAGES[:STAGES.index(interrupted)]
    assert interrupted.endswith("_1")

    with open(tmp_path / "second.log", "w") as log:
        p = _start(w, log)
        assert p.wait(timeout=1500) == 0, (tmp_path / "second.log").read_text()[-3000:]
    out = (tmp_path / "second.log").read_text()
    seconds = time.time() - t0
    final = _state(w)
    assert final["done"] == STAGES
    for stage in killed["done"]:  # finished before the kill: never started again
        assert final["stages"][stage] == killed["stages"][stage], stage
        assert final["stages"][stage]["attempts"] == 1
    assert final["stages"][interrupted]["attempts"] == 2
    assert final["stages"][interrupted]["started"] > killed["stages"][interrupted]["started"]
    for stage in STAGES[STAGES.index(interrupted) + 1:]:
        assert final["stages"][stage]["attempts"] == 1
    # The sampling stage resumed: the samples finished before the kill kept their lines, the rest were added.
    lines = _lines(samples)
    assert len(lines) == 2 * final["rounds"]["1"]["prompts"]  # 2 samples per pool prompt in this choice order
    assert len({(r["id"], r["sample"]) for r in map(json.loads, lines)}) == len(lines)  # none written twice
    if interrupted == "sample_1":  # every whole line written before the kill (it can tear the last) is kept as it was
        assert jsonl.parse(at_kill, str(samples))
        assert samples.read_text().startswith(at_kill[:at_kill.rfind("\n") + 1])

    r0, r1 = final["rounds"]["0"], final["rounds"]["1"]
    assert 500 <= r0["n"] == r1["n"] <= 512
    assert 120 <= r1["prompts"] <= 128 and r1["samples"] == 4 * r1["prompts"] and r1["accepted_traces"] > 0
    assert sum(r1["status"].values()) == r1["prompts"]
    assert r1["hint_prompts"] == r1["status"].get("rationalised", 0) + r1["status"].get("hint_failed", 0) > 0
    # Round 1 trains on the seed data plus the traces it accepted.
    assert 190 <= r1["train_examples"] - r1["accepted_traces"] - r1["rationalised_traces"] <= 200
    p0, p1, n0, n1 = r0["accuracy"], r1["accuracy"], r0["n"], r1["n"]
    se = math.sqrt(p0 * (1 - p0) / n0 + p1 * (1 - p1) / n1)
    assert p1 - p0 > 2 * se, f"round 1 {p1:.3f} vs SFT {p0:.3f}: gain {p1 - p0:.3f} <= 2 SE = {2 * se:.3f}"
    assert f"{100 * p1:.1f}%" in out and "stages done: " + ", ".join(STAGES) in out
    assert (w / "rounds.png").stat().st_size > 5000
    print(f"sft {p0:.3f}, round 1 {p1:.3f} (n={n0}), 2 SE {2 * se:.3f}, "
          f"killed in {interrupted}, {seconds:.0f} s")


@pytest.mark.parametrize("args, message", [
    (["--config.distill.all_wrong=retry"], "error: distill.all_wrong='retry' must be one of drop, hint"),
    (["--config.distill.rounds=-1"], "error: distill.rounds=-1 must be >= 0"),
    (["--config.distill.hint=1"], "unknown config key 'distill.hint'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "cogito_jax.distill", "--config", CONFIG, "--workdir", str(tmp_path),
                        *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "rounds.json").exists()


def test_an_rl_step_larger_than_the_pool_stops_before_any_stage(tmp_path):
    """The pool's size is known once it is built: the error comes then (after the data logs), before training."""
    r = subprocess.run([sys.executable, "-m", "cogito_jax.distill", "--config", CONFIG, "--workdir", str(tmp_path),
                        "--config.distill.rl_steps=1", "--config.rl.prompts_per_step=200",
                        "--config.distill.synthetic_pool=16", "--config.data.num_train=8",
                        "--config.data.num_heldout=8"], cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].endswith("error: rl.prompts_per_step=200 must be <= the 16 prompts of "
                                                      "the pool")
    assert not (tmp_path / "rounds.json").exists() and not (tmp_path / "sft" / "checkpoints").exists()


def test_missing_workdir_is_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "cogito_jax.distill", "--config", CONFIG], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().endswith("error: --workdir is required"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("content, why", [
    ("", "JSONDecodeError: Expecting value"),
    ('{"done": ["train_0", "eval_0"], "rounds": {"0": {"accura', "JSONDecodeError: Unterminated string"),
    ("\xff\xfe garbage", "JSONDecodeError"),
    ("[]", "expected an object with a 'done' list"),
    ('{"done": "train_0", "rounds": {}}', "expected an object with a 'done' list"),
    ('{"rounds": {}}', "expected an object with a 'done' list"),
    ('{"done": [1], "rounds": {}}', "expected an object with a 'done' list"),
    ('{"done": [], "rounds": {}, "stages": []}', "expected an object with a 'done' list"),
])
def test_a_damaged_rounds_json_is_a_one_line_error(tmp_path, content, why):
    from cogito_jax.distill.rounds import State
    from cogito_jax.errors import ConfigError

    path = tmp_path / "rounds.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=rf"^{path} is not a readable stage record \(.*; restore it, or delete it "
                                          "to run every stage again$") as e:
        State(path)
    assert why in str(e.value) and "\n" not in str(e.value)
    assert path.read_text() == content  # left as it was
    good = '{"done": ["train_0"], "rounds": {}, "stages": {"train_0": {"attempts": 1}}}'
    path.write_text(good)
    assert State(path).done("train_0")

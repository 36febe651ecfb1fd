"""The RL loop (`cogito_jax.rl.loop`, `python -m cogito_jax.rl`): the training rows built from the engine's rollouts
score each response token with the log-prob the engine stored, audio included; a run that crashes after a checkpoint
and is started again logs exactly the metrics of an uninterrupted run; bad input is one line and exit 2."""

import json
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import time
import zlib

import jax
import numpy as np
import pytest
from flax import nnx

from cogito_jax import cli
from cogito_jax.data import chat, tokenizer as toklib
from cogito_jax.models import registry
from cogito_jax.rl import grpo, loop
from cogito_jax.sampling import driver
from cogito_jax.train import trained
from cogito_jax.train.step import lm_logits

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/distill_tiny.py:smoke"
CHOICES = ["two beeps", "three beeps", "four beeps", "a bird"]
RL = ["rl.temperature=0.7", "rl.prompts_per_step=4", "rl.num_samples=4", "rl.minibatches=2", "rl.max_new_tokens=12",
      "rl.sample_batch_size=4", "rl.kl_coef=0.05", "rl.steps=3", "rl.save_every=1"]


def hash_reward(text, item):
    """The tiny random model never answers right: a reward that varies with the text, to test the loop's mechanics."""
    return float(zlib.crc32(text.encode()) % 3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tokenizer, the tiny audio model's config, and a pool of 6 questions with log-mel audio of 9..14 frames;
    the folder where the tokenizer and the pool are saved for tests/scripts/rl_run.py."""
    out = tmp_path_factory.mktemp("world")
    text = chat.chat_format("qwen2_audio").prompt(chat.mcq_text("How many beeps?", CHOICES)) + " ".join(CHOICES)
    toklib.train_bpe([text, "<think>\nI count.\n</think>\n\nthree beeps"] * 10, vocab_size=300,
                     out_dir=out / "tokenizer")
    tok = toklib.load(out / "tokenizer")
    mcfg = trained.model_config(cli.load_config(CONFIG), tok)
    rng = np.random.default_rng(0)
    pool = [{"id": f"q{i}", "question": "How many beeps?", "choices": CHOICES,
             "answer": CHOICES[i % 4], "mel": rng.normal(size=(9 + i, mcfg.audio.num_mel_bins)).astype(np.float16)}
            for i in range(6)]
    (out / "pool.pkl").write_bytes(pickle.dumps(pool))
    return tok, mcfg, pool, out


@pytest.fixture
def compile_cache(tmp_path):
    """A test's runs reuse each other's compiled programs (JAX's persistent cache, as across restarts of a real
    run); the process's settings are restored afterwards."""
    from jax._src import compilation_cache

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    before = {k: getattr(jax.config, k) for k in keys}
    for k, v in zip(keys, (str(tmp_path / "jax_cache"), 0.0, 0), strict=True):
        jax.config.update(k, v)
    compilation_cache.reset_cache()
    yield
    for k, v in before.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


def check_training_rows(world, rollouts, model, cfg):
    """Each response token's log-prob recomputed by a forward pass over the row `batch_arrays` builds (prompt with
    its audio, then the response) at the sampling temperature equals the one the continuous engine stored when it
    sampled it (T = 0.7)."""
    tok, mcfg, pool, _ = world
    dcfg = loop.driver_config(cfg, mcfg, 0)
    items = [loop.predict_lib.item_from_record(pool[i], i)
             for i in loop.step_prompts(len(pool), cfg.rl.prompts_per_step, 0, cfg.seed)]
    rows = driver.merge_outputs(rollouts, [it["id"] for it in items], 1, 4)
    assert [(r["id"], r["sample"]) for r in rows] == [(it["id"], s) for it in items for s in range(4)]
    prompts = [driver.prepare_prompt(it, tok, dcfg) for it in items]
    assert all(g["n_frames"] >= 9 for g in prompts)
    adv = np.arange(16, dtype=np.float32).reshape(4, 4)
    keep = np.array([True, False, True, False])
    examples = loop.example_rows(rows, prompts, adv, keep, 4)
    assert [e["advantage"] for e in examples] == [0, 1, 2, 3, 8, 9, 10, 11]
    seq_len = max(len(g["ids"]) for g in prompts) + dcfg.max_new_tokens
    batch = loop.batch_arrays(examples, 10, seq_len, tok.pad_token_id, mcfg.audio.num_mel_bins,
                              mcfg.audio.num_frames, "sequence")
    assert batch["input_features"].shape == (10, mcfg.audio.num_mel_bins, mcfg.audio.num_frames)
    assert batch["loss_mask"][8:].sum() == 0  # the two padding rows carry no loss
    lp = np.asarray(nnx.jit(lambda m, b: grpo.token_logprobs(lm_logits(m, b), b["targets"], 0.7))(model, batch))
    m = batch["loss_mask"] > 0
    assert m.sum() == sum(len(e["response"]) for e in examples) > 8
    err = np.abs(lp[m] - batch["old_logprobs"][m]).max()
    assert err <= 1e-5 * np.abs(batch["old_logprobs"][m]).max(), err
    np.testing.assert_allclose(batch["advantages"][m], np.repeat([0, 1, 2, 3, 8, 9, 10, 11],
                                                                 [len(e["response"]) for e in examples]))
    # sequence normalisation: every response weighs the same in the token mean, whatever its length
    np.testing.assert_allclose(batch["rl_weight"][:8].sum(1), np.full(8, m.sum() / 8), rtol=1e-6)
    assert batch["rl_weight"][8:].sum() == 0


def test_step_prompts_are_distinct_and_each_pass_a_new_order():
    for pool, per in ((6, 4), (10, 3), (8, 8)):
        steps = [loop.step_prompts(pool, per, k, 0) for k in range(6)]
        assert all(len(set(s)) == per and set(s) <= set(range(pool)) for s in steps), steps
        passes = pool // per
        for e in range(6 // passes):  # the steps of one pass never repeat a prompt
            seen = sum(steps[e * passes:(e + 1) * passes], [])
            assert len(set(seen)) == len(seen)
    assert loop.step_prompts(10, 3, 0, 0) != loop.step_prompts(10, 3, 3, 0)  # pass 2 is another permutation
    with pytest.raises(loop.ConfigError, match="rl.prompts_per_step=7 must be <= the 6 prompts of the pool"):
        loop.step_prompts(6, 7, 0, 0)


def test_dynamic_sampling_trains_the_first_informative_prompts():
    """rl.sample_prompts > rl.prompts_per_step: the step samples more prompts and the first prompts_per_step whose
    samples did not all score alike train; the pool must hold the sampled ones; fewer than prompts_per_step is
    refused."""
    cfg = cli.load_config(CONFIG, ["rl.prompts_per_step=2", "rl.sample_prompts=5"])
    rewards = np.array([[1, 1], [0, 1], [0, 0], [1, 0], [0, 1]], np.float32)
    _, kept = loop.group_advantages(rewards, loop.grpo_config(cfg.rl))
    np.testing.assert_array_equal(loop.first_kept(kept, cfg.rl.prompts_per_step), [False, True, False, True, False])
    assert loop.sampled_prompts(cfg.rl) == ("rl.sample_prompts", 5)
    assert len(loop.step_prompts(6, 5, 0, 0)) == 5
    with pytest.raises(loop.ConfigError, match="rl.sample_prompts=5 must be <= the 4 prompts of the pool"):
        loop.step_prompts(4, 5, 0, 0, "rl.sample_prompts")
    with pytest.raises(loop.ConfigError, match="rl.sample_prompts=1 must be 0"):
        cli.load_config(CONFIG, ["rl.prompts_per_step=2", "rl.sample_prompts=1"])


def test_update_rows_are_as_long_as_the_steps_longest_sample_rounded_up():
    examples = [{"prompt": [1] * 70, "response": [2] * 10}, {"prompt": [1] * 20, "response": [2] * 44}]
    assert loop.update_length(examples, 1000) == 128 and loop.update_length(examples[1:], 1000) == 64
    assert loop.update_length(examples, 100) == 100  # never longer than the prompt bucket + rl.max_new_tokens


def test_judge_reward_and_a_failed_judge_call_leaves_its_prompt_out(tmp_path):
    """The judge's verdict under the audit's rubric adds rl.reward_judge to an accepted sample; a sample without a
    thinking is not asked; a call that fails after the client's retries leaves its prompt out of the step (no
    reward, no advantage) and is counted, never scored."""
    from cogito_jax.judge import HttpJudge
    from tests.judge_stub import JudgeStub

    items = [{"id": f"q{i}", "question": "What barks?", "choices": ["a dog", "a cat"], "answer": "a dog",
              "thinking": "reference"} for i in range(3)]
    texts = ["<think>I hear barking: a dog.</think>a dog", "<think>It meows, a cat.</think>a cat",
             "<think>Barks again, so a dog.</think>a dog", "a dog"]  # the last has no thinking
    rows = [{"id": it["id"], "sample": s, "text": t, "n_tokens": 5, "finish_reason": "stop"}
            for it in items for s, t in enumerate(texts)]
    rows[8]["text"] = "<think>ECHO-FAIL barking, a dog.</think>a dog"  # q2's sample 0: the judge keeps failing

    def reply(messages):
        return '{"verdict": "ACCEPT", "reason": "none"}' if "barking" in messages[-1]["content"] else "REJECT"

    with JudgeStub(reply, {"ECHO-FAIL": ["500"] * 10}) as stub:
        judge = HttpJudge(stub.url, "stub", timeout_s=2, backoff_s=0.01, max_retries=2)
        out = tmp_path / "step.judge.jsonl"
        loop.judge_rows(judge, rows, {it["id"]: it for it in items}, out, max_tokens=64)
        prompts = ["Reference reasoning:\nreference" in r["messages"][-1]["content"] for r in stub.requests]
    got = {(v["id"], v["sample"]): v["status"] for v in map(json.loads, out.read_text().splitlines())}
    assert got == {("q0", 0): "accepted", ("q0", 1): "rejected", ("q0", 2): "rejected",
                   ("q1", 0): "accepted", ("q1", 1): "rejected", ("q1", 2): "rejected",
                   ("q2", 0): "judge_failed", ("q2", 1): "rejected", ("q2", 2): "rejected"}
    assert all(prompts)  # the record's reference reasoning is shown to the judge
    reward = loop.reward_fn(cli.load_config(CONFIG).rl)  # correct 1.0 + format 0.1
    scores = loop.score_rollouts(rows, items, reward, 4, got, 0.5)
    np.testing.assert_allclose(scores["reward"][0], [1.6, 0.1, 1.1, 1.0])
    assert np.isnan(scores["reward"][2, 0]) and scores["judge_failed"].sum() == 1
    np.testing.assert_array_equal(scores["judged"][:2], [[1, 0, 0, 0], [1, 0, 0, 0]])
    adv, keep = loop.group_advantages(scores["reward"], loop.grpo_config(cli.load_config(CONFIG).rl))
    np.testing.assert_array_equal(keep, [True, True, False])
    assert np.all(adv[2] == 0) and adv[0, 0] > adv[0, 2] > adv[0, 3] > adv[0, 1]


def _run(cfg, w, world):
    tok, mcfg, pool, _ = world
    return loop.run(cfg, w, model=registry.build(mcfg, 1), tokenizer=tok, model_cfg=mcfg, pool=pool)


def _metrics(w):
    rows = [json.loads(ln) for ln in (w / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_seconds") and k not in ("time", "wall_time")}
            for r in rows]


def _script(world, w, n=1, *, cache=None, overrides=()):
    """tests/scripts/rl_run.py in ``n`` processes (``launch/local.sh``), 8 CPU devices in all, as in this process."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if cache is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    cmd = [sys.executable, "tests/scripts/rl_run.py", str(world[3]), str(w), *overrides]
    if n > 1:
        env.pop("XLA_FLAGS", None)
        env["COGITO_LOG_DIR"] = str(w.parent / "logs")
        cmd = ["bash", "launch/local.sh", str(n), *cmd]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_rollout_rows_and_a_killed_run_resumes_with_the_metrics_of_an_uninterrupted_one(world, tmp_path,
                                                                                       monkeypatch, compile_cache):
    """The training rows of the first step's rollouts (`check_training_rows`); 3 RL steps (2 optimizer steps each,
    KL to the start) uninterrupted; the same run in a process SIGKILLed once step 2's checkpoint is written, then
    started again: the same metrics line for line and the same rollouts (step 3's sampled by a fresh engine, the
    uninterrupted run's by the engine whose weights were swapped twice)."""
    monkeypatch.setattr(loop, "reward_fn", lambda r: hash_reward)
    cfg = cli.load_config(CONFIG, RL)
    whole = _run(cfg, tmp_path / "whole", world)
    check_training_rows(world, tmp_path / "whole" / "rollouts" / "step_000000.jsonl", registry.build(world[1], 1), cfg)
    assert whole["step"] == 3 and not whole["preempted"]
    want = _metrics(tmp_path / "whole")
    assert [m["step"] for m in want] == [1, 2, 3]
    assert all(m["updates"] == 2 and np.isfinite(m["loss"]) and m["kl"] >= 0 for m in want), want
    assert want[1]["kl"] > 0  # the policy moved away from the start

    w = tmp_path / "killed"
    p = _script(world, w, cache=tmp_path / "jax_cache")
    t0 = time.time()
    while not (w / "checkpoints" / "2").is_dir():
        assert p.poll() is None, p.stdout.read()[-3000:]
        assert time.time() - t0 < 300, "no checkpoint of step 2"
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert [m["step"] for m in _metrics(w)][:2] == [1, 2]
    again = _run(cfg, w, world)
    assert _metrics(w) == want
    assert {k: v for k, v in again.items() if not k.endswith("_seconds")} == \
           {k: v for k, v in whole.items() if not k.endswith("_seconds")}
    for step in range(3):
        name = f"rollouts/step_{step:06d}.jsonl"
        assert (w / name).read_text() == (tmp_path / "whole" / name).read_text(), name

    # 2 processes x 4 devices: each samples half of a step's prompts, feeds half of each batch's rows
    two = tmp_path / "two"
    p = _script(world, two, 2, cache=tmp_path / "jax_cache")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    got = _metrics(two)
    assert [m["step"] for m in got] == [1, 2, 3]
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=f"step {a['step']} {k}")
    for step in range(3):  # the same samples, written half by each process
        name = f"rollouts/step_{step:06d}.jsonl"
        one = [json.loads(ln) for ln in (tmp_path / "whole" / name).read_text().splitlines()]
        merged = driver.merge_outputs(two / name, list(dict.fromkeys(r["id"] for r in one)), 2, 4)
        assert sorted((r["id"], r["sample"], r["token_ids"]) for r in merged) == \
               sorted((r["id"], r["sample"], r["token_ids"]) for r in one), name


def _env():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return env


@pytest.mark.parametrize("args, message", [
    (["--config.rl.num_samples=1"], "error: rl.num_samples=1 must be >= 2"),
    (["--config.rl.normalize=batch"], "error: rl.normalize='batch' must be one of"),
    (["--config.rl.reward_judge=0.5", "--config.rl.judge_model=m"], "error: rl.judge_url='' must be an http://"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "cogito_jax.rl", "--config", CONFIG, "--workdir", str(tmp_path / "w"),
                        "--config.rl.steps=2", *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "w").exists()

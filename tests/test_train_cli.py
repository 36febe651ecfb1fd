"""`python -m cogito_jax.train` (contract 5): kill -9 and resume, with 2 Grain worker processes, gives the
same per-step losses and examples as an uninterrupted run without workers, each step logged once; SIGTERM
saves the current step and exits with the preemption status (143)."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--config.data.num_train=64", "--config.data.num_heldout=0",
        "--config.checkpoint.every=4", "--config.checkpoint.async_save=False", "--config.train.steps=8"]
WORKERS = "--config.data.num_workers=2"


def _start(workdir, *extra, data=None, config="configs/tiny.py"):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    args = ["--config", config, *ARGS, *extra]
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


def _wait_for_step(workdir, step, proc, timeout=300, poll=0.2):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if (workdir / "metrics.jsonl").exists() and max(_rows(workdir), default=0) >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        time.sleep(poll)
    raise AssertionError(f"step {step} not reached")


def _reference(workdir, config="configs/tiny.py"):
    p = _start(workdir, config=config)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    return workdir, _rows(workdir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _reference(tmp_path_factory.mktemp("train_ref"))


def _assert_kill9_and_resume_is_exact(reference, tmp_path, config="configs/tiny.py"):
    ref_dir, ref = reference  # 2N = 8 steps in one go, no workers
    assert list(ref) == list(range(1, 9))
    assert ref[8][0] < ref[1][0]
    p = _start(tmp_path, WORKERS, data=ref_dir, config=config)
    _wait_for_step(tmp_path, 5, p, poll=0.01)  # the checkpoint at N = 4 is written before step 5 starts
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert max(_rows(tmp_path)) < 8, "the run finished before it was killed"
    p = _start(tmp_path, WORKERS, data=ref_dir, config=config)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    assert "resumed from step 4" in out
    assert _rows(tmp_path) == ref  # same loss bitwise and the same examples at every step
    # Steps logged after the checkpoint and before the kill were dropped on resume: every step is there once.
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


@pytest.mark.slow
def test_kill9_and_resume_is_exact(reference, tmp_path):
    _assert_kill9_and_resume_is_exact(reference, tmp_path)


@pytest.mark.slow
def test_tiny_moe_lora_run_learns_and_resumes_exactly_after_kill9(tmp_path):
    """configs/tiny_moe.py (the MoE thinker with LoRA on attention and every expert's gate / up / down) through
    the same CLI: the loss falls, only the adapters train, and kill -9 + resume gives bitwise-equal losses."""
    ref = _reference(tmp_path / "ref", "configs/tiny_moe.py")
    meta = json.loads((ref[0] / "config.json").read_text())
    assert meta["model"]["family"] == "qwen3_omni_thinker" and meta["train"]["trainable"] == "lora"
    saved = json.loads((ref[0] / "checkpoints" / "8" / "meta" / "metadata").read_text())["meta"]
    assert saved["lora_targets"] == ["llm/layers/mlp/down_proj", "llm/layers/mlp/gate_proj", "llm/layers/mlp/up_proj",
                                     *(f"llm/layers/self_attn/{x}_proj/kernel" for x in "koqv")]
    _assert_kill9_and_resume_is_exact(ref, tmp_path / "resumed", "configs/tiny_moe.py")
    _assert_peft_export_loads_in_transformers(ref[0], tmp_path / "export")


def _assert_peft_export_loads_in_transformers(workdir, out):
    """`python -m cogito_jax.export` of the trained tiny_moe run: the base (a config-initialised model, written
    as an HF folder) and the PEFT adapter (experts as `target_parameters`) load with transformers + peft and give
    our logits with the adapters unmerged; the adapters the run trained change them."""
    import warnings

    import jax.numpy as jnp
    import numpy as np
    import peft
    from flax import nnx
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    from cogito_jax import cli
    from cogito_jax.data.chat import num_audio_tokens
    from cogito_jax.train import trained
    from tests.hf_tiny import hf_logits, rel_err

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-m", "cogito_jax.export", "--config", "configs/tiny_moe.py", "--workdir",
                        str(workdir), "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "base"]
    r = subprocess.run([sys.executable, "-m", "cogito_jax.export", "--config", "configs/tiny_moe.py", "--workdir",
                        str(workdir), "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].endswith(
        f"--out {str(out)!r} already exists; choose a new folder"), r.stderr

    lora, _, mcfg = trained.load(cli.load_config("configs/tiny_moe.py"), workdir, merge=False)
    rng = np.random.default_rng(0)
    n_frames = 300
    feats = rng.normal(size=(1, mcfg.audio.num_mel_bins, mcfg.audio.num_frames)).astype(np.float32)
    fmask = (np.arange(mcfg.audio.num_frames) < n_frames)[None].astype(np.int64)
    seq = [11, 12] + [mcfg.audio_token_id] * num_audio_tokens("qwen3_omni_thinker", n_frames) + [21, 22, 23]
    ids, am = np.asarray([seq], np.int64), np.ones((1, len(seq)), np.int64)
    ours = np.asarray(nnx.jit(lambda m, *a: m(*a))(lora, *(jnp.asarray(x) for x in (ids, feats, fmask, am))))
    base = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(str(out / "base")).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapted = peft.PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    assert not [str(w.message) for w in caught if "missing" in str(w.message).lower()
                or "unexpected" in str(w.message).lower()]
    err = rel_err(hf_logits(adapted, ids, feats, fmask, am), ours)
    with adapted.disable_adapter():
        without = rel_err(hf_logits(adapted, ids, feats, fmask, am), ours)
    assert err <= 1e-4 and without > 10 * max(err, 1e-6), (err, without)


@pytest.mark.slow
def test_sigterm_saves_and_exits_with_the_preemption_status(reference, tmp_path):
    from cogito_jax.errors import EXIT_PREEMPTED

    ref_dir, _ = reference
    p = _start(tmp_path, "--config.train.steps=500", "--config.checkpoint.every=1000", data=ref_dir)
    _wait_for_step(tmp_path, 4, p)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == EXIT_PREEMPTED == 143, out[-3000:]
    assert "preempted: checkpoint saved; rerun the same command to resume" in out
    steps = sorted(int(d.name) for d in (tmp_path / "checkpoints").iterdir() if d.name.isdigit())
    assert steps and 4 <= steps[-1] < 500
    assert max(_rows(tmp_path)) == steps[-1]  # the checkpoint is at the step it stopped on


def test_init_from_checkpoint_takes_the_runs_model_settings(tmp_path):
    import jax
    import jax.numpy as jnp

    from cogito_jax import cli, sharding
    from cogito_jax.convert import save_hf
    from cogito_jax.models import registry
    from cogito_jax.train import trained

    mcfg = registry.config_for({"family": "qwen2_audio", "size": "tiny"})
    save_hf(registry.build(mcfg), mcfg, tmp_path / "hf")
    cfg = cli.load_config("configs/tiny.py", {"model.dtype": "bfloat16", "model.param_dtype": "float32",
                                                 "model.remat": "full", "model.attn_impl": "dot_product_attention"})
    model, loaded = trained.load_init(cfg, str(tmp_path / "hf"), sharding.make_mesh(cfg.mesh, jax.devices()[:1]))
    for c in (loaded.text, loaded.audio, model.llm.cfg):
        assert (c.dtype, c.param_dtype, c.remat, c.attn_impl) == ("bfloat16", "float32", "full",
                                                                  "dot_product_attention")
    assert model.llm.embed_tokens.embedding[...].dtype == jnp.float32


def test_moe_settings_reach_the_decoder_only():
    """model.moe_impl / moe_capacity_factor configure the MoE decoder; the audio encoder has no such fields, and a
    bad value is an error naming it, for dense decoders too."""
    import pytest

    from cogito_jax import cli, errors
    from cogito_jax.models import registry
    from cogito_jax.train import trained

    cfg = cli.load_config("configs/tiny.py:qwen3_omni_thinker", {"model.moe_impl": "capacity",
                                                                    "model.moe_capacity_factor": 2.0})
    assert trained.model_overrides(cfg)["moe_impl"] == "capacity"
    mcfg = registry.config_for(cfg.model)
    assert (mcfg.text.moe_impl, mcfg.text.moe_capacity_factor) == ("capacity", 2.0)
    assert (mcfg.text.moe_config().impl, mcfg.text.moe_config().capacity_factor) == ("capacity", 2.0)
    assert not hasattr(mcfg.audio, "moe_impl")
    for family in ("qwen3_omni_thinker", "qwen2_audio"):
        with pytest.raises(ValueError, match="moe_impl='grouped' must be one of"):
            registry.config_for({"family": family, "size": "tiny", "moe_impl": "grouped"})
    with pytest.raises(errors.ConfigError,
                       match="model.moe_impl='grouped' must be one of ragged, capacity, alltoall, gmm, dense"):
        cli.load_config("configs/tiny.py", {"model.moe_impl": "grouped"})
    with pytest.raises(errors.ConfigError, match="model.attn_impl='flash' must be one of xla, dot_product"):
        cli.load_config("configs/tiny.py", {"model.attn_impl": "flash"})

"""Training machinery on a small model: loss falls, exact resume, accumulation, sharding, trainable subsets."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from cogito_jax import cli, config as cfglib, errors, sharding
from cogito_jax.data import chat, pipeline, records, tokenizer as toklib
from cogito_jax.models.layers import path_str
from cogito_jax.train import trainer
from cogito_jax.train.checkpoint import Checkpointer
from tests.toy_lm import ToyAudioLM

N_MELS = 8


def _ds_dir(root):
    return next((root / "data").rglob("dataset_info.json")).parent
ANSWERS = ["two beeps", "three beeps", "four beeps"]


def _rec(i):
    rng = np.random.default_rng(i)
    k = i % 3
    frames = 24
    mel = rng.normal(size=(frames, N_MELS)) * 0.1
    mel[:, k] += 2.0  # the answer is readable from the audio
    return records.make_record(id=f"ex{i}", mel=mel, n_frames=frames, question="How many beeps?",
                               choices=ANSWERS, answer=ANSWERS[k], thinking="")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_corpus")
    recs = [_rec(i) for i in range(48)]
    records.write_dataset(root / "data", {"train": lambda: recs}, feat_dim=N_MELS)
    text = chat.chat_format("qwen2_audio").prompt(chat.mcq_text("How many beeps?", ANSWERS)) + " ".join(ANSWERS)
    tok = toklib.train_bpe([text] * 20, vocab_size=300, out_dir=root / "tok")
    return root, len(tok)


def _cfg(**over):
    cfg = cli.load_config("configs/tiny.py")
    cfglib.apply_overrides(cfg, {"train.steps": 12, "train.batch_size": 8, "checkpoint.every": 4,
                                 "optim.lr": 0.01, "optim.warmup_steps": 0, "checkpoint.async_save": False,
                                 **over})
    return cli.validate(cfg)


class CrashAfter:
    """Wraps a checkpointable dataset so its iterator dies after ``n`` batches (a crash mid-run)."""

    def __init__(self, ds, n):
        self.ds, self.n = ds, n

    def __iter__(self):
        outer = self

        class It:
            def __init__(self):
                self.it, self.count = iter(outer.ds), 0

            def __next__(self):
                self.count += 1
                if self.count > outer.n:
                    raise RuntimeError("simulated crash")
                return next(self.it)

            def get_state(self):
                return self.it.get_state()

            def set_state(self, state):
                self.it.set_state(state)

        return It()


def _run(cfg, workdir, corpus, mesh=None, crash_after=None):
    root, vocab = corpus
    spec = pipeline.ExampleSpec(family="qwen2_audio", max_len=160, max_frames=32, n_mels=N_MELS)
    data = pipeline.make_dataset(records.RecordSource(_ds_dir(root)), tokenizer_dir=str(root / "tok"),
                                 spec=spec, batch_size=cfg.train.batch_size, seed=cfg.seed)
    if crash_after is not None:
        data = CrashAfter(data, crash_after)
    return trainer.run(cfg, str(workdir), lambda: ToyAudioLM(vocab, N_MELS, rngs=nnx.Rngs(cfg.seed)), data,
                       mesh=mesh)


def _losses(workdir):
    """(step, loss) pairs; a step logged again after a resume counts once (its last line)."""
    rows = {r["step"]: r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())}
    return sorted(rows.items())


@pytest.mark.slow
def test_loss_falls_and_resume_is_exact(tmp_path, corpus):
    once = tmp_path / "once"
    _run(_cfg(), once, corpus)
    losses = _losses(once)
    assert [s for s, _ in losses] == list(range(1, 13))
    assert losses[-1][1] < 0.5 * losses[0][1], losses
    # The same run crashing during step 7 (last checkpoint: step 4) and restarted gives bitwise the same losses.
    twice = tmp_path / "twice"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(_cfg(), twice, corpus, crash_after=6)
    assert [s for s, _ in _losses(twice)] == list(range(1, 7))
    _run(_cfg(), twice, corpus)
    assert _losses(twice) == losses
    assert _logged_steps(twice) == list(range(1, 13))  # steps 5 and 6, logged before the crash, appear once
    assert (twice / "config.json").exists()
    # Flipped bytes in the last checkpoint (step 12): the next run finds its checksum broken, moves it aside,
    # resumes from step 8 and saves step 12 again, with the same losses; the run after that has nothing left to do.
    _flip_a_byte(_largest_file(twice / "checkpoints" / "12" / "state"))
    _run(_cfg(), twice, corpus)
    assert {"12", "12.corrupt-1"} <= {p.name for p in (twice / "checkpoints").iterdir()}
    assert _losses(twice) == losses and _logged_steps(twice) == list(range(1, 13))
    _run(_cfg(), twice, corpus)
    assert _logged_steps(twice) == list(range(1, 13))


def _logged_steps(workdir):
    return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _largest_file(folder):
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_metrics_cover_accuracy_throughput_and_mfu(tmp_path, corpus):
    cfg = _cfg(**{"train.steps": 4, "train.log_every": 2, "train.peak_tflops": 1e-3})
    cfg.train.eval_every = 0
    _run(cfg, tmp_path / "m", corpus)
    rows = [json.loads(x) for x in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["answer_accuracy"] <= 1
        assert 0 <= r["data_wait"] <= r["step_time"] and 0 <= r["data_wait_frac"] <= 1
        # 8 rows, every attended token counted: tokens_per_s x step_time = tokens of one step
        assert r["seq_tokens"] > r["tokens"] > 0 and r["clips"] == 8
        assert r["tokens_per_s"] * r["step_time"] == pytest.approx(r["seq_tokens"], rel=0.05)
    assert "compile_time" in rows[0] and "compile_time" not in rows[1]
    assert "mfu" not in rows[0]  # the toy model has no FLOPs count; the audio LMs' runs report it


def test_mfu_from_the_model_flops_count():
    from cogito_jax.models import flops, registry

    mcfg = registry.config_for(cli.load_config("configs/tiny.py").model, vocab_size=300, audio_token_id=5)
    meter = trainer.Throughput(mcfg, num_devices=2, peak_flops=1e12)
    meter.stepped({"seq_tokens": 1000.0, "clips": 4.0}, 128)
    meter.stepped({"seq_tokens": 500.0, "clips": 2.0}, 128)
    out = meter.interval()
    model_flops = flops.step_flops(mcfg, 1500, 128, clips=6)
    assert out["tokens_per_s"] * out["step_time"] * 2 == pytest.approx(1500, rel=1e-6)
    assert out["mfu"] == pytest.approx(model_flops / (out["step_time"] * 2) / 2e12, rel=1e-6)
    assert flops.peak_flops("TPU v5 lite") == 197e12 and flops.peak_flops("cpu") is None
    assert flops.peak_flops("cpu", 2.0) == 2e12


def test_example_weight_scales_its_loss(corpus):
    """An example of weight w contributes w x its token losses; the token count stays the number of tokens."""
    from cogito_jax.train import step

    root, vocab = corpus
    spec = pipeline.ExampleSpec(family="qwen2_audio", max_len=160, max_frames=32, n_mels=N_MELS)
    tok = toklib.load(root / "tok")
    rec = _rec(1)
    one = pipeline.encode_record(rec, tok, spec)
    half = pipeline.encode_record({**rec, "weight": 0.5}, tok, spec)
    np.testing.assert_array_equal(half["loss_mask"], 0.5 * one["loss_mask"])
    model = ToyAudioLM(vocab, N_MELS, rngs=nnx.Rngs(0))
    batch = {k: np.stack([one[k], half[k]]) for k in one if k not in pipeline.BOOKKEEPING}
    total, count, _ = step.lm_loss(model, batch)
    single, n, _ = step.lm_loss(model, {k: v[:1] for k, v in batch.items()})
    assert float(count) == 2 * float(n)
    assert float(total) == pytest.approx(1.5 * float(single), rel=1e-5)
    with pytest.raises(ValueError, match=r"record 'ex1': weight=-1.0 must be a finite number >= 0"):
        pipeline.encode_record({**rec, "weight": -1.0}, tok, spec)


@pytest.mark.slow
def test_grad_accum_and_sharded_match(tmp_path, corpus):
    base = _losses_of(tmp_path / "base", _cfg(**{"train.steps": 4}), corpus)
    cfg = _cfg(**{"train.steps": 4, "train.grad_accum": 4, "mesh.data": 2})  # micro-batches of 2 rows
    accum = _losses_of(tmp_path / "accum", cfg, corpus, mesh=sharding.make_mesh(cfg.mesh, jax.devices()[:2]))
    np.testing.assert_allclose([v for _, v in accum], [v for _, v in base], rtol=2e-5)
    cfg = _cfg(**{"train.steps": 4, "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "sharding.rules": "fsdp_tp"})
    sharded = _losses_of(tmp_path / "sharded", cfg, corpus, mesh=sharding.make_mesh(cfg.mesh))
    np.testing.assert_allclose([v for _, v in sharded], [v for _, v in base], rtol=2e-5)


def _losses_of(workdir, cfg, corpus, mesh=None):
    _run(cfg, workdir, corpus, mesh=mesh)
    return _losses(workdir)


@pytest.mark.parametrize("preset, trained", [
    ("frozen_encoder", {"projector", "llm_embed", "llm_up", "llm_down", "llm_norm", "lm_head"}),
    ("adapter_only", {"projector"}),
])
def test_only_trainable_params_change(tmp_path, corpus, preset, trained):
    root, vocab = corpus
    cfg = _cfg(**{"train.steps": 2, "train.trainable": preset, "optim.weight_decay": 0.1})
    model = ToyAudioLM(vocab, N_MELS, rngs=nnx.Rngs(0))
    before = {path_str(p): np.asarray(v)
              for p, v in jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]}
    spec = pipeline.ExampleSpec(family="qwen2_audio", max_len=160, max_frames=32, n_mels=N_MELS)
    data = pipeline.make_dataset(records.RecordSource(_ds_dir(root)), tokenizer_dir=str(root / "tok"),
                                 spec=spec, batch_size=8)
    trainer.run(cfg, str(tmp_path), None, data, model=model)
    # Exactly the preset's parameters train (all of them change) and are checkpointed; the step never receives
    # the others as state, so they cannot change (they are passed as its non-donated, never-returned input).
    ck = Checkpointer(tmp_path)
    assert ck.latest_step() == 2
    raw = ck.manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    ck.close()
    saved = {path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(raw["params"])[0]}
    assert set(saved) == {k for k in before if k.split("/")[0] in trained}
    assert all(not np.array_equal(saved[k], before[k]) for k in saved if not k.endswith("bias"))


class TermAfter(CrashAfter):
    """The process receives SIGTERM while fetching batch ``n + 1`` (a preemption notice)."""

    def __iter__(self):
        import signal

        inner = super().__iter__()
        outer = self

        class It:
            def __next__(self):
                if inner.count == outer.n:
                    signal.raise_signal(signal.SIGTERM)
                    outer.n += 10**9  # only once
                return next(inner)

            def get_state(self):
                return inner.get_state()

            def set_state(self, state):
                inner.set_state(state)

        return It()


def test_sigterm_saves_current_step_and_reports_preemption(tmp_path, corpus):
    root, vocab = corpus
    spec = pipeline.ExampleSpec(family="qwen2_audio", max_len=160, max_frames=32, n_mels=N_MELS)
    data = pipeline.make_dataset(records.RecordSource(_ds_dir(root)), tokenizer_dir=str(root / "tok"), spec=spec,
                                 batch_size=8)
    cfg = _cfg(**{"checkpoint.every": 100})
    out = trainer.run(cfg, str(tmp_path), lambda: ToyAudioLM(vocab, N_MELS, rngs=nnx.Rngs(0)), TermAfter(data, 3))
    assert out["preempted"] is True and out["step"] == 4
    ck = Checkpointer(tmp_path)
    assert ck.steps() == [4]
    ck.close()


class PoisonAfter(CrashAfter):
    """Batches after the first ``n`` carry NaN audio features, so the loss turns NaN."""

    def __iter__(self):
        it, n = iter(self.ds), self.n

        class It:
            count = 0

            def __next__(self):
                self.count += 1
                batch = dict(next(it))
                if self.count > n:
                    batch["input_features"] = np.full_like(batch["input_features"], np.nan)
                return batch

            def get_state(self):
                return it.get_state()

            def set_state(self, state):
                it.set_state(state)

        return It()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, corpus):
    root, vocab = corpus
    cfg = _cfg()
    spec = pipeline.ExampleSpec(family="qwen2_audio", max_len=160, max_frames=32, n_mels=N_MELS)
    data = PoisonAfter(pipeline.make_dataset(records.RecordSource(_ds_dir(root)), tokenizer_dir=str(root / "tok"),
                                             spec=spec, batch_size=cfg.train.batch_size, seed=cfg.seed), 5)
    with pytest.raises(trainer.NonFiniteLoss, match=r"loss is nan at step 6: .*checkpoint \(step 4\) is kept"):
        trainer.run(cfg, str(tmp_path), lambda: ToyAudioLM(vocab, N_MELS, rngs=nnx.Rngs(0)), data)
    ck = Checkpointer(tmp_path)
    try:
        assert ck.steps() == [4]
    finally:
        ck.close()


def test_a_failed_background_save_stops_the_run_at_once(tmp_path, corpus, monkeypatch):
    """A disk that fills up while step 4 is saved: the run stops a step or two later with the cause, instead of
    training on to the next save."""
    import errno
    import os

    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    from cogito_jax.train.checkpoint import CheckpointError

    async def disk_full(self, x, directory):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", disk_full)
    with pytest.raises(CheckpointError, match=r"^saving checkpoint step 4 in .* failed: No space left on device"):
        _run(_cfg(**{"checkpoint.async_save": True, "train.steps": 40}), tmp_path, corpus)
    assert max(_logged_steps(tmp_path)) < 8
    assert Checkpointer(tmp_path).steps() == []


def test_an_iterator_state_the_pipeline_rejects_stops_with_one_line(tmp_path):
    class Rejects:
        def set_state(self, state):
            raise ValueError("unexpected key 'packer'\nsecond line")

    with pytest.raises(errors.ConfigError, match=r"^checkpoint step 4 in .*: its input-iterator state does not fit "
                                                 r"this run's data pipeline \(ValueError: unexpected key 'packer'\); "
                                                 r"resume with the data settings it was saved with, or use a new "
                                                 r"workdir$"):
        trainer._resume_iterator(Rejects(), {"packer": 1}, 4, Checkpointer(tmp_path))

"""The training loop's guards: no run trains on nothing, held-out evaluation compiles once with the train step's
shardings and equals a plain computation, the progress bar counts finished steps."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from cogito_jax import sharding
from cogito_jax.data import pipeline, records
from cogito_jax.train import trainer
from cogito_jax.train.step import make_eval_step
from tests import test_trainer as toy
from tests.toy_lm import ToyAudioLM

N_MELS, _cfg, _ds_dir = toy.N_MELS, toy._cfg, toy._ds_dir
corpus = toy.corpus  # the toy training corpus (a module-scoped fixture)


def _data(corpus, cfg, max_len=160, **kw):
    root, _ = corpus
    spec = pipeline.ExampleSpec(family="qwen2_audio", max_len=max_len, max_frames=32, n_mels=N_MELS)
    return pipeline.make_dataset(records.RecordSource(_ds_dir(root)), tokenizer_dir=str(root / "tok"), spec=spec,
                                 batch_size=cfg.train.batch_size, seed=cfg.seed, **kw)


def _model(corpus, cfg):
    return lambda: ToyAudioLM(corpus[1], N_MELS, rngs=nnx.Rngs(cfg.seed))


def test_training_on_nothing_is_an_error(tmp_path, corpus):
    """Every example is longer than max_len: each row is a placeholder without loss. The run stops at its first
    checkpoint with the count instead of reporting loss 0, and saves nothing."""
    cfg = _cfg(**{"train.steps": 12, "checkpoint.every": 4})
    with pytest.raises(trainer.NoSupervisedTokens, match=r"no supervised token in the 4 steps run: 32 of 32 rows "
                                                         r"on this process were examples longer than"):
        trainer.run(cfg, str(tmp_path), _model(corpus, cfg), _data(corpus, cfg, max_len=8))
    assert not list((tmp_path / "checkpoints").glob("[0-9]*"))


def test_supervision_counts_placeholders_and_warns(caplog):
    check = trainer.SupervisionCheck(max_len=64)
    check.batch({"index": np.array([3, -1, 5, -1])})
    check.batch({"index": np.array([[1, -1], [2, -1]])})  # packed rows: -1 marks empty clip slots, not skipped rows
    assert check.interval() == {"placeholder_frac": 0.5} and check.interval() == {}
    for n in range(trainer.SupervisionCheck.MIN_STEPS):
        check.stepped(jax.numpy.float32(0.0))
        if n < trainer.SupervisionCheck.MIN_STEPS - 1:
            check.check()  # too early to tell
    with pytest.raises(trainer.NoSupervisedTokens, match="2 of 4 rows"):
        check.check()
    check.stepped(jax.numpy.float32(7.0))
    check.check(at_end=True)  # a supervised token anywhere in the run is enough
    with caplog.at_level("WARNING", logger="cogito_jax"):
        check.warn_placeholders()
    assert "2 of 4 rows (50%) on this process were placeholders" in caplog.text
    assert "data.max_len=64" in caplog.text


def test_eval_compiles_once_with_shardings_and_matches_a_plain_computation(tmp_path, corpus, monkeypatch):
    cfg = _cfg(**{"train.steps": 4, "train.eval_every": 2, "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2,
                  "sharding.rules": "fsdp_tp"})
    compiled = []
    real = trainer.compile_eval_step
    monkeypatch.setattr(trainer, "compile_eval_step", lambda *a, **k: compiled.append(1) or real(*a, **k))
    heldout = lambda: iter(_data(corpus, cfg, num_epochs=1, shuffle=False))  # noqa: E731
    mesh = sharding.make_mesh(cfg.mesh)
    trainer.run(cfg, str(tmp_path), _model(corpus, cfg), _data(corpus, cfg), eval_data=heldout, mesh=mesh)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4] and len(compiled) == 1  # one batch shape: one executable

    # The compiled, sharded evaluator equals a plain jit of the eval step on unsharded arrays.
    model = sharding.create_sharded(_model(corpus, cfg), mesh, sharding.resolve_rules(cfg.sharding.rules))
    p = trainer.prepare(cfg, model, mesh, sharding.resolve_rules(cfg.sharding.rules))
    with jax.set_mesh(mesh):
        ours = trainer.Evaluator(p)(p.state.params, p.frozen, heldout())
    plain = jax.jit(make_eval_step(p.graphdef))
    host = lambda t: jax.tree.map(np.asarray, t)  # noqa: E731
    sums: dict[str, float] = {}
    for local in heldout():
        out = plain(host(p.state.params), host(p.frozen), trainer._model_inputs(local))
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    assert ours["eval_tokens"] == sums["tokens"] > 0
    assert ours["eval_loss"] == pytest.approx(sums["loss_sum"] / sums["tokens"], rel=1e-5)
    assert ours["eval_accuracy"] == pytest.approx(sums["correct"] / sums["tokens"], rel=1e-6)


class _Loss:
    def __init__(self):
        self.ready = False

    def is_ready(self):
        return self.ready


class _Bar:
    n = 0

    def update(self, k):
        self.n += k


def test_progress_counts_finished_steps_not_dispatched_ones(monkeypatch):
    monkeypatch.setattr(jax, "block_until_ready", lambda xs: [setattr(x, "ready", True) for x in xs])
    bar = _Bar()
    progress = trainer.CompletedSteps(bar)
    a, b, c = _Loss(), _Loss(), _Loss()
    progress.dispatched(a)
    progress.dispatched(b)
    assert bar.n == 0  # dispatched, not finished
    a.ready = True
    progress.dispatched(c)
    assert bar.n == 1  # in order: b is not done, so c is not counted yet even if it were
    progress.drain()
    assert bar.n == 3 and b.ready and c.ready

"""`trained.load`: a finished run's model from its newest checkpoint's parameters alone. It makes no data (the
run's dataset may be gone) and reads no optimizer state; the parameters are the trained ones, the others those
the run started from."""

import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from cogito_jax import cli
from cogito_jax.data import synthetic
from cogito_jax.errors import ConfigError
from cogito_jax.models import registry
from cogito_jax.models.layers import path_str
from cogito_jax.train import checkpoint, optim, run, trained


def _flat(tree):
    return {path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.slow
def test_loads_the_trained_parameters_without_data_or_optimizer_state(tmp_path, monkeypatch):
    cfg = cli.load_config("configs/tiny.py", [
        "train.steps=2", "data.num_train=16", "data.num_heldout=0",
        "optim.warmup_steps=0", "checkpoint.async_save=False"])
    run.train(cfg, str(tmp_path))
    ck = checkpoint.Checkpointer(tmp_path)
    raw = ck.manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    ck.close()
    saved = _flat(raw["params"])

    # The run's data is gone and may not be made again; the optimizer may not be built or read.
    shutil.rmtree(tmp_path / "data")

    def forbidden(*args, **kwargs):
        raise AssertionError("loading a trained model made data or an optimizer")

    monkeypatch.setattr(synthetic, "build_dataset", forbidden)
    monkeypatch.setattr(optim, "make_tx", forbidden)
    requested = []
    restore = ocp.CheckpointManager.restore

    def spy(self, step, args=None, **kw):
        requested.append({name: getattr(item, "item", None) for name, item in args.items()})
        return restore(self, step, args=args, **kw)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", spy)
    model, tok, mcfg = trained.load(cfg, tmp_path)

    [items] = requested  # one read: the state's parameters and the meta holding their checksums
    assert set(items) == {"state", "meta"} and isinstance(items["state"], checkpoint.ParamsOnly)
    assert not (tmp_path / "data").exists()
    assert len(tok) == mcfg.text.vocab_size
    after = _flat(nnx.state(model, nnx.Param))
    base = _flat(nnx.state(registry.build(mcfg, cfg.seed), nnx.Param))
    assert sorted(after) == sorted(base) and set(saved) < set(after)
    assert any(not np.array_equal(saved[k], base[k]) for k in saved)  # the saved parameters trained
    for name, w in after.items():
        np.testing.assert_array_equal(w, saved.get(name, base[name]), err_msg=name)


@pytest.mark.parametrize("trainable", ["frozen_encoder", "adapter_only", "lora"])
def test_the_checkpoint_holds_the_presets_parameters_and_the_rest_is_the_runs_start(tmp_path, trainable):
    """A checkpoint as the trainer saves it for a subset preset or LoRA: its parameters replace the preset's (LoRA
    adapters folded into the kernels), the others are the initialisation the run started from."""
    import jax.numpy as jnp

    from cogito_jax.data import tokenizer as toklib
    from cogito_jax.train import trainer
    from cogito_jax.train.step import TrainState

    cfg = cli.load_config("configs/tiny.py", [f"train.trainable={trainable}", "lora.rank=2"])
    toklib.train_bpe(["How many beeps do you hear? (A) two (B) three"], cfg.data.vocab_size, tmp_path / "tokenizer")
    mcfg = trained.model_config(cfg, toklib.load(tmp_path / "tokenizer"))
    graphdef, params, rest = nnx.split(trainer.for_training(cfg, registry.build(mcfg, cfg.seed)),
                                       optim.trainable_filter(trainable), ...)
    params = jax.tree.map(lambda x: x + 0.25, params)  # "trained"
    ck = checkpoint.Checkpointer(tmp_path, async_save=False)
    ck.save(3, TrainState(params, {"mu": jax.tree.map(jnp.zeros_like, params)}, jnp.int32(3)), data_state={})
    ck.close()
    model, _, _ = trained.load(cfg, tmp_path)
    after = _flat(nnx.state(model, nnx.Param))
    expected = _flat(nnx.state(trainer.unwrap(nnx.merge(graphdef, params, rest)), nnx.Param))
    base = _flat(nnx.state(registry.build(mcfg, cfg.seed), nnx.Param))
    assert sorted(after) == sorted(expected) == sorted(base)
    changed = [k for k in after if not np.array_equal(after[k], base[k])]
    assert changed and len(changed) < len(after)  # some parameters trained, not all
    for name, w in after.items():
        np.testing.assert_allclose(w, expected[name], rtol=1e-6, atol=1e-6, err_msg=name)


def test_a_run_without_its_tokenizer_is_one_line(tmp_path):
    cfg = cli.load_config("configs/tiny.py", [])
    with pytest.raises(ConfigError, match=r"has no tokenizer: .*tokenizer' holds no tokenizer.json"):
        trained.load(cfg, tmp_path)

"""LoRA: zero adapters change nothing, only adapters train, merged export equals the adapted forward."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cogito_jax.models.layers import path_str
from cogito_jax.models.lora import LoRA
from cogito_jax.train import optim
from cogito_jax.train.step import TrainState, make_train_step
from tests.toy_lm import ToyAudioLM

TARGETS = r"(llm_up|llm_down|lm_head)/kernel$"


def _batch(vocab=40, n_mels=8):
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, vocab, (4, 12)), jnp.int32)
    return {"input_ids": ids, "targets": jnp.roll(ids, -1, axis=1), "loss_mask": jnp.ones((4, 12)),
            "attention_mask": jnp.ones((4, 12), jnp.int32),
            "input_features": jnp.asarray(rng.normal(size=(4, n_mels, 16)), jnp.float32),
            "feature_attention_mask": jnp.ones((4, 16), jnp.int32)}


def _fwd(m, b):
    return m(b["input_ids"], input_features=b["input_features"], feature_attention_mask=b["feature_attention_mask"])


def test_zero_adapters_change_nothing_and_targets_resolve():
    base = ToyAudioLM(40, 8, rngs=nnx.Rngs(0))
    b = _batch()
    ref = _fwd(base, b)
    lora = LoRA(base, rank=4, alpha=8, targets=TARGETS, rngs=nnx.Rngs(1))
    assert lora.names == ("llm_down/kernel", "llm_up/kernel", "lm_head/kernel")
    np.testing.assert_array_equal(np.asarray(_fwd(lora, b)), np.asarray(ref))
    with pytest.raises(ValueError, match="match no 2-D"):
        LoRA(base, rank=4, alpha=8, targets=r"nothing_here", rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="dropout=0.1"):
        LoRA(base, rank=4, alpha=8, targets=TARGETS, dropout=0.1, rngs=nnx.Rngs(1))


def _flat(tree) -> dict[str, np.ndarray]:
    """Host copies of a state's arrays by path (copies: later steps may donate or overwrite the buffers)."""
    return {path_str(p): np.array(v, copy=True) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _train_lora(steps: int = 3):
    """Trains the LoRA-wrapped toy LM as the trainer does (trainable split by the "lora" preset, state donated);
    returns (every parameter before, every parameter after, the trained module, the batch)."""
    lora = LoRA(ToyAudioLM(40, 8, rngs=nnx.Rngs(0)), rank=4, alpha=8, targets=TARGETS, rngs=nnx.Rngs(1))
    before = _flat(nnx.state(lora, nnx.Param))
    graphdef, params, frozen = nnx.split(lora, optim.trainable_filter("lora"), ...)
    tx = optax.adam(1e-2)
    step = jax.jit(make_train_step(graphdef, tx), donate_argnums=0)
    state = TrainState(params, tx.init(params), jnp.int32(0))
    b = _batch()
    for _ in range(steps):
        state, metrics = step(state, frozen, b)
    assert float(metrics["loss"]) > 0
    trained = nnx.merge(graphdef, state.params, frozen)
    return before, _flat(nnx.state(trained, nnx.Param)), trained, b


def _changed(before: dict, after: dict) -> set[str]:
    assert sorted(before) == sorted(after)
    return {k for k in before if not np.array_equal(before[k], after[k])}


def test_train_step_changes_only_adapters_and_merge_matches():
    before, after, trained, b = _train_lora()
    adapters = {k for k in before if k.startswith(("lora_a/", "lora_b/"))}
    assert len(adapters) == 6 and len(before) > len(adapters)
    assert _changed(before, after) == adapters  # every adapter moved, no base weight did
    merged = trained.merge()
    np.testing.assert_allclose(np.asarray(_fwd(merged, b)), np.asarray(_fwd(trained, b)), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(_fwd(merged, b)), np.asarray(_fwd(ToyAudioLM(40, 8, rngs=nnx.Rngs(0)), b)))


def test_base_weight_check_sees_a_broken_trainable_mask(monkeypatch):
    """With a "lora" preset that selects every parameter the base weights train, and the check above sees it."""
    monkeypatch.setitem(optim.TRAINABLE_PRESETS, "lora", ((r".*",), ()))
    before, after, _, _ = _train_lora()
    assert {k.split("/")[0] for k in _changed(before, after)} >= {"base", "lora_a", "lora_b"}

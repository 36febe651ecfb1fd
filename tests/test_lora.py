"""LoRA: zero adapters change nothing, only adapters train, merged export equals the adapted forward."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

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


def test_train_step_changes_only_adapters_and_merge_matches():
    lora = LoRA(ToyAudioLM(40, 8, rngs=nnx.Rngs(0)), rank=4, alpha=8, targets=TARGETS, rngs=nnx.Rngs(1))
    graphdef, params, frozen = nnx.split(lora, optim.trainable_filter("lora"), ...)
    names = {optim.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert names and all(n.startswith(("lora_a/", "lora_b/")) for n in names)
    frozen_before = jax.tree.map(np.asarray, frozen)
    tx = optax.adam(1e-2)
    step = jax.jit(make_train_step(graphdef, tx))
    state = TrainState(params, tx.init(params), jnp.int32(0), jax.random.key_data(jax.random.key(0)))
    b = _batch()
    for _ in range(3):
        state, metrics = step(state, frozen, b)
    assert float(metrics["loss"]) > 0
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, frozen), frozen_before)
    b_leaves = [np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(state.params)[0]
                if optim.path_str(p).startswith("lora_b/")]
    assert all(np.abs(x).max() > 0 for x in b_leaves)  # adapters moved away from zero
    trained = nnx.merge(graphdef, state.params, frozen)
    merged = trained.merge()
    np.testing.assert_allclose(np.asarray(_fwd(merged, b)), np.asarray(_fwd(trained, b)), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(_fwd(merged, b)), np.asarray(_fwd(ToyAudioLM(40, 8, rngs=nnx.Rngs(0)), b)))

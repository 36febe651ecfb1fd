"""Schedules, weight-decay mask and trainable-parameter presets."""

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from cogito_jax.train import optim


class Toy(nnx.Module):
    def __init__(self, rngs):
        self.audio_encoder = nnx.Linear(4, 4, rngs=rngs)
        self.projector = nnx.Linear(4, 4, rngs=rngs)
        self.llm_norm = nnx.RMSNorm(4, rngs=rngs)
        self.llm = nnx.Linear(4, 4, rngs=rngs)
        self.llm.lora_a = nnx.Param(jax.numpy.zeros((4, 2)))


def test_schedule_warmup_then_cosine():
    s = optim.schedule(1.0, steps=110, warmup_steps=10, kind="cosine", end_lr_ratio=0.1)
    np.testing.assert_allclose([s(0), s(5), s(10)], [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(s(60), 0.1 + 0.9 * 0.5, atol=1e-6)  # half-way through the cosine
    np.testing.assert_allclose(s(110), 0.1, atol=1e-6)
    lin = optim.schedule(2.0, steps=10, kind="linear")
    np.testing.assert_allclose([lin(0), lin(5), lin(10)], [2.0, 1.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="schedule='step'"):
        optim.schedule(1.0, 10, kind="step")


def test_decay_mask_skips_norms_and_biases():
    params = nnx.state(Toy(nnx.Rngs(0)), nnx.Param)
    flat = {optim.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(optim.decay_mask(params))[0]}
    assert flat["projector/kernel"] and flat["llm/kernel"]
    assert not flat["projector/bias"] and not flat["llm_norm/scale"]


@pytest.mark.parametrize(
    "preset, expected",
    [
        ("full", {"audio_encoder/kernel", "audio_encoder/bias", "projector/kernel", "projector/bias",
                  "llm_norm/scale", "llm/kernel", "llm/bias"}),
        ("lora", {"llm/lora_a"}),
        ("frozen_encoder", {"projector/kernel", "projector/bias", "llm_norm/scale", "llm/kernel", "llm/bias"}),
        ("adapter_only", {"projector/kernel", "projector/bias"}),
    ],
)
def test_trainable_presets(preset, expected):
    state = nnx.state(Toy(nnx.Rngs(0)), optim.trainable_filter(preset))
    got = {optim.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]}
    assert got == expected


def test_whisper_positions_never_train():
    keep = optim.trainable_filter("full")
    assert not keep(("audio_encoder", "embed_positions"), nnx.Param(jax.numpy.zeros(2)))
    assert not keep(("base", "audio_encoder", "embed_positions"), nnx.Param(jax.numpy.zeros(2)))
    assert keep(("audio_encoder", "conv1", "kernel"), nnx.Param(jax.numpy.zeros(2)))


def test_make_tx_clips_and_steps():
    cfg = ml_collections.ConfigDict(dict(name="adamw", lr=0.1, warmup_steps=0, schedule="constant",
                                         end_lr_ratio=0.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                                         clip_norm=1.0))
    tx, sched = optim.make_tx(cfg, steps=10)
    params = {"w": jax.numpy.ones((2, 2))}
    st = tx.init(params)
    grads = {"w": jax.numpy.full((2, 2), 100.0)}
    upd, _ = tx.update(grads, st, params)
    # Adam's first step moves each weight by lr * sign(g) whatever the clipping: check the size.
    np.testing.assert_allclose(np.asarray(upd["w"]), -0.1, rtol=1e-4)
    assert float(sched(3)) == pytest.approx(0.1)
    cfg.name = "sgd"
    with pytest.raises(ValueError, match="optim.name='sgd'"):
        optim.make_tx(cfg, 10)

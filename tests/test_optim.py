"""Schedules, weight-decay mask and trainable-parameter presets."""

import jax
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from cogito_jax.models.layers import path_str
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
    flat = {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(optim.decay_mask(params))[0]}
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
    got = {path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]}
    assert got == expected


def test_whisper_positions_never_train():
    keep = optim.trainable_filter("full")
    assert not keep(("audio_encoder", "embed_positions"), nnx.Param(jax.numpy.zeros(2)))
    assert not keep(("base", "audio_encoder", "embed_positions"), nnx.Param(jax.numpy.zeros(2)))
    assert keep(("audio_encoder", "conv1", "kernel"), nnx.Param(jax.numpy.zeros(2)))


OPTIM = dict(name="adamw", lr=0.1, warmup_steps=0, schedule="constant", end_lr_ratio=0.0, b1=0.9, b2=0.999,
             eps=1e-8, weight_decay=0.1, clip_norm=1.0)
# Step 1's gradient is far above the clip norm, step 2's below it, step 3's above again: clipping rescales the
# steps by different factors, which Adam's per-step normalisation does not undo from step 2 on.
GRADS = [{"w": np.full((2, 2), 100.0), "b": np.array([30.0, -40.0])},
         {"w": np.array([[0.3, -0.1], [0.2, 0.05]]), "b": np.array([-0.2, 0.1])},
         {"w": np.array([[5.0, -7.0], [1.0, 2.0]]), "b": np.array([9.0, 3.0])}]


def _updates(tx) -> list[dict]:
    """The updates of ``tx`` over GRADS, starting from fixed parameters (a matrix and a bias)."""
    params = {"w": jax.numpy.ones((2, 2)), "b": jax.numpy.full((2,), 0.5)}
    st, out = tx.init(params), []
    for g in GRADS:
        upd, st = tx.update(jax.tree.map(jax.numpy.asarray, g), st, params)
        params = optax.apply_updates(params, upd)
        out.append(jax.tree.map(np.asarray, upd))
    return out


def _by_hand(clip_norm: float) -> optax.GradientTransformation:
    adamw = optax.adamw(0.1, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1, mask={"w": True, "b": False})
    return optax.chain(optax.clip_by_global_norm(clip_norm), adamw) if clip_norm else adamw


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(np.allclose(x[k], y[k], rtol=1e-5, atol=1e-7) for x, y in zip(a, b, strict=True) for k in x)


def test_make_tx_clips_then_adamw():
    """make_tx equals clip_by_global_norm -> adamw built by hand over several steps; without clipping the same
    gradients give other updates from step 2 on (step 1 is lr * sign(g) either way)."""
    tx, sched = optim.make_tx(ml_collections.ConfigDict(OPTIM), steps=10)
    got, ref, unclipped = _updates(tx), _updates(_by_hand(1.0)), _updates(_by_hand(0.0))
    assert _same(got, ref)
    np.testing.assert_allclose(got[0]["w"], unclipped[0]["w"], rtol=1e-5)
    assert not _same(got[1:2], unclipped[1:2]) and not _same(got[2:], unclipped[2:])
    assert _same(_updates(optim.make_tx(ml_collections.ConfigDict({**OPTIM, "clip_norm": 0.0}), 10)[0]), unclipped)
    assert float(sched(3)) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="optim.name='sgd'"):
        optim.make_tx(ml_collections.ConfigDict({**OPTIM, "name": "sgd"}), 10)


def test_make_tx_comparison_sees_dropped_clipping(monkeypatch):
    """The comparison above fails when make_tx's clipping is a no-op."""
    ref = _updates(_by_hand(1.0))
    monkeypatch.setattr(optim.optax, "clip_by_global_norm", lambda max_norm: optax.identity())
    assert not _same(_updates(optim.make_tx(ml_collections.ConfigDict(OPTIM), steps=10)[0]), ref)

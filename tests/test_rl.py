"""GRPO pieces against hand computations, the rewards, and the engine's stored log-probs against the trainer's."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cogito_jax.rl import grpo, rewards
from cogito_jax.rl.grpo import GRPOConfig, grpo_loss


def test_group_advantages_by_hand():
    r = [[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.5, 0.0, 1.0, 0.0]]
    adv = grpo.group_advantages(r, eps=0.0 + 1e-12)
    np.testing.assert_allclose(adv[0], [1, -1, -1, 1], rtol=1e-6)
    np.testing.assert_array_equal(adv[1], [0, 0, 0, 0])  # all agree: nothing to learn
    mean, std = 0.375, math.sqrt(((0.125) ** 2 + 0.375 ** 2 + 0.625 ** 2 + 0.375 ** 2) / 4)
    np.testing.assert_allclose(adv[2], [(x - mean) / std for x in (0.5, 0, 1, 0)], rtol=1e-6)
    np.testing.assert_allclose(grpo.group_advantages(r, scale_std=False)[2], [0.125, -0.375, 0.625, -0.375])
    np.testing.assert_array_equal(grpo.informative_groups(r), [True, False, True])
    with pytest.raises(ValueError, match="samples >= 2"):
        grpo.group_advantages([[1.0], [0.0]])


def _batch():
    # two responses of 3 and 2 tokens (the second padded); ratios 1.5, 0.5, 1.0 | 0.5, 1.5
    ratio = np.array([[1.5, 0.5, 1.0], [0.5, 1.5, 1.0]], np.float32)
    old = np.array([[-1.0, -2.0, -0.5], [-0.7, -1.2, -3.0]], np.float32)
    logp = old + np.log(ratio)
    mask = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
    return logp, old, mask


def test_clipped_objective_by_hand():
    logp, old, mask = _batch()
    adv = np.array([1.0, -1.0], np.float32)
    cfg = GRPOConfig(clip_low=0.2, clip_high=0.2)
    # A = +1: min(1.5, 1.2) = 1.2, min(0.5, 0.8) = 0.5, min(1, 1) = 1   -> losses -1.2, -0.5, -1.0
    # A = -1: min(-0.5, -0.8) = -0.8, min(-1.5, -1.2) = -1.5            -> losses 0.8, 1.5
    token_losses = [-1.2, -0.5, -1.0, 0.8, 1.5]
    loss, m = grpo_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), cfg)
    np.testing.assert_allclose(float(loss), sum(token_losses) / 5, rtol=1e-6)
    # clipped and taken: ratio 1.5 with A > 0, ratio 0.5 with A < 0
    np.testing.assert_allclose(float(m["clip_fraction"]), 2 / 5, rtol=1e-6)
    np.testing.assert_allclose(float(m["ratio_mean"]), (1.5 + 0.5 + 1.0 + 0.5 + 1.5) / 5, rtol=1e-6)
    assert float(m["kl"]) == 0.0
    seq, _ = grpo_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask),
                       GRPOConfig(normalize="sequence"))
    np.testing.assert_allclose(float(seq), ((-1.2 - 0.5 - 1.0) / 3 + (0.8 + 1.5) / 2) / 2, rtol=1e-6)
    higher, _ = grpo_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask),
                          GRPOConfig(clip_low=0.2, clip_high=0.28))  # DAPO clip-higher: 1.28 for the first token
    np.testing.assert_allclose(float(higher), (-1.28 - 0.5 - 1.0 + 0.8 + 1.5) / 5, rtol=1e-6)


def test_kl_penalty_by_hand():
    logp, old, mask = _batch()
    ref = logp + np.array([[0.1, -0.2, 0.0], [0.3, 0.0, 5.0]], np.float32)  # ref - logp per token
    k3 = lambda d: math.exp(d) - d - 1  # noqa: E731
    kls = [k3(0.1), k3(-0.2), 0.0, k3(0.3), 0.0]
    adv = np.zeros(2, np.float32)
    loss, m = grpo_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask),
                        GRPOConfig(kl_coef=0.5), jnp.asarray(ref))
    np.testing.assert_allclose(float(m["kl"]), sum(kls) / 5, rtol=1e-5)
    np.testing.assert_allclose(float(loss), 0.5 * sum(kls) / 5, rtol=1e-5)  # the padded token's 5.0 is masked


def test_gradient_on_policy_is_the_policy_gradient():
    """At ratio 1 (the first update on fresh rollouts) d loss / d logp of a token is -A / tokens."""
    old = jnp.asarray([[-1.0, -2.0], [-0.5, -0.3]])
    adv, mask = jnp.asarray([2.0, -1.0]), jnp.ones((2, 2))
    g = jax.grad(lambda lp: grpo_loss(lp, old, adv, mask, GRPOConfig())[0])(old)
    np.testing.assert_allclose(np.asarray(g), [[-0.5, -0.5], [0.25, 0.25]], rtol=1e-6)


def test_config_checks():
    from cogito_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="rl.clip_low=1.5"):
        GRPOConfig(clip_low=1.5)
    with pytest.raises(ConfigError, match="rl.normalize='batch'"):
        GRPOConfig(normalize="batch")


ITEM = {"choices": ["a dog barking", "a cat meowing", "rain"], "answer": "a dog barking"}


@pytest.mark.parametrize("text, correct, formed, consistent", [
    ("<think>I hear barks, so it is a dog barking.</think>The answer is a dog barking.", 1, 1, 1),
    ("<think>It sounds like a cat meowing.</think>a dog barking", 1, 1, 0),  # conclusion disagrees
    ("a dog barking", 1, 0, 0),  # no thinking
    ("<think>Hmm.</think>rain", 0, 1, 1),
    ("<think>a dog barking or rain.</think>a dog barking or a cat meowing", 0, 0, 0),
])
def test_rewards(text, correct, formed, consistent):
    assert rewards.correctness(text, ITEM) == correct
    assert rewards.well_formed(text, ITEM) == formed
    assert rewards.consistent(text, ITEM) == consistent
    both = rewards.combine({"correct": 1.0, "format": 0.5})
    assert both(text, ITEM) == correct + 0.5 * formed
    with pytest.raises(ValueError, match="unknown rewards"):
        rewards.combine({"fluency": 1.0})


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_rollout_logprobs_equal_the_trainers(cpu_devices, temperature):
    """The log-prob the engine stores with each sampled token (at the sampling temperature) equals the one the RL
    step recomputes from a forward pass over prompt + response (``token_logprobs``), fp32, rel <= 1e-5."""
    from cogito_jax.models import registry
    from cogito_jax.sampling.engine import Engine

    mcfg = registry.config_for({"family": "qwen2_audio", "size": "tiny"})
    model = registry.build(mcfg, 0)
    rng = np.random.default_rng(0)
    prompt = rng.integers(10, mcfg.text.vocab_size, (1, 12)).astype(np.int32)
    out = Engine(model).generate(prompt, num_samples=3, max_new_tokens=10, temperature=temperature, eos_token_id=[1],
                                 pad_token_id=0, seed=5)
    tokens, stored, lengths = (np.asarray(x)[0] for x in (out.tokens, out.logprobs, out.lengths))
    for s in range(3):
        n = int(lengths[s])
        seq = np.concatenate([prompt[0], tokens[s, :n]])[None]
        logits = model(jnp.asarray(seq[:, :-1]))
        recomputed = np.asarray(grpo.token_logprobs(logits, jnp.asarray(seq[:, 1:]), temperature))[0, -n:]
        assert np.abs(recomputed - stored[s, :n]).max() <= 1e-5 * np.abs(stored[s, :n]).max(), s


@pytest.mark.parametrize("normalize", ["token", "sequence"])
def test_rl_loss_in_the_train_step_equals_the_direct_loss(normalize):
    """``rl_loss`` through ``make_train_step`` (one batch, and 2 accumulated micro-batches) gives the update of
    the gradient of ``grpo_loss`` computed directly from the model's log-probs."""
    import optax
    from flax import nnx

    from cogito_jax.models import registry
    from cogito_jax.train.step import TrainState, make_train_step

    mcfg = registry.config_for({"family": "qwen2_audio", "size": "tiny"})
    graphdef, params, rest = nnx.split(registry.build(mcfg, 0), nnx.Param, ...)
    rng = np.random.default_rng(1)
    b, t = 4, 10
    ids = rng.integers(10, mcfg.text.vocab_size, (b, t)).astype(np.int32)
    targets = np.roll(ids, -1, 1)
    mask = np.zeros((b, t), np.float32)
    for i, (start, end) in enumerate(((4, 9), (3, 9), (6, 8), (2, 9))):
        mask[i, start:end] = 1
    logits = nnx.merge(graphdef, params, rest)(jnp.asarray(ids))
    now = np.asarray(grpo.token_logprobs(logits, jnp.asarray(targets)))
    old = now + rng.normal(0, 0.3, now.shape).astype(np.float32)  # some ratios outside the clip range
    adv = np.array([1.5, -0.5, 0.8, -1.2], np.float32)
    cfg = GRPOConfig(normalize=normalize, clip_high=0.28, kl_coef=0.1)
    ref = now + rng.normal(0, 0.2, now.shape).astype(np.float32)
    batch = {"input_ids": jnp.asarray(ids), "targets": jnp.asarray(targets), "loss_mask": jnp.asarray(mask),
             "old_logprobs": jnp.asarray(old), "advantages": jnp.asarray(np.repeat(adv[:, None], t, 1)),
             "ref_logprobs": jnp.asarray(ref), "rl_weight": jnp.asarray(grpo.sequence_weights(mask))}

    def direct(p):
        lp = grpo.token_logprobs(nnx.merge(graphdef, p, rest)(jnp.asarray(ids)), jnp.asarray(targets))
        return grpo_loss(lp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), cfg, jnp.asarray(ref))[0]

    want = jax.grad(direct)(params)
    tx = optax.sgd(1.0)
    for accum in (1, 2) if normalize == "token" else (2,):
        state = TrainState(params, tx.init(params), jnp.int32(0))
        new, metrics = jax.jit(make_train_step(graphdef, tx, grpo.rl_loss(cfg), grad_accum=accum))(state, rest, batch)
        np.testing.assert_allclose(float(metrics["loss"]), float(direct(params)), rtol=1e-5)
        for g, p0, p1 in zip(jax.tree.leaves(want), jax.tree.leaves(params), jax.tree.leaves(new.params), strict=True):
            np.testing.assert_allclose(np.asarray(p0) - np.asarray(p1), np.asarray(g), rtol=1e-4,
                                       atol=1e-4 * float(np.abs(np.asarray(g)).max()) + 1e-12)

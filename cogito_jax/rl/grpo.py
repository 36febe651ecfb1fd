"""GRPO: group-relative advantages over the N samples the engine draws per prompt, and the clipped policy loss.

For a prompt's group of N samples with rewards ``r_1..r_N`` the advantage of sample ``i`` is
``(r_i - mean(r)) / (std(r) + eps)`` (the population standard deviation; ``scale_std=False`` keeps only the
centring, as Dr. GRPO does). Every token of a sample shares its advantage. A group whose rewards all agree has
zero advantage everywhere and teaches nothing; ``informative_groups`` finds the others (DAPO's dynamic sampling
drops the rest).

The policy is the model's softmax at the sampling temperature ``T`` (``softmax(logits / T)``: the distribution
the engine draws from and whose log-prob it stores), so the ratio is on-policy for the first update. The loss
of a token with log-prob ``logp`` under the policy being trained, ``old`` under the policy that sampled it (the
engine's stored log-prob), and advantage ``A``::

    ratio = exp(logp - old)
    loss  = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A) + kl_coef * kl

with ``kl = exp(ref - logp) - (ref - logp) - 1`` (the non-negative "k3" estimator of KL(policy || reference),
``ref`` the token's log-prob under a frozen reference model). ``clip_high > clip_low`` is DAPO's clip-higher.
The token losses are averaged over every response token of the batch (``normalize="token"``, DAPO: a long
response weighs by its length) or within each response and then over responses (``"sequence"``, the GRPO
paper's form).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cogito_jax.errors import check_choice, check_number
from cogito_jax.train.step import lm_logits

NORMALIZE = ("token", "sequence")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    normalize: str = "token"
    scale_std: bool = True
    drop_uniform_groups: bool = True
    temperature: float = 1.0  # the sampling temperature: the policy is softmax(logits / temperature)
    eps: float = 1e-6

    def __post_init__(self):
        check_number("rl.temperature", self.temperature, lambda v: v > 0, "> 0 (RL samples)")
        check_number("rl.clip_low", self.clip_low, lambda v: 0 < v < 1, "in (0, 1)")
        check_number("rl.clip_high", self.clip_high, lambda v: v > 0, "> 0")
        check_number("rl.kl_coef", self.kl_coef, lambda v: v >= 0, ">= 0")
        check_choice("rl.normalize", self.normalize, NORMALIZE)


def group_advantages(rewards_pn: Any, scale_std: bool = True, eps: float = 1e-6) -> np.ndarray:
    """Advantages ``[P, N]`` of rewards ``[P, N]`` (P prompts, N samples each), float32."""
    r = np.asarray(rewards_pn, np.float64)
    if r.ndim != 2 or r.shape[1] < 2:
        raise ValueError(f"rewards must be [prompts, samples >= 2], got shape {r.shape}")
    centred = r - r.mean(axis=1, keepdims=True)
    if scale_std:
        centred = centred / (r.std(axis=1, keepdims=True) + eps)
    return centred.astype(np.float32)


def informative_groups(rewards_pn: Any) -> np.ndarray:
    """``[P]`` bool: the groups whose rewards are not all equal."""
    r = np.asarray(rewards_pn)
    return np.any(r != r[:, :1], axis=1)


def token_logprobs(logits_btv: jax.Array, targets_bt: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Log-probs ``[B, T]`` float32 of ``targets`` under ``softmax(logits / temperature)`` (what the engine stores
    for a token it sampled at that temperature)."""
    return logprobs_and_entropy(logits_btv, targets_bt, temperature)[0]


def logprobs_and_entropy(logits_btv: jax.Array, targets_bt: jax.Array, temperature: float = 1.0
                         ) -> tuple[jax.Array, jax.Array]:
    """(log-probs of ``targets``, entropy) under ``softmax(logits / temperature)``, each ``[B, T]`` float32."""
    logits = logits_btv.astype(jnp.float32)
    if temperature != 1.0:
        logits = logits / temperature
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets_bt[..., None].astype(jnp.int32), axis=-1)[..., 0]
    entropy = lse - jnp.sum(jax.nn.softmax(logits, axis=-1) * logits, axis=-1)
    return picked - lse, entropy


def token_terms(logp_bt: jax.Array, old_logp_bt: jax.Array, advantages_bt: jax.Array, cfg: GRPOConfig,
                ref_logp_bt: jax.Array | None = None) -> dict[str, jax.Array]:
    """Per token ``[B, T]``: ``loss`` (clipped objective plus the KL penalty), ``kl``, ``clipped`` (1 where the
    clipped term is the one taken and differs) and ``ratio``."""
    adv = advantages_bt.astype(jnp.float32)
    ratio = jnp.exp(logp_bt.astype(jnp.float32) - old_logp_bt.astype(jnp.float32))
    clipped = jnp.clip(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    loss = -jnp.minimum(ratio * adv, clipped * adv)
    kl = jnp.zeros_like(loss)
    if ref_logp_bt is not None:
        d = ref_logp_bt.astype(jnp.float32) - logp_bt.astype(jnp.float32)
        kl = jnp.exp(d) - d - 1.0
        loss = loss + cfg.kl_coef * kl
    was_clipped = ((adv > 0) & (ratio > 1.0 + cfg.clip_high)) | ((adv < 0) & (ratio < 1.0 - cfg.clip_low))
    return {"loss": loss, "kl": kl, "clipped": was_clipped.astype(jnp.float32), "ratio": ratio}


def grpo_loss(logp_bt: jax.Array, old_logp_bt: jax.Array, advantages_b: jax.Array, mask_bt: jax.Array,
              cfg: GRPOConfig, ref_logp_bt: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) of a batch of responses: ``logp``/``old``/``ref`` per response token ``[B, T]``,
    ``mask`` 1 on response tokens, one advantage per response. Metrics: ``kl`` (mean per token, 0 without a
    reference), ``clip_fraction`` (tokens whose clipped term is the one taken and differs), ``ratio_mean``."""
    mask = mask_bt.astype(jnp.float32)
    terms = token_terms(logp_bt, old_logp_bt, jnp.broadcast_to(advantages_b[:, None], mask.shape), cfg, ref_logp_bt)
    tokens = jnp.maximum(mask.sum(), 1.0)
    weight = mask if cfg.normalize == "token" else sequence_weights(mask)
    metrics = {"kl": jnp.sum(terms["kl"] * mask) / tokens, "clip_fraction": jnp.sum(terms["clipped"] * mask) / tokens,
               "ratio_mean": jnp.sum(terms["ratio"] * mask) / tokens}
    return jnp.sum(terms["loss"] * weight) / tokens, metrics


def sequence_weights(mask_bt: Any) -> Any:
    """Per-token weights ``[B, T]`` whose weighted token mean is the mean over responses of each response's token
    mean: ``tokens / (responses x the response's length)`` on its tokens (``normalize="sequence"``)."""
    xp = jnp if isinstance(mask_bt, jax.Array) else np
    mask = xp.asarray(mask_bt, xp.float32)
    lengths = mask.sum(axis=1, keepdims=True)
    responses = xp.maximum((lengths > 0).sum(), 1)
    return mask * mask.sum() / (responses * xp.maximum(lengths, 1.0))


def rl_loss(cfg: GRPOConfig):
    """A loss function for ``cogito_jax.train.step.make_train_step`` (``(model, batch) -> (total, tokens,
    sums)``, the step divides by the batch's response tokens): the batch holds the pipeline's fields with
    ``loss_mask`` 1 on response tokens, and per target position ``[B, T]`` ``old_logprobs``, ``advantages``,
    optionally ``ref_logprobs`` and (``normalize="sequence"``) ``rl_weight`` from :func:`sequence_weights`."""
    def loss(model: Any, batch: dict[str, Any]) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        mask = batch["loss_mask"].astype(jnp.float32)
        logp, entropy = logprobs_and_entropy(lm_logits(model, batch), batch["targets"], cfg.temperature)
        terms = token_terms(logp, batch["old_logprobs"], batch["advantages"], cfg, batch.get("ref_logprobs"))
        weight = batch["rl_weight"] if cfg.normalize == "sequence" else mask
        sums = {"kl": jnp.sum(terms["kl"] * mask), "clipped": jnp.sum(terms["clipped"] * mask),
                "ratio": jnp.sum(terms["ratio"] * mask), "entropy": jax.lax.stop_gradient(jnp.sum(entropy * mask))}
        return jnp.sum(terms["loss"] * weight), jnp.sum(mask > 0).astype(jnp.float32), sums

    return loss

"""A small NNX audio LM with the real models' call signature, for testing training machinery fast."""

import jax
import jax.numpy as jnp
from flax import nnx

from cogito_jax import sharding


class ToyAudioLM(nnx.Module):
    """Token embedding + a pooled projection of the mel frames, one MLP block, untied head."""

    def __init__(self, vocab: int, n_mels: int, d: int = 32, *, rngs: nnx.Rngs):
        part, init = nnx.with_partitioning, nnx.initializers.normal(0.05)
        self.llm_embed = nnx.Param(part(init, ("vocab", "embed"))(rngs.params(), (vocab, d)))
        self.audio_encoder = nnx.Linear(n_mels, d, kernel_init=part(init, (None, "embed")), rngs=rngs)
        self.projector = nnx.Linear(d, d, kernel_init=part(init, ("embed", None)), rngs=rngs)
        self.llm_up = nnx.Linear(d, 4 * d, kernel_init=part(init, ("embed", "mlp")), rngs=rngs)
        self.llm_down = nnx.Linear(4 * d, d, kernel_init=part(init, ("mlp", "embed")), rngs=rngs)
        self.llm_norm = nnx.RMSNorm(d, rngs=rngs)
        self.lm_head = nnx.Linear(d, vocab, kernel_init=part(init, ("embed", "vocab")), rngs=rngs)

    def __call__(self, input_ids, input_features=None, feature_attention_mask=None, attention_mask=None):
        x_btd = self.llm_embed[...][input_ids]
        if input_features is not None:
            m_bf = feature_attention_mask.astype(jnp.float32)
            pooled_bm = jnp.einsum("bmf,bf->bm", input_features, m_bf) / jnp.maximum(m_bf.sum(-1, keepdims=True), 1)
            x_btd = x_btd + self.projector(jax.nn.gelu(self.audio_encoder(pooled_bm)))[:, None, :]
        # causal running mean over the sequence, so each position sees its past
        t = x_btd.shape[1]
        causal_tt = jnp.tril(jnp.ones((t, t))) / jnp.arange(1, t + 1)[:, None]
        h_btd = x_btd + jnp.einsum("ts,bsd->btd", causal_tt, x_btd)
        h_btd = sharding.constrain(h_btd, ("batch", "length", "embed"))
        h_btd = h_btd + self.llm_down(jax.nn.gelu(self.llm_up(self.llm_norm(h_btd))))
        return self.lm_head(h_btd)

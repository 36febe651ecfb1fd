"""Tiny random HF (PyTorch) reference models built from configs, saved to disk; nothing is downloaded.

``tiny_qwen2_audio(tmp_path_factory, **text)`` builds and saves a model once per test session for each
set of options (call it from a session-scoped fixture); ``make_batch`` makes a padded audio + text
batch with the right number of audio placeholders.
"""

import pathlib

import numpy as np
import torch

from cogito_jax.data.chat import num_audio_tokens

AUDIO_TOKEN = 290
N_MELS, N_FRAMES = 16, 32  # tiny encoder: max_source_positions=16 -> 32 mel frames

_SAVED: dict = {}


def qwen2_audio_config(**text):
    from transformers import Qwen2AudioConfig

    t = dict(model_type="qwen2", vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rope_parameters=dict(
                 rope_theta=10000.0, rope_type="default"), tie_word_embeddings=False)
    t.update(text)
    return Qwen2AudioConfig(
        audio_config=dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                          num_mel_bins=N_MELS, max_source_positions=N_FRAMES // 2),
        text_config=t, audio_token_index=AUDIO_TOKEN)


def save_qwen2_audio(path: pathlib.Path, seed: int = 0, **text) -> torch.nn.Module:
    """A random tiny ``Qwen2AudioForConditionalGeneration`` (fp32, eval mode) saved to ``path``."""
    from transformers import Qwen2AudioForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(qwen2_audio_config(**text)).eval()
    with torch.no_grad():  # make norms and biases non-trivial so a wrong mapping cannot hide
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(path))
    return model


def tiny_qwen2_audio(tmp_path_factory, **text) -> tuple[pathlib.Path, torch.nn.Module]:
    """(checkpoint folder, HF model), built once per session for each set of text-config options."""
    key = tuple(sorted(text.items()))
    if key not in _SAVED:
        path = tmp_path_factory.mktemp("qwen2_audio_hf")
        _SAVED[key] = (path, save_qwen2_audio(path, **text))
    return _SAVED[key]


def make_batch(seed=0, lengths=(32, 19), t=24, left_pad=(0, 3)):
    """(input_ids, input_features, feature_attention_mask, attention_mask) as int64/float32 NumPy arrays:
    audio of different valid lengths, prompts with one placeholder per audio frame, left padding."""
    rng = np.random.default_rng(seed)
    b = len(lengths)
    feats = rng.normal(size=(b, N_MELS, N_FRAMES)).astype(np.float32)
    fmask = np.zeros((b, N_FRAMES), np.int64)
    ids = np.zeros((b, t), np.int64)
    am = np.zeros((b, t), np.int64)
    for i, n in enumerate(lengths):
        fmask[i, :n] = 1
        na = num_audio_tokens("qwen2_audio", n)
        body = list(rng.integers(10, 280, t - na - left_pad[i]))
        seq = body[:3] + [AUDIO_TOKEN] * na + body[3:]
        ids[i, t - len(seq):] = seq
        am[i, t - len(seq):] = 1
    return ids, feats, fmask, am


def hf_logits(model, ids, feats=None, fmask=None, am=None) -> np.ndarray:
    """HF logits as float32 NumPy."""
    kw = dict(input_ids=torch.tensor(ids))
    if feats is not None:
        kw.update(input_features=torch.tensor(feats), feature_attention_mask=torch.tensor(fmask))
    if am is not None:
        kw.update(attention_mask=torch.tensor(am))
    with torch.no_grad():
        return model(**kw).logits.float().numpy()


def rel_err(out, ref, mask=None) -> float:
    """max |out - ref| / max |ref| over the positions where ``mask`` ([B, T]) is true."""
    out, ref = np.asarray(out, np.float32), np.asarray(ref, np.float32)
    if mask is not None:
        out, ref = out[np.asarray(mask, bool)], ref[np.asarray(mask, bool)]
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def mesh_forward(graphdef, state, mesh, rules, *batch) -> np.ndarray:
    """Logits of a model split into (``graphdef``, sharded ``state``), jitted under ``mesh`` and ``rules``."""
    import jax
    from flax import nnx

    from cogito_jax import sharding

    @jax.jit
    def fwd(state, *batch):
        with sharding.use_rules(rules):
            return nnx.merge(graphdef, state)(*batch)

    with jax.set_mesh(mesh):
        return np.asarray(fwd(state, *batch))

"""Qwen2-Audio in JAX against transformers (PyTorch, CPU) on tiny random models built from configs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file

from cogito_jax import sharding
from cogito_jax.convert import load_hf, save_hf
from cogito_jax.data.chat import num_audio_tokens
from cogito_jax.models import registry
from tests.hf_tiny import AUDIO_TOKEN, save_qwen2_audio


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen2_audio_hf")
    return d, save_qwen2_audio(d)


def make_batch(seed=0, lengths=(32, 19), t=24, left_pad=(0, 3)):
    """Padded audio of different lengths, prompts with the right number of placeholders, left padding."""
    rng = np.random.default_rng(seed)
    b = len(lengths)
    feats = rng.normal(size=(b, 16, 32)).astype(np.float32)
    fmask = np.zeros((b, 32), np.int64)
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


def hf_logits(model, ids, feats, fmask, am):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), input_features=torch.tensor(feats), attention_mask=torch.tensor(am),
                     feature_attention_mask=torch.tensor(fmask)).logits.float().numpy()


def jax_logits(model, ids, feats, fmask, am):
    return np.asarray(model(jnp.asarray(ids, jnp.int32), jnp.asarray(feats), jnp.asarray(fmask, jnp.int32),
                            jnp.asarray(am, jnp.int32)))


def rel_err(out, ref, mask):
    return np.abs(out - ref)[mask].max() / np.abs(ref[mask]).max()


def test_logits_match_transformers(hf_dir):
    path, hf = hf_dir
    model, cfg = load_hf(path)
    assert cfg.text.num_kv_heads == 2 and cfg.text.num_heads == 4  # GQA
    batch = make_batch()
    ref, out = hf_logits(hf, *batch), jax_logits(model, *batch)
    assert rel_err(out, ref, batch[3].astype(bool)) <= 1e-4
    # Encoder outputs alone, on audio whose valid length is not the full window.
    ids, feats, fmask, am = batch
    with torch.no_grad():
        enc_ref = hf.model.audio_tower(torch.tensor(feats), attention_mask=None).last_hidden_state.numpy()
    enc, lens = model.audio_encoder(jnp.asarray(feats), jnp.ones((2, 32), jnp.int32))
    assert rel_err(np.asarray(enc), enc_ref, np.ones(enc_ref.shape, bool)) <= 1e-4
    assert lens.tolist() == [8, 8]


def test_text_only_and_no_mask(hf_dir):
    path, hf = hf_dir
    model, _ = load_hf(path)
    ids = np.random.default_rng(1).integers(0, 280, (3, 11))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids)).logits.numpy()
    out = np.asarray(model(jnp.asarray(ids, jnp.int32)))
    assert rel_err(out, ref, np.ones(ref.shape, bool)) <= 1e-4


def test_save_hf_loads_in_transformers_and_roundtrip_is_bitwise(hf_dir, tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    path, hf = hf_dir
    model, cfg = load_hf(path)
    out_dir = save_hf(model, cfg, tmp_path / "exported")
    original, exported = load_file(str(path / "model.safetensors")), load_file(str(out_dir / "model.safetensors"))
    assert original.keys() == exported.keys()
    for k in original:
        np.testing.assert_array_equal(original[k], exported[k], err_msg=k)
    reloaded = Qwen2AudioForConditionalGeneration.from_pretrained(str(out_dir)).eval()
    batch = make_batch(seed=2)
    np.testing.assert_array_equal(hf_logits(reloaded, *batch), hf_logits(hf, *batch))


def test_bf16_sharded_export(hf_dir, tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    path, hf = hf_dir
    model, cfg = load_hf(path)
    out_dir = save_hf(model, cfg, tmp_path / "bf16", dtype=jnp.bfloat16, max_shard_bytes=20_000)
    index = json.loads((out_dir / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    reloaded = Qwen2AudioForConditionalGeneration.from_pretrained(str(out_dir), dtype=torch.float32).eval()
    back, _ = load_hf(out_dir)  # and our own loader reads the sharded bf16 files
    batch = make_batch(seed=3)
    ref = hf_logits(hf, *batch)
    assert rel_err(hf_logits(reloaded, *batch), ref, batch[3].astype(bool)) < 3e-2
    assert rel_err(jax_logits(back, *batch), ref, batch[3].astype(bool)) < 3e-2


@pytest.mark.parametrize("mesh_cfg, rules", [(dict(data=2, fsdp=2, tensor=2), "fsdp_tp"),
                                             (dict(data=1, fsdp=2, expert=4), "fsdp_ep")])
def test_sharded_forward_equals_single_device(hf_dir, mesh_cfg, rules, cpu_devices):
    path, _ = hf_dir
    single, _ = load_hf(path)
    batch = make_batch(seed=4, lengths=(32, 19, 25, 9), left_pad=(0, 3, 1, 2))
    ref = jax_logits(single, *batch)
    mesh = sharding.make_mesh(mesh_cfg)
    r = sharding.resolve_rules(rules)
    model, _ = load_hf(path, mesh=mesh, rules=r)
    kernel = model.llm.layers.mlp.up_proj.kernel[...]
    assert len(kernel.sharding.device_set) == 8 and not kernel.sharding.is_fully_replicated
    graphdef, state = nnx.split(model)

    @jax.jit
    def fwd(state, ids, feats, fmask, am):
        with sharding.use_rules(r):
            return nnx.merge(graphdef, state)(ids, feats, fmask, am)

    with jax.set_mesh(mesh):
        out = np.asarray(fwd(state, *(jnp.asarray(x) for x in batch)))
    np.testing.assert_allclose(out, ref, atol=1e-5 * np.abs(ref).max(), rtol=0)


def test_kv_cache_decode_matches_full_forward(hf_dir):
    path, _ = hf_dir
    model, _ = load_hf(path)
    ids, feats, fmask, am = make_batch(seed=5)
    ids, am = jnp.asarray(ids, jnp.int32), jnp.asarray(am, jnp.int32)
    positions = jnp.maximum(jnp.cumsum(am, axis=1) - 1, 0)  # HF generate's positions for left padding
    full = model(ids, jnp.asarray(feats), jnp.asarray(fmask, jnp.int32), am, positions=positions)
    p = 18  # prefill the first 18 tokens, decode the remaining 6 one by one
    audio = model.encode_audio(jnp.asarray(feats), jnp.asarray(fmask, jnp.int32))
    cache = model.init_cache(2, 32)
    last, cache = model.prefill(ids[:, :p], am[:, :p], positions[:, :p], cache, audio)
    steps = [last]
    for t in range(p, ids.shape[1] - 1):
        logits, cache = model.decode(ids[:, t], positions[:, t], cache)
        steps.append(logits)
    got = np.stack([np.asarray(s) for s in steps], axis=1)
    want = np.asarray(full[:, p - 1:-1])
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=0)


def test_param_count_of_7b_equals_transformers():
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    from cogito_jax.config import load_config_file

    hf_cfg = load_config_file("configs/models/qwen2_audio.py:7b").to_dict()
    cfg = registry.FAMILIES["qwen2_audio"].from_hf(hf_cfg)
    abstract = sharding.abstract_model(lambda: registry.build(cfg))
    ours = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    with torch.device("meta"):
        ref = Qwen2AudioForConditionalGeneration(Qwen2AudioConfig(**hf_cfg))
    theirs = sum(p.numel() for p in ref.parameters())
    assert ours == theirs, (ours, theirs)
    assert 8.0e9 < ours < 8.6e9  # Qwen2-Audio-7B has about 8.4B parameters


def test_unknown_family(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type='llama' is not supported"):
        load_hf(tmp_path)

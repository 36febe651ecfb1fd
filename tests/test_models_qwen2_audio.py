"""Qwen2-Audio in JAX against transformers (PyTorch, CPU) on tiny random models built from configs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from cogito_jax import sharding
from cogito_jax.convert import load_hf
from cogito_jax.models import registry
from cogito_jax.models.decoder import Decoder, DecoderConfig, dense_mlp
from tests.hf_tiny import (
    AUDIO_TOKEN,
    hf_logits,
    make_batch,
    mesh_forward,
    qwen2_audio_config,
    rel_err,
    tiny_qwen2_audio,
)


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
    return tiny_qwen2_audio(tmp_path_factory)


@pytest.fixture(scope="session")
def model(hf_dir):
    return load_hf(hf_dir[0])[0]


@nnx.jit
def forward(model, ids, feats, fmask, am):
    return model(ids, feats, fmask, am)


def jax_logits(model, ids, feats=None, fmask=None, am=None, fwd=forward):
    conv = lambda x, dt=jnp.int32: None if x is None else jnp.asarray(x, dt)  # noqa: E731
    return np.asarray(fwd(model, conv(ids), conv(feats, jnp.float32), conv(fmask), conv(am)))


def test_logits_match_transformers(hf_dir, model):
    """Padded audio of different lengths, left-padded text, GQA (4 query / 2 kv heads)."""
    _, hf = hf_dir
    assert model.cfg.text.num_kv_heads == 2 and model.cfg.text.num_heads == 4
    batch = make_batch(lengths=(32, 19, 7), left_pad=(0, 3, 6))
    assert rel_err(jax_logits(model, *batch), hf_logits(hf, *batch), batch[3]) <= 1e-4


def test_encoder_matches_transformers_with_padding(hf_dir, model):
    """The encoder with HF's key mask for clips shorter than the 32-frame window, and HF's lengths."""
    from transformers.masking_utils import create_bidirectional_mask

    _, hf = hf_dir
    _, feats, fmask, _ = make_batch(lengths=(32, 19, 7), left_pad=(0, 0, 0))
    tower = hf.model.audio_tower
    conv_len, out_len = tower._get_feat_extract_output_lengths(torch.tensor(fmask.sum(-1)))
    mask_2d = (torch.arange(16)[None] < conv_len[:, None]).long()
    mask = create_bidirectional_mask(config=tower.config, inputs_embeds=torch.zeros(3, 16, 1), attention_mask=mask_2d)
    with torch.no_grad():
        ref = tower(torch.tensor(feats), attention_mask=mask).last_hidden_state.numpy()
    enc, lens = nnx.jit(lambda m, f, k: m.audio_encoder(f, k))(model, jnp.asarray(feats), jnp.asarray(fmask))
    assert lens.tolist() == out_len.tolist() == [8, 5, 2]
    valid = np.arange(8)[None] < np.asarray(lens)[:, None]
    assert rel_err(enc, ref, valid) <= 1e-4
    # Without a mask every frame is valid: the whole output matches HF's unmasked encoder.
    with torch.no_grad():
        ref_full = tower(torch.tensor(feats)).last_hidden_state.numpy()
    assert rel_err(model.audio_encoder(jnp.asarray(feats))[0], ref_full) <= 1e-4


def test_text_only_and_no_mask(hf_dir, model):
    _, hf = hf_dir
    ids = np.random.default_rng(1).integers(0, 280, (3, 11))
    assert rel_err(jax_logits(model, ids), hf_logits(hf, ids)) <= 1e-4


def test_placeholder_count_mismatch_is_an_error(model):
    ids, feats, fmask, am = make_batch()
    ids[0, -1] = AUDIO_TOKEN
    with pytest.raises(ValueError, match="audio placeholder tokens"):
        model(jnp.asarray(ids), jnp.asarray(feats), jnp.asarray(fmask), jnp.asarray(am))


def test_packed_segments_equal_separate_sequences(hf_dir, model):
    """Two prompts with audio packed in one row (segment ids, positions restarting) = HF on each alone."""
    _, hf = hf_dir
    ids, feats, fmask, am = make_batch(seed=6, lengths=(32, 19), t=20, left_pad=(0, 0))
    la, lb = 20, 20
    a, b = ids[0], ids[1]
    packed = np.concatenate([a, b, [0, 0]])[None]
    segments = np.array([[1] * la + [2] * lb + [0, 0]])
    positions = np.concatenate([np.arange(la), np.arange(lb), [0, 0]])[None]
    out = model(jnp.asarray(packed), jnp.asarray(feats), jnp.asarray(fmask), positions=jnp.asarray(positions),
                segment_ids=jnp.asarray(segments))
    ref_a = hf_logits(hf, a[None], feats[:1], fmask[:1])
    ref_b = hf_logits(hf, b[None], feats[1:], fmask[1:])
    assert rel_err(out[:, :la], ref_a) <= 1e-4
    assert rel_err(out[:, la:la + lb], ref_b) <= 1e-4


def test_kv_cache_decode_matches_full_forward(model):
    """Prefill + one-token decode steps (left-padded batch, HF generate's positions) = full forward."""
    ids, feats, fmask, am = (jnp.asarray(x) for x in make_batch(seed=5))
    positions = jnp.maximum(jnp.cumsum(am, axis=1) - 1, 0)
    full = nnx.jit(lambda m, *a: m(*a, positions=positions))(model, ids, feats, fmask, am)
    p = 18  # prefill the first 18 tokens (all the audio), decode the remaining 6 one by one
    audio = nnx.jit(lambda m, f, k: m.encode_audio(f, k))(model, feats, fmask)
    cache = model.init_cache(2, 32)
    last, cache = nnx.jit(lambda m, *a: m.prefill(*a))(model, ids[:, :p], am[:, :p], positions[:, :p], cache, audio)
    step = nnx.jit(lambda m, *a: m.decode(*a))
    steps = [last]
    for t in range(p, ids.shape[1] - 1):
        logits, cache = step(model, ids[:, t], positions[:, t], cache)
        steps.append(logits)
    assert int(cache.index) == ids.shape[1] - 1
    got, want = np.stack(steps, axis=1), np.asarray(full[:, p - 1:-1])
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0)
    rep = cache.repeat(3)  # rows 3b .. 3b+2 are copies of row b
    for r in range(6):
        np.testing.assert_array_equal(np.asarray(rep.k[:, r]), np.asarray(cache.k[:, r // 3]))
        np.testing.assert_array_equal(np.asarray(rep.valid[r]), np.asarray(cache.valid[r // 3]))


def test_dot_product_attention_and_splash_impls(hf_dir, model):
    """``jax.nn.dot_product_attention`` and the Pallas splash kernel (interpret mode on CPU) give the XLA path's
    logits on real tokens (padded audio in the encoder, left-padded text in the decoder)."""
    path, _ = hf_dir
    batch = make_batch(seed=7, lengths=(32, 19, 7), left_pad=(0, 3, 6))
    ref = jax_logits(model, *batch)
    other = load_hf(path, attn_impl="dot_product_attention")[0]
    np.testing.assert_allclose(jax_logits(other, *batch), ref, rtol=0, atol=1e-5)
    splash = load_hf(path, attn_impl="splash")[0]
    assert splash.cfg.audio.attn_impl == splash.cfg.text.attn_impl == "splash"
    assert rel_err(jax_logits(splash, *batch), ref, batch[3]) <= 1e-5


def test_splash_gradients_on_packed_rows():
    """Packed rows (segment ids, padding as segment 0): the splash kernel's forward and backward equal XLA's."""
    cfg = dataclasses.replace(DECODER, num_layers=2)
    x = jax.random.normal(jax.random.key(1), (2, 150, 16))
    seg = np.zeros((2, 150), np.int32)
    seg[0, :60], seg[0, 60:140], seg[1, :150] = 1, 2, 1  # row 0: two sequences then padding; row 1: one
    pos = np.concatenate([np.arange(60), np.arange(90)])[None].repeat(2, 0)
    pos[1] = np.arange(150)
    real = seg > 0

    def loss_and_grads(impl):
        m = Decoder(dataclasses.replace(cfg, attn_impl=impl), rngs=nnx.Rngs(0))
        loss = lambda m: jnp.sum(jnp.where(real[..., None], m(x, pos, segment_ids_bt=seg)[0], 0) ** 2)  # noqa: E731
        return nnx.jit(lambda m: nnx.value_and_grad(loss)(m))(m)

    (ref, ref_g), (got, got_g) = loss_and_grads("xla"), loss_and_grads("splash")
    np.testing.assert_allclose(float(got), float(ref), rtol=1e-5)
    for g, r in zip(jax.tree.leaves(got_g), jax.tree.leaves(ref_g), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-5 * np.abs(r).max())


def test_bf16_compute_with_fp32_params(hf_dir, model):
    path, hf = hf_dir
    m16 = load_hf(path, compute_dtype=jnp.bfloat16)[0]
    assert m16.llm.layers.mlp.up_proj.kernel[...].dtype == jnp.float32
    batch = make_batch(seed=8)
    out = forward(m16, *(jnp.asarray(x) for x in batch))
    assert out.dtype == jnp.bfloat16
    assert rel_err(out, hf_logits(hf, *batch), batch[3]) < 5e-2


@pytest.mark.parametrize("impl, axes", [
    ("xla", dict(data=2, fsdp=2, tensor=2)),
    ("splash", dict(data=2, fsdp=2, tensor=2)),  # the kernel per (batch, head) shard
    ("splash", dict(fsdp=2, tensor=4)),  # 2 kv heads cannot follow 4 query heads over tensor=4: repeated
])
def test_create_sharded_forward_equals_single_device(cpu_devices, impl, axes):
    """A model created sharded on a mesh gives the single-device logits."""
    cfg = registry.FAMILIES["qwen2_audio"].from_hf(qwen2_audio_config().to_dict(), attn_impl=impl)
    mesh, rules = sharding.make_mesh(axes), sharding.resolve_rules("fsdp_tp")
    sharded = sharding.create_sharded(lambda: registry.build(cfg, seed=3), mesh, rules)
    kernel = sharded.llm.layers.self_attn.q_proj.kernel[...]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    graphdef, state = nnx.split(sharded)
    single = nnx.merge(graphdef, jax.device_put(jax.device_get(state), jax.devices()[0]))
    batch = [jnp.asarray(x) for x in make_batch(seed=9, lengths=(32, 19, 7, 32), left_pad=(0, 3, 1, 2))]
    ref = np.asarray(forward(single, *batch))
    out = mesh_forward(graphdef, state, mesh, rules, *batch)
    np.testing.assert_allclose(out, ref, atol=1e-5 * np.abs(ref).max(), rtol=0)


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
    assert 8.3e9 < ours < 8.5e9  # Qwen2-Audio-7B: 8.40B parameters
    # The released config.json gives only a few text fields; the rest are transformers' defaults.
    released = dict(model_type="qwen2_audio", audio_token_index=151646, audio_config=dict(
        model_type="qwen2_audio_encoder", num_mel_bins=128, encoder_layers=32, encoder_attention_heads=20,
        encoder_ffn_dim=5120, d_model=1280, max_source_positions=1500), text_config=dict(
        model_type="qwen2", intermediate_size=11008, vocab_size=156032, rms_norm_eps=1e-5,
        max_position_embeddings=8192))
    got = registry.FAMILIES["qwen2_audio"].from_hf(released)
    assert (got.audio, got.text, got.audio_token_id) == (cfg.audio, cfg.text, cfg.audio_token_id)


DECODER = DecoderConfig(vocab_size=50, hidden_size=16, num_layers=3, num_heads=4, num_kv_heads=1, head_dim=8,
                        intermediate_size=32, qk_norm=True, qkv_bias=False)


def test_remat_keeps_values_and_grads():
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    pos = jnp.broadcast_to(jnp.arange(5), (2, 5))

    @nnx.jit
    def value_and_grad(m):
        return nnx.value_and_grad(lambda m: jnp.mean(m(x, pos)[0] ** 2))(m)

    ref_value, ref_grads = value_and_grad(Decoder(DECODER, rngs=nnx.Rngs(0)))
    for policy in ("full", "dots"):
        value, grads = value_and_grad(Decoder(dataclasses.replace(DECODER, remat=policy), rngs=nnx.Rngs(0)))
        np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-6)
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-7, err_msg=policy)


def test_decoder_tied_head_and_mlp_aux_outputs():
    """A tied LM head equals an untied one holding the embedding's transpose; MLP aux outputs stack per layer."""
    cfg = DECODER
    untied = Decoder(cfg, rngs=nnx.Rngs(0))
    tied = Decoder(dataclasses.replace(cfg, tie_embeddings=True), rngs=nnx.Rngs(0))
    assert not hasattr(tied, "lm_head")
    nnx.update(tied, nnx.state(untied, nnx.Not(nnx.PathContains("lm_head"))))
    untied.lm_head.kernel[...] = untied.embed_tokens.embedding[...].T
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    pos = jnp.broadcast_to(jnp.arange(5), (2, 5))
    np.testing.assert_allclose(np.asarray(tied(x, pos)[0]), np.asarray(untied(x, pos)[0]), rtol=1e-6, atol=1e-6)

    class WithAux(nnx.Module):
        def __init__(self, cfg, rngs):
            self.inner = dense_mlp(cfg, rngs)

        def __call__(self, x):
            y = self.inner(x)
            return y, y.sum(-1)

    aux_model = Decoder(cfg, rngs=nnx.Rngs(0), mlp_factory=WithAux)  # same draws: same parameters
    logits, cache, aux = aux_model(x, pos, return_aux=True)
    assert cache is None and aux.shape == (3, 2, 5)
    plain = Decoder(cfg, rngs=nnx.Rngs(0))(x, pos)[0]
    np.testing.assert_allclose(np.asarray(logits), np.asarray(plain), rtol=1e-6, atol=1e-6)


def test_decoder_matches_transformers_qwen3_dense():
    """The Qwen3 options (q/k RMSNorm, head_dim != hidden / heads, no qkv bias, tied head, rope theta 1e6)
    against transformers' Qwen3ForCausalLM on a left-padded batch."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from cogito_jax.convert import load_params
    from cogito_jax.models.hf_weights import LINEAR, SAME

    torch.manual_seed(0)
    hf = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=120, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, rope_parameters=dict(
            rope_theta=1e6, rope_type="default"))).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    cfg = DecoderConfig(vocab_size=120, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                        intermediate_size=48, rope_theta=1e6, qkv_bias=False, qk_norm=True, tie_embeddings=True)
    dec = Decoder(cfg, rngs=nnx.Rngs(0))
    layer = "model.layers.{i}."
    table = {"embed_tokens/embedding": ("model.embed_tokens.weight", SAME), "norm/weight": ("model.norm.weight", SAME)}
    for ln in ("input_layernorm", "post_attention_layernorm"):
        table[f"layers/{ln}/weight"] = (layer + f"{ln}.weight", SAME)
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        table[f"layers/self_attn/{n}/kernel"] = (layer + f"self_attn.{n}.weight", LINEAR)
    for n in ("q_norm", "k_norm"):
        table[f"layers/self_attn/{n}/weight"] = (layer + f"self_attn.{n}.weight", SAME)
    for n in ("gate_proj", "up_proj", "down_proj"):
        table[f"layers/mlp/{n}/kernel"] = (layer + f"mlp.{n}.weight", LINEAR)
    weights = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    load_params(dec, table, weights)
    ids = np.random.default_rng(0).integers(0, 120, (2, 9))
    am = np.ones((2, 9), np.int64)
    am[1, :4] = 0
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(am)).logits.numpy()
    positions = jnp.broadcast_to(jnp.arange(9), (2, 9))
    out, _ = dec(dec.embed(jnp.asarray(ids)), positions, attention_mask_bt=jnp.asarray(am))
    assert rel_err(out, ref, am) <= 1e-4


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="remat='some'"):
        DecoderConfig(vocab_size=8, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=4,
                      intermediate_size=8, remat="some")
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        DecoderConfig(vocab_size=8, hidden_size=8, num_layers=1, num_heads=4, num_kv_heads=3, head_dim=4,
                      intermediate_size=8)

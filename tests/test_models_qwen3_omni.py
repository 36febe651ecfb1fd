"""The Qwen3-Omni thinker (AuT encoder + Qwen3-MoE decoder) in JAX against transformers (PyTorch, CPU)."""

import dataclasses

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
from cogito_jax.sampling import generate
from cogito_jax.sampling.continuous import ContinuousEngine, Request, SlotConfig
from configs.models.qwen3_omni_thinker import get_config
from tests.hf_tiny import hf_logits, mesh_forward, rel_err
from tests.hf_tiny_qwen3_omni import save_thinker

AUDIO_TOKEN, N_MELS, FRAMES = 500, 16, 450
EOS, PAD = 7, 0


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen3_omni_hf")
    return d, save_thinker(d)


@pytest.fixture(scope="module")
def model(hf_dir):
    return load_hf(hf_dir[0])[0]


def make_batch(seed=0, lengths=(437, 100, 73), left_pad=(0, 5, 11), text=12):
    """Audio of lengths not a multiple of the 100-frame chunk (and one exactly one chunk), prompts with
    one placeholder per encoder token, left padding of different widths."""
    rng = np.random.default_rng(seed)
    b = len(lengths)
    feats = rng.normal(size=(b, N_MELS, FRAMES)).astype(np.float32)
    fmask = np.zeros((b, FRAMES), np.int64)
    n_audio = [num_audio_tokens("qwen3_omni_thinker", n) for n in lengths]
    t = max(n_audio) + text + max(left_pad)
    ids, am = np.full((b, t), PAD, np.int64), np.zeros((b, t), np.int64)
    for i, n in enumerate(lengths):
        fmask[i, :n] = 1
        body = list(rng.integers(10, 490, t - n_audio[i] - left_pad[i] - 3))
        seq = body[:3] + [AUDIO_TOKEN] * n_audio[i] + body[3:] + [11, 12, 13]
        ids[i, t - len(seq):] = seq
        am[i, t - len(seq):] = 1
    return ids, feats, fmask, am


@nnx.jit
def forward(model, ids, feats, fmask, am):
    return model(ids, feats, fmask, am)


def jax_logits(model, ids, feats, fmask, am):
    return np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(feats), jnp.asarray(fmask), jnp.asarray(am)))


def test_config_is_the_thinker(model):
    cfg = model.cfg
    assert cfg.family == "qwen3_omni_thinker" and not cfg.projector and cfg.positions_from_mask
    t = cfg.text
    assert (t.num_experts, t.num_experts_per_tok, t.num_heads, t.num_kv_heads, t.qk_norm) == (8, 2, 4, 2, True)
    assert not hasattr(model, "projector")


def test_logits_match_transformers(hf_dir, model):
    """MoE (8 experts, top-2), GQA, QK-norm, chunked audio of odd lengths, left padding."""
    _, hf = hf_dir
    batch = make_batch()
    assert rel_err(jax_logits(model, *batch), hf_logits(hf, *batch), batch[3]) <= 1e-4


def test_dense_expert_reference_agrees(hf_dir, model):
    """The dropless grouped-matmul experts equal every-token-through-every-expert."""
    path, _ = hf_dir
    dense = load_hf(path)[0]
    _, state = nnx.split(dense)
    text = dataclasses.replace(dense.cfg.text, moe_impl="dense")
    cfg = dataclasses.replace(dense.cfg, text=text)
    ref_model = registry.FAMILIES[cfg.family].build(cfg, nnx.Rngs(0))
    nnx.update(ref_model, state)
    batch = make_batch(seed=1)
    np.testing.assert_allclose(jax_logits(ref_model, *batch), jax_logits(model, *batch), rtol=0, atol=1e-5)


def test_save_hf_loads_in_transformers_and_round_trip_is_bitwise(hf_dir, model, tmp_path):
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    path, hf = hf_dir
    out = save_hf(model, model.cfg, tmp_path / "out")
    src, back = load_file(str(path / "model.safetensors")), load_file(str(out / "model.safetensors"))
    kept = {k for k in src if not k.startswith("visual.")}
    assert set(back) == kept
    for k in kept:
        assert back[k].dtype == src[k].dtype and np.array_equal(back[k], src[k]), k
    reloaded = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(str(out)).eval()
    batch = make_batch(seed=2)
    np.testing.assert_array_equal(hf_logits(reloaded, *batch), hf_logits(hf, *batch))


@pytest.fixture(scope="module")
def greedy_ref(hf_dir):
    """A left-padded batch with audio and transformers' greedy output for it (prompt included), 10 new tokens."""
    _, hf = hf_dir
    ids, feats, fmask, am = make_batch(seed=3, lengths=(250, 61), left_pad=(0, 4))
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(am),
                          input_features=torch.tensor(feats), feature_attention_mask=torch.tensor(fmask),
                          do_sample=False, max_new_tokens=10, eos_token_id=EOS, pad_token_id=PAD).numpy()
    return ids, feats, fmask, am, ref


def test_greedy_generate_equals_transformers(greedy_ref, model):
    ids, feats, fmask, am, ref = greedy_ref
    ref_new = ref[:, ids.shape[1]:]
    out = np.asarray(generate(model, ids, input_features=feats, feature_attention_mask=fmask, max_new_tokens=10,
                              eos_token_id=EOS, pad_token_id=PAD))[:, 0]
    np.testing.assert_array_equal(out[:, :ref_new.shape[1]], ref_new)


def test_continuous_greedy_equals_transformers(greedy_ref, model):
    """The continuous-batching engine on the MoE thinker: unpadded prompts with audio through 3 slots, 2 samples
    each, prefill in chunks: greedy samples equal HF generate."""
    ids, feats, fmask, am, ref = greedy_ref
    reqs = [Request(id=f"p{b}", ids=ids[b][am[b] == 1].tolist(), samples=range(2), max_new_tokens=10,
                    stop_ids=(EOS,), mel=feats[b].T, n_frames=int(fmask[b].sum())) for b in range(2)]
    eng = ContinuousEngine(model, SlotConfig(slots=3, page_size=8, max_context=128, prefill_chunk=32,
                                             steps_per_sync=4, block_pages=2))
    got = {}
    eng.run(reqs, lambda f: got.__setitem__((f.id, f.sample), f.tokens), max_frames=FRAMES)
    for b in range(2):
        want = ref[b, ids.shape[1]:].tolist()
        want = want[:want.index(EOS) + 1] if EOS in want else want
        assert got[(f"p{b}", 0)] == got[(f"p{b}", 1)] == want


@pytest.mark.parametrize("axes, preset", [(dict(data=2, fsdp=2, tensor=2), "fsdp_tp"),
                                          (dict(fsdp=2, expert=4), "fsdp_ep")])
def test_sharded_forward_equals_single_device(cpu_devices, hf_dir, model, axes, preset):
    mesh, rules = sharding.make_mesh(axes), sharding.resolve_rules(preset)
    sharded = load_hf(hf_dir[0], mesh=mesh, rules=rules)[0]
    if "expert" in axes:
        spec = sharded.llm.layers.mlp.gate_proj[...].sharding.spec
        assert "expert" in jax.tree.leaves(tuple(spec)), spec
    graphdef, state = nnx.split(sharded)
    batch = [jnp.asarray(x) for x in make_batch(seed=4, lengths=(437, 100, 73, 250), left_pad=(0, 5, 11, 2))]
    ref = jax_logits(model, *batch)
    out = mesh_forward(graphdef, state, mesh, rules, *batch)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_parameter_count_of_the_released_config_equals_transformers():
    """30B-A3B thinker without the vision tower: eval_shape here, the meta device in transformers."""
    from transformers import Qwen3OmniMoeThinkerConfig, Qwen3OmniMoeThinkerForConditionalGeneration

    hf_cfg = get_config("30b_a3b").to_dict()
    cfg = registry.family_of(hf_cfg).from_hf(hf_cfg)
    abstract = nnx.eval_shape(lambda: registry.build(cfg))
    ours = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    with torch.device("meta"):
        hf = Qwen3OmniMoeThinkerForConditionalGeneration(Qwen3OmniMoeThinkerConfig(**hf_cfg))
    theirs = sum(p.numel() for n, p in hf.named_parameters() if not n.startswith(("visual.", "model.visual.")))
    assert ours == theirs
    assert 30.0e9 < ours < 32.0e9


def test_training_loss_with_router_aux_loss_equals_transformers(hf_dir, model):
    """Token-mean cross-entropy + router_aux_loss_coef x load-balancing loss, as HF's loss with labels."""
    from cogito_jax.train.step import lm_loss

    _, hf = hf_dir
    ids, feats, fmask, am = make_batch(seed=5)
    # Targets predicted from a real position only (a left-padding position's output is not HF's).
    prev_real = np.concatenate([np.zeros_like(am[:, :1]), am[:, :-1]], axis=1) == 1
    labels = np.where((am == 1) & prev_real, ids, -100)
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ids), input_features=torch.tensor(feats),
                 feature_attention_mask=torch.tensor(fmask), attention_mask=torch.tensor(am),
                 labels=torch.tensor(labels), output_router_logits=True)
    assert model.cfg.text.router_aux_loss_coef == pytest.approx(0.001)
    targets = np.concatenate([ids[:, 1:], np.zeros_like(ids[:, :1])], axis=1)
    loss_mask = np.concatenate([labels[:, 1:] != -100, np.zeros_like(ids[:, :1], bool)], axis=1)
    batch = {k: jnp.asarray(v) for k, v in dict(input_ids=ids, input_features=feats, feature_attention_mask=fmask,
                                                attention_mask=am, targets=targets, loss_mask=loss_mask).items()}
    total, count, _ = nnx.jit(lm_loss)(model, batch)
    assert float(total / count) == pytest.approx(float(out.loss), rel=1e-5)
    assert float(out.aux_loss) > 1.0  # the aux term is really in there: 8 experts, top-2 -> about 2

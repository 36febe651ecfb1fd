"""The Qwen3-Omni AuT audio encoder in JAX against transformers (PyTorch, CPU) on a tiny random thinker."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file

from cogito_jax import sharding
from cogito_jax.convert import export_params, load_params
from cogito_jax.models import aut_encoder as aut
from configs.models.qwen3_omni_thinker import get_config
from tests.hf_tiny_qwen3_omni import save_thinker


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """(HF thinker, our encoder loaded from the thinker's safetensors on disk)."""
    d = tmp_path_factory.mktemp("qwen3_omni_thinker_hf")
    hf = save_thinker(d)
    tensors = load_file(str(d / "model.safetensors"))
    enc = aut.AuTEncoder(aut.AuTEncoderConfig.from_hf(get_config("tiny").audio_config), rngs=nnx.Rngs(1))
    load_params(enc, aut.hf_weight_table("audio_tower."), tensors)
    return hf, enc, tensors


def from_packed(features_mt: np.ndarray, feature_lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HF's packed audio (``[n_mels, sum(lens)]`` + lens) -> padded ``[B, n_mels, max_len]`` and a mask."""
    lens = np.asarray(feature_lens, np.int64)
    b, m = len(lens), features_mt.shape[0]
    out = np.zeros((b, m, int(lens.max())), features_mt.dtype)
    mask = np.zeros((b, int(lens.max())), np.int32)
    for i, (start, n) in enumerate(zip(np.cumsum(lens) - lens, lens, strict=True)):
        out[i, :, :n] = features_mt[:, start:start + n]
        mask[i, :n] = 1
    return out, mask


def to_packed(embeds_btd: np.ndarray, lengths_b: np.ndarray) -> np.ndarray:
    """Valid tokens of every example concatenated, ``[sum(lengths), D]`` (HF's ``last_hidden_state``)."""
    return np.concatenate([np.asarray(e)[: int(n)] for e, n in zip(embeds_btd, lengths_b, strict=True)])


def batch(lengths, frames, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(len(lengths), 16, frames)).astype(np.float32)
    mask = np.zeros((len(lengths), frames), np.int32)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return feats, mask


def run(enc, feats, mask):
    out, lens = nnx.jit(lambda e, f, m: e(f, m))(enc, feats, mask)
    return np.asarray(out), np.asarray(lens)


def rel_err(out, ref):
    return np.abs(out - ref).max() / np.abs(ref).max()


def test_output_lengths_match_hf():
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths
    from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import (
        _get_feat_extract_output_lengths as processor_lengths,
    )

    n = np.arange(0, 3001)
    ref = _get_feat_extract_output_lengths(torch.tensor(n)).numpy()
    assert (aut.output_lengths(n) == ref).all()
    assert (processor_lengths(torch.tensor(n)).numpy() == ref).all()
    assert aut.output_lengths(3000) == 390 and aut.output_lengths(137) == 13 + 5


@pytest.mark.parametrize("lengths, frames", [
    ((437, 100, 73, 250), 450),  # several chunks and windows; exact multiple of a chunk; frames past the longest
    ((37, 61), 80),  # every example shorter than one chunk: HF's padded chunk width is 61, not 100
    ((201, 5), 230),  # a 1-frame last chunk; a 5-frame example
])
def test_matches_hf_thinker_on_padded_batch(loaded, lengths, frames):
    hf, enc, _ = loaded
    feats, mask = batch(lengths, frames)
    with torch.no_grad():
        ref = hf.get_audio_features(torch.tensor(feats), feature_attention_mask=torch.tensor(mask)).last_hidden_state
    out, lens = run(enc, feats, mask)
    assert lens.tolist() == aut.output_lengths(np.array(lengths)).tolist()
    assert out.shape == (len(lengths), enc.num_tokens(frames), 32)
    assert rel_err(to_packed(out, lens), ref.numpy()) <= 1e-4
    padding = np.arange(out.shape[1])[None, :] >= lens[:, None]
    assert (out[padding] == 0).all()


def test_packed_form_and_windows(loaded):
    """HF's internal packed input; the windowed attention really limits what a token sees."""
    hf, enc, _ = loaded
    lengths = np.array([520, 130])
    rng = np.random.default_rng(3)
    packed = rng.normal(size=(16, lengths.sum())).astype(np.float32)
    with torch.no_grad():
        ref = hf.model.audio_tower(torch.tensor(packed), feature_lens=torch.tensor(lengths)).last_hidden_state.numpy()
    feats, mask = from_packed(packed, lengths)
    out, lens = run(enc, feats, mask)
    assert rel_err(to_packed(out, lens), ref) <= 1e-4
    # Windows of 2 chunks (26 tokens): changing audio in chunk 5 leaves tokens of windows 0 and 1 unchanged.
    feats2 = feats.copy()
    feats2[0, :, 500:520] += 1.0
    out2, _ = run(enc, feats2, mask)
    assert np.abs(out2[0, :52] - out[0, :52]).max() == 0 and np.abs(out2[0, 52:] - out[0, 52:]).max() > 1e-3


def test_no_mask_means_all_frames_valid(loaded):
    hf, enc, _ = loaded
    feats, _ = batch((230, 230), 230, seed=5)
    with torch.no_grad():
        ref = hf.get_audio_features(torch.tensor(feats), feature_attention_mask=torch.ones(2, 230, dtype=torch.long))
    out, lens = run(enc, feats, None)
    assert rel_err(to_packed(out, lens), ref.last_hidden_state.numpy()) <= 1e-4


def test_weights_round_trip(loaded):
    _, enc, tensors = loaded
    exported = export_params(enc, aut.hf_weight_table("audio_tower."))
    assert set(exported) == {k for k in tensors if k.startswith("audio_tower.")}
    for k, v in exported.items():
        np.testing.assert_array_equal(v, tensors[k])


def test_config_round_trip_and_hf_fields():
    from transformers import Qwen3OmniMoeAudioEncoderConfig

    for arg in ("tiny", "30b_a3b"):
        hf_audio = get_config(arg).audio_config.to_dict()
        cfg = aut.AuTEncoderConfig.from_hf(hf_audio)
        assert aut.AuTEncoderConfig.from_hf(cfg.to_hf()) == cfg
        built = Qwen3OmniMoeAudioEncoderConfig(**hf_audio)
        for k, v in cfg.to_hf().items():
            if k != "max_frames":  # ours: the run's mel window, not an HF field
                assert getattr(built, k) == v, k
    with pytest.raises(ValueError, match="n_window_infer"):
        aut.AuTEncoderConfig(16, 32, 1, 4, 64, 32, n_window=50, n_window_infer=50)


def test_parameter_count_matches_hf_real_size():
    from transformers import Qwen3OmniMoeAudioEncoderConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

    hf_audio = get_config("30b_a3b").audio_config.to_dict()
    with torch.device("meta"):
        ref = sum(p.numel() for p in Qwen3OmniMoeAudioEncoder(Qwen3OmniMoeAudioEncoderConfig(**hf_audio)).parameters())
    cfg = aut.AuTEncoderConfig.from_hf(hf_audio)
    abstract = nnx.eval_shape(lambda: aut.AuTEncoder(cfg, rngs=nnx.Rngs(0)))
    ours = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert ours == ref
    assert 600e6 < ours < 700e6  # about 0.65 B parameters


def test_sharded_matches_one_device(loaded, cpu_devices):
    _, enc, _ = loaded
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2), cpu_devices)
    rules = sharding.RULE_PRESETS["fsdp_tp"]
    placed = sharding.place(enc, mesh, rules)
    assert tuple(placed.layers.fc1.kernel[...].sharding.spec) == (None, "fsdp", "tensor")
    feats, mask = batch((437, 100, 73, 250), 450, seed=7)
    ref, ref_lens = run(enc, feats, mask)
    graphdef, state = nnx.split(placed)

    @jax.jit
    def fwd(state, f, m):
        with sharding.use_rules(rules):
            return nnx.merge(graphdef, state)(f, m)

    with jax.set_mesh(mesh):
        out, lens = fwd(state, feats, mask)
    assert (np.asarray(lens) == ref_lens).all() and rel_err(np.asarray(out), ref) <= 1e-5


def test_remat_keeps_values_and_grads():
    """The encoder stack (shared with Whisper's, ``audio_layers``) rematerialised by policy: same loss and grads."""
    import dataclasses

    import jax.numpy as jnp

    cfg = aut.AuTEncoderConfig.from_hf(get_config("tiny").audio_config)
    feats, mask = batch((150, 90), 160)

    @nnx.jit
    def value_and_grad(e):
        return nnx.value_and_grad(lambda e: jnp.mean(e(feats, mask)[0] ** 2))(e)

    ref_value, ref_grads = value_and_grad(aut.AuTEncoder(cfg, rngs=nnx.Rngs(0)))
    for policy in ("full", "dots"):
        value, grads = value_and_grad(aut.AuTEncoder(dataclasses.replace(cfg, remat=policy), rngs=nnx.Rngs(0)))
        np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-6)
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-7, err_msg=policy)
    with pytest.raises(ValueError, match="remat='some'"):
        dataclasses.replace(cfg, remat="some")


def test_splash_attention_matches_xla(loaded):
    """The windowed encoder through the Pallas splash kernel (interpret mode on CPU) equals the XLA path."""
    import dataclasses

    _, enc, _ = loaded
    splash = aut.AuTEncoder(dataclasses.replace(enc.cfg, attn_impl="splash"), rngs=nnx.Rngs(1))
    nnx.update(splash, nnx.state(enc))
    feats, mask = batch((437, 100, 73, 250), 450)
    (ref, ref_lens), (out, lens) = run(enc, feats, mask), run(splash, feats, mask)
    np.testing.assert_array_equal(lens, ref_lens)
    assert rel_err(out, ref) <= 1e-5

"""LoRA adapters exported in PEFT's layout load with ``peft.PeftModel`` and give our unmerged logits."""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from cogito_jax.convert import load_hf, save_hf
from cogito_jax.models.lora import LoRA, save_peft
from tests.hf_tiny import hf_logits, make_batch, rel_err, tiny_qwen2_audio
from tests.prereq import require_module

peft = require_module("peft", "peft is in requirements-test.txt")

# LM attention + MLP + head, two of the audio encoder's projections and the audio projector: every tower
TARGETS = (r"^llm/layers/(self_attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)/kernel$|^llm/lm_head/kernel$"
           r"|^audio_encoder/layers/(q|v)_proj/kernel$|^projector/kernel$")


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """(HF folder, our config, LoRA model with random non-zero adapters, exported adapter folder)."""
    path, _ = tiny_qwen2_audio(tmp_path_factory)
    model, cfg = load_hf(path)
    lora = LoRA(model, rank=4, alpha=8, targets=TARGETS, rngs=nnx.Rngs(1))
    keys = jax.random.split(jax.random.key(2), len(lora.lora_b))
    for k, name in zip(keys, sorted(lora.lora_b), strict=True):
        v = lora.lora_b[name]
        v[...] = 0.2 * jax.random.normal(k, v.shape, jnp.float32)
    out = save_peft(lora, cfg, tmp_path_factory.mktemp("peft") / "adapter", base_model_name_or_path=str(path))
    return path, cfg, lora, out


def _ours(model, batch):
    ids, feats, fmask, am = (jnp.asarray(x) for x in batch)
    return np.asarray(nnx.jit(lambda m, *a: m(*a))(model, ids, feats, fmask, am))


def _hf_base(path):
    from transformers import Qwen2AudioForConditionalGeneration

    return Qwen2AudioForConditionalGeneration.from_pretrained(str(path)).eval()


def test_layout_follows_peft(adapted):
    path, cfg, lora, out = adapted
    conf = json.loads((out / "adapter_config.json").read_text())
    assert (conf["peft_type"], conf["r"], conf["lora_alpha"], conf["lora_dropout"]) == ("LORA", 4, 8.0, 0.0)
    assert conf["task_type"] == "CAUSAL_LM" and conf["base_model_name_or_path"] == str(path)
    t = load_file(str(out / "adapter_model.safetensors"))
    n_layers = cfg.text.num_layers
    # 7 LM projections per layer + 2 encoder ones per encoder layer + lm_head + projector, A and B each
    assert len(t) == 2 * (7 * n_layers + 2 * cfg.audio.num_layers + 2)
    a, b = lora.adapters()["llm/layers/mlp/down_proj/kernel"]
    key = "base_model.model.model.language_model.layers.1.mlp.down_proj"
    np.testing.assert_array_equal(t[f"{key}.lora_A.weight"], np.asarray(a[1]).T)  # [r, in]
    np.testing.assert_array_equal(t[f"{key}.lora_B.weight"], np.asarray(b[1]).T)  # [out, r]
    assert t[f"{key}.lora_A.weight"].shape == (4, cfg.text.intermediate_size)
    assert t["base_model.model.lm_head.lora_B.weight"].shape == (cfg.text.vocab_size, 4)
    assert "base_model.model.model.audio_tower.layers.0.self_attn.q_proj.lora_A.weight" in t
    assert "base_model.model.model.audio_tower.layers.0.self_attn.k_proj.lora_A.weight" not in t


def test_peft_model_equals_unmerged_lora_and_merged_export(adapted, tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    path, cfg, lora, out = adapted
    batch = make_batch(seed=3)
    mask = batch[3]
    ours = _ours(lora, batch)
    base_logits = hf_logits(_hf_base(path), *batch)
    assert rel_err(base_logits, ours, mask) > 1e-2  # the adapters do change the output

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = peft.PeftModel.from_pretrained(_hf_base(path), str(out)).eval()
    problems = [str(w.message) for w in caught if "missing" in str(w.message).lower()
                or "unexpected" in str(w.message).lower()]
    assert not problems, problems
    wrapped = sorted(n for n, m in pm.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A)
    assert len(wrapped) == 7 * cfg.text.num_layers + 2 * cfg.audio.num_layers + 2, wrapped
    assert not any(".k_proj" in n and "audio_tower" in n for n in wrapped)
    peft_logits = hf_logits(pm, *batch)
    assert rel_err(peft_logits, ours, mask) <= 1e-4

    merged_dir = save_hf(lora.merge(), cfg, tmp_path / "merged")
    merged = Qwen2AudioForConditionalGeneration.from_pretrained(str(merged_dir)).eval()
    assert rel_err(hf_logits(merged, *batch), peft_logits, mask) <= 1e-4


def test_adapters_without_a_peft_module_are_refused(adapted, tmp_path):
    path, cfg, lora, _ = adapted
    conv = LoRA(lora.base, rank=2, alpha=2, targets=r"^audio_encoder/conv2/kernel$", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no PEFT Linear module"):
        save_peft(conv, cfg, tmp_path / "conv")


@pytest.mark.parametrize("targets, wrapped_per_layer, audio", [
    # LM attention and audio-tower projections
    (r"^llm/layers/self_attn/(q|k|v|o)_proj/kernel$|^audio_encoder/(layers/q_proj|proj1)/kernel$", 4, True),
    # configs/audio_cogito.py's targets: attention and every expert projection (gate + up fused at rank 2r)
    (r"^llm/layers/(self_attn/(q|k|v|o)_proj/kernel|mlp/(gate|up|down)_proj)$", 4 + 2, False),
    # the up half of the fused gate_up_proj only
    (r"^llm/layers/mlp/up_proj$", 1, False),
])
def test_qwen3_omni_thinker_adapters_load_in_peft(tmp_path, targets, wrapped_per_layer, audio):
    """Adapters of the MoE thinker, experts included (PEFT ``target_parameters`` on transformers' fused expert
    parameters), load with ``peft.PeftModel`` and give our unmerged logits."""
    from cogito_jax.data.chat import num_audio_tokens
    from tests.hf_tiny_qwen3_omni import save_thinker

    hf_dir = tmp_path / "hf"
    hf = save_thinker(hf_dir)
    model, cfg = load_hf(hf_dir)
    lora = LoRA(model, rank=2, alpha=4, targets=targets, rngs=nnx.Rngs(1))
    for i, name in enumerate(sorted(lora.lora_b)):
        v = lora.lora_b[name]
        v[...] = 0.3 * jax.random.normal(jax.random.key(i), v.shape, jnp.float32)
    out = save_peft(lora, cfg, tmp_path / "adapter")

    rng = np.random.default_rng(0)
    n_frames, n_mels = 137, cfg.audio.num_mel_bins
    feats = rng.normal(size=(1, n_mels, 200)).astype(np.float32)
    fmask = (np.arange(200) < n_frames)[None].astype(np.int64)
    seq = [11, 12, 13] + [cfg.audio_token_id] * num_audio_tokens("qwen3_omni_thinker", n_frames) + [21, 22, 23, 24]
    ids, am = np.asarray([seq], np.int64), np.ones((1, len(seq)), np.int64)
    batch = (ids, feats, fmask, am)
    ours = _ours(lora, batch)
    assert rel_err(hf_logits(hf, *batch), ours) > 1e-2

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = peft.PeftModel.from_pretrained(hf, str(out)).eval()
    assert not [str(w.message) for w in caught if "missing" in str(w.message).lower()
                or "unexpected" in str(w.message).lower()]
    wrapped = [n for n, m in pm.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert len(wrapped) == wrapped_per_layer * cfg.text.num_layers + (cfg.audio.num_layers + 1) * audio
    assert rel_err(hf_logits(pm, *batch), ours) <= 1e-4
    conf = json.loads((out / "adapter_config.json").read_text())
    if "gate" in targets:  # separate gate and up adapters of rank 2 are one of rank 4 on gate_up_proj
        assert conf["target_parameters"] == ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]
        assert conf["rank_pattern"] == {"mlp.experts.gate_up_proj": 4}
        assert conf["alpha_pattern"] == {"mlp.experts.gate_up_proj": 8.0}

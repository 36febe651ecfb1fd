"""Model families: HF ``config.json`` <-> our config, model construction, HF weight-name tables.

A family is recognised from ``config.json``'s ``model_type``. Each family gives a table mapping our
parameter paths (``"llm/layers/self_attn/q_proj/kernel"``) to the HF on-disk tensor names (with
``{i}`` for the layer and ``{e}`` for the expert of a stacked parameter, see ``hf_weights``) and the
layout change between them (``linear``, ``conv1d``, ``conv2d``, ``same``; ``hf_weights.LAYOUTS``).

qwen3_omni_thinker (HF model_type ``qwen3_omni_moe_thinker``): the thinker of Qwen3-Omni
(``Qwen3OmniMoeThinkerForConditionalGeneration``): the AuT encoder (``aut_encoder``), whose ``proj2``
already ends at the LM width (no projector), and a Qwen3-MoE decoder (QK-RMSNorm, GQA, a sparse MoE in
every layer). Its M-RoPE gives audio and text tokens three equal position components, which is plain
1-D rotary; the forward's positions are ``cumsum(attention_mask) - 1``. The vision tower is not built:
its tensors (``visual.*``) are skipped when loading and absent from what ``save_hf`` writes
(transformers then initialises it afresh).

qwen2_audio: HF's ``Qwen2AudioForConditionalGeneration`` never ties the LM head to the embeddings
(its checkpoints always hold ``language_model.lm_head.weight``), whatever
``text_config.tie_word_embeddings`` says, so this family is always untied.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

from cogito_jax.config import load_config_file
from cogito_jax.errors import ConfigError
from cogito_jax.models import attention, audio_layers, aut_encoder, layers, moe
from cogito_jax.models.audio_lm import AudioLM, AudioLMConfig
from cogito_jax.models.decoder import DecoderConfig
from cogito_jax.models.hf_weights import CONV1D, LINEAR, SAME
from cogito_jax.models.whisper_encoder import WhisperEncoder, WhisperEncoderConfig

# Run-time settings a caller may override (a run config's ``model`` section, ``convert.load``): the first four
# apply to the audio encoder and the decoder, the MoE ones (``DecoderConfig``'s) to the decoder only.
DECODER_OVERRIDES = ("moe_impl", "moe_capacity_factor")
OVERRIDES = ("dtype", "param_dtype", "remat", "attn_impl", *DECODER_OVERRIDES)


@dataclasses.dataclass(frozen=True)
class Family:
    name: str  # ours: the chat format's and ``configs/models/{name}.py``'s
    model_type: str  # HF config.json's
    from_hf: Callable[[Mapping[str, Any]], AudioLMConfig]
    to_hf: Callable[[AudioLMConfig], dict]
    build: Callable[[AudioLMConfig, nnx.Rngs], nnx.Module]
    weights: Callable[[AudioLMConfig], dict[str, tuple[str, str]]]
    skipped: tuple[str, ...] = ()  # prefixes of HF tensors of parts not built here


def _rope_theta(text: Mapping[str, Any]) -> float:
    """The rotary base of a text config (transformers 5 ``rope_parameters`` or the older ``rope_theta``)."""
    rp = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind != "default":
        raise NotImplementedError(f"rope_type={kind!r} is not supported (only 'default' rotary embeddings)")
    if text.get("use_sliding_window"):
        raise NotImplementedError("use_sliding_window=True is not supported (full attention only)")
    return float(rp.get("rope_theta", text.get("rope_theta", 10000.0)))


# ----------------------------------------------------------------------------- qwen2_audio

# transformers' defaults for fields a config.json may leave out (Qwen2AudioEncoderConfig, Qwen2Config):
# the released Qwen2-Audio-7B text_config, for one, gives only a few fields.
AUDIO_DEFAULTS = dict(num_mel_bins=128, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                      d_model=1280, max_source_positions=1500)
TEXT_DEFAULTS = dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-6)


def _with_defaults(section: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict:
    return {**defaults, **dict(section or {})}



def check_settings(model: Mapping[str, Any]) -> None:
    """The run-time settings (:data:`OVERRIDES`) a run config's ``model`` section sets, checked by the same
    functions the model configs use, named by their config key."""
    checks = {"dtype": layers.dtype_of, "param_dtype": layers.dtype_of, "attn_impl": attention.check_impl,
              "remat": layers.check_remat, "moe_impl": moe.check_impl}
    for key, check in checks.items():
        if model.get(key):
            check(model[key], f"model.{key}")
    if model.get("moe_capacity_factor") is not None:
        moe.check_capacity_factor(model["moe_capacity_factor"], "model.moe_capacity_factor")


def _split_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the audio encoder's, the decoder's) of the run-time ``overrides``."""
    unknown = set(overrides) - set(OVERRIDES)
    if unknown:
        raise ValueError(f"unknown model settings {sorted(unknown)}; known: {OVERRIDES}")
    return {k: v for k, v in overrides.items() if k not in DECODER_OVERRIDES}, dict(overrides)


def _qwen2_audio_from_hf(hf: Mapping[str, Any], **overrides) -> AudioLMConfig:
    audio_over, text_over = _split_overrides(overrides)
    a, t = _with_defaults(hf.get("audio_config"), AUDIO_DEFAULTS), _with_defaults(hf.get("text_config"), TEXT_DEFAULTS)
    audio = WhisperEncoderConfig(
        num_mel_bins=a["num_mel_bins"], d_model=a["d_model"], num_layers=a["encoder_layers"],
        num_heads=a["encoder_attention_heads"], ffn_dim=a["encoder_ffn_dim"],
        max_source_positions=a["max_source_positions"], **audio_over,
    )
    text = DecoderConfig(
        vocab_size=t["vocab_size"], hidden_size=t["hidden_size"], num_layers=t["num_hidden_layers"],
        num_heads=t["num_attention_heads"], num_kv_heads=t.get("num_key_value_heads") or t["num_attention_heads"],
        head_dim=t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"],
        intermediate_size=t["intermediate_size"], rope_theta=_rope_theta(t), rms_eps=t["rms_norm_eps"],
        qkv_bias=True, qk_norm=False, tie_embeddings=False, **text_over,
    )
    token = hf.get("audio_token_id", hf.get("audio_token_index", 151646))
    return AudioLMConfig("qwen2_audio", audio, text, int(token), hf_extra=(("config", json.dumps(dict(hf))),))


def _qwen2_audio_to_hf(cfg: AudioLMConfig) -> dict:
    base = json.loads(dict(cfg.hf_extra).get("config", "{}"))
    a, t = cfg.audio, cfg.text
    base.setdefault("architectures", ["Qwen2AudioForConditionalGeneration"])
    base["model_type"] = "qwen2_audio"
    base["audio_token_index"] = cfg.audio_token_id
    base["audio_config"] = {**base.get("audio_config", {}), "model_type": "qwen2_audio_encoder",
                            "num_mel_bins": a.num_mel_bins, "d_model": a.d_model, "encoder_layers": a.num_layers,
                            "encoder_attention_heads": a.num_heads, "encoder_ffn_dim": a.ffn_dim,
                            "max_source_positions": a.max_source_positions}
    base["text_config"] = {**base.get("text_config", {}), "model_type": "qwen2", "vocab_size": t.vocab_size,
                           "hidden_size": t.hidden_size, "num_hidden_layers": t.num_layers,
                           "num_attention_heads": t.num_heads, "num_key_value_heads": t.num_kv_heads,
                           "intermediate_size": t.intermediate_size, "rms_norm_eps": t.rms_eps,
                           "rope_parameters": {"rope_theta": t.rope_theta, "rope_type": "default"}}
    return base


def _qwen2_audio_build(cfg: AudioLMConfig, rngs: nnx.Rngs) -> nnx.Module:
    return AudioLM(cfg, WhisperEncoder(cfg.audio, rngs=rngs), rngs=rngs)


def _qwen2_audio_weights(cfg: AudioLMConfig) -> dict[str, tuple[str, str]]:
    enc, llm = "audio_tower", "language_model.model"
    w = {
        "audio_encoder/conv1/kernel": (f"{enc}.conv1.weight", CONV1D),
        "audio_encoder/conv1/bias": (f"{enc}.conv1.bias", SAME),
        "audio_encoder/conv2/kernel": (f"{enc}.conv2.weight", CONV1D),
        "audio_encoder/conv2/bias": (f"{enc}.conv2.bias", SAME),
        "audio_encoder/embed_positions": (f"{enc}.embed_positions.weight", SAME),
        "audio_encoder/layer_norm/scale": (f"{enc}.layer_norm.weight", SAME),
        "audio_encoder/layer_norm/bias": (f"{enc}.layer_norm.bias", SAME),
        "projector/kernel": ("multi_modal_projector.linear.weight", LINEAR),
        "projector/bias": ("multi_modal_projector.linear.bias", SAME),
        "llm/embed_tokens/embedding": (f"{llm}.embed_tokens.weight", SAME),
        "llm/norm/weight": (f"{llm}.norm.weight", SAME),
    }
    w.update({f"audio_encoder/{k}": v
              for k, v in audio_layers.hf_weight_table(f"{enc}.layers.{{i}}.", k_bias=False).items()})
    for ln in ("input_layernorm", "post_attention_layernorm"):
        w[f"llm/layers/{ln}/weight"] = (f"{llm}.layers.{{i}}.{ln}.weight", SAME)
    for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
        w[f"llm/layers/self_attn/{p}/kernel"] = (f"{llm}.layers.{{i}}.self_attn.{p}.weight", LINEAR)
        if p != "o_proj":
            w[f"llm/layers/self_attn/{p}/bias"] = (f"{llm}.layers.{{i}}.self_attn.{p}.bias", SAME)
    for p in ("gate_proj", "up_proj", "down_proj"):
        w[f"llm/layers/mlp/{p}/kernel"] = (f"{llm}.layers.{{i}}.mlp.{p}.weight", LINEAR)
    if not cfg.text.tie_embeddings:
        w["llm/lm_head/kernel"] = ("language_model.lm_head.weight", LINEAR)
    return w


# ----------------------------------------------------------------------------- qwen3_omni_thinker

Q3_TEXT_DEFAULTS = dict(vocab_size=152064, hidden_size=2048, num_hidden_layers=48, num_attention_heads=32,
                        num_key_value_heads=4, head_dim=128, moe_intermediate_size=768, num_experts=128,
                        num_experts_per_tok=8, norm_topk_prob=True, rms_norm_eps=1e-6, attention_bias=False,
                        decoder_sparse_step=1, mlp_only_layers=[])
Q3_AUDIO_DEFAULTS = dict(num_mel_bins=128, d_model=1280, encoder_layers=32, encoder_attention_heads=20,
                         encoder_ffn_dim=5120, output_dim=2048, n_window=50, n_window_infer=800,
                         downsample_hidden_size=480, max_source_positions=1500, conv_chunksize=500)


def _qwen3_omni_from_hf(hf: Mapping[str, Any], **overrides) -> AudioLMConfig:
    audio_over, text_over = _split_overrides(overrides)
    t = _with_defaults(hf.get("text_config"), Q3_TEXT_DEFAULTS)
    a = _with_defaults(hf.get("audio_config"), Q3_AUDIO_DEFAULTS)
    if t["attention_bias"]:
        raise NotImplementedError("text_config.attention_bias=True is not supported")
    if t["decoder_sparse_step"] != 1 or t["mlp_only_layers"]:
        raise NotImplementedError(f"dense layers among the MoE ones (decoder_sparse_step={t['decoder_sparse_step']}, "
                                  f"mlp_only_layers={t['mlp_only_layers']}) are not supported")
    audio = aut_encoder.AuTEncoderConfig.from_hf(a, **audio_over)
    text = DecoderConfig(
        vocab_size=t["vocab_size"], hidden_size=t["hidden_size"], num_layers=t["num_hidden_layers"],
        num_heads=t["num_attention_heads"], num_kv_heads=t["num_key_value_heads"],
        head_dim=t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"],
        intermediate_size=t.get("intermediate_size", t["moe_intermediate_size"]), rope_theta=_rope_theta(t),
        rms_eps=t["rms_norm_eps"], qkv_bias=False, qk_norm=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), num_experts=t["num_experts"],
        num_experts_per_tok=t["num_experts_per_tok"], moe_intermediate_size=t["moe_intermediate_size"],
        norm_topk_prob=bool(t["norm_topk_prob"]), router_aux_loss_coef=float(t.get("router_aux_loss_coef", 0.001)),
        **text_over,
    )
    token = hf.get("audio_token_id", hf.get("audio_token_index", 151675))
    return AudioLMConfig("qwen3_omni_thinker", audio, text, int(token),
                         hf_extra=(("config", json.dumps(dict(hf))),), projector=False, positions_from_mask=True)


def _qwen3_omni_to_hf(cfg: AudioLMConfig) -> dict:
    base = json.loads(dict(cfg.hf_extra).get("config", "{}"))
    t = cfg.text
    base.setdefault("architectures", ["Qwen3OmniMoeThinkerForConditionalGeneration"])
    base["model_type"] = "qwen3_omni_moe_thinker"
    base["audio_token_id"] = cfg.audio_token_id
    base["tie_word_embeddings"] = t.tie_embeddings
    base["audio_config"] = {**base.get("audio_config", {}), **cfg.audio.to_hf()}
    text = base.get("text_config", {})
    rope = {**text.get("rope_parameters", {}), "rope_theta": t.rope_theta, "rope_type": "default"}
    base["text_config"] = {**text, "model_type": "qwen3_omni_moe_text", "vocab_size": t.vocab_size,
                           "hidden_size": t.hidden_size, "num_hidden_layers": t.num_layers,
                           "num_attention_heads": t.num_heads, "num_key_value_heads": t.num_kv_heads,
                           "head_dim": t.head_dim, "rms_norm_eps": t.rms_eps, "num_experts": t.num_experts,
                           "num_experts_per_tok": t.num_experts_per_tok, "norm_topk_prob": t.norm_topk_prob,
                           "moe_intermediate_size": t.moe_intermediate_size, "rope_parameters": rope,
                           "router_aux_loss_coef": t.router_aux_loss_coef,
                           "tie_word_embeddings": t.tie_embeddings}
    return base


def _qwen3_omni_build(cfg: AudioLMConfig, rngs: nnx.Rngs) -> nnx.Module:
    return AudioLM(cfg, aut_encoder.AuTEncoder(cfg.audio, rngs=rngs), rngs=rngs)


def _qwen3_omni_weights(cfg: AudioLMConfig) -> dict[str, tuple[str, str]]:
    llm = "model"
    w = {f"audio_encoder/{k}": v for k, v in aut_encoder.hf_weight_table("audio_tower.").items()}
    w["llm/embed_tokens/embedding"] = (f"{llm}.embed_tokens.weight", SAME)
    w["llm/norm/weight"] = (f"{llm}.norm.weight", SAME)
    layer = f"{llm}.layers.{{i}}."
    for ln in ("input_layernorm", "post_attention_layernorm"):
        w[f"llm/layers/{ln}/weight"] = (f"{layer}{ln}.weight", SAME)
    for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
        w[f"llm/layers/self_attn/{p}/kernel"] = (f"{layer}self_attn.{p}.weight", LINEAR)
    for p in ("q_norm", "k_norm"):
        w[f"llm/layers/self_attn/{p}/weight"] = (f"{layer}self_attn.{p}.weight", SAME)
    w.update({f"llm/layers/mlp/{k}": v for k, v in moe.hf_weight_table(f"{layer}mlp.").items()})
    if not cfg.text.tie_embeddings:
        w["llm/lm_head/kernel"] = ("lm_head.weight", LINEAR)
    return w


FAMILIES: dict[str, Family] = {
    "qwen2_audio": Family("qwen2_audio", "qwen2_audio", _qwen2_audio_from_hf, _qwen2_audio_to_hf, _qwen2_audio_build,
                          _qwen2_audio_weights),
    "qwen3_omni_thinker": Family("qwen3_omni_thinker", "qwen3_omni_moe_thinker", _qwen3_omni_from_hf,
                                 _qwen3_omni_to_hf, _qwen3_omni_build, _qwen3_omni_weights, skipped=("visual.",)),
}


def family_of(hf_config: Mapping[str, Any]) -> Family:
    mt = hf_config.get("model_type")
    for fam in FAMILIES.values():
        if fam.model_type == mt:
            return fam
    raise ValueError(f"config.json model_type={mt!r} is not supported; supported: "
                     f"{sorted(f.model_type for f in FAMILIES.values())}")


def build(cfg: AudioLMConfig, seed: int = 0) -> nnx.Module:
    """A randomly initialised model of ``cfg`` (use ``sharding.create_sharded`` to build it sharded)."""
    return FAMILIES[cfg.family].build(cfg, nnx.Rngs(seed))


def config_for(model_section: Mapping[str, Any], *, vocab_size: int | None = None,
               audio_token_id: int | None = None) -> AudioLMConfig:
    """The model config of a run's ``model`` section: an HF checkpoint folder (``checkpoint``) or a
    model config file ``configs/models/{family}.py:{size}``; a tokenizer's vocabulary size and audio
    token id override the file's (tiny models use a tokenizer trained with the data)."""
    import pathlib

    section = dict(model_section)
    overrides = {k: section[k] for k in OVERRIDES if section.get(k)}
    if section.get("checkpoint"):
        path = pathlib.Path(section["checkpoint"]) / "config.json"
        if not path.exists():
            raise ConfigError(f"model.checkpoint={section['checkpoint']!r} has no config.json")
        hf = json.loads(path.read_text())
    else:
        family, size = section.get("family", ""), section.get("size", "tiny")
        file = pathlib.Path(__file__).resolve().parents[2] / "configs" / "models" / f"{family}.py"
        if family not in FAMILIES or not file.exists():
            raise ConfigError(f"model.family={family!r} is not one of {sorted(FAMILIES)}")
        hf = load_config_file(f"{file}:{size}").to_dict()
        if vocab_size is not None:
            hf["text_config"]["vocab_size"] = vocab_size
        if audio_token_id is not None:
            hf["audio_token_id" if "audio_token_id" in hf else "audio_token_index"] = audio_token_id
    return family_of(hf).from_hf(hf, **overrides)

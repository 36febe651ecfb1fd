"""Model FLOPs per token (the MFU count) by hand, against transformers' parameter counts, and our parameter
counts of the real configs against transformers' meta-device models."""

import dataclasses

import pytest

from cogito_jax.models import flops, registry
from cogito_jax.models.decoder import DecoderConfig
from tests.conftest import REPO, bench_module

bench = bench_module("model_flops")

DENSE = DecoderConfig(vocab_size=100, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=16,
                      intermediate_size=48)


def test_dense_decoder_by_hand():
    seq = 10
    q, kv, o = 32 * 4 * 16, 2 * 32 * 2 * 16, 4 * 16 * 32  # GQA: k and v have 2 heads of 16
    scores = 2 * 4 * 16 * seq / 2  # QK^T and PV over half of a causal sequence, per query head
    mlp = 3 * 32 * 48
    forward = 2 * (3 * (q + kv + o + scores + mlp) + 32 * 100)
    assert flops.llm_flops_per_token(DENSE, seq, training=False) == forward
    assert flops.llm_flops_per_token(DENSE, seq) == 3 * forward
    # the attention term grows linearly with the sequence; nothing else does
    assert (flops.llm_flops_per_token(DENSE, 2 * seq, False) - flops.llm_flops_per_token(DENSE, seq, False)
            == 2 * 3 * scores)


def test_moe_counts_router_and_active_experts_only():
    moe = dataclasses.replace(DENSE, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=24)
    more = dataclasses.replace(moe, num_experts=64)
    m8, m64 = flops.llm_macs_per_token(moe, 10), flops.llm_macs_per_token(more, 10)
    assert m8["mlp"] == m64["mlp"] == 3 * 2 * 3 * 32 * 24  # layers x top-k x SwiGLU
    assert m64["router"] - m8["router"] == 3 * 32 * (64 - 8)
    top4 = flops.llm_macs_per_token(dataclasses.replace(moe, num_experts_per_tok=4), 10)
    assert top4["mlp"] == 2 * m8["mlp"]


def test_audio_counts_and_per_token_spread():
    cfg = registry.config_for({"family": "qwen2_audio", "size": "tiny"})
    a = cfg.audio
    s = a.num_frames // 2
    macs = flops.audio_macs_per_clip(cfg)
    assert macs["conv"] == a.num_frames * 3 * a.num_mel_bins * a.d_model + s * 3 * a.d_model ** 2
    assert macs["attn_scores"] == a.num_layers * s * 2 * a.d_model * s  # full (not causal) attention
    assert macs["proj"] == (s // 2) * a.d_model * cfg.text.hidden_size
    clip = flops.audio_flops_per_clip(cfg)
    assert clip == 3 * 2 * sum(macs.values())
    assert flops.flops_per_token(cfg, 256, audio=True) == pytest.approx(flops.flops_per_token(cfg, 256) + clip / 256)
    assert flops.step_flops(cfg, tokens=512, seq_len=256, clips=2) == pytest.approx(
        512 * flops.flops_per_token(cfg, 256) + 2 * clip)
    with pytest.raises(ValueError, match="seq_len=0"):
        flops.flops_per_token(cfg, 0)


def _configs(sizes):
    return [(f, s) for f, s_all in bench.SIZES.items() for s in s_all if s in sizes]


def _config(family, size):
    if family not in registry.FAMILIES:
        pytest.skip(f"family {family} is not in the registry yet")
    return next((h, c) for f, s, h, c in bench.model_configs([family]) if s == size)


@pytest.mark.parametrize("family,size", _configs({"tiny"}) + [("qwen2_audio", "7b")])
@pytest.mark.parametrize("seq", [512, 4096])
def test_agrees_with_6n_from_transformers(family, size, seq):
    hf, cfg = _config(family, size)
    counts = bench.hf_counts(hf)
    ours = flops.flops_per_token(cfg, seq)
    theirs, n_active = bench.independent_flops_per_token(hf, counts, seq)
    assert abs(ours / theirs - 1) < 0.02, (ours, theirs)
    assert ours < theirs  # the parameter count also holds norms and biases, which do no matmul
    if cfg.text.num_experts:  # the experts a token skips are not counted
        assert n_active < counts["llm"] - counts["embed"] - counts["experts"] / 2


@pytest.mark.parametrize("family,size", _configs({"7b", "30b_a3b"}))
def test_parameter_counts_of_real_configs_equal_transformers(family, size):
    hf, cfg = _config(family, size)
    theirs, ours = bench.hf_counts(hf), bench.our_counts(cfg)
    assert ours == {k: theirs[k] for k in ("llm", "audio", "projector")}, (ours, theirs)


def test_table_prints_every_config(capsys):
    assert bench.main(["--seq", "1024", "--families", "qwen2_audio"]) == 0
    out = capsys.readouterr().out
    assert "qwen2_audio:tiny" in out and "qwen2_audio:7b" in out and "seq_len 1024" in out


def test_bench_mfu_is_against_the_vendor_spec_with_the_measured_peak_beside_it():
    """bench/real_slices.py reports MFU against the device's dense bf16 spec (989 TFLOP/s for an H200) and the
    fraction of the matmul peak measured in the same run beside it, labelled; an unknown device has no MFU."""
    import json

    real_slices = bench_module("real_slices")
    saved = json.loads((REPO / "bench" / "results" / "real_slices_h200_train_qwen2.json").read_text())
    (r,) = [real_slices.with_mfu(x, saved["peak_flops"], saved["device"]) for x in saved["train"]]
    achieved = r["model_flops_per_token"] * r["tokens_per_s"]
    assert r["mfu"] == pytest.approx(achieved / 989e12) and 0.5 < r["mfu"] < 0.52
    assert r["mfu_measured"] == pytest.approx(achieved / saved["peak_flops"]) and r["mfu_measured"] > 0.76
    assert "mfu" not in real_slices.with_mfu(saved["train"][0], saved["peak_flops"], "cpu")

"""FLOPs per token of every model config (the count MFU uses) against an independent count from transformers.

    python bench/model_flops.py [--seq 4096] [--forward]

Ours: ``cogito_jax.models.flops.flops_per_token`` (matmul MACs x 2, training = 3 x forward; attention from
head_dim, GQA kv heads and a causal half; an MoE counts its router and top-k experts only). Independent:
the parameters of the HF model built on the meta device (no weights), 6 x N_active + 6 x layers x seq x
heads x head_dim / 2 x 2 (causal score and value matmuls), where N_active is the language model's parameter
count without the input embedding (a lookup) and without the experts a token does not use. The two differ
by the norms and biases, which the parameter count includes and the matmul count does not.
Also printed: the audio encoder's FLOPs for one clip of the batch window, and per token when one clip
comes with every sequence of ``--seq`` tokens.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SIZES = {"qwen2_audio": ("tiny", "7b"), "qwen3_omni_thinker": ("tiny", "30b_a3b")}
HF_CLASSES = {  # model_type -> (transformers config class, model class)
    "qwen2_audio": ("Qwen2AudioConfig", "Qwen2AudioForConditionalGeneration"),
    "qwen3_omni_moe_thinker": ("Qwen3OmniMoeThinkerConfig", "Qwen3OmniMoeThinkerForConditionalGeneration"),
}
TOWERS = {"audio_tower": "audio", "multi_modal_projector": "projector", "visual": "vision"}


def model_configs(families=None):
    """(family, size, HF config dict, our AudioLMConfig) of every config in configs/models/ whose family the
    registry has."""
    from cogito_jax.config import load_config_file
    from cogito_jax.models import registry

    for family, sizes in SIZES.items():
        if family not in registry.FAMILIES or (families and family not in families):
            continue
        for size in sizes:
            hf = load_config_file(f"{REPO / 'configs' / 'models' / family}.py:{size}").to_dict()
            yield family, size, hf, registry.family_of(hf).from_hf(hf)


def hf_counts(hf: dict) -> dict:
    """Parameter counts of the transformers model of ``hf`` (built on the meta device) by part: ``llm`` (the
    language model and its head), ``embed`` (the input embedding when untied), ``experts`` (all experts'
    weights), ``audio``, ``projector``, ``vision``."""
    import torch
    import transformers

    conf_cls, model_cls = (getattr(transformers, n) for n in HF_CLASSES[hf["model_type"]])
    with torch.device("meta"):
        model = model_cls(conf_cls(**hf))
    out = dict.fromkeys(("llm", "embed", "experts", *TOWERS.values()), 0)
    for name, p in model.named_parameters():  # tied parameters appear once
        parts = name.split(".")
        tower = next((TOWERS[t] for t in TOWERS if t in parts), None)
        out[tower or "llm"] += p.numel()
        if tower is None and ".mlp.experts." in name:
            out["experts"] += p.numel()
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    out["embed"] = 0 if head is not None and head.weight is emb else emb.numel()
    return out


def our_counts(cfg) -> dict:
    """Our parameter counts (``eval_shape``, no arrays) by top-level module: llm, audio, projector."""
    import jax
    from flax import nnx

    from cogito_jax import sharding
    from cogito_jax.models import registry
    from cogito_jax.train.optim import path_str

    abstract = sharding.abstract_model(lambda: registry.build(cfg))
    out = {"llm": 0, "audio": 0, "projector": 0}
    names = {"llm": "llm", "audio_encoder": "audio", "projector": "projector"}
    for p, x in jax.tree_util.tree_flatten_with_path(nnx.state(abstract, nnx.Param))[0]:
        out[names[path_str(p).split("/")[0]]] += x.size
    return out


def independent_flops_per_token(hf: dict, counts: dict, seq_len: int, training: bool = True) -> tuple[float, float]:
    """(FLOPs per LLM token from 6 N_active + the causal attention term, N_active), from the HF config and
    the transformers parameter counts."""
    t = hf["text_config"]
    heads, layers = t["num_attention_heads"], t["num_hidden_layers"]
    head_dim = t.get("head_dim") or t["hidden_size"] // heads
    n_active = counts["llm"] - counts["embed"]
    if t.get("num_experts"):
        n_active -= counts["experts"] * (1 - t["num_experts_per_tok"] / t["num_experts"])
    forward = 2 * n_active + 2 * 2 * layers * heads * head_dim * seq_len / 2
    return forward * (3 if training else 1), n_active


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3f}{unit}"
    return f"{x:.0f}"


def rows(seq_len: int, training: bool = True, families=None) -> list[dict]:
    from cogito_jax.models import flops

    out = []
    for family, size, hf, cfg in model_configs(families):
        theirs = hf_counts(hf)
        ours_n = our_counts(cfg)
        ours = flops.flops_per_token(cfg, seq_len, training)
        indep, n_active = independent_flops_per_token(hf, theirs, seq_len, training)
        macs = flops.llm_macs_per_token(cfg.text, seq_len)
        clip = flops.audio_flops_per_clip(cfg, training=training)
        out.append(dict(config=f"{family}:{size}", params=sum(ours_n.values()), hf_params=theirs,
                        our_params=ours_n, n_active=n_active, ours=ours, independent=indep, ratio=ours / indep,
                        attn_share=macs["attn_scores"] / sum(macs.values()), audio_per_clip=clip,
                        audio_frames=cfg.audio.num_frames, audio_per_token=clip / seq_len))
    return out


def print_table(table: list[dict], seq_len: int, training: bool) -> None:
    kind = "training (3 x forward)" if training else "forward"
    print(f"FLOPs per LLM token, {kind}, seq_len {seq_len}; independent = 6N_active + causal attention "
          f"(transformers parameter counts on the meta device)")
    head = (f"{'config':<32}{'params':>10}{'LLM active':>12}{'ours/token':>12}{'independent':>13}{'ratio':>8}"
            f"{'attn':>7}{'audio/clip':>12}{'frames':>8}{'+audio/token':>14}")
    print(head)
    print("-" * len(head))
    for r in table:
        print(f"{r['config']:<32}{_si(r['params']):>10}{_si(r['n_active']):>12}{_si(r['ours']):>12}"
              f"{_si(r['independent']):>13}{r['ratio']:>8.4f}{r['attn_share']:>7.1%}{_si(r['audio_per_clip']):>12}"
              f"{r['audio_frames']:>8}{_si(r['audio_per_token']):>14}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq", type=int, default=4096, help="sequence length (tokens) for the attention term")
    ap.add_argument("--forward", action="store_true", help="forward FLOPs instead of training (3 x forward)")
    ap.add_argument("--families", default="", help="comma-separated families (default: all in the registry)")
    args = ap.parse_args(argv)
    fams = [f for f in args.families.split(",") if f] or None
    print_table(rows(args.seq, not args.forward, fams), args.seq, not args.forward)
    return 0


if __name__ == "__main__":
    sys.exit(main())

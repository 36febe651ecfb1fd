"""LoRA for any NNX model: low-rank adapters on the kernels whose parameter paths match a pattern.

``LoRA(base, rank=r, alpha=a, targets=r"(q|k|v|o)_proj/kernel$")`` adds ``lora_a [..., in, r]``
(random, like PEFT's Kaiming init) and ``lora_b [..., r, out]`` (zeros) for every matching kernel of
shape ``[..., in, out]`` (leading dims are stacked layers or experts). The forward pass runs the base
model with ``W + (alpha / r) * A @ B`` in place of each target ``W``, so it works with any module
layout (scanned layers included) without touching the model's code; freshly added adapters leave the
output unchanged. With the optimizer's ``trainable="lora"`` preset only ``lora_*`` parameters train.
``merge()`` returns the base model with the adapters folded in (for export). Input dropout on the
adapter path is not part of this weight-space formulation (``dropout`` must be 0).

``save_peft(lora, config, out_dir)`` writes the adapters in PEFT's layout (``adapter_config.json`` +
``adapter_model.safetensors``) for the HF model of ``config``'s family, so PyTorch users load them with
``peft.PeftModel.from_pretrained(hf_model, out_dir)``. Tensor keys are
``base_model.model.<module>.lora_A.weight [r, in]`` / ``lora_B.weight [out, r]`` with ``<module>`` the
transformers module name of the adapted Linear: the family's weight table gives its checkpoint name
(one module per stacked layer), ``MODULE_PREFIXES`` the module tree transformers (>= 5) builds around
it. ``target_modules`` is a regular expression that matches exactly the adapted modules.

Adapters on MoE experts (stacked ``[layers, experts, ...]``) map onto PEFT's ``target_parameters``: transformers
keeps each layer's experts fused as ``experts.gate_up_proj [E, 2F, D]`` and ``experts.down_proj [E, D, F]``
parameters, which PEFT adapts with one ``lora.ParamWrapper`` per parameter (``lora_A [E * r, in]``, expert-major
rows; ``lora_B [out, r * E]``, expert-minor columns). Separate gate and up adapters of rank ``r`` are one
adapter of rank ``2r`` on the fused parameter (A stacked, B block-diagonal), exactly; ``rank_pattern`` and
``alpha_pattern`` keep its scale ``alpha / r``.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cogito_jax import sharding
from cogito_jax.errors import ConfigError, check_number
from cogito_jax.models import registry
from cogito_jax.models.hf_weights import LINEAR, stack_names
from cogito_jax.models.layers import path_str

SEP = "."


def _targets(base: nnx.Module, pattern: str) -> dict[str, nnx.Variable]:
    """The base model's Param variables (with their metadata) whose path matches ``pattern``."""
    rx = re.compile(pattern)
    state = nnx.state(base, nnx.Param)
    leaves = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    return {path_str(p): v for p, v in leaves if rx.search(path_str(p)) and len(v.shape) >= 2}


class LoRA(nnx.Module):
    """A base model plus low-rank adapters on the kernels matching ``targets``."""

    def __init__(self, base: nnx.Module, *, rank: int, alpha: float, targets: str, dropout: float = 0.0,
                 rngs: nnx.Rngs):
        if rank < 1:
            raise ValueError(f"LoRA rank={rank} must be >= 1")
        if dropout:
            raise ValueError(f"LoRA dropout={dropout}: adapters are merged into the weights, so input dropout "
                             "is not available; use dropout=0")
        found = _targets(base, targets)
        if not found:
            raise ValueError(f"LoRA targets={targets!r} match no 2-D (or stacked) kernel of the model")
        self.base = base
        self.rank, self.alpha, self.scale = rank, float(alpha), alpha / rank
        self.names = tuple(sorted(found))
        a, b = {}, {}
        for name in self.names:
            w = found[name]
            *lead, d_in, d_out = w.shape
            meta = w.get_metadata()
            logical = tuple(meta.get("out_sharding") or ()) or None
            a_axes = (*logical[:-1], "lora_rank") if logical else None
            b_axes = (*logical[:-2], "lora_rank", logical[-1]) if logical else None
            init_a = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=-2, out_axis=-1)
            a[name.replace("/", SEP)] = nnx.Param(
                _annotate(init_a, a_axes)(rngs.params(), (*lead, d_in, rank), jnp.float32))
            b[name.replace("/", SEP)] = nnx.Param(
                _annotate(nnx.initializers.zeros, b_axes)(rngs.params(), (*lead, rank, d_out), jnp.float32))
        self.lora_a = nnx.Dict(a)
        self.lora_b = nnx.Dict(b)

    def _merged_state(self) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
        graphdef, params, rest = nnx.split(self.base, nnx.Param, ...)
        flat = dict(jax.tree_util.tree_flatten_with_path(params)[0])
        by_name = {path_str(p): p for p in flat}
        new = dict(flat)
        for name in self.names:
            key = name.replace("/", SEP)
            w = flat[by_name[name]]
            delta = jnp.einsum("...ir,...ro->...io", self.lora_a[key][...], self.lora_b[key][...])
            new[by_name[name]] = (w.astype(jnp.float32) + self.scale * delta).astype(w.dtype)
        treedef = jax.tree_util.tree_structure(params)
        merged = jax.tree_util.tree_unflatten(treedef, [new[p] for p in flat])
        return graphdef, merged, rest

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        graphdef, merged, rest = self._merged_state()
        return nnx.merge(graphdef, merged, rest)(*args, **kwargs)

    def merge(self) -> nnx.Module:
        """The base model with every adapter folded into its kernel (a new module; ``self`` is unchanged)."""
        graphdef, merged, rest = self._merged_state()
        return nnx.merge(graphdef, merged, rest)

    def adapters(self) -> dict[str, tuple[jax.Array, jax.Array]]:
        """``{kernel path: (A [..., in, r], B [..., r, out])}``, e.g. for a PEFT export."""
        return {n: (self.lora_a[n.replace("/", SEP)][...], self.lora_b[n.replace("/", SEP)][...])
                for n in self.names}


def _annotate(init, axes):
    return nnx.with_partitioning(init, axes) if axes else init


# ----------------------------------------------------------------------------- PEFT export

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


# transformers (>= 5) module names of the HF checkpoint names, per family: (checkpoint prefix, module prefix),
# first match wins. PEFT adapters are keyed by module names (what ``PeftModel.save_pretrained`` writes).
MODULE_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "qwen2_audio": (("language_model.model.", "model.language_model."), ("language_model.lm_head", "lm_head"),
                    ("audio_tower.", "model.audio_tower."), ("multi_modal_projector.", "model.multi_modal_projector.")),
    "qwen3_omni_thinker": (("model.", "model.language_model."), ("audio_tower.", "model.audio_tower."),
                           ("lm_head", "lm_head")),
}


def hf_module_name(family: str, checkpoint_name: str) -> str:
    """The transformers module name of a checkpoint module name (``language_model.model.layers.0.mlp.up_proj``
    -> ``model.language_model.layers.0.mlp.up_proj`` for qwen2_audio); unchanged for families not listed."""
    for old, new in MODULE_PREFIXES.get(family, ()):
        if checkpoint_name.startswith(old):
            return new + checkpoint_name[len(old):]
    return checkpoint_name


def _modules_regex(modules: list[str]) -> str:
    """A regex that fully matches exactly the given module names (``{i}``: any layer)."""
    alts = (r"\.".join(r"\d+" if p == "{i}" else re.escape(p) for p in m.split(".")) for m in modules)
    return "^(?:" + "|".join(dict.fromkeys(alts)) + ")$"


def save_peft(lora: LoRA, config: Any, out_dir: str | pathlib.Path, *, base_model_name_or_path: str | None = None,
              task_type: str | None = "CAUSAL_LM", dtype: Any = None) -> pathlib.Path:
    """Writes ``lora``'s adapters as a PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``)
    for the HF model of ``config`` (the ``AudioLMConfig`` of ``lora.base``).

    Every adapted kernel must be a Linear weight of the family's HF checkpoint (one per layer for stacked
    layers) or an MoE expert projection (see the module docstring); adapters on convolutions have no PEFT
    module and raise ``ValueError``. Tensors keep the adapters' dtype unless ``dtype`` is given. Under several
    processes every process calls it; process 0 writes.
    """
    from safetensors.numpy import save_file

    fam = registry.FAMILIES[config.family]
    table = fam.weights(config)
    tensors: dict[str, np.ndarray] = {}
    patterns: list[str] = []
    linear = {hf_module_name(fam.name, key.removesuffix(".weight")) for key, layout in table.values()
              if layout == LINEAR and key.endswith(".weight") and stack_names(key) in ([], ["i"])}
    experts: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}  # experts module -> {gate|up|down: (A, B)}
    for name, (a, b) in lora.adapters().items():
        if name not in table:
            raise ValueError(f"adapted parameter {name!r} has no HF tensor in family {fam.name}")
        key, layout = table[name]
        stacked = stack_names(key)
        expert = re.fullmatch(r"(.+\.experts)\.\{e\}\.(gate|up|down)_proj\.weight", key)
        if expert and layout == LINEAR and stacked == ["i", "e"]:
            out_dtype = np.dtype(dtype if dtype is not None else a.dtype)
            module = hf_module_name(fam.name, expert.group(1))
            experts.setdefault(module, {})[expert.group(2)] = (sharding.gather(a).astype(out_dtype),
                                                               sharding.gather(b).astype(out_dtype))
            continue
        if layout != LINEAR or not key.endswith(".weight") or stacked not in ([], ["i"]):
            raise ValueError(f"adapter on {name!r} ({key}, layout {layout}) has no PEFT Linear module; "
                             "PEFT export covers Linear weights of unstacked or per-layer modules")
        module = hf_module_name(fam.name, key.removesuffix(".weight"))
        patterns.append(module)
        out_dtype = np.dtype(dtype if dtype is not None else a.dtype)
        a_np, b_np = sharding.gather(a).astype(out_dtype), sharding.gather(b).astype(out_dtype)
        layers = range(a_np.shape[0]) if stacked else [None]
        for i in layers:
            mod = module.format(i=i) if stacked else module
            ai, bi = (a_np[i], b_np[i]) if stacked else (a_np, b_np)
            tensors[f"base_model.model.{mod}.lora_A.weight"] = np.ascontiguousarray(ai.T)  # [r, in]
            tensors[f"base_model.model.{mod}.lora_B.weight"] = np.ascontiguousarray(bi.T)  # [out, r]
    target_parameters, rank_pattern, alpha_pattern = _expert_tensors(experts, lora, tensors)
    # PEFT turns a regex into the adapted modules' last names for MoE models (whose experts it converts), so
    # the modules that share such a name but have no adapter are excluded explicitly.
    leaves = {m.rsplit(".", 1)[-1] for m in patterns}
    others = sorted(m for m in linear - set(patterns) if m.rsplit(".", 1)[-1] in leaves)
    peft_config = {
        "peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base_model_name_or_path,
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": 0.0,
        "target_modules": _modules_regex(patterns) if patterns else None,
        "exclude_modules": _modules_regex(others) if others else None,
        "target_parameters": target_parameters or None,
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
        "layers_to_transform": None, "layers_pattern": None, "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
    }
    out = pathlib.Path(out_dir)
    if jax.process_index() == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out / PEFT_WEIGHTS), metadata={"format": "pt"})
        (out / PEFT_CONFIG).write_text(json.dumps(peft_config, indent=2) + "\n")
    return out


def _expert_tensors(experts: dict[str, dict[str, tuple[Any, Any]]], lora: LoRA, tensors: dict[str, Any]
                    ) -> tuple[list[str], dict[str, int], dict[str, float]]:
    """Adds the PEFT tensors of expert adapters (``{module with {i}: {gate|up|down: (A [L, E, in, r],
    B [L, E, r, out])}}``, ours) to ``tensors``; returns (target_parameters, rank_pattern, alpha_pattern)."""

    targets, rank_pattern, alpha_pattern = set(), {}, {}
    for module, parts in experts.items():
        params = []  # (parameter, A [L, E, r', in], B [L, E, out, r']) in transformers' registration order
        gate, up = parts.get("gate"), parts.get("up")
        if gate or up:  # fused [gate; up]: A stacked on the rank, B block-diagonal
            a = np.concatenate([p[0].swapaxes(-1, -2) for p in (gate, up) if p], axis=2)  # [L, E, r', D]
            f = (gate or up)[1].shape[-1]
            b = np.zeros((*a.shape[:2], 2 * f, a.shape[2]), a.dtype)
            col = 0
            for row, part in ((0, gate), (f, up)):
                if part:
                    r = part[1].shape[-2]
                    b[:, :, row:row + f, col:col + r] = part[1].swapaxes(-1, -2)
                    col += r
            params.append(("gate_up_proj", a, b))
        if "down" in parts:
            a, b = parts["down"]
            params.append(("down_proj", a.swapaxes(-1, -2), b.swapaxes(-1, -2)))
        # PEFT wraps the experts module once per targeted parameter, in that order; the last wrapper is the
        # outermost, so the earlier ones' tensors sit under one more ``base_layer`` per later wrapper.
        for j, (param, a, b) in enumerate(params):
            n_layers, n_exp, r2, d_in = a.shape
            prefix = "base_layer." * (len(params) - 1 - j)
            for i in range(n_layers):
                mod = f"base_model.model.{module.format(i=i)}.{prefix}"
                tensors[f"{mod}lora_A.weight"] = np.ascontiguousarray(a[i].reshape(n_exp * r2, d_in))  # expert-major
                tensors[f"{mod}lora_B.weight"] = np.ascontiguousarray(  # [out, r' * E], expert-minor
                    b[i].transpose(1, 2, 0).reshape(-1, r2 * n_exp))
            key = f"{module.rsplit('.{i}.', 1)[-1]}.{param}"  # e.g. mlp.experts.gate_up_proj
            targets.add(key)
            if r2 != lora.rank:
                rank_pattern[key], alpha_pattern[key] = r2, lora.alpha * r2 / lora.rank
    return sorted(targets), rank_pattern, alpha_pattern


def validate(lc: Mapping[str, Any]) -> None:
    """Checks the ``lora`` section (adapters of ``train.trainable="lora"``)."""
    if lc.rank < 1:
        raise ConfigError(f"lora.rank={lc.rank} must be >= 1")
    check_number("lora.alpha", lc.alpha, lambda v: v > 0, "> 0")
    if lc.dropout:
        raise ConfigError(f"lora.dropout={lc.dropout}: adapters are merged into the weights, so input dropout is not "
                          "available; use 0")
    try:
        re.compile(lc.targets)
    except re.error as e:
        raise ConfigError(f"lora.targets={lc.targets!r} is not a valid regex: {e}") from e

"""The run configuration's schema: :func:`base_config` (every key with its default and type), loading
``path.py[:arg]`` files, ``a.b=value`` overrides and writing the resolved config.

A config file is a Python file with ``get_config(arg=None) -> ConfigDict`` (``--config file.py:arg``
passes ``arg``). Experiments start from :func:`base_config`, whose keys are the schema: a key a file
or an override adds that the base does not know is an error that names the nearest valid key
(:func:`check_schema`). The checks of each section's values live with the subsystem that reads it;
:func:`cogito_jax.cli.validate` runs them all, and :mod:`cogito_jax.cli` is the command-line front end.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

from ml_collections import ConfigDict

from cogito_jax.errors import ConfigError

# Sections whose keys are owned by a component (model family, data source) rather than the base.
FREE_FORM = ("model", "data", "experiment")


# How a process joins a multi-process JAX job (``sharding.maybe_initialize_distributed``); launch/local.sh's
# environment variables take precedence, ``auto=True`` lets JAX detect a Cloud TPU slice or a SLURM job.
DISTRIBUTED_DEFAULTS = dict(num_processes=1, process_id=0, coordinator_address="localhost:12355", auto=False)
# Input pipeline options (cogito_jax.data.pipeline): packing several examples per row of data.max_len
# tokens (at most max_clips_per_row audio clips each), and audio_buckets, increasing mel-frame widths
# that batches of shorter clips are padded to instead of the encoder's full window.
DATA_PIPELINE_DEFAULTS = dict(packing=False, max_clips_per_row=4, audio_buckets=(), num_workers=0)


def base_config() -> ConfigDict:
    """Every key a run may set, with its default and type."""
    c = ConfigDict()
    c.name = "run"
    c.seed = 0
    c.mesh = ConfigDict(
        dict(data=-1, fsdp=1, expert=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_expert=1, dcn_tensor=1)
    )
    # A preset name from cogito_jax.sharding.RULE_PRESETS ("fsdp", "fsdp_tp", "fsdp_ep").
    c.sharding = ConfigDict(dict(rules="fsdp"))
    c.distributed = ConfigDict(dict(DISTRIBUTED_DEFAULTS))
    c.model = ConfigDict()
    # The data source owns most data keys (see configs/tiny.py); the input pipeline's options are these.
    c.data = ConfigDict(dict(DATA_PIPELINE_DEFAULTS))
    c.experiment = ConfigDict()
    c.train = ConfigDict(
        dict(
            steps=100,
            batch_size=8,
            grad_accum=1,
            log_every=10,
            eval_every=0,
            peak_tflops=0.0,  # per-device peak for MFU; 0 = the device's bf16 peak from models/flops.py
            trainable="full",  # full | lora | frozen_encoder | adapter_only
            # (remat and the parameter / compute dtypes are model settings: model.remat, model.param_dtype,
            # model.dtype)
        )
    )
    c.optim = ConfigDict(
        dict(
            name="adamw",
            lr=1e-4,
            warmup_steps=0,
            schedule="cosine",  # cosine | linear | constant
            end_lr_ratio=0.0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.0,
            clip_norm=1.0,
        )
    )
    # LoRA adapters (used when train.trainable="lora"): rank, alpha (the update is alpha / rank * A @ B), dropout
    # (must be 0: adapters are applied in weight space) and a regex over the base model's parameter paths
    # ("llm/layers/self_attn/q_proj/kernel", "llm/layers/mlp/gate_proj" for MoE experts) naming the kernels to adapt.
    c.lora = ConfigDict(dict(rank=16, alpha=32.0, dropout=0.0, targets=r"^llm/layers/self_attn/(q|k|v|o)_proj/kernel$"))
    c.checkpoint = ConfigDict(dict(every=100, keep_last=3, keep_every=0, async_save=True))
    # Self-distillation rounds (python -m cogito_jax.distill): defaults from STaR / ReST-EM / RFT / R1-AQA.
    # The pool is pool_dir, else synthetic_pool generated questions (data.source=synthetic), else the training
    # set; pool_size caps it (0 = all). all_wrong: "drop" prompts whose N samples were all wrong, or "hint":
    # re-sample them once with the key in the prompt (hint_template) and keep correct traces as rationalised.
    c.distill = ConfigDict(dict(
        rounds=2, sft_steps=200, round_steps=200, num_samples=8, orders=2, temperature=1.0, max_new_tokens=96,
        batch_size=32, pool_size=0, pool_dir="", synthetic_pool=0, eval_limit=0, min_thinking_chars=10,
        max_thinking_chars=4000, max_per_prompt=4, all_right_weight=0.5, include_seed=True, from_base=True,
        all_wrong="drop", hint_template='{question}\nHint: the correct answer is "{answer}". Reason your way to it.',
        hint_weight=1.0, rl_steps=0,
    ))
    # GRPO after self-distillation (python -m cogito_jax.rl, or distill.rl_steps > 0 after the last round): per
    # step prompts_per_step pool prompts x num_samples samples at temperature, up to `minibatches` optimizer steps
    # on them (sample_prompts > prompts_per_step: dynamic sampling, that many prompts are sampled and the first
    # prompts_per_step whose samples did not all score alike train); clip_low/clip_high (DAPO's clip-higher when
    # high > low), kl_coef to the starting model, token or sequence loss normalisation; reward_* weight the
    # verifiable rewards (cogito_jax/rl/rewards.py). The pool is pool_dir, else the data section's training set
    # (python -m cogito_jax.rl) or the rounds' pool (distill.rl_steps); init_workdir is the run RL starts from
    # (else model.checkpoint). reward_judge > 0 adds the weight when the judge at judge_url (OpenAI-compatible)
    # accepts the reasoning under the audit's rubric; a prompt with a failed judge call is left out of its step,
    # never scored.
    c.rl = ConfigDict(dict(
        steps=0, prompts_per_step=16, sample_prompts=0, num_samples=8, temperature=1.0, top_p=1.0, max_new_tokens=96,
        sample_batch_size=16, minibatches=1, lr=0.0, warmup_steps=0, clip_low=0.2, clip_high=0.28, kl_coef=0.0,
        normalize="token", scale_std=True, drop_uniform_groups=True, reward_correct=1.0, reward_format=0.1,
        reward_consistent=0.0, reward_judge=0.0, judge_url="", judge_model="", judge_api_key_env="OPENAI_API_KEY",
        judge_max_tokens=512, pool_dir="", init_workdir="", save_every=1, eval_limit=0,
    ))
    # python -m cogito_jax.sample: the model comes from model.checkpoint (an HF folder) or, when set,
    # workdir (a run trained with this config); system is "challenge", "default" (the chat template's) or "none".
    c.sample = ConfigDict(dict(
        workdir="", num_samples=1, temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=256, batch_size=8, seed=0,
        system="challenge", length_buckets=(64, 128, 256, 512, 1024, 2048, 4096),
        # continuous batching: decode slots (0: batch_size x num_samples), KV pool pages of page_size tokens
        # (0: half of every slot at full context), decode steps between host checks, and per call while a check
        # would change nothing (0: 4 x steps_per_sync)
        slots=0, kv_pages=0, page_size=16, steps_per_sync=8, max_steps_per_sync=0,
    ))
    c.metrics = ConfigDict(dict(jsonl=True, tensorboard=True, wandb=False, wandb_project="cogito-jax"))
    return c


def _flat_keys(cfg: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        path = f"{prefix}{k}"
        keys.append(path)
        if isinstance(v, (ConfigDict, Mapping)):
            keys.extend(_flat_keys(v, path + "."))
    return keys


def suggest(key: str, candidates: Iterable[str]) -> str:
    """', did you mean "x"?' for the closest candidate, or ''."""
    cands = list(candidates)
    close = difflib.get_close_matches(key, cands, n=1, cutoff=0.6)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {c.rsplit(".", 1)[-1]: c for c in cands}
        close = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)]
    return f', did you mean "{close[0]}"?' if close else ""


# Keys that name a setting another section holds: the error says where it lives.
MOVED = {"train.remat": "model.remat", "train.param_dtype": "model.param_dtype", "train.compute_dtype": "model.dtype"}


def unknown_key(path: str, known: Iterable[str]) -> ConfigError:
    """The error for a key the schema does not know: where the setting lives if it moved, else the nearest key."""
    if path in MOVED:
        return ConfigError(f"unknown config key {path!r}: the setting is {MOVED[path]!r}")
    return ConfigError(f"unknown config key {path!r}{suggest(path, known)}")


def check_schema(cfg: ConfigDict, schema: ConfigDict | None = None) -> None:
    """Raises ConfigError for keys the schema does not know, or values of the wrong type."""
    schema = base_config() if schema is None else schema
    known = _flat_keys(schema)

    def walk(node, ref, prefix):
        for k, v in node.items():
            path = f"{prefix}{k}"
            if k not in ref:
                raise unknown_key(path, known)
            r = ref[k]
            if isinstance(r, ConfigDict):
                if not isinstance(v, (ConfigDict, Mapping)):
                    raise ConfigError(f"config key {path!r} must be a section, got {v!r}")
                if k not in FREE_FORM or prefix:
                    walk(v, r, path + ".")
            elif r is not None and v is not None and not _compatible(v, r):
                raise ConfigError(
                    f"config key {path!r} must be {type(r).__name__} (like {r!r}), got {v!r}"
                )

    walk(cfg, schema, "")


def _compatible(value: Any, ref: Any) -> bool:
    if isinstance(ref, bool):
        return isinstance(value, bool)
    if isinstance(ref, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(ref, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(ref, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(ref))


# ----------------------------------------------------------------------------- loading


def import_file(path: str | pathlib.Path, kind: str = "config") -> Any:
    """Imports a Python file by path (config and sweep files); ConfigError if it is missing or broken."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise ConfigError(f"{kind} file {str(path)!r} does not exist")
    mod_spec = importlib.util.spec_from_file_location(f"_cogito_{kind}_{file.stem}", file)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:  # a broken file is user input: report it in one line
        raise ConfigError(f"{kind} file {str(path)!r} failed to import: {type(e).__name__}: {e}") from e
    return module


def load_config_file(spec: str) -> ConfigDict:
    """Imports ``path.py[:arg]`` and returns ``get_config(arg)``."""
    path, _, arg = spec.partition(":")
    module = import_file(path)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} has no get_config(arg=None) function")
    try:
        cfg = module.get_config(arg or None)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{path}: get_config({arg!r}) failed: {type(e).__name__}: {e}") from e
    return cfg


def apply_overrides(cfg: ConfigDict, overrides: Mapping[str, Any] | Iterable[str]) -> ConfigDict:
    """Applies ``{"a.b": value}`` or ``["a.b=value", ...]`` (values parsed like the CLI)."""
    if not isinstance(overrides, Mapping):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key.path=value")
            k, v = item.split("=", 1)
            pairs[k.removeprefix("--").removeprefix("config.")] = _parse_value(v)
        overrides = pairs
    for key, value in overrides.items():
        node, leaf = locate(cfg, key)
        try:
            node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"config key {key!r}: {e}") from e
    return cfg


def locate(cfg: ConfigDict, key: str) -> tuple[ConfigDict, str]:
    """(parent section, leaf name) of dotted ``key``; ConfigError naming the nearest key if unknown."""
    node = cfg
    parts = key.split(".")
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        if p not in node or (not last and not isinstance(node[p], ConfigDict)):
            raise unknown_key(key, _flat_keys(cfg))
        if not last:
            node = node[p]
    return node, parts[-1]


def _parse_value(text: str) -> Any:
    import ast

    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def to_dict(cfg: ConfigDict) -> dict:
    return json.loads(cfg.to_json_best_effort())


def dump(cfg: ConfigDict, path: str | pathlib.Path) -> None:
    """Writes the resolved config as JSON (the run's ``config.json``)."""
    from etils import epath

    p = epath.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(cfg.to_json_best_effort(indent=2, sort_keys=True) + "\n")

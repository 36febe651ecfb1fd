"""Run configuration: ml-collections files, ``--config.a.b=v`` overrides, validation, CLI front end.

A config file is a Python file with ``get_config(arg=None) -> ConfigDict`` (``--config file.py:arg``
passes ``arg``). Experiments start from :func:`base_config`, whose keys are the schema: a key a file
or an override adds that the base does not know is an error that names the nearest valid key.
Every entry point runs through :func:`run_main`, which turns any bad user input into one line on
stderr and exit code 2.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import pathlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ml_collections
from ml_collections import ConfigDict

from cogito_jax.errors import (  # noqa: F401
    EXIT_PREEMPTED,
    EXIT_USAGE,
    ConfigError,
    check_number as _check_number,
    is_int as _is_int,
    usage_error,
)

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
            remat="none",
            param_dtype="float32",
            compute_dtype="float32",
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
        hint_weight=1.0,
    ))
    # python -m cogito_jax.sample: the model comes from model.checkpoint (an HF folder) or, when set,
    # workdir (a run trained with this config); system is "challenge", "default" (the chat template's) or "none".
    c.sample = ConfigDict(dict(
        workdir="", num_samples=1, temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=256, batch_size=8, seed=0,
        system="challenge", length_buckets=(64, 128, 256, 512, 1024, 2048, 4096),
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


def check_schema(cfg: ConfigDict, schema: ConfigDict | None = None) -> None:
    """Raises ConfigError for keys the schema does not know, or values of the wrong type."""
    schema = base_config() if schema is None else schema
    known = _flat_keys(schema)

    def walk(node, ref, prefix):
        for k, v in node.items():
            path = f"{prefix}{k}"
            if k not in ref:
                raise ConfigError(f"unknown config key {path!r}{suggest(path, known)}")
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


def validate(cfg: ConfigDict) -> ConfigDict:
    """Schema plus cross-field checks that need no devices; returns ``cfg`` for chaining."""
    check_schema(cfg)
    from cogito_jax import sharding

    sharding.resolve_rules(cfg.sharding.rules)
    for axis in sharding.MESH_AXES:
        for key in (axis, f"dcn_{axis}"):
            v = cfg.mesh.get(key, 1)
            if v == 0 or v < -1:
                raise ConfigError(f"mesh.{key}={v} must be a positive size or -1 (the rest)")
    if sum(cfg.mesh.get(a, 1) == -1 for a in sharding.MESH_AXES) > 1:
        raise ConfigError(f"mesh: at most one axis may be -1, got {dict(cfg.mesh)}")
    if not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed={cfg.seed} must be in [0, 2**32)")
    t = cfg.train
    for key in ("steps", "batch_size", "grad_accum", "log_every"):
        if t[key] < 1:
            raise ConfigError(f"train.{key}={t[key]} must be >= 1")
    if t.eval_every < 0:
        raise ConfigError(f"train.eval_every={t.eval_every} must be >= 0 (0 = no evaluation during training)")
    _check_number("train.peak_tflops", t.peak_tflops, lambda v: v >= 0, ">= 0 (0 = the device's bf16 peak)")
    ck = cfg.checkpoint
    for key, low in (("every", 1), ("keep_last", 1), ("keep_every", 0)):
        if ck[key] < low:
            raise ConfigError(f"checkpoint.{key}={ck[key]} must be >= {low}")
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by train.grad_accum={t.grad_accum}")
    if t.trainable not in ("full", "lora", "frozen_encoder", "adapter_only"):
        raise ConfigError(
            f"train.trainable={t.trainable!r} must be one of full, lora, frozen_encoder, adapter_only"
        )
    for key in ("param_dtype", "compute_dtype"):
        if t[key] not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"train.{key}={t[key]!r} must be float32, bfloat16 or float16")
    validate_optim(cfg.optim)
    if "lora" in cfg:
        validate_lora(cfg.lora)
    validate_model_settings(cfg.get("model") or {})
    if "data" in cfg:
        validate_data(cfg.data)
    if "sample" in cfg:
        validate_sample(cfg.sample)
    if "distill" in cfg:
        validate_distill(cfg.distill)
    return cfg


def validate_optim(o: ConfigDict) -> None:
    """Checks the ``optim`` section: schedule name and every number finite and in its range."""
    if o.schedule not in ("cosine", "linear", "constant"):
        raise ConfigError(f"optim.schedule={o.schedule!r} must be cosine, linear or constant")
    _check_number("optim.lr", o.lr, lambda v: v > 0, "> 0")
    _check_number("optim.eps", o.eps, lambda v: v > 0, "> 0")
    for key in ("b1", "b2"):
        _check_number(f"optim.{key}", o[key], lambda v: 0 <= v < 1, "in [0, 1)")
    _check_number("optim.end_lr_ratio", o.end_lr_ratio, lambda v: 0 <= v <= 1, "in [0, 1]")
    for key in ("weight_decay", "clip_norm"):
        _check_number(f"optim.{key}", o[key], lambda v: v >= 0, ">= 0 (0 = off)")
    if o.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps={o.warmup_steps} must be >= 0")


def validate_model_settings(model: Mapping[str, Any]) -> None:
    """The run-time model settings of a ``model`` section (``registry.OVERRIDES``) that it sets."""
    from cogito_jax.models import attention, layers, moe

    allowed = {"dtype": tuple(layers.DTYPES), "param_dtype": tuple(layers.DTYPES), "attn_impl": attention.IMPLS,
               "remat": tuple(layers.REMAT_POLICIES), "moe_impl": moe.IMPLS}
    for key, values in allowed.items():
        if model.get(key) and model[key] not in values:
            raise ConfigError(f"model.{key}={model[key]!r} must be one of {', '.join(values)}")
    factor = model.get("moe_capacity_factor")
    if factor is not None and not factor > 0:
        raise ConfigError(f"model.moe_capacity_factor={factor} must be > 0")


def validate_lora(lc: ConfigDict) -> None:
    """Checks the ``lora`` section (adapters of ``train.trainable="lora"``)."""
    import re

    if lc.rank < 1:
        raise ConfigError(f"lora.rank={lc.rank} must be >= 1")
    _check_number("lora.alpha", lc.alpha, lambda v: v > 0, "> 0")
    if lc.dropout:
        raise ConfigError(f"lora.dropout={lc.dropout}: adapters are merged into the weights, so input dropout is not "
                          "available; use 0")
    try:
        re.compile(lc.targets)
    except re.error as e:
        raise ConfigError(f"lora.targets={lc.targets!r} is not a valid regex: {e}") from e


def validate_data(d: ConfigDict) -> None:
    """Checks the input pipeline's keys of the ``data`` section (those of them the config sets)."""
    if "packing" in d and not isinstance(d.packing, bool):
        raise ConfigError(f"data.packing={d.packing!r} must be True or False")
    for key, low in (("max_clips_per_row", 1), ("num_workers", 0), ("max_len", 1), ("num_train", 1),
                     ("num_heldout", 0), ("seed", 0)):
        if key in d and (not _is_int(d[key]) or d[key] < low):
            raise ConfigError(f"data.{key}={d[key]!r} must be an integer >= {low}")
    if "audio_buckets" in d:
        b = d.audio_buckets
        if (not isinstance(b, (tuple, list)) or any(not _is_int(x) or x < 1 for x in b)
                or list(b) != sorted(set(b))):
            raise ConfigError(f"data.audio_buckets={b!r} must be increasing positive mel-frame counts, "
                              "e.g. (500, 1000)")


DISTILL_ALL_WRONG = ("drop", "hint")


def validate_distill(d: ConfigDict) -> None:
    """Checks the ``distill`` section (self-distillation rounds)."""
    for key in ("num_samples", "orders", "max_new_tokens", "batch_size", "max_per_prompt"):
        if d[key] < 1:
            raise ConfigError(f"distill.{key}={d[key]} must be >= 1")
    for key in ("rounds", "sft_steps", "round_steps", "pool_size", "synthetic_pool", "eval_limit",
                "min_thinking_chars"):
        if d[key] < 0:
            raise ConfigError(f"distill.{key}={d[key]} must be >= 0")
    if d.orders > d.num_samples:
        raise ConfigError(f"distill.orders={d.orders} must be <= distill.num_samples={d.num_samples} "
                          "(each choice order gets num_samples // orders samples)")
    _check_number("distill.temperature", d.temperature, lambda v: v >= 0, ">= 0 (0 = greedy)")
    if d.max_thinking_chars < d.min_thinking_chars:
        raise ConfigError(f"distill.max_thinking_chars={d.max_thinking_chars} is below "
                          f"distill.min_thinking_chars={d.min_thinking_chars}")
    for key in ("all_right_weight", "hint_weight"):
        _check_number(f"distill.{key}", d[key], lambda v: v >= 0, ">= 0")
    if d.all_wrong not in DISTILL_ALL_WRONG:
        raise ConfigError(f"distill.all_wrong={d.all_wrong!r} must be one of {', '.join(DISTILL_ALL_WRONG)}")
    if d.all_wrong == "hint":
        try:
            d.hint_template.format(question="q", answer="a")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"distill.hint_template={d.hint_template!r} must use only {{question}} and "
                              f"{{answer}}: {type(e).__name__}: {e}") from e
        if "{answer}" not in d.hint_template or "{question}" not in d.hint_template:
            raise ConfigError(f"distill.hint_template={d.hint_template!r} must contain {{question}} and {{answer}}")


SYSTEM_PROMPTS = ("challenge", "default", "none")


def validate_sample(s: ConfigDict) -> None:
    """Checks the ``sample`` section (generation settings of ``python -m cogito_jax.sample``)."""
    for key in ("num_samples", "max_new_tokens", "batch_size"):
        if s[key] < 1:
            raise ConfigError(f"sample.{key}={s[key]} must be >= 1")
    if not 0 <= s.seed < 2**32:
        raise ConfigError(f"sample.seed={s.seed} must be in [0, 2**32)")
    _check_number("sample.temperature", s.temperature, lambda v: v >= 0, ">= 0 (0 = greedy)")
    if s.top_k < 0:
        raise ConfigError(f"sample.top_k={s.top_k} must be >= 0 (0 = no top-k)")
    _check_number("sample.top_p", s.top_p, lambda v: 0 < v <= 1, "in (0, 1]")
    if s.system not in SYSTEM_PROMPTS:
        raise ConfigError(f"sample.system={s.system!r} must be one of {', '.join(SYSTEM_PROMPTS)}")
    b = list(s.length_buckets)
    if not b or any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in b) or b != sorted(set(b)):
        raise ConfigError(f"sample.length_buckets={tuple(b)} must be increasing positive integers")


def validate_devices(cfg: ConfigDict, num_devices: int, num_slices: int = 1) -> None:
    """Checks that the mesh fits the devices this job actually has."""
    from cogito_jax import sharding

    ici, dcn = sharding.mesh_shape(cfg.mesh, num_devices, num_slices)
    data_parallel = ici["data"] * ici["fsdp"] * ici["expert"] * dcn["data"] * dcn["fsdp"] * dcn["expert"]
    micro = cfg.train.batch_size // cfg.train.grad_accum
    if micro % data_parallel:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} / grad_accum={cfg.train.grad_accum} = {micro} "
            f"is not divisible by the {data_parallel} data-parallel shards (data x fsdp x expert)"
        )


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
            raise ConfigError(f"unknown config key {key!r}{suggest(key, _flat_keys(cfg))}")
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


def load_config(spec: str, overrides: Mapping[str, Any] | Iterable[str] = ()) -> ConfigDict:
    """Loads, overrides and validates a config file (the programmatic twin of the CLI)."""
    return validate(apply_overrides(load_config_file(spec), overrides))


def to_dict(cfg: ConfigDict) -> dict:
    return json.loads(cfg.to_json_best_effort())


def dump(cfg: ConfigDict, path: str | pathlib.Path) -> None:
    """Writes the resolved config as JSON (the run's ``config.json``)."""
    from etils import epath

    p = epath.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(cfg.to_json_best_effort(indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- CLI front end


def writable_dir(path: str | os.PathLike, what: str) -> None:
    """Creates folder ``path`` if needed and checks that files can be written in it; ConfigError naming ``what``
    (e.g. ``--workdir``) and the path otherwise. Object-storage paths (``gs://...``) are left to their client."""
    text = os.fspath(path)
    if "://" in text:
        return
    folder = pathlib.Path(text)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what} {text!r} is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{what} {text!r} is not writable: {e.strerror or type(e).__name__}") from None


def define_config_flag(required: bool = True):
    """Defines ``--config`` (ml-collections config file, ``path.py[:arg]``) once per process."""
    from absl import flags
    from ml_collections import config_flags

    if "config" in flags.FLAGS:
        return flags.FLAGS["config"]
    return config_flags.DEFINE_config_file(
        "config", None, "Config file, `path.py[:arg]`; override fields with --config.a.b=value.",
        lock_config=True,
    )


def _one_line(err: BaseException) -> str:
    msg = str(err.args[0]) if isinstance(err, (KeyError, AttributeError)) and err.args else str(err)
    if isinstance(err, AttributeError) and err.args and isinstance(err.args[0], KeyError):
        msg = str(err.args[0].args[0])
    return " ".join(msg.replace("\\n", " ").split())


def parse_flags(argv: list[str], needs_config: bool = True,
                validate_fn: Callable[[ConfigDict], ConfigDict] | None = None) -> ml_collections.ConfigDict | None:
    """Parses absl flags from ``argv``; returns the validated config (or None if not given)."""
    from absl import flags

    FLAGS = flags.FLAGS
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
        main_mod = sys.modules.get("__main__")
        doc = (main_mod.__doc__ or "").strip() if main_mod else ""
        lines = [doc, "", "flags:"] if doc else ["flags:"]
        own = [f for mod, fl in FLAGS.flags_by_module_dict().items() for f in fl
               if mod == sys.argv[0] or mod.endswith(("__main__", "__main__.py")) or f.name == "config"]
        for f in sorted({f.name: f for f in own}.values(), key=lambda f: f.name):
            default = "" if f.default is None else f" (default: {f.default!r})"
            lines.append(f"  --{f.name}: {f.help}{default}")
        if "--helpfull" in argv:
            lines += ["", FLAGS.get_help()]
        print("\n".join(lines))
        raise SystemExit(0)
    spec = _config_spec(argv)
    if spec:
        path = spec.partition(":")[0]
        if not pathlib.Path(path).is_file():
            usage_error(f"config file {path!r} does not exist")
    try:
        FLAGS(argv)
    except flags.IllegalFlagValueError as e:
        usage_error(_bad_value_message(e, argv))
    except flags.Error as e:
        usage_error(_one_line(e))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # ml-collections raises these for unknown keys and unparsable values inside --config.*.
        bad = next((a for a in argv if a.startswith("--config.")), "")
        key = bad.split("=", 1)[0].removeprefix("--config.")
        usage_error(_config_flag_message(e, key, argv))
    if "config" not in FLAGS or FLAGS["config"].value is None:
        if needs_config:
            usage_error("--config is required, e.g. --config configs/tiny.py")
        return None
    try:
        cfg = FLAGS.config
        if type(cfg).__name__ == "_ErrorConfig":
            cfg.__getattr__("x")  # re-raises the deferred load error
        return (validate_fn or validate)(cfg)
    except ConfigError as e:
        usage_error(str(e))
    except Exception as e:
        usage_error(f"could not load config {FLAGS['config'].config_filename!r}: {_one_line(e)}")
    return None


def _config_spec(argv: list[str]) -> str | None:
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None and "--config" in argv:
        i = argv.index("--config")
        spec = argv[i + 1] if i + 1 < len(argv) else None
    return spec


def _bad_value_message(err: BaseException, argv: list[str]) -> str:
    """'config key 'train.steps' must be int, got 'abc'' for an unparsable --config.* value."""
    import re

    m = re.match(r"flag --config\.([\w.]+)=(.*?): ", str(err))
    spec = _config_spec(argv)
    if m and spec:
        try:
            node, leaf = locate(load_config_file(spec), m.group(1))
            ref = node[leaf]
            return f"config key {m.group(1)!r} must be {type(ref).__name__} (like {ref!r}), got {m.group(2)!r}"
        except ConfigError as ce:
            return str(ce)
    return _one_line(err)


def _config_flag_message(err: BaseException, key: str, argv: list[str]) -> str:
    spec = _config_spec(argv)
    # Name the key that really is unknown, with a suggestion over the full key list.
    if spec:
        try:
            cfg = load_config_file(spec)
            for a in argv:
                if a.startswith("--config."):
                    locate(cfg, a.split("=", 1)[0].removeprefix("--config."))
        except ConfigError as ce:
            return str(ce)
    return f"bad override --config.{key}: {_one_line(err)}"


def run_main(main: Callable[[ConfigDict | None], int | None], argv: list[str] | None = None,
             needs_config: bool = True, validate_fn: Callable[[ConfigDict], ConfigDict] | None = None,
             uses_devices: bool = True) -> None:
    """Entry-point wrapper: parse flags, validate, set up logging and multi-process, call ``main``."""
    from cogito_jax import log

    argv = list(sys.argv if argv is None else argv)
    cfg = parse_flags(argv, needs_config, validate_fn)
    log.setup()
    try:
        if cfg is not None and uses_devices:
            from cogito_jax import sharding

            sharding.maybe_initialize_distributed(cfg.distributed)
            import jax

            slices = {getattr(d, "slice_index", 0) for d in jax.devices()}
            validate_devices(cfg, jax.device_count(), len(slices))
        rc = main(cfg)
    except ConfigError as e:
        usage_error(str(e))
    except Exception:
        _exit_now_if_in_a_job()
        raise
    raise SystemExit(rc or 0)


def _exit_now_if_in_a_job() -> None:
    """On an error in one process of a multi-process JAX job, print it and exit at once (status 1).

    A normal exit waits at JAX's shutdown barrier for the other processes, which may be blocked in a collective
    that waits for this one: both would hang until the barrier's timeout (5 minutes) and the error would surface
    only as "Shutdown barrier has failed". Exiting without it lets the launcher stop the job and lets the
    coordination service report the lost process to the others.
    """
    jax = sys.modules.get("jax")
    if jax is None or not jax.distributed.is_initialized():
        return
    import traceback

    traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)

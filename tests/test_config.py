"""Config files load and validate; bad input gives one clear line and exit code 2 through the real CLI."""

import json
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from cogito_jax import cli, config as cfglib, errors, sharding
from cogito_jax.models.decoder import DecoderConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p for p in (REPO / "configs").rglob("*.py")
                      if p.name != "__init__.py" and p.parent.name != "sweeps")
SWEEP_FILES = sorted(p for p in (REPO / "configs" / "sweeps").glob("*.py") if p.name != "__init__.py")
# Files whose get_config takes a required argument list the args to load them with.
ARGS = {"models": ["tiny"]}


def _specs(path: pathlib.Path) -> list[str]:
    args = ARGS.get(path.parent.name, [None])
    return [str(path) + (f":{a}" if a else "") for a in args]


@pytest.mark.parametrize("spec", [s for p in CONFIG_FILES for s in _specs(p)], ids=lambda s: s.split("configs/")[-1])
def test_every_config_file_loads(spec):
    cfg = cfglib.load_config_file(spec)
    assert isinstance(cfg, ml_collections.ConfigDict)
    if "/configs/data/" in spec:  # data-prep configs follow their own schema
        from data_prep.config import base_data_config

        cfglib.check_schema(cfg, base_data_config())
    elif "name" in cfg and "train" in cfg:  # experiment configs validate against the base schema
        cli.validate(cfg)


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_sweep_file_expands_to_valid_overrides(path):
    from cogito_jax.sweeps import load_sweep

    runs = load_sweep(str(path))
    assert runs
    for overrides in runs:  # every override names a real key of the tiny config, with a valid value
        cli.load_config(str(REPO / "configs/tiny.py"), overrides)


def test_tiny_overrides_and_dump(tmp_path):
    cfg = cli.load_config(str(REPO / "configs/tiny.py"), ["train.steps=7", "optim.lr=0.5", "mesh.fsdp=2"])
    assert cfg.train.steps == 7 and cfg.optim.lr == 0.5 and cfg.mesh.fsdp == 2
    cfglib.dump(cfg, tmp_path / "config.json")
    back = json.loads((tmp_path / "config.json").read_text())
    assert back["train"]["steps"] == 7 and back["model"]["family"] == "qwen2_audio"


def test_unknown_key_suggests_nearest():
    cfg = cfglib.load_config_file(str(REPO / "configs/tiny.py"))
    with pytest.raises(errors.ConfigError, match=r"unknown config key 'train.stepz', did you mean \"train.steps\""):
        cfglib.apply_overrides(cfg, ["train.stepz=3"])
    with pytest.raises(errors.ConfigError, match=r"'optm.lr', did you mean \"optim.lr\""):
        cfglib.apply_overrides(cfg, ["optm.lr=3"])


def test_remat_and_dtypes_are_model_settings_only():
    """train.remat / param_dtype / compute_dtype were checked but read by nothing: they are gone, and naming one
    says which model key holds the setting; the recipe configs set those model keys."""
    base = cfglib.base_config()
    assert not {"remat", "param_dtype", "compute_dtype"} & set(base.train)
    for key, where in (("train.remat", "model.remat"), ("train.param_dtype", "model.param_dtype"),
                       ("train.compute_dtype", "model.dtype")):
        with pytest.raises(errors.ConfigError, match=f"unknown config key '{key}': the setting is '{where}'"):
            cli.load_config(str(REPO / "configs/tiny.py"), [f"{key}=bfloat16"])
    recipe = cli.load_config(str(REPO / "configs/audio_cogito.py"), [])
    assert (recipe.model.param_dtype, recipe.model.dtype, recipe.model.remat) == ("bfloat16", "bfloat16", "full")


def test_schema_rejects_unknown_section_and_wrong_type():
    cfg = cfglib.base_config()
    cfg.unlock()
    cfg.trian = ml_collections.ConfigDict({"steps": 3})
    with pytest.raises(errors.ConfigError, match=r"unknown config key 'trian', did you mean \"train\""):
        cli.validate(cfg)
    cfg = cfglib.base_config()
    cfg.unlock()
    cfg.train = ml_collections.ConfigDict({**cfg.train.to_dict(), "steps": "ten"})
    with pytest.raises(errors.ConfigError, match=r"'train.steps' must be int .*'ten'"):
        cli.validate(cfg)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("mesh.data", 0, r"mesh.data=0 must be a positive size or -1"),
        ("train.grad_accum", 3, r"batch_size=8 is not divisible by train.grad_accum=3"),
        ("train.trainable", "everything", r"train.trainable='everything' must be one of"),
        ("sharding.rules", "fsdp_xx", r"sharding.rules='fsdp_xx' is not a known rule set"),
        ("optim.lr", -1.0, r"optim.lr=-1.0 must be a finite number > 0"),
        ("optim.lr", float("nan"), r"optim.lr=nan must be a finite number > 0"),
        ("optim.b2", 1.0, r"optim.b2=1.0 must be a finite number in \[0, 1\)"),
        ("optim.clip_norm", float("inf"), r"optim.clip_norm=inf must be a finite number >= 0"),
        ("checkpoint.keep_last", 0, r"checkpoint.keep_last=0 must be >= 1"),
        ("sample.temperature", float("nan"), r"sample.temperature=nan must be a finite number >= 0"),
        ("distill.hint_weight", float("nan"), r"distill.hint_weight=nan must be a finite number >= 0"),
        ("lora.alpha", float("nan"), r"lora.alpha=nan must be a finite number > 0"),
        ("data.seed", -3, r"data.seed=-3 must be an integer >= 0"),
        ("seed", 2**32, r"seed=4294967296 must be in \[0, 2\*\*32\)"),
    ],
)
def test_impossible_values(field, value, message):
    cfg = cfglib.load_config_file(str(REPO / "configs/tiny.py"))
    cfglib.apply_overrides(cfg, {field: value})
    with pytest.raises(errors.ConfigError, match=message):
        cli.validate(cfg)


def test_mesh_product_must_match_devices():
    cfg = cli.load_config(str(REPO / "configs/tiny.py"), ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=3"])
    with pytest.raises(errors.ConfigError, match=r"multiply to 12, but there are 8 devices"):
        cli.validate_devices(cfg, 8)
    cfg = cli.load_config(str(REPO / "configs/tiny.py"), ["train.batch_size=4", "mesh.data=-1"])
    with pytest.raises(errors.ConfigError, match=r"not divisible by the 8 data-parallel shards"):
        cli.validate_devices(cfg, 8)
    cli.validate_devices(cli.load_config(str(REPO / "configs/tiny.py")), 8)


def _cli(*args, env_devices=8):
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={env_devices}", "JAX_PLATFORMS": "cpu",
           "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "cogito_jax.show_config", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=120)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "configs/tiny.py", "--config.train.stepz=3"],
         r"unknown config key 'train.stepz', did you mean \"train.steps\""),
        (["--config", "configs/tiny.py", "--config.train.steps=abc"], r"key .train.steps. must be int .*got .abc."),
        (["--config", "configs/nope.py"], r"config file .configs/nope.py. does not exist"),
        (["--config", "configs/tiny.py", "--config.mesh.tensor=3"], r"do not divide the 8 devices"),
        (["--config", "configs/tiny.py", "--config.sharding.rules=zero"],
         r"sharding.rules='zero' is not a known rule set"),
        (["--config", "configs/tiny.py", "--workdirr=/tmp/x"], r"workdirr"),
        ([], r"--config is required"),
    ],
)
def test_cli_errors_are_one_line_exit_2(args, message):
    import re

    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert re.search(message, lines[0]), lines[0]


def test_cli_prints_and_dumps_config(tmp_path):
    out = str(tmp_path / "c.json")
    r = _cli("--config", "configs/tiny.py:qwen3_omni_thinker", "--config.train.steps=5", "--out", out)
    assert r.returncode == 0, r.stderr
    dumped = json.loads((tmp_path / "c.json").read_text())
    assert dumped["train"]["steps"] == 5 and dumped["model"]["family"] == "qwen3_omni_thinker"
    assert "data=8" in r.stdout  # the resolved mesh is shown


def test_cli_help_works():
    r = _cli("--help")
    assert r.returncode == 0 and "--config" in r.stdout


def test_section_checks_are_the_subsystems_own():
    """Validation runs the check the subsystem itself runs, with the same words: the mesh check of make_mesh and
    the model-setting checks of the model configs, named by their config key."""
    with pytest.raises(errors.ConfigError) as from_config:
        cli.load_config(str(REPO / "configs/tiny.py"), ["mesh.fsdp=0"])
    with pytest.raises(errors.ConfigError) as from_mesh:
        sharding.make_mesh({"fsdp": 0})
    assert str(from_config.value) == str(from_mesh.value) == "mesh.fsdp=0 must be a positive size or -1 (the rest)"
    for key, value in (("attn_impl", "flash"), ("remat", "some"), ("dtype", "fp8"), ("moe_impl", "grouped"),
                       ("moe_capacity_factor", 0.0)):
        with pytest.raises(errors.ConfigError) as from_config:
            cli.load_config(str(REPO / "configs/tiny.py"), [f"model.{key}={value!r}"])
        with pytest.raises(errors.ConfigError) as from_model:
            DecoderConfig(vocab_size=8, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4,
                          intermediate_size=8, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=8,
                          **{key: value})
        assert str(from_config.value) == f"model.{from_model.value}", key

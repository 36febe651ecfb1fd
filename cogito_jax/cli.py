"""The command-line front end every entry point runs through: ``--config path.py[:arg]`` with ``--config.a.b=v``
overrides (absl + ml-collections), validation of the whole config, logging and multi-process set-up.

:func:`validate` runs the schema check (:mod:`cogito_jax.config`) and then each section's own checks, which live
with the subsystem that reads the section (``train/optim.validate`` for ``optim``, ``sharding.check_mesh_config``
for ``mesh``...) and raise the one-line :class:`~cogito_jax.errors.ConfigError`. :func:`run_main` turns any such
error, and any unparsable flag, into that line on stderr and exit status 2; this module only formats them.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
from absl import flags
from ml_collections import ConfigDict, config_flags

from cogito_jax import config, log, sharding
from cogito_jax.data import pipeline
from cogito_jax.distill import rounds
from cogito_jax.errors import ConfigError, usage_error
from cogito_jax.models import lora, registry
from cogito_jax.rl import loop as rl_loop
from cogito_jax.sampling import driver
from cogito_jax.train import checkpoint, optim, trainer


def validate(cfg: ConfigDict) -> ConfigDict:
    """The schema, then each section's checks, written once with the subsystem that reads the section (none
    needs devices); returns ``cfg`` for chaining."""
    config.check_schema(cfg)
    sharding.resolve_rules(cfg.sharding.rules)
    sharding.check_mesh_config(cfg.mesh)
    if not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed={cfg.seed} must be in [0, 2**32)")
    trainer.validate(cfg.train)
    checkpoint.validate(cfg.checkpoint)
    optim.validate(cfg.optim)
    if "lora" in cfg:
        lora.validate(cfg.lora)
    registry.check_settings(cfg.get("model") or {})
    if "data" in cfg:
        pipeline.validate(cfg.data)
    if "sample" in cfg:
        driver.validate(cfg.sample)
    if "distill" in cfg:
        rounds.validate(cfg.distill)
    if "rl" in cfg:
        rl_loop.validate(cfg.rl)
    return cfg


def validate_devices(cfg: ConfigDict, num_devices: int, num_slices: int = 1) -> None:
    """Checks that the mesh fits the devices this job actually has and splits the batch evenly."""
    sharding.check_batch_split(cfg.train.batch_size, cfg.train.grad_accum, cfg.mesh, num_devices, num_slices)


def load_config(spec: str, overrides: Mapping[str, Any] | Iterable[str] = ()) -> ConfigDict:
    """Loads, overrides and validates a config file (the programmatic twin of the CLI)."""
    return validate(config.apply_overrides(config.load_config_file(spec), overrides))


def define_config_flag(required: bool = True):
    """Defines ``--config`` (ml-collections config file, ``path.py[:arg]``) once per process."""
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
                validate_fn: Callable[[ConfigDict], ConfigDict] | None = None) -> ConfigDict | None:
    """Parses absl flags from ``argv``; returns the validated config (or None if not given)."""
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
    m = re.match(r"flag --config\.([\w.]+)=(.*?): ", str(err))
    spec = _config_spec(argv)
    if m and spec:
        try:
            node, leaf = config.locate(config.load_config_file(spec), m.group(1))
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
            cfg = config.load_config_file(spec)
            for a in argv:
                if a.startswith("--config."):
                    config.locate(cfg, a.split("=", 1)[0].removeprefix("--config."))
        except ConfigError as ce:
            return str(ce)
    return f"bad override --config.{key}: {_one_line(err)}"


def run_main(main: Callable[[ConfigDict | None], int | None], argv: list[str] | None = None,
             needs_config: bool = True, validate_fn: Callable[[ConfigDict], ConfigDict] | None = None,
             uses_devices: bool = True) -> None:
    """Entry-point wrapper: parse flags, validate, set up logging and multi-process, call ``main``."""
    argv = list(sys.argv if argv is None else argv)
    cfg = parse_flags(argv, needs_config, validate_fn)
    log.setup()
    try:
        if cfg is not None and uses_devices:
            sharding.maybe_initialize_distributed(cfg.distributed)
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
    traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


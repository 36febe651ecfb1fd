"""What every layer raises and every entry point turns into an exit status; imports nothing of the project.

:class:`ConfigError` is bad user input (a config value, a flag, a file a user gave): its message is one line
that names the bad value, and the command-line front end (:mod:`cogito_jax.cli`) prints it and exits with
:data:`EXIT_USAGE`. :func:`check_number` and :func:`is_int` are the checks the subsystems' config validators share.
"""

from __future__ import annotations

import math
import os
import pathlib
import sys
from collections.abc import Callable
from typing import Any

EXIT_USAGE = 2
# A run stopped by SIGTERM (preemption) after saving a checkpoint: not finished, rerun the same command to resume.
# 128 + SIGTERM, the status a shell reports for a process SIGTERM ended; launch/sweep.py and tpu.py check for it.
EXIT_PREEMPTED = 143


class ConfigError(ValueError):
    """A user-facing configuration problem; the message is one line that names the bad value."""


def usage_error(message: str) -> None:
    """Prints one line and exits with code 2 (bad user input, never a traceback)."""
    main_mod = sys.modules.get("__main__")
    spec = getattr(main_mod, "__spec__", None)
    prog = spec.name if spec is not None else pathlib.Path(sys.argv[0] if sys.argv else "cogito_jax").name
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def check_number(name: str, value: Any, ok: Callable[[float], bool], rule: str) -> None:
    """ConfigError unless ``value`` is a finite number with ``ok(value)`` (NaN and inf always fail)."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and ok(value)):
        raise ConfigError(f"{name}={value} must be a finite number {rule}")


def check_choice(name: str, value: Any, allowed) -> Any:
    """``value`` if it is one of ``allowed``; ConfigError naming ``name`` and the choices otherwise."""
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(map(str, allowed))}")
    return value


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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

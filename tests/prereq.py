"""Prerequisites a test needs from the machine (a Debian package, an unpacked wheel, an optional library)."""

import os

import pytest


def require(ok: object, reason: str) -> None:
    """Skips the calling test when ``ok`` is falsy; under ``CI=1`` (set by ``.ci/run``) a missing prerequisite
    fails it instead, so CI never passes by skipping."""
    if ok:
        return
    if os.environ.get("CI") == "1":
        pytest.fail(f"missing prerequisite (CI=1 requires it): {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_module(name: str, reason: str = ""):
    """The imported module ``name``, or :func:`require`'s skip / failure when it cannot be imported."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        require(False, reason or f"{name} cannot be imported: {e}")

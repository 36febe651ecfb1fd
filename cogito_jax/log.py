"""One project logger: INFO on process 0, WARNING and above elsewhere (override with COGITO_LOG_ALL=1)."""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("cogito_jax")


def setup(level: int = logging.INFO) -> logging.Logger:
    """Configures the project logger once; later calls only adjust the level for this process."""
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s] %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    quiet = _process_index() != 0 and os.environ.get("COGITO_LOG_ALL") != "1"
    logger.setLevel(logging.WARNING if quiet else level)
    return logger


def _process_index() -> int:
    # Read without initialising a JAX backend: before jax.distributed.initialize, fall back to env.
    try:
        import jax

        if jax.distributed.is_initialized():
            return jax.process_index()
    except Exception:  # pragma: no cover - jax missing or half-initialised
        pass
    return int(os.environ.get("COGITO_PROCESS_ID", "0"))


def is_main_process() -> bool:
    return _process_index() == 0

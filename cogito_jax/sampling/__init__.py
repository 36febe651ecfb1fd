"""Jitted generation engine: prefill once, decode N samples in a while_loop (``generate`` = contract 4)."""

from cogito_jax.sampling.engine import Engine, Output, engine_for, generate

__all__ = ["Engine", "Output", "engine_for", "generate"]

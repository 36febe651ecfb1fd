"""cogito-jax: train audio-language models to reason about sound, in JAX."""

__version__ = "0.1.0"

"""cogito-jax: train audio-language models to reason about sound, in JAX."""

from flax import config as _flax_config

# Parameters carry logical-axis names and are placed by cogito_jax.sharding (create_sharded, load_hf with a
# mesh), never by Flax's eager sharding: a module must build the same way with or without a mesh context.
_flax_config.update("flax_always_shard_variable", False)

__version__ = "0.1.0"

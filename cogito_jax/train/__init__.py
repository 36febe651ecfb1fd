"""Optimizer, sharded train step, trainer loop, checkpointing."""

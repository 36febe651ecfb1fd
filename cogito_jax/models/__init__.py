"""Flax NNX model families: layers, attention, MoE, audio encoders, decoders, audio LMs, LoRA."""

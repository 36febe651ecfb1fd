"""Hyper-parameter sweeps (`get_sweep()`)."""

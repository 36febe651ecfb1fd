"""Four tiny runs: learning rate x warmup, for `launch/sweep.py` on configs/tiny.py."""

from cogito_jax.sweeps import product, sweep


def get_sweep(arg=None):
    return product(sweep("optim.lr", [1e-3, 3e-3]), sweep("optim.warmup_steps", [0, 2]))

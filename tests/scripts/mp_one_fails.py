"""Run under launch/local.sh: after one collective together, process 1 raises while process 0 waits for it in a
second one."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from cogito_jax import cli, sharding


def main(_):
    assert sharding.maybe_initialize_distributed()
    mesh = sharding.make_mesh(dict(data=-1))
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), np.ones((4, 2), np.float32), (8, 2))
    print("together:", float(total(x)), flush=True)
    if jax.process_index() == 1:
        raise ValueError("process 1 fails on purpose")
    print(float(total(x * 2)))  # never completes


cli.run_main(main, needs_config=False, uses_devices=False)

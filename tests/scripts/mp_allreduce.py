"""Run under launch/local.sh: each process contributes its rows; a jitted global reduction sees all of them."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from cogito_jax import log, sharding

log.setup()
assert sharding.maybe_initialize_distributed()
mesh = sharding.make_mesh(dict(data=-1))
rows = np.arange(16, dtype=np.float32).reshape(8, 2)  # the global batch, 8 rows
per = 8 // jax.process_count()
local = rows[jax.process_index() * per:(jax.process_index() + 1) * per]
batch_sh = NamedSharding(mesh, P("data"))
global_x = jax.make_array_from_process_local_data(batch_sh, local, (8, 2))
total = jax.jit(lambda x: jnp.sum(x * x), out_shardings=NamedSharding(mesh, P()))(global_x)
print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(), "devices": jax.device_count(),
                  "total": float(total)}))
sys.stdout.flush()

"""`python tests/scripts/rl_run.py WORLD WORKDIR [a.b=v ...]`: the RL run of tests/test_rl_loop.py (its config, its
hash reward) on the tokenizer and prompt pool saved in WORLD; under launch/local.sh the processes form one JAX job."""

import pathlib
import pickle
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from test_rl_loop import CONFIG, RL, hash_reward  # noqa: E402

from cogito_jax import cli, log, sharding  # noqa: E402
from cogito_jax.data import tokenizer as toklib  # noqa: E402
from cogito_jax.models import registry  # noqa: E402
from cogito_jax.rl import loop  # noqa: E402
from cogito_jax.train import trained  # noqa: E402

world, workdir, *overrides = sys.argv[1:]
log.setup()
sharding.maybe_initialize_distributed()
loop.reward_fn = lambda r: hash_reward
cfg = cli.load_config(CONFIG, [*RL, *overrides])
tok = toklib.load(pathlib.Path(world) / "tokenizer")
mcfg = trained.model_config(cfg, tok)
pool = pickle.loads((pathlib.Path(world) / "pool.pkl").read_bytes())
loop.run(cfg, workdir, model=registry.build(mcfg, 1), tokenizer=tok, model_cfg=mcfg, pool=pool)

"""`train.trainable="lora"` end to end: the trainer wraps the tiny model in LoRA adapters (config section
`lora`), only the adapters train and are checkpointed, and `trained.load` folds them into the rebuilt base."""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from cogito_jax import cli
from cogito_jax.errors import ConfigError
from cogito_jax.metrics import read_jsonl
from cogito_jax.models import registry
from cogito_jax.models.layers import path_str
from cogito_jax.train import run, trained
from cogito_jax.train.checkpoint import Checkpointer

TARGETS = r"^llm/layers/(self_attn/(q|v)_proj|mlp/down_proj)/kernel$"


def _flat(tree):
    return {path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.slow
def test_lora_run_trains_only_the_adapters(tmp_path):
    cfg = cli.load_config("configs/tiny.py", [
        "train.trainable=lora", "train.steps=4", "data.num_train=32", "data.num_heldout=0", "optim.lr=0.01",
        "optim.warmup_steps=0", "checkpoint.every=100", "checkpoint.async_save=False", "lora.rank=4",
        "lora.alpha=8.0", f"lora.targets={TARGETS}", "optim.weight_decay=0.1"])
    run.train(cfg, str(tmp_path))
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["loss"] < rows[0]["loss"]

    ck = Checkpointer(tmp_path)
    raw = ck.manager.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                         meta=ocp.args.JsonRestore()))
    ck.close()
    targets = ["llm/layers/mlp/down_proj/kernel", "llm/layers/self_attn/q_proj/kernel",
               "llm/layers/self_attn/v_proj/kernel"]
    assert raw["meta"]["meta"]["lora_targets"] == targets
    saved = _flat(raw["state"]["params"])
    assert sorted(saved) == sorted(f"lora_{ab}/{t.replace('/', '.')}" for ab in "ab" for t in targets)
    n_adapter = sum(v.size for v in saved.values())
    assert raw["meta"]["meta"]["trainable_parameters"] == n_adapter
    # The optimizer state is the adapters' too: nothing of the base model's size is in the checkpoint.
    n_saved = sum(np.asarray(v).size for v in jax.tree.leaves(raw["state"]))
    assert n_saved < 3 * n_adapter + 16

    # The base is rebuilt from the config (same seed); only the adapted kernels differ, by scale * A @ B.
    merged, _, mcfg = trained.load(cfg, tmp_path)
    base = _flat(nnx.state(registry.build(mcfg, cfg.seed), nnx.Param))
    after = _flat(nnx.state(merged, nnx.Param))
    assert sorted(after) == sorted(base)
    for name, w in base.items():
        if name in targets:
            key = name.replace("/", ".")
            delta = np.einsum("...ir,...ro->...io", saved[f"lora_a/{key}"], saved[f"lora_b/{key}"])
            assert np.abs(delta).max() > 0
            np.testing.assert_allclose(after[name], w + 2.0 * delta, rtol=1e-6, atol=1e-6)
        else:
            np.testing.assert_array_equal(after[name], w, err_msg=name)


def test_lora_config_is_validated():
    base = ["train.trainable=lora"]
    with pytest.raises(ConfigError, match="lora.rank=0 must be >= 1"):
        cli.load_config("configs/tiny.py", [*base, "lora.rank=0"])
    with pytest.raises(ConfigError, match="lora.dropout=0.1"):
        cli.load_config("configs/tiny.py", [*base, "lora.dropout=0.1"])
    with pytest.raises(ConfigError, match="not a valid regex"):
        cli.load_config("configs/tiny.py", [*base, "lora.targets=(q"])

"""Mesh construction, logical-axis rules, shardings from abstract NNX state, sharded == unsharded."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from cogito_jax import sharding
from cogito_jax.errors import ConfigError


class TinyBlock(nnx.Module):
    """A small MLP + attention-like projection annotated with logical axes."""

    def __init__(self, rngs: nnx.Rngs, d: int = 16, f: int = 32, heads: int = 4, vocab: int = 24):
        part = nnx.with_partitioning
        init = nnx.initializers.normal(0.1)
        self.embed_vd = nnx.Param(part(init, ("vocab", "embed"))(rngs.params(), (vocab, d)))
        self.wq_dnh = nnx.Param(part(init, ("embed", "heads", "head_dim"))(rngs.params(), (d, heads, d // heads)))
        self.up_df = nnx.Param(part(init, ("embed", "mlp"))(rngs.params(), (d, f)))
        self.down_fd = nnx.Param(part(init, ("mlp", "embed"))(rngs.params(), (f, d)))
        self.norm_d = nnx.Param(part(nnx.initializers.ones, ("norm",))(rngs.params(), (d,)))

    def __call__(self, ids_bt):
        x_btd = self.embed_vd[...][ids_bt]
        x_btd = sharding.constrain(x_btd, ("batch", "length", "embed"))
        q_btnh = jnp.einsum("btd,dnh->btnh", x_btd, self.wq_dnh[...])
        h_btf = jax.nn.gelu(x_btd @ self.up_df[...])
        y_btd = x_btd + h_btf @ self.down_fd[...] + q_btnh.reshape(x_btd.shape)
        return (y_btd * self.norm_d[...]) @ self.embed_vd[...].T


def test_mesh_resolves_rest_axis(cpu_devices):
    mesh = sharding.make_mesh(dict(data=-1, fsdp=2, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "expert": 1, "tensor": 2}
    mesh = sharding.make_mesh(dict(data=1, fsdp=-1))
    assert dict(mesh.shape)["fsdp"] == 8


@pytest.mark.parametrize(
    "cfg, message",
    [
        (dict(data=-1, fsdp=-1), "at most one axis may be -1"),
        (dict(data=3, fsdp=-1), "do not divide the 8 devices"),
        (dict(data=2, fsdp=2, expert=1, tensor=1), "multiply to 4, but there are 8 devices"),
        (dict(data=0), "mesh.data=0 must be a positive size or -1"),
    ],
)
def test_mesh_errors(cfg, message):
    with pytest.raises(ConfigError, match=message):
        sharding.make_mesh(cfg)


def test_multislice_shape_split():
    ici, dcn = sharding.mesh_shape(dict(data=1, fsdp=-1, dcn_data=-1), num_devices=16, num_slices=2)
    assert ici == {"data": 1, "fsdp": 8, "expert": 1, "tensor": 1}
    assert dcn == {"data": 2, "fsdp": 1, "expert": 1, "tensor": 1}
    ici, dcn = sharding.mesh_shape(dict(fsdp=-1), num_devices=16, num_slices=4)  # DCN defaults to data
    assert dcn["data"] == 4 and ici["fsdp"] == 4


def test_logical_to_spec_rules():
    tp = sharding.resolve_rules("fsdp_tp")
    assert sharding.logical_to_spec(("embed", "mlp"), tp) == P("fsdp", "tensor")
    assert sharding.logical_to_spec(("batch", "length", "embed"), tp) == P(("data", "fsdp", "expert"), None, None)
    assert sharding.logical_to_spec(("norm",), tp) == P(None)
    ep = sharding.resolve_rules("fsdp_ep")
    assert sharding.logical_to_spec(("experts", "embed", "expert_mlp"), ep) == P("expert", "fsdp", "tensor")
    custom = sharding.resolve_rules([("embed", "tensor"), ("mlp", ["fsdp", "data"])])
    assert sharding.logical_to_spec(("embed", "mlp"), custom) == P("tensor", ("fsdp", "data"))
    with pytest.raises(ConfigError, match="unknown logical axis 'embd'"):
        sharding.resolve_rules([("embd", "fsdp")])
    with pytest.raises(ConfigError, match="mesh axis must be one of"):
        sharding.resolve_rules([("embed", "model")])


def test_abstract_module_params_sharded_per_rules(cpu_devices):
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    rules = sharding.resolve_rules("fsdp_tp")
    abstract = sharding.abstract_model(lambda: TinyBlock(nnx.Rngs(0)))
    _, abs_state = nnx.split(abstract)
    specs = jax.tree.map(lambda v: v.get_value().spec, sharding.state_shardings(abs_state, mesh, rules),
                         is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert specs["embed_vd"] == P("tensor", "fsdp")
    assert specs["wq_dnh"] == P("fsdp", "tensor", None)
    assert specs["up_df"] == P("fsdp", "tensor")
    assert specs["down_fd"] == P("tensor", "fsdp")
    assert specs["norm_d"] == P(None)

    model = sharding.create_sharded(lambda: TinyBlock(nnx.Rngs(0)), mesh, rules)
    up = model.up_df[...]
    assert isinstance(up.sharding, NamedSharding) and up.sharding.spec == P("fsdp", "tensor")
    assert up.addressable_shards[0].data.shape == (8, 16)  # 16/fsdp2 x 32/tensor2
    # Created-sharded parameters have the values of a plain single-device init (jit may fuse to 1 ulp).
    ref = TinyBlock(nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(up), np.asarray(ref.up_df[...]), rtol=1e-6, atol=1e-7)


def test_indivisible_dims_are_replicated(cpu_devices):
    mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=8))
    rules = sharding.resolve_rules("fsdp_tp")
    abstract = sharding.abstract_model(lambda: TinyBlock(nnx.Rngs(0), heads=4))
    _, abs_state = nnx.split(abstract)
    sh = sharding.state_shardings(abs_state, mesh, rules)
    assert sh["wq_dnh"].get_value().spec == P(None, None, None)  # 4 heads cannot split 8 ways
    assert sh["up_df"].get_value().spec == P(None, "tensor")


def test_replicated_parameter_is_logged_once(cpu_devices, monkeypatch, caplog):
    """Each parameter with a dimension that a mesh axis does not divide is named in one warning (path, shape, each
    such dimension, the axis and its size), however many times shardings are derived; the others in none."""
    monkeypatch.setattr(sharding, "_REPORTED_REPLICATION", set())
    mesh = sharding.make_mesh(dict(data=1, fsdp=2, tensor=4))
    rules = sharding.resolve_rules("fsdp_tp")
    factory = lambda: TinyBlock(nnx.Rngs(0), d=15, f=32, heads=5, vocab=24)  # noqa: E731  embed 15, 5 heads
    _, abs_state = nnx.split(sharding.abstract_model(factory))
    monkeypatch.setattr(logging.getLogger("cogito_jax"), "propagate", True)  # log.setup() turns it off
    with caplog.at_level(logging.WARNING, logger="cogito_jax"):
        for _ in range(3):
            sh = sharding.state_shardings(abs_state, mesh, rules)
        sharding.create_sharded(factory, mesh, rules)
    assert sh["wq_dnh"].get_value().spec == P(None, None, None) and sh["up_df"].get_value().spec == P(None, "tensor")
    msgs = [r.getMessage() for r in caplog.records if r.name == "cogito_jax"]
    head = "parameter {} of shape {} is replicated where it should be sharded: "
    fsdp = "dimension {} (size 15) is not divisible by mesh axis fsdp=2"
    assert sorted(msgs) == [
        head.format("down_fd", (32, 15)) + fsdp.format(1),
        head.format("embed_vd", (24, 15)) + fsdp.format(1),
        head.format("up_df", (15, 32)) + fsdp.format(0),
        head.format("wq_dnh", (15, 5, 3)) + fsdp.format(0)
        + "; dimension 1 (size 5) is not divisible by mesh axis tensor=4",
    ]


@pytest.mark.parametrize("preset", ["fsdp", "fsdp_tp", "fsdp_ep"])
def test_sharded_jit_matches_unsharded(cpu_devices, preset):
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    rules = sharding.resolve_rules(preset)
    ids = jax.random.randint(jax.random.key(1), (8, 6), 0, 24)
    ref_model = TinyBlock(nnx.Rngs(0))
    ref = nnx.jit(lambda m, x: m(x))(ref_model, ids)

    model = sharding.create_sharded(lambda: TinyBlock(nnx.Rngs(0)), mesh, rules)
    graphdef, state = nnx.split(model)
    state_sh = jax.tree.map(lambda a: a.sharding, state)
    batch_sh = NamedSharding(mesh, sharding.logical_to_spec(("batch", "length"), rules, mesh))
    out_sh = NamedSharding(mesh, sharding.logical_to_spec(("batch", "length", "vocab"), rules, mesh))

    @jax.jit
    def fwd(state, ids):
        with sharding.use_rules(rules):
            return nnx.merge(graphdef, state)(ids)

    fwd = jax.jit(fwd.__wrapped__, in_shardings=(state_sh, batch_sh), out_shardings=out_sh)
    with jax.set_mesh(mesh):
        out = fwd(state, jax.device_put(ids, batch_sh))
    assert out.sharding.spec == out_sh.spec
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_distributed_init_is_skipped_for_one_process(monkeypatch):
    monkeypatch.delenv("COGITO_NUM_PROCESSES", raising=False)
    assert sharding.maybe_initialize_distributed({"num_processes": 1}) is False

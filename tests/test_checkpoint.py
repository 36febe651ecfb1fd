"""Orbax checkpoints: exact round trip, resharding on restore, retention, fallback past a damaged step."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from cogito_jax import sharding
from cogito_jax.train.checkpoint import Checkpointer, abstract_like


def _state(mesh, spec, step):
    w = jax.device_put(jnp.arange(64, dtype=jnp.float32).reshape(8, 8) * step, NamedSharding(mesh, spec))
    return {"params": {"w": w}, "step": jnp.int32(step), "rng": jax.random.key_data(jax.random.key(step))}


def test_roundtrip_and_reshard(tmp_path, cpu_devices):
    mesh = sharding.make_mesh(dict(data=2, fsdp=4))
    ck = Checkpointer(tmp_path, keep_last=2, async_save=True)
    state = _state(mesh, P("fsdp", None), 3)
    ck.save(3, state, data_state=b'{"next_index": 17}', meta={"config": {"lr": 0.1}})
    ck.wait()
    # Restore into a different layout: the arrays land directly in the new sharding.
    target = abstract_like(_state(mesh, P(None, ("data", "fsdp")), 3))
    step, restored, data_state, meta = ck.restore(target)
    assert step == 3 and data_state == b'{"next_index": 17}' and meta == {"config": {"lr": 0.1}}
    np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.asarray(state["params"]["w"]))
    assert restored["params"]["w"].sharding.spec == P(None, ("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(restored["rng"]), np.asarray(state["rng"]))
    ck.close()


def test_retention_and_fallback_past_damaged_latest(tmp_path, cpu_devices):
    mesh = sharding.make_mesh(dict(data=-1))
    ck = Checkpointer(tmp_path, keep_last=2, keep_every=4, async_save=False)
    for s in range(1, 7):
        ck.save(s, _state(mesh, P(), s), data_state={"i": s})
    ck.wait()
    assert ck.steps() == [4, 5, 6]  # last two, plus every 4th
    # Damage step 6: its state files vanish. Restore falls back to step 5 with a warning.
    for f in (tmp_path / "checkpoints" / "6" / "state").iterdir():
        if f.is_dir():
            shutil.rmtree(f)
        else:
            f.unlink()
    step, restored, data_state, _ = ck.restore(abstract_like(_state(mesh, P(), 0)))
    assert step == 5 and data_state == {"i": 5}
    np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.arange(64).reshape(8, 8) * 5.0)
    ck.close()


def test_all_damaged_raises_instead_of_restarting(tmp_path, cpu_devices):
    mesh = sharding.make_mesh(dict(data=-1))
    ck = Checkpointer(tmp_path, async_save=False)
    ck.save(1, _state(mesh, P(), 1))
    ck.wait()
    sds = jax.ShapeDtypeStruct
    other = {"params": {"w": sds((8, 8), jnp.float32), "extra": sds((2,), jnp.float32)}}
    with pytest.raises(RuntimeError, match="no checkpoint in .* can be restored .*step 1"):
        ck.restore(other)
    ck.close()


def test_empty_workdir_restores_nothing(tmp_path):
    ck = Checkpointer(tmp_path)
    assert ck.latest_step() is None and ck.restore({"x": jax.ShapeDtypeStruct((2,), jnp.float32)}) is None
    ck.close()


def test_a_relative_workdir_saves_and_restores(tmp_path, cpu_devices, monkeypatch):
    """``make demo``'s workdir is relative (workdirs/demo); Orbax wants absolute paths, async saves included."""
    monkeypatch.chdir(tmp_path)
    mesh = sharding.make_mesh(dict(data=2, fsdp=4))
    ck = Checkpointer("runs/rel", keep_last=2, async_save=True)
    state = _state(mesh, P("fsdp", None), 5)
    ck.save(5, state, data_state=b"{}")
    ck.wait()
    assert (tmp_path / "runs/rel/checkpoints/5").is_dir()
    step, restored, _, _ = Checkpointer("runs/rel").restore(abstract_like(state))
    assert step == 5
    np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.asarray(state["params"]["w"]))
    ck.close()

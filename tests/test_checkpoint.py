"""Orbax checkpoints: exact round trip, resharding on restore, retention, damaged steps detected (missing files,
flipped bytes, garbage JSON), moved aside and skipped, other restore errors stopping, failed saves raised."""

import errno
import json
import logging
import os
import shutil
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from cogito_jax import errors, sharding
from cogito_jax.train import checkpoint
from cogito_jax.train.checkpoint import Checkpointer, abstract_like
from cogito_jax.train.step import TrainState


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


def _saved(tmp_path, steps, keep_last=3):
    """A checkpointer with ``steps`` saved (state ``w = arange * step``, iterator state ``{"i": step}``)."""
    mesh = sharding.make_mesh(dict(data=-1))
    ck = Checkpointer(tmp_path, keep_last=keep_last, async_save=False)
    for s in steps:
        ck.save(s, _state(mesh, P(), s), data_state={"i": s})
    ck.wait()
    return ck, abstract_like(_state(mesh, P(), 0))


@pytest.fixture
def warnings_logged():
    """The checkpoint module's log records (the project logger may not propagate to pytest's handler)."""
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    checkpoint.logger.addHandler(handler)
    yield lambda: [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    checkpoint.logger.removeHandler(handler)


def _step_dirs(tmp_path):
    return sorted(p.name for p in (tmp_path / "checkpoints").iterdir())


def test_retention_and_fallback_past_damaged_latest(tmp_path, cpu_devices):
    mesh = sharding.make_mesh(dict(data=-1))
    ck = Checkpointer(tmp_path, keep_last=2, keep_every=4, async_save=False)
    for s in range(1, 7):
        ck.save(s, _state(mesh, P(), s), data_state={"i": s})
    ck.wait()
    assert ck.steps() == [4, 5, 6]  # last two, plus every 4th
    # Damage step 6: its state files vanish. Restore falls back to step 5 and moves step 6 aside.
    for f in (tmp_path / "checkpoints" / "6" / "state").iterdir():
        if f.is_dir():
            shutil.rmtree(f)
        else:
            f.unlink()
    step, restored, data_state, _ = ck.restore(abstract_like(_state(mesh, P(), 0)))
    assert step == 5 and data_state == {"i": 5}
    np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.arange(64).reshape(8, 8) * 5.0)
    assert ck.steps() == [4, 5] and _step_dirs(tmp_path) == ["4", "5", "6.corrupt-1"]
    # Training on from step 5 saves step 6 again (it is no longer in the way), and a later restore reads it.
    ck.save(6, _state(mesh, P(), 6), data_state={"i": 6})
    assert ck.restore(abstract_like(_state(mesh, P(), 0)))[0] == 6
    ck.close()


def _largest_state_file(step_dir):
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_flipped_bytes_are_detected_and_the_step_moved_aside(tmp_path, cpu_devices, warnings_logged):
    import orbax.checkpoint as ocp

    mesh = sharding.make_mesh(dict(data=-1))
    ck = Checkpointer(tmp_path, async_save=False)
    noise = {"params": {"w": jax.device_put(jax.random.normal(jax.random.key(0), (64, 64)), NamedSharding(mesh, P()))}}
    for s in (1, 2):
        ck.save(s, jax.tree.map(lambda x, s=s: x * s, noise), data_state={"i": s})
    target = abstract_like(noise)
    path = _largest_state_file(tmp_path / "checkpoints" / "2")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    # Orbax alone reads the flipped value without complaint ...
    args = ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))
    raw = ck.manager.restore(2, args=ocp.args.Composite(state=args))["state"]
    assert not np.array_equal(np.asarray(raw["params"]["w"]), 2 * np.asarray(noise["params"]["w"]))
    # ... the checksum saved with the step does not match it: step 1 is restored, step 2 moved aside.
    step, restored, data_state, _ = ck.restore(target)
    assert step == 1 and data_state == {"i": 1}
    np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.asarray(noise["params"]["w"]))
    assert _step_dirs(tmp_path) == ["1", "2.corrupt-1"]
    assert warnings_logged() == [f"checkpoint step 2 in {tmp_path}/checkpoints is damaged (checksum mismatch in 1 "
                                 "array(s): ['params']['w']): moved to 2.corrupt-1; trying the previous step"]
    ck.close()


@pytest.mark.parametrize("file, content", [
    ("iterators/process_0-of-1.json", "garbage{"),
    ("iterators/process_0-of-1.json", json.dumps({"iterator": {"i": 7}, "sha256": "0" * 64})),
    ("iterators/process_0-of-1.json", json.dumps({"iterator": {"i": 7}})),
    ("data/metadata", ""),
    ("meta/metadata", '{"meta": {}, "sha256": "x"}'),
    ("iterators/process_0-of-1.json", None),
])
def test_damaged_json_items_fall_back(tmp_path, cpu_devices, warnings_logged, file, content):
    ck, target = _saved(tmp_path, [1, 2])
    path = tmp_path / "checkpoints" / "2" / file
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    step, _, data_state, _ = ck.restore(target)
    assert step == 1 and data_state == {"i": 1}
    assert _step_dirs(tmp_path) == ["1", "2.corrupt-1"]
    [warning] = warnings_logged()
    assert warning.startswith("checkpoint step 2 in ") and "is damaged (" in warning, warning
    ck.close()


def test_a_step_damaged_twice_is_kept_twice_and_all_damaged_starts_over(tmp_path, cpu_devices):
    ck, target = _saved(tmp_path, [1])
    (tmp_path / "checkpoints" / "1" / "data" / "metadata").write_text("{")
    assert ck.restore(target) is None  # nothing intact is left: the run starts from step 0
    ck.save(1, _state(sharding.make_mesh(dict(data=-1)), P(), 1), data_state={"i": 1})
    (tmp_path / "checkpoints" / "1" / "meta" / "metadata").write_text("[]")
    assert ck.restore(target) is None
    assert _step_dirs(tmp_path) == ["1.corrupt-1", "1.corrupt-2"]
    ck.close()


def test_other_restore_errors_stop_and_leave_the_step(tmp_path, cpu_devices):
    """A state that no longer fits (the model changed) is not damage: one line naming the step and the cause."""
    ck, _ = _saved(tmp_path, [1])
    sds = jax.ShapeDtypeStruct
    other = {"params": {"w": sds((8, 8), jnp.float32), "extra": sds((2,), jnp.float32)}}
    with pytest.raises(errors.ConfigError, match=r"checkpoint step 1 in .* cannot be restored into this run "
                                                 r"\(ValueError: Structure mismatch.*use a new workdir") as e:
        ck.restore(other)
    assert "\n" not in str(e.value) and isinstance(e.value, checkpoint.IncompatibleCheckpoint)
    other = {"params": {"w": sds((4, 8), jnp.float32)}, "step": sds((), jnp.int32), "rng": sds((2,), jnp.uint32)}
    with pytest.raises(checkpoint.IncompatibleCheckpoint, match=r"Requested shape: \(4, 8\)"):
        ck.restore(other)
    assert _step_dirs(tmp_path) == ["1"]
    ck.close()


class OldTrainState(NamedTuple):
    """The TrainState of checkpoints saved before its unused RNG key data was dropped."""

    params: Any
    opt_state: Any
    step: Any
    rng: Any


def _train_state(mesh, step, cls=TrainState):
    """A TrainState (or ``cls``) with large noise parameters and a small optimizer state, replicated on ``mesh``."""
    rep = NamedSharding(mesh, P())
    w = jax.random.normal(jax.random.key(0), (64, 64)) * step
    fields = [{"w": w}, {"mu": jnp.full((4,), float(step))}, jnp.int32(step)]
    if cls is OldTrainState:
        fields.append(jax.random.key_data(jax.random.key(step)))
    return cls(*jax.device_put(fields, rep))


def test_a_checkpoint_with_the_retired_rng_restores_into_the_train_state(tmp_path, cpu_devices):
    """Checkpoints saved with an RNG key in the state resume: the key is skipped, everything else is restored and
    verified; a state lacking any other saved array is still not restored."""
    mesh = sharding.make_mesh(dict(data=-1))
    ck = Checkpointer(tmp_path, async_save=False)
    ck.save(2, _train_state(mesh, 2, OldTrainState), data_state={"i": 2})
    ck.close()
    ck = Checkpointer(tmp_path)
    step, state, data_state, _ = ck.restore(abstract_like(_train_state(mesh, 0)))
    assert step == 2 and data_state == {"i": 2} and isinstance(state, TrainState)
    expected = _train_state(mesh, 2)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    no_optimizer = {"params": abstract_like(expected.params), "step": abstract_like(expected.step)}
    with pytest.raises(checkpoint.IncompatibleCheckpoint, match=r"Structure mismatch: the checkpoint holds "
                                                                r"opt_state/mu, which the state has not"):
        ck.restore(no_optimizer)
    assert _step_dirs(tmp_path) == ["2"]
    ck.close()


def test_restore_params_reads_the_parameters_alone_and_verifies_them(tmp_path, cpu_devices, monkeypatch,
                                                                      warnings_logged):
    import orbax.checkpoint as ocp

    mesh = sharding.make_mesh(dict(data=-1))
    ck = Checkpointer(tmp_path, async_save=False)
    for s in (1, 2):
        ck.save(s, _train_state(mesh, s), data_state={"i": s})
    ck.close()
    requested = []
    restore = ocp.CheckpointManager.restore

    def spy(self, step, args=None, **kw):
        requested.append({name: None if item is None else getattr(item, "item", None) for name, item in args.items()})
        return restore(self, step, args=args, **kw)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", spy)
    ck = Checkpointer(tmp_path)
    step, params = ck.restore_params(abstract_like(_train_state(mesh, 0).params))
    assert step == 2
    np.testing.assert_array_equal(np.asarray(params["w"]), np.asarray(_train_state(mesh, 2).params["w"]))
    # One read: the state's parameters and the step's meta (their checksums); no optimizer, step or iterator state.
    [items] = requested
    assert set(items) == {"state", "meta"} and isinstance(items["state"], checkpoint.ParamsOnly)
    assert [jax.tree_util.keystr(p) for p, _ in
            jax.tree_util.tree_flatten_with_path(items["state"])[0]] == [".params['w']"]

    # Flipped bytes in step 2's parameters: they do not match their checksum, step 1 is read instead.
    path = _largest_state_file(tmp_path / "checkpoints" / "2")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    step, params = ck.restore_params(abstract_like(_train_state(mesh, 0).params))
    assert step == 1
    np.testing.assert_array_equal(np.asarray(params["w"]), np.asarray(_train_state(mesh, 1).params["w"]))
    assert _step_dirs(tmp_path) == ["1", "2.corrupt-1"]
    assert "checksum mismatch in 1 array(s): .params['w']" in warnings_logged()[0]
    # Parameters of another shape are not these parameters.
    other = {"w": jax.ShapeDtypeStruct((32, 64), jnp.float32)}
    with pytest.raises(checkpoint.IncompatibleCheckpoint, match=r"Requested shape: \(32, 64\)"):
        ck.restore_params(other)
    ck.close()


def test_damage_is_told_from_other_errors():
    assert checkpoint.damage(ValueError("DATA_LOSS: Error reading x")) == "ValueError: DATA_LOSS: Error reading x"
    chained = Exception("Encountered error while reading array index")
    chained.__cause__ = ValueError("OUT_OF_RANGE: Requested byte range [0, 8) is not valid for value of size 4")
    assert checkpoint.damage(chained).startswith("ValueError: OUT_OF_RANGE")
    assert checkpoint.damage(FileNotFoundError("gone")) == "FileNotFoundError: gone"
    for other in (ValueError("UNAVAILABLE: connection reset"), ValueError("Requested shape: (4, 8) is not"),
                  PermissionError(13, "Permission denied"), RuntimeError("boom")):
        assert checkpoint.damage(other) is None, other


def test_checksums_do_not_depend_on_the_layout(cpu_devices):
    x = jax.random.normal(jax.random.key(1), (16, 8)).astype(jnp.bfloat16)
    mesh = sharding.make_mesh(dict(data=2, fsdp=4))
    layouts = [np.asarray(x), jax.device_put(x, NamedSharding(mesh, P("fsdp", "data"))),
               jax.device_put(x, NamedSharding(mesh, P(None, "fsdp")))]
    sums = [checkpoint.state_checksums({"x": v}) for v in layouts]
    assert sums[0] == sums[1] == sums[2] and sums[0][0][:2] == ["['x']", "bfloat16"]
    flipped = np.asarray(x).view(np.uint16).copy()
    flipped[5, 3] ^= 1  # one bit of one element
    assert checkpoint.state_checksums({"x": flipped.view(np.asarray(x).dtype)})[0][2] != sums[0][0][2]
    swapped = np.asarray(x).copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert checkpoint.state_checksums({"x": swapped})[0][2] != sums[0][0][2]


def test_a_failed_background_save_is_raised_once(tmp_path, cpu_devices, monkeypatch):
    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    async def disk_full(self, x, directory):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", disk_full)
    ck = Checkpointer(tmp_path, async_save=True)
    assert ck.save(1, {"w": jnp.ones(3)})
    with pytest.raises(checkpoint.CheckpointError, match=r"^saving checkpoint step 1 in .*checkpoints failed: "
                                                         r"No space left on device \(errno 28\)$"):
        ck.check(wait=True)
    ck.check(wait=True)  # reported once
    ck.close()
    assert ck.steps() == []


def test_store_errors_no_one_awaited_are_dropped_only_for_checkpoint_files(tmp_path, caplog):
    """A failed write leaves TensorStore futures no one awaits; asyncio logs each one's error when it is collected.
    That error was set from C++ (no Python traceback) and names a file of the save that the Checkpointer reports
    in one line, so it is dropped; such an error about any other file still reaches the log."""
    import asyncio
    import gc

    ck = Checkpointer(tmp_path, async_save=False)
    ours = f'OUT_OF_RANGE: Error writing "w" in OCDBT database at local file "{ck.directory}/2.orbax-checkpoint-tmp/"'
    other = 'OUT_OF_RANGE: Error writing "w" in OCDBT database at local file "/elsewhere/"'
    loop = asyncio.new_event_loop()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for message in (ours, other):
            future = loop.create_future()
            future.set_exception(ValueError(message))
            del future
            gc.collect()
    loop.close()
    ck.close()
    logged = [str(r.exc_info[1]) for r in caplog.records if r.name == "asyncio" and r.exc_info]
    assert logged == [other]


def test_an_unwritable_checkpoint_folder_is_a_config_error(tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "checkpoints").write_text("")
    with pytest.raises(errors.ConfigError, match=r"checkpoint folder '.*/w/checkpoints' is not a folder"):
        checkpoint.check_writable(tmp_path / "w")
    with pytest.raises(errors.ConfigError, match=r"checkpoint folder '.*/file/checkpoints' is not writable"):
        checkpoint.check_writable(tmp_path / "file")
    ro = tmp_path / "ro"
    (ro / "checkpoints").mkdir(parents=True)
    os.chmod(ro / "checkpoints", 0o555)
    try:
        if os.access(ro / "checkpoints", os.W_OK):
            pytest.skip("running as root: a read-only folder is still writable")
        with pytest.raises(errors.ConfigError, match="is not writable: Permission denied"):
            checkpoint.check_writable(ro)
    finally:
        os.chmod(ro / "checkpoints", 0o755)


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


MULTIPROCESS = '''
import json, pathlib, sys
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from cogito_jax import log, sharding
from cogito_jax.train.checkpoint import Checkpointer, abstract_like
from cogito_jax.train.step import TrainState

log.setup()
assert sharding.maybe_initialize_distributed()
workdir, damage = sys.argv[1], sys.argv[2]
mesh = sharding.make_mesh(dict(data=-1))
pid = jax.process_index()
w = lambda s: jax.make_array_from_callback(  # incompressible: each process's shards fill its own data files
    (8, 4096), NamedSharding(mesh, P("data")),
    lambda i: np.random.default_rng(s).standard_normal((8, 4096), dtype=np.float32)[i])
ck = Checkpointer(workdir, async_save=False)
for s in (1, 2):
    ck.save(s, {"w": w(s)}, data_state={"i": s, "process": pid})
jax.experimental.multihost_utils.sync_global_devices("saved")
step2 = ck.directory / "2"
if pid == 0 and damage == "array":  # only process 1 reads this file's chunks: process 0's read succeeds
    f = max(pathlib.Path(step2, "state", "ocdbt.process_1", "d").iterdir(), key=lambda p: p.stat().st_size)
    f.write_bytes(f.read_bytes()[:16])
if pid == 0 and damage == "iterator":  # only process 1's own iterator state is garbage
    (step2 / "iterators" / "process_1-of-2.json").write_text("garbage")
jax.experimental.multihost_utils.sync_global_devices("damaged")
step, state, data_state, _ = ck.restore(abstract_like({"w": w(0)}))
first = np.asarray(state["w"].addressable_shards[0].data)
expected = np.asarray(w(1).addressable_shards[0].data)
ck.save(2, {"w": w(2)}, data_state={"i": 2, "process": pid})
print(json.dumps({"process": pid, "step": step, "data_state": data_state, "same": bool(np.array_equal(first, expected)),
                  "dirs": sorted(p.name for p in ck.directory.iterdir()), "steps": ck.steps()}))
sys.stdout.flush()
ck.close()
'''


def _two_processes(tmp_path, source: str, *args: str) -> tuple[list[str], list[dict]]:
    """Runs the script ``source`` as a two-process JAX job (workdir ``tmp_path/w``, then ``args``); returns each
    process's log and the first JSON line it printed."""
    import pathlib
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[1]
    script = tmp_path / "mp_script.py"
    script.write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(COGITO_LOG_DIR=str(tmp_path / "logs"), JAX_PLATFORMS="cpu", PYTHONPATH=str(repo))
    r = subprocess.run(["bash", str(repo / "launch/local.sh"), "2", sys.executable, str(script), str(tmp_path / "w"),
                        *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    logs = [(tmp_path / "logs" / f"process_{i}.log").read_text() for i in range(2)]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + logs[1][-3000:]
    return logs, [json.loads(next(ln for ln in log.splitlines() if ln.startswith("{"))) for log in logs]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["array", "iterator"])
def test_processes_agree_on_a_step_damaged_for_one_of_them(tmp_path, damage):
    """Step 2 is unreadable for process 1 only (a truncated file of its shards, or its own iterator state): both
    processes restore step 1 with their own iterator positions, process 0 moves step 2 aside once, and both can
    save step 2 again."""
    logs, outs = _two_processes(tmp_path, MULTIPROCESS, damage)
    for i, out in enumerate(outs):
        assert out["step"] == 1 and out["data_state"] == {"i": 1, "process": i} and out["same"], out
        assert out["dirs"] == ["1", "2", "2.corrupt-1"] and out["steps"] == [1, 2], out
    assert "checkpoint step 2 in " in logs[0] and "is damaged (" in logs[0] and "moved to 2.corrupt-1" in logs[0]


MULTIPROCESS_PARAMS = '''
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding
from cogito_jax import log, sharding
from cogito_jax.train.checkpoint import Checkpointer
from cogito_jax.train.step import TrainState

log.setup()
assert sharding.maybe_initialize_distributed()
mesh = sharding.make_mesh(dict(data=-1))
value = np.random.default_rng(0).standard_normal((8, 64), dtype=np.float32)
w = jax.make_array_from_callback(value.shape, NamedSharding(mesh, P("data")), lambda i: value[i])
ck = Checkpointer(sys.argv[1], async_save=False)
ck.save(1, TrainState({"w": w}, {"mu": w * 0}, jax.device_put(jnp.int32(1), NamedSharding(mesh, P()))), data_state={})
jax.experimental.multihost_utils.sync_global_devices("saved")
own = SingleDeviceSharding(jax.local_devices()[0])
step, params = ck.restore_params({"w": jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=own)})
print(json.dumps({"step": step, "same": bool(np.array_equal(np.asarray(params["w"]), value)),
                  "local": params["w"].is_fully_addressable, "steps": ck.steps()}))
sys.stdout.flush()
ck.close()
'''


@pytest.mark.slow
def test_each_process_restores_its_own_copy_of_the_parameters(tmp_path):
    """A two-process job loads a model for sampling: each process restores the parameters whole onto its own
    device, and their checksums (of one array per process, not one array across them) match."""
    _, outs = _two_processes(tmp_path, MULTIPROCESS_PARAMS)
    assert outs == [{"step": 1, "same": True, "local": True, "steps": [1]}] * 2, outs

"""Device mesh, logical-axis rules and shardings derived from abstract (eval_shape) NNX state.

Parameters and activations are annotated with *logical* axis names (``LOGICAL_AXES``); a rule set
maps each name to zero or more mesh axes (``data``, ``fsdp``, ``expert``, ``tensor``). Rule sets are
data kept in the config (``config.sharding.rules``: a preset name or an explicit list of pairs), so a
run switches between pure FSDP, FSDP + tensor parallelism and FSDP + expert parallelism without code
changes. Parameters are created already sharded: the shardings come from ``nnx.eval_shape``, and the
real initialiser runs under ``jax.jit`` with those ``out_shardings``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cogito_jax.errors import ConfigError, is_int
from cogito_jax.log import logger

MESH_AXES = ("data", "fsdp", "expert", "tensor")

# Every logical axis name a parameter or activation may carry.
LOGICAL_AXES = (
    "batch",  # examples in a batch (activations)
    "length",  # token positions
    "embed",  # model width (d_model)
    "heads",  # query heads
    "kv_heads",  # key/value heads (GQA)
    "head_dim",  # per-head width
    "q_proj",  # fused heads * head_dim output of a projection
    "kv_proj",  # fused kv_heads * head_dim output of a projection
    "mlp",  # dense MLP hidden width
    "vocab",  # vocabulary
    "experts",  # MoE experts
    "expert_mlp",  # MoE expert hidden width
    "layers",  # stacked (scanned) layers
    "audio_length",  # audio frames / encoder positions
    "audio_embed",  # audio-encoder width
    "audio_mlp",  # audio-encoder MLP width
    "mel",  # mel bins
    "conv_in",  # convolution input channels
    "conv_out",  # convolution output channels
    "kernel",  # convolution kernel taps
    "lora_rank",  # LoRA rank
    "norm",  # norm scales and biases (never sharded)
    "cache_length",  # KV-cache positions
    "samples",  # candidates per prompt in sampling
)

Rules = tuple[tuple[str, tuple[str, ...]], ...]

_BATCH = ("data", "fsdp", "expert")

# Named rule sets. A logical name missing from a rule set is replicated.
RULE_PRESETS: dict[str, Rules] = {
    # ZeRO-3 style: parameters sharded over fsdp along their model width, batch over all axes.
    "fsdp": (
        ("batch", _BATCH),
        ("embed", ("fsdp",)),
        ("audio_embed", ("fsdp",)),
        ("experts", ("expert",)),
    ),
    # FSDP plus Megatron-style tensor parallelism over heads / MLP width / vocab.
    "fsdp_tp": (
        ("batch", _BATCH),
        ("embed", ("fsdp",)),
        ("audio_embed", ("fsdp",)),
        ("heads", ("tensor",)),
        ("kv_heads", ("tensor",)),
        ("q_proj", ("tensor",)),
        ("kv_proj", ("tensor",)),
        ("mlp", ("tensor",)),
        ("audio_mlp", ("tensor",)),
        ("expert_mlp", ("tensor",)),
        ("vocab", ("tensor",)),
        ("experts", ("expert",)),
    ),
    # FSDP plus expert parallelism: experts over `expert`, their hidden width over `tensor`.
    "fsdp_ep": (
        ("batch", _BATCH),
        ("embed", ("fsdp",)),
        ("audio_embed", ("fsdp",)),
        ("experts", ("expert",)),
        ("expert_mlp", ("tensor",)),
        ("mlp", ("tensor",)),
        ("heads", ("tensor",)),
        ("q_proj", ("tensor",)),
        ("vocab", ("tensor",)),
    ),
}

_current_rules: contextvars.ContextVar[Rules | None] = contextvars.ContextVar("rules", default=None)


def resolve_rules(spec: str | Sequence[Sequence[Any]] | None) -> Rules:
    """Turns a preset name or a list of ``(logical, mesh_axes)`` pairs into validated rules."""
    if spec is None:
        spec = "fsdp"
    if isinstance(spec, str):
        if spec not in RULE_PRESETS:
            raise ConfigError(
                f"sharding.rules={spec!r} is not a known rule set; choose one of {sorted(RULE_PRESETS)}"
            )
        return RULE_PRESETS[spec]
    rules = []
    for pair in spec:
        if len(pair) != 2:
            raise ConfigError(f"sharding rule {pair!r} must be a (logical_name, mesh_axes) pair")
        name, axes = pair
        if name not in LOGICAL_AXES:
            raise ConfigError(f"sharding rule names unknown logical axis {name!r}; known: {LOGICAL_AXES}")
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        for ax in axes:
            if ax not in MESH_AXES:
                raise ConfigError(f"sharding rule {name!r} -> {ax!r}: mesh axis must be one of {MESH_AXES}")
        rules.append((name, axes))
    return tuple(rules)


@contextlib.contextmanager
def use_rules(rules: Rules) -> Iterator[Rules]:
    """Makes ``rules`` the active rule set for ``constrain`` and ``logical_to_spec`` defaults."""
    token = _current_rules.set(rules)
    try:
        yield rules
    finally:
        _current_rules.reset(token)


def current_rules() -> Rules:
    rules = _current_rules.get()
    return RULE_PRESETS["fsdp"] if rules is None else rules


def logical_to_spec(
    logical: Sequence[str | None] | None, rules: Rules | None = None, mesh: Mesh | None = None
) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once per array.

    Mesh axes of size 1 in ``mesh`` are dropped, so specs stay readable and divisibility holds.
    """
    if logical is None:
        return PartitionSpec()
    table = dict(current_rules() if rules is None else rules)
    used: set[str] = set()
    out: list[Any] = []
    for name in logical:
        if name is None:
            out.append(None)
            continue
        if name not in LOGICAL_AXES:
            raise ValueError(f"unknown logical axis {name!r}; known: {LOGICAL_AXES}")
        axes = [a for a in table.get(name, ()) if a not in used]
        if mesh is not None:
            axes = [a for a in axes if mesh.shape.get(a, 1) > 1]
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*out)


# (parameter path, shape, dropped axes) already reported by fit_spec: one warning per parameter per process.
_REPORTED_REPLICATION: set[tuple[str, tuple[int, ...], tuple[tuple[int, str], ...]]] = set()


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh, name: str | None = None) -> PartitionSpec:
    """Drops mesh axes from dimensions they do not divide (e.g. 4 kv heads over tensor=8).

    The dimension is then replicated over that axis; for a parameter (``name``: its path) this is logged as a
    warning, once per parameter however often its sharding is derived.
    """
    out, dropped = [], []
    for i, (dim, entry) in enumerate(zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=False)):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        kept, size = [], 1
        for a in axes:
            if dim % (size * mesh.shape[a]) == 0:
                kept.append(a)
                size *= mesh.shape[a]
            else:
                dropped.append((i, a))
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    if name is not None and dropped:
        _report_replication(name, tuple(shape), tuple(dropped), mesh)
    return PartitionSpec(*out)


def _report_replication(name: str, shape: tuple[int, ...], dropped: tuple[tuple[int, str], ...], mesh: Mesh) -> None:
    key = (name, shape, dropped)
    if key in _REPORTED_REPLICATION:
        return
    _REPORTED_REPLICATION.add(key)
    what = "; ".join(f"dimension {i} (size {shape[i]}) is not divisible by mesh axis {a}={mesh.shape[a]}"
                     for i, a in dropped)
    logger.warning("parameter %s of shape %s is replicated where it should be sharded: %s", name, shape, what)


def _var_logical(var: nnx.Variable) -> tuple[str | None, ...] | None:
    meta = var.get_metadata()
    names = meta.get("out_sharding") or meta.get("sharding_names") or meta.get("sharding")
    return tuple(names) if names else None


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """NamedShardings for every Variable of an (abstract) NNX state, from its logical annotations."""

    def one(path, var):
        if not isinstance(var, nnx.Variable):
            return NamedSharding(mesh, PartitionSpec())
        spec = logical_to_spec(_var_logical(var), rules, mesh)
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        return var.replace(NamedSharding(mesh, fit_spec(spec, var.shape, mesh, name)))

    return jax.tree_util.tree_map_with_path(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_model(factory: Callable[[], nnx.Module]) -> nnx.Module:
    """The module's shapes and dtypes (``nnx.eval_shape``), without allocating or sharding anything."""
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(factory)


def create_sharded(
    factory: Callable[[], nnx.Module], mesh: Mesh, rules: Rules | None = None
) -> nnx.Module:
    """Builds ``factory()`` with every parameter created directly in its sharded layout."""
    abstract = abstract_model(factory)
    graphdef, abs_state = nnx.split(abstract)
    shardings = state_shardings(abs_state, mesh, rules)

    @jax.jit
    def init():
        with nnx.use_eager_sharding(False):
            return nnx.state(factory())

    with jax.set_mesh(mesh):
        out_shardings = jax.tree.map(
            lambda v: v.get_value() if isinstance(v, nnx.Variable) else v,
            shardings,
            is_leaf=lambda x: isinstance(x, nnx.Variable),
        )
        state = jax.jit(init.__wrapped__, out_shardings=out_shardings)()
    return nnx.merge(graphdef, state)


def place(model: nnx.Module, mesh: Mesh, rules: Rules | None = None) -> nnx.Module:
    """Moves an existing module's arrays onto ``mesh`` in the layout its logical annotations ask for."""
    graphdef, state = nnx.split(model)
    shardings = state_shardings(state, mesh, rules)
    state = jax.tree.map(
        lambda v, s: v.replace(jax.device_put(v.get_value(), s.get_value())) if isinstance(v, nnx.Variable) else v,
        state, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    return nnx.merge(graphdef, state)


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` by logical names under the active mesh; a no-op without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or not mesh.axis_names:
        return x
    spec = logical_to_spec(logical, mesh=None)
    spec = PartitionSpec(
        *[
            e if e is None or isinstance(e, str) and e in mesh.axis_names
            else tuple(a for a in e if a in mesh.axis_names) or None
            for e in spec
        ]
    )
    return jax.lax.with_sharding_constraint(x, spec)


# ----------------------------------------------------------------------------- mesh


def _checked_sizes(cfg: Mapping[str, Any], prefix: str) -> dict[str, int]:
    """The sizes of the mesh axes at one level (``mesh.<axis>`` or ``mesh.dcn_<axis>``): positive or one -1."""
    sizes = {a: cfg.get(f"{prefix.removeprefix('mesh.')}{a}", 1) for a in MESH_AXES}
    for a, s in sizes.items():
        if not is_int(s) or s == 0 or s < -1:
            raise ConfigError(f"{prefix}{a}={s!r} must be a positive size or -1 (the rest)")
    free = [f"{prefix}{a}" for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ConfigError(f"{', '.join(free)}: at most one axis may be -1 (the rest)")
    return sizes


def check_mesh_config(mesh_cfg: Mapping[str, Any]) -> None:
    """The checks of a ``mesh`` section that need no devices (each axis size positive, at most one -1 per level)."""
    _checked_sizes(mesh_cfg, "mesh."), _checked_sizes(mesh_cfg, "mesh.dcn_")


def _axis_sizes(sizes: dict[str, int], n: int, what: str) -> dict[str, int]:
    free = [a for a, s in sizes.items() if s == -1]
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if n % fixed:
            raise ConfigError(
                f"{what}: fixed axes {({a: s for a, s in sizes.items() if s != -1})} (product {fixed}) "
                f"do not divide the {n} devices"
            )
        sizes[free[0]] = n // fixed
    elif fixed != n:
        raise ConfigError(
            f"{what}: axis sizes {sizes} multiply to {fixed}, but there are {n} devices; "
            f"set one axis to -1 or make the product {n}"
        )
    return sizes


def mesh_shape(mesh_cfg: Mapping[str, Any], num_devices: int, num_slices: int = 1) -> tuple[dict, dict]:
    """(ICI sizes per slice, DCN sizes across slices) for ``mesh.<axis>`` and ``mesh.dcn_<axis>``."""
    dcn_sizes = _checked_sizes(mesh_cfg, "mesh.dcn_")
    if num_slices > 1 and all(v == 1 for v in dcn_sizes.values()):
        dcn_sizes["data"] = -1
    ici_sizes = _checked_sizes(mesh_cfg, "mesh.")
    dcn = _axis_sizes(dcn_sizes, num_slices, "mesh.dcn_*")
    if num_devices % num_slices:
        raise ConfigError(f"{num_devices} devices do not split evenly into {num_slices} slices")
    ici = _axis_sizes(ici_sizes, num_devices // num_slices, "mesh")
    return ici, dcn


def check_batch_split(batch_size: int, grad_accum: int, mesh_cfg: Mapping[str, Any], num_devices: int,
                      num_slices: int = 1) -> None:
    """ConfigError unless a micro-batch (``batch_size / grad_accum``) splits evenly over the data-parallel
    shards (data x fsdp x expert, within and across slices) of the mesh on these devices."""
    ici, dcn = mesh_shape(mesh_cfg, num_devices, num_slices)
    data_parallel = math.prod(ici[a] * dcn[a] for a in ("data", "fsdp", "expert"))
    micro = batch_size // grad_accum
    if micro % data_parallel:
        raise ConfigError(f"train.batch_size={batch_size} / grad_accum={grad_accum} = {micro} is not divisible by "
                          f"the {data_parallel} data-parallel shards (data x fsdp x expert)")


def make_mesh(mesh_cfg: Mapping[str, Any], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 4-axis (data, fsdp, expert, tensor) mesh; hybrid ICI x DCN when devices span several slices."""
    from jax.experimental import mesh_utils

    devices = list(jax.devices() if devices is None else devices)
    slices = {getattr(d, "slice_index", 0) for d in devices}
    ici, dcn = mesh_shape(mesh_cfg, len(devices), len(slices))
    ici_shape = [ici[a] for a in MESH_AXES]
    if len(slices) > 1:
        dcn_shape = [dcn[a] for a in MESH_AXES]
        grid = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices)
    else:
        try:
            grid = mesh_utils.create_device_mesh(ici_shape, devices, allow_split_physical_axes=True)
        except (ValueError, NotImplementedError, AssertionError):
            grid = np.asarray(devices).reshape(ici_shape)
    return Mesh(grid, MESH_AXES)


def describe(mesh: Mesh) -> str:
    return " x ".join(f"{a}={s}" for a, s in mesh.shape.items()) + f" ({mesh.size} devices)"


# ----------------------------------------------------------------------------- multi-process


def maybe_initialize_distributed(dist_cfg: Mapping[str, Any] | None = None) -> bool:
    """Calls ``jax.distributed.initialize`` when this is one of several processes.

    Multi-process is detected from the config (``distributed.num_processes > 1``) or from the
    ``COGITO_NUM_PROCESSES`` / ``COGITO_PROCESS_ID`` / ``COGITO_COORDINATOR`` environment variables
    that ``launch/local.sh`` sets; on Cloud TPU and SLURM, JAX auto-detects the cluster when
    ``distributed.auto=True``. Returns whether initialisation happened.
    """
    cfg = dict(dist_cfg or {})
    n = int(os.environ.get("COGITO_NUM_PROCESSES", cfg.get("num_processes", 1) or 1))
    if n <= 1 and not cfg.get("auto", False):
        return False
    if jax.distributed.is_initialized():
        return True
    if n > 1:
        pid = int(os.environ.get("COGITO_PROCESS_ID", cfg.get("process_id", 0)))
        addr = os.environ.get("COGITO_COORDINATOR", cfg.get("coordinator_address", "localhost:12355"))
        # CPU devices need a collectives backend to talk across processes (no backend is touched yet).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=pid)
    else:
        jax.distributed.initialize()
    logger.info("joined JAX job: process %d of %d", jax.process_index(), jax.process_count())
    return True


def barrier(name: str) -> None:
    """Waits until every process of the job gets here (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather(arr: jax.Array, device: jax.Device | None = None) -> Any:
    """The whole of ``arr`` (its shards on other processes' devices too): on ``device`` (straight from the devices
    that hold it when they are all this process's), else on the host as numpy."""
    if not arr.is_fully_addressable:
        from jax.experimental import multihost_utils

        arr = multihost_utils.process_allgather(arr, tiled=True)
    return np.asarray(jax.device_get(arr)) if device is None else jax.device_put(arr, device)


@contextlib.contextmanager
def main_process_first(name: str) -> Iterator[None]:
    """Runs the body on process 0 first and on the others once it has finished (a barrier in between).

    For work on shared storage that the first process does and the others then reuse (generating a
    dataset, training a tokenizer): without it, N processes would write the same files at once.
    """
    if jax.process_count() == 1:
        yield
        return
    from jax.experimental import multihost_utils

    if jax.process_index() != 0:
        multihost_utils.sync_global_devices(f"{name}: process 0 done")
    yield
    if jax.process_index() == 0:
        multihost_utils.sync_global_devices(f"{name}: process 0 done")

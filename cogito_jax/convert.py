"""HF safetensors <-> NNX models, both directions (contract 2).

``load_hf(path, dtype=jnp.float32, *, mesh=None, rules=None) -> (model, config)`` reads ``config.json``
(the family comes from its ``model_type``, see ``models.registry``) and the ``.safetensors`` file(s)
(one ``model.safetensors`` or shards listed in ``model.safetensors.index.json``) under HF's on-disk
tensor names, one mapping table per family. Parameters are stored in ``dtype`` (``compute_dtype``
defaults to it). With a ``mesh`` every parameter is assembled straight into its sharded array with
``jax.make_array_from_callback``: each device's block is read from the file as a slice, so a large
model never sits whole in one host's memory.

``save_hf(model, config, out_dir, dtype=None, max_shard_bytes=5 GiB)`` writes safetensors (sharded
with an index above ``max_shard_bytes``) and a ``config.json`` that ``transformers`` loads. Loading
and saving are exact: an fp32 or bf16 checkpoint read in its own dtype and saved again gives
bitwise-identical tensors. Under several processes every process calls it; process 0 writes.

Layouts: a table entry's layout says how one HF tensor becomes ours, ``ours = hf.transpose(perm)``.

Orbax: ``save_orbax(model, config, out_dir)`` writes ``out_dir/params`` (an Orbax checkpoint of the
parameters as a nested dict keyed by our module paths, each array sharded as in memory) and
``out_dir/config.json`` (the HF config, as ``save_hf`` writes it, with the parameters' ``dtype``), so
the folder alone says what model it holds. ``load_orbax`` reads it back (straight into sharded arrays
with a ``mesh``); ``load`` takes either kind of folder.

CLI::

    python -m cogito_jax.convert hf-to-orbax --hf DIR --out CKPT_DIR [--dtype bfloat16|float32]
    python -m cogito_jax.convert orbax-to-hf --ckpt CKPT_DIR --out HF_DIR [--dtype ...] [--max-shard-gb 5]

Without ``--dtype`` the parameters keep the checkpoint's own dtype, so HF -> Orbax -> HF is bitwise.
Parameters are spread over all local devices (``fsdp``), so a model larger than one device fits.
Bad input exits with code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cogito_jax import sharding
from cogito_jax.errors import usage_error
from cogito_jax.metrics import absolute
from cogito_jax.models import registry
from cogito_jax.models.audio_lm import AudioLMConfig
from cogito_jax.models.hf_weights import layout_perm, stack_names, to_hf, to_ours
from cogito_jax.models.layers import path_str

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
ORBAX_PARAMS = "params"
_ST_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def _hf_index(index: tuple[slice, ...], layout: str) -> tuple[slice, ...]:
    """The slice of the HF tensor that holds our block ``index``."""
    perm = layout_perm(layout)
    return index if perm is None else tuple(index[perm.index(a)] for a in range(len(index)))


def _expand(key: str, stack_shape: tuple[int, ...]) -> list[tuple[tuple[int, ...], str]]:
    """(stack index, HF name) for every tensor a stacked key stands for, in stacking order."""
    names = stack_names(key)
    return [(idx, key.format(**dict(zip(names, idx, strict=True)))) for idx in np.ndindex(*stack_shape)]


class _Reader:
    """Lazy, sliceable access to tensors across one or several safetensors files."""

    def __init__(self, path: pathlib.Path):
        from safetensors import safe_open

        if (path / INDEX).exists():
            self.files = json.loads((path / INDEX).read_text())["weight_map"]
        elif (path / SINGLE).exists():
            with safe_open(str(path / SINGLE), "numpy") as f:
                self.files = {k: SINGLE for k in f.keys()}
        else:
            raise FileNotFoundError(f"no {SINGLE} or {INDEX} in {str(path)!r}")
        self._open = {name: safe_open(str(path / name), "numpy") for name in sorted(set(self.files.values()))}

    def _slice(self, key: str):
        if key not in self.files:
            raise KeyError(f"tensor {key!r} is not in the checkpoint")
        return self._open[self.files[key]].get_slice(key)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._slice(key).get_shape())

    def read(self, key: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        """Tensor ``key`` (only its block ``index`` is read from disk)."""
        sl = self._slice(key)
        if index is None or all(s == slice(None) for s in index):
            return self._open[self.files[key]].get_tensor(key)
        return sl[index]


class _Tensors:
    """:class:`_Reader`'s interface over tensors in memory (HF name -> array)."""

    def __init__(self, tensors: Mapping[str, Any]):
        self.tensors, self.files = tensors, dict.fromkeys(tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(np.shape(self.tensors[key]))

    def read(self, key: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        t = np.asarray(self.tensors[key])
        return t if index is None else t[index]


def _read_block(reader: _Reader | _Tensors, key: str, layout: str, shape: tuple[int, ...],
                index: tuple[slice, ...] | None, dtype: np.dtype) -> np.ndarray:
    """Our parameter's block ``index`` (all of it for ``None``), in ``dtype``."""
    n = len(stack_names(key))
    index = tuple(index) if index else (slice(None),) * len(shape)
    ranges = [range(shape[d])[index[d]] for d in range(n)]
    rest = index[n:]
    names = stack_names(key)
    parts = [to_ours(reader.read(key.format(**dict(zip(names, idx, strict=True))), _hf_index(rest, layout)),
                     layout).astype(dtype) for idx in itertools.product(*ranges)]
    if not n:
        return parts[0]
    return np.stack(parts).reshape(*(len(r) for r in ranges), *parts[0].shape)


def _check(reader: _Reader | _Tensors, table: Mapping[str, tuple[str, str]], leaves: list, strict: bool, family: str,
           skipped: tuple[str, ...] = ()) -> None:
    """Every parameter has its tensors with the right shapes; with ``strict`` no tensor is left unused
    (except those under the family's ``skipped`` prefixes: parts the models here do not build)."""
    paths = [path_str(p) for p, _ in leaves]
    missing = [p for p in paths if p not in table]
    if missing:
        raise ValueError(f"no HF tensor mapped for parameters {missing[:5]} of family {family}")
    used, errors = set(), []
    for p, (_, leaf) in zip(paths, leaves, strict=True):
        key, layout = table[p]
        n = len(stack_names(key))
        for _, name in _expand(key, leaf.shape[:n]):
            used.add(name)
            if name not in reader.files:
                errors.append(f"tensor {name!r} (for {p}) is not in the checkpoint")
                continue
            hf_shape = reader.shape(name)
            ours = hf_shape if layout_perm(layout) is None else tuple(hf_shape[a] for a in layout_perm(layout))
            if ours != tuple(leaf.shape[n:]):
                errors.append(f"tensor {name!r} has shape {hf_shape}; {p} needs {tuple(leaf.shape[n:])} per "
                              f"tensor in layout {layout!r}")
    unused = sorted(n for n in set(reader.files) - used if not n.startswith(skipped))
    if strict and unused:
        errors.append(f"checkpoint tensors with no parameter (pass strict=False to ignore): {unused[:5]}"
                      + (f" and {len(unused) - 5} more" if len(unused) > 5 else ""))
    if errors:
        raise ValueError(f"checkpoint does not fit family {family}: " + "; ".join(errors[:5]))


def read_config(path: str | pathlib.Path) -> dict:
    p = pathlib.Path(path) / "config.json"
    if not p.exists():
        raise FileNotFoundError(f"{str(p)!r} does not exist")
    return json.loads(p.read_text())


def _abstract(hf: Mapping[str, Any], pdt: Any, compute_dtype: Any, overrides: Mapping[str, Any], who: str):
    """(family, config, graphdef, abstract params, rest) of an HF config with parameters in ``pdt`` and
    compute in ``compute_dtype`` (default ``pdt``); raises if the model has state beyond parameters."""
    fam = registry.family_of(hf)
    cdt = jnp.dtype(compute_dtype if compute_dtype is not None else pdt)
    cfg = fam.from_hf(hf, **{"param_dtype": jnp.dtype(pdt).name, "dtype": cdt.name, **overrides})
    abstract = sharding.abstract_model(lambda: fam.build(cfg, nnx.Rngs(0)))
    graphdef, abs_params, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree_util.tree_leaves(rest):
        raise ValueError(f"family {fam.name} has non-parameter state that {who} cannot fill")
    return fam, cfg, graphdef, abs_params, rest


def load_hf(path: str | pathlib.Path, dtype: Any = jnp.float32, *, mesh: jax.sharding.Mesh | None = None,
            rules: sharding.Rules | None = None, compute_dtype: Any = None, strict: bool = True,
            **config_overrides: Any) -> tuple[nnx.Module, AudioLMConfig]:
    """The model and its config from an HF checkpoint folder, parameters in ``dtype``.

    ``config_overrides``: run-time settings (``remat``, ``attn_impl``, ``moe_impl``; ``registry.OVERRIDES``).
    """
    path = pathlib.Path(path)
    pdt = jnp.dtype(dtype)
    fam, cfg, graphdef, abs_params, rest = _abstract(read_config(path), pdt, compute_dtype, config_overrides,
                                                     "load_hf")
    table = fam.weights(cfg)
    reader = _Reader(path)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abs_params)
    _check(reader, table, leaves, strict, fam.name, fam.skipped)
    shardings = (jax.tree_util.tree_leaves(sharding.state_shardings(abs_params, mesh, rules))
                 if mesh is not None else [None] * len(leaves))
    out = []
    for (p, leaf), sh in zip(leaves, shardings, strict=True):
        key, layout = table[path_str(p)]
        shape = tuple(leaf.shape)
        if sh is None:
            out.append(jnp.asarray(_read_block(reader, key, layout, shape, None, pdt)))
            continue
        blocks: dict[Any, np.ndarray] = {}  # replicated blocks are read once

        def block(index, key=key, layout=layout, shape=shape, blocks=blocks):
            k = tuple((s.start, s.stop, s.step) for s in index)
            if k not in blocks:
                blocks[k] = _read_block(reader, key, layout, shape, index, pdt)
            return blocks[k]

        out.append(jax.make_array_from_callback(shape, sh, block))
    params = jax.tree_util.tree_unflatten(treedef, out)
    return nnx.merge(graphdef, params, rest), cfg


def load_params(module: nnx.Module, table: Mapping[str, tuple[str, str]], tensors: Mapping[str, Any]) -> None:
    """Fills the parameters of ``module`` (a model, or one block of one such as an MoE layer) in place from HF
    tensors in memory (name -> array) through ``table``, each in its parameter's dtype; tensors the table does not
    use are ignored."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(nnx.state(module, nnx.Param))
    reader = _Tensors(tensors)
    _check(reader, table, leaves, False, type(module).__name__)
    params = [jnp.asarray(_read_block(reader, *table[path_str(p)], tuple(leaf.shape), None, leaf.dtype))
              for p, leaf in leaves]
    nnx.update(module, jax.tree_util.tree_unflatten(treedef, params))


def _plan(model: nnx.Module, table: Mapping[str, tuple[str, str]], dtype: Any, what: str) -> list[tuple]:
    """(HF name, parameter, stack index, layout, bytes, dtype) of every HF tensor of ``model``'s parameters (in
    ``dtype``, default their own) through ``table``, sorted by name."""
    plan = []
    for p, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]:
        name = path_str(p)
        if name not in table:
            raise ValueError(f"parameter {name!r} has no HF name in {what} (merge LoRA adapters first)")
        key, layout = table[name]
        n = len(stack_names(key))
        out_dtype = np.dtype(dtype if dtype is not None else leaf.dtype)
        nbytes = math.prod(leaf.shape[n:]) * out_dtype.itemsize
        plan += [(hf_name, leaf, idx, layout, nbytes, out_dtype) for idx, hf_name in _expand(key, leaf.shape[:n])]
    names = [e[0] for e in plan]
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: several parameters map to the same HF tensor")
    return sorted(plan, key=lambda e: e[0])


def export_params(module: nnx.Module, table: Mapping[str, tuple[str, str]]) -> dict[str, np.ndarray]:
    """The HF tensors (name -> array) of every parameter of ``module`` (a model, or one block of one) through
    ``table``, as :func:`save_hf` writes them."""
    return {name: to_hf(sharding.gather(leaf[idx]), layout)
            for name, leaf, idx, layout, _, _ in _plan(module, table, None, type(module).__name__)}


def save_hf(model: nnx.Module, config: AudioLMConfig, out_dir: str | pathlib.Path, dtype: Any = None,
            max_shard_bytes: int = 5 * 2**30) -> pathlib.Path:
    """Writes ``config.json`` + safetensors (sharded with an index above ``max_shard_bytes``).

    Tensors keep the parameters' dtype unless ``dtype`` is given. Host memory holds one shard at a time.
    """
    from safetensors.numpy import save_file

    out = pathlib.Path(out_dir)
    fam = registry.FAMILIES[config.family]
    plan = _plan(model, fam.weights(config), dtype, f"family {fam.name}")
    shards: list[list] = [[]]
    size = 0
    for e in plan:
        if shards[-1] and size + e[4] > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e[4]
    writer = jax.process_index() == 0
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    files = [SINGLE] if len(shards) == 1 else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                                               for i in range(len(shards))]
    for fname, shard in zip(files, shards, strict=True):
        tensors = {}
        for hf_name, leaf, idx, layout, _, out_dtype in shard:
            tensors[hf_name] = np.ascontiguousarray(to_hf(sharding.gather(leaf[idx]), layout).astype(out_dtype))
        if writer:
            save_file(tensors, str(out / fname), metadata={"format": "pt"})
    if writer and len(shards) > 1:
        weight_map = {e[0]: f for f, shard in zip(files, shards, strict=True) for e in shard}
        index = {"metadata": {"total_size": sum(e[4] for e in plan)}, "weight_map": weight_map}
        (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    hf = fam.to_hf(config)
    hf["dtype"] = plan[0][5].name if plan else "float32"
    hf.pop("torch_dtype", None)
    if writer:
        (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    return out


# ----------------------------------------------------------------------------- Orbax


def checkpoint_dtype(path: str | pathlib.Path) -> str | None:
    """The one floating dtype of an HF checkpoint's tensors (``"bfloat16"``), or None when they mix dtypes."""
    reader = _Reader(pathlib.Path(path))
    found = {reader._slice(k).get_dtype() for k in reader.files}
    names = {_ST_DTYPES.get(d) for d in found}
    return names.pop() if len(names) == 1 and None not in names else None


def save_orbax(model: nnx.Module, config: AudioLMConfig, out_dir: Any, dtype: Any = None) -> Any:
    """Writes ``out_dir/params`` (Orbax, our parameter tree) and ``out_dir/config.json`` (the HF config).

    Parameters keep their dtype unless ``dtype`` is given; sharded arrays are written by the processes
    that hold them. Refuses to overwrite an existing ``params`` folder.
    """
    import orbax.checkpoint as ocp

    out = absolute(out_dir)
    if (out / ORBAX_PARAMS).exists():
        raise FileExistsError(f"{str(out / ORBAX_PARAMS)!r} already exists; choose a new output folder")
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    if dtype is not None:
        pure = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), pure)
    leaves = jax.tree.leaves(pure)
    ckptr = ocp.StandardCheckpointer()
    try:
        ckptr.save(out / ORBAX_PARAMS, pure)
        ckptr.wait_until_finished()
    finally:
        ckptr.close()
    hf = registry.FAMILIES[config.family].to_hf(config)
    hf["dtype"] = jnp.dtype(leaves[0].dtype).name if leaves else "float32"
    hf.pop("torch_dtype", None)
    if jax.process_index() == 0:
        (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    return out


def is_orbax(path: Any) -> bool:
    return (absolute(path) / ORBAX_PARAMS).is_dir()


def load_orbax(path: Any, dtype: Any = None, *, mesh: jax.sharding.Mesh | None = None,
               rules: sharding.Rules | None = None, compute_dtype: Any = None,
               **config_overrides: Any) -> tuple[nnx.Module, AudioLMConfig]:
    """The model and its config from a :func:`save_orbax` folder, parameters in ``dtype`` (default: as
    stored). With a ``mesh`` each device reads only its block of every parameter."""
    import orbax.checkpoint as ocp

    path = absolute(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{str(path / 'config.json')!r} does not exist")
    hf = json.loads((path / "config.json").read_text())
    registry.family_of(hf)  # an unknown model_type fails before the missing-parameters check
    if not is_orbax(path):
        raise FileNotFoundError(f"no Orbax parameters ({ORBAX_PARAMS}/) in {str(path)!r}")
    pdt = jnp.dtype(dtype if dtype is not None else hf.get("dtype") or "float32")
    fam, cfg, graphdef, abs_params, rest = _abstract(hf, pdt, compute_dtype, config_overrides, "load_orbax")
    if mesh is not None:
        shardings = nnx.to_pure_dict(sharding.state_shardings(abs_params, mesh, rules))
    else:
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: one, nnx.to_pure_dict(abs_params))
    target = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                          nnx.to_pure_dict(abs_params), shardings)
    ckptr = ocp.StandardCheckpointer()
    try:
        stored = ckptr.metadata(path / ORBAX_PARAMS)
        stored = getattr(stored, "item_metadata", stored)
        want = {path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(target)[0]}
        have = {path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(stored)[0]}
        if want != have:
            diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
            raise ValueError(f"Orbax parameters in {str(path)!r} do not fit its config.json (family {fam.name}): "
                             + ", ".join(f"{k}: stored {have.get(k)}, model {want.get(k)}" for k in diff[:5]))
        restored = ckptr.restore(path / ORBAX_PARAMS, target)
    finally:
        ckptr.close()
    nnx.replace_by_pure_dict(abs_params, restored)
    return nnx.merge(graphdef, abs_params, rest), cfg


def load(path: Any, dtype: Any = None, **kwargs: Any) -> tuple[nnx.Module, AudioLMConfig]:
    """``load_orbax`` for a :func:`save_orbax` folder, else ``load_hf`` (``dtype`` default: as stored / fp32)."""
    if is_orbax(path):
        return load_orbax(path, dtype, **kwargs)
    return load_hf(path, dtype if dtype is not None else jnp.float32, **kwargs)


# ----------------------------------------------------------------------------- CLI


def _local_mesh() -> jax.sharding.Mesh:
    return sharding.make_mesh({"fsdp": -1}, jax.local_devices())


def _hf_to_orbax(args: argparse.Namespace) -> int:
    src = pathlib.Path(args.hf)
    if not src.is_dir():
        raise FileNotFoundError(f"--hf folder {str(src)!r} does not exist")
    registry.family_of(read_config(src))  # unknown model_type: fail before reading any tensor
    if (absolute(args.out) / ORBAX_PARAMS).exists():
        raise FileExistsError(f"{str(absolute(args.out) / ORBAX_PARAMS)!r} already exists; choose a new --out")
    dtype = args.dtype or checkpoint_dtype(src) or "float32"
    model, cfg = load_hf(src, dtype, mesh=_local_mesh(), rules=sharding.resolve_rules("fsdp"))
    out = save_orbax(model, cfg, args.out)
    print(f"wrote {cfg.family} ({dtype}) to {out}")
    return 0


def _orbax_to_hf(args: argparse.Namespace) -> int:
    src = absolute(args.ckpt)
    if not src.is_dir():
        raise FileNotFoundError(f"--ckpt folder {args.ckpt!r} does not exist")
    model, cfg = load_orbax(src, args.dtype, mesh=_local_mesh(), rules=sharding.resolve_rules("fsdp"))
    out = save_hf(model, cfg, args.out, max_shard_bytes=int(args.max_shard_gb * 2**30))
    print(f"wrote {cfg.family} ({cfg.text.param_dtype}) to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:
            usage_error(message)

    p = Parser(prog="python -m cogito_jax.convert", description="Convert between HF safetensors and Orbax.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    dtypes = ("float32", "bfloat16", "float16")
    a = sub.add_parser("hf-to-orbax", help="an HF checkpoint folder -> an Orbax folder (params/ + config.json)")
    a.add_argument("--hf", required=True, help="HF folder: config.json + *.safetensors")
    a.add_argument("--out", required=True, help="new Orbax folder")
    a.add_argument("--dtype", choices=dtypes, default=None, help="parameter dtype (default: the checkpoint's)")
    a.set_defaults(fn=_hf_to_orbax)
    b = sub.add_parser("orbax-to-hf", help="an Orbax folder written by hf-to-orbax -> an HF checkpoint folder")
    b.add_argument("--ckpt", required=True, help="Orbax folder: params/ + config.json")
    b.add_argument("--out", required=True, help="HF output folder")
    b.add_argument("--dtype", choices=dtypes, default=None, help="tensor dtype (default: as stored)")
    b.add_argument("--max-shard-gb", type=float, default=5.0, help="safetensors shard size (an index above it)")
    b.set_defaults(fn=_orbax_to_hf)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` and converts; bad input -> one line on stderr and exit code 2."""

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, KeyError, NotImplementedError) as e:
        usage_error(" ".join(str(e).split()))
    except OSError as e:
        usage_error(" ".join(str(e).split()) if not e.strerror else f"{e.filename or ''}: {e.strerror}")
    return 2


if __name__ == "__main__":
    sys.exit(main())

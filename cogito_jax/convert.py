"""HF safetensors <-> NNX models, both directions (contract 2).

``load_hf(path, dtype=jnp.float32, mesh=None, rules=None) -> (model, config)`` reads ``config.json``
(the family comes from its ``model_type``) and the ``.safetensors`` file(s) (single file or sharded
with ``model.safetensors.index.json``), under HF's on-disk tensor names. With a ``mesh`` every
parameter is assembled straight into its sharded array, one tensor at a time, each device reading
only its slice, so a large model never sits whole in one host's memory.
``save_hf(model, config, out_dir, dtype=None, max_shard_bytes=...)`` writes safetensors (+ index when
sharded) and a ``config.json`` that ``transformers`` loads.

CLI: ``python -m cogito_jax.convert hf-to-orbax --hf DIR --out CKPT`` and
``python -m cogito_jax.convert orbax-to-hf --ckpt CKPT --out DIR``.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cogito_jax import sharding
from cogito_jax.models import registry
from cogito_jax.models.audio_lm import AudioLMConfig
from cogito_jax.train.optim import path_str

INDEX = "model.safetensors.index.json"


def _to_ours(t: np.ndarray, layout: str) -> np.ndarray:
    if layout == registry.LINEAR:
        return t.T
    if layout == registry.CONV1D:
        return t.transpose(2, 1, 0)
    return t


def _to_hf(t: np.ndarray, layout: str) -> np.ndarray:
    if layout == registry.LINEAR:
        return t.T
    if layout == registry.CONV1D:
        return t.transpose(2, 1, 0)
    return t


class _Reader:
    """Lazy access to tensors across one or several safetensors files."""

    def __init__(self, path: pathlib.Path):
        from safetensors import safe_open

        if (path / INDEX).exists():
            files = json.loads((path / INDEX).read_text())["weight_map"]
        else:
            single = path / "model.safetensors"
            if not single.exists():
                raise FileNotFoundError(f"no model.safetensors or {INDEX} in {str(path)!r}")
            with safe_open(str(single), "flax") as f:
                files = {k: "model.safetensors" for k in f.keys()}
        self.files = files
        self._open = {name: safe_open(str(path / name), "flax") for name in sorted(set(files.values()))}

    def get(self, key: str) -> np.ndarray:
        if key not in self.files:
            raise KeyError(f"tensor {key!r} is not in the checkpoint")
        return np.asarray(self._open[self.files[key]].get_tensor(key).astype(jnp.float32))


def read_config(path: str | pathlib.Path) -> dict:
    p = pathlib.Path(path) / "config.json"
    if not p.exists():
        raise FileNotFoundError(f"{str(p)!r} does not exist")
    return json.loads(p.read_text())


def load_hf(path: str | pathlib.Path, dtype: Any = jnp.float32, *, mesh: jax.sharding.Mesh | None = None,
            rules: sharding.Rules | None = None, **config_overrides: Any) -> tuple[nnx.Module, AudioLMConfig]:
    """The model and its config from an HF checkpoint folder (weights cast to ``dtype``)."""
    path = pathlib.Path(path)
    hf = read_config(path)
    fam = registry.family_of(hf)
    dtype_name = jnp.dtype(dtype).name
    cfg = fam.from_hf(hf, **{"param_dtype": dtype_name, "dtype": dtype_name, **config_overrides})
    abstract = sharding.abstract_model(lambda: fam.build(cfg, nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abstract)
    table = fam.weights(cfg)
    reader = _Reader(path)
    target_sh = sharding.state_shardings(abs_state, mesh, rules) if mesh is not None else None
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abs_state)
    sh_leaves = jax.tree_util.tree_leaves(target_sh) if target_sh is not None else [None] * len(leaves)
    missing = [path_str(p) for p, _ in leaves if path_str(p) not in table]
    if missing:
        raise ValueError(f"no HF tensor mapped for parameters {missing[:5]} of family {fam.name}")
    out = []
    for (p, leaf), sh in zip(leaves, sh_leaves, strict=True):
        key, layout = table[path_str(p)]
        stacked = "{i}" in key

        def read(index, key=key, layout=layout, stacked=stacked, shape=leaf.shape):
            if stacked:
                layers = range(shape[0])[index[0]] if index else range(shape[0])
                arr = np.stack([_to_ours(reader.get(key.format(i=i)), layout) for i in layers])
                rest = tuple(index[1:]) if index else ()
                return arr[(slice(None), *rest)]
            arr = _to_ours(reader.get(key), layout)
            return arr[tuple(index)] if index else arr

        if sh is None:
            arr = read(None)
            if arr.shape != leaf.shape:
                raise ValueError(f"{key}: checkpoint shape {arr.shape} != model shape {leaf.shape}")
            out.append(jnp.asarray(arr, dtype))
        else:
            out.append(jax.make_array_from_callback(leaf.shape, sh, lambda idx, r=read: r(idx).astype(dtype)))
    state = jax.tree_util.tree_unflatten(treedef, out)
    return nnx.merge(graphdef, state), cfg


def save_hf(model: nnx.Module, config: AudioLMConfig, out_dir: str | pathlib.Path, dtype: Any = None,
            max_shard_bytes: int = 5 * 2**30) -> pathlib.Path:
    """Writes ``config.json`` + safetensors (sharded with an index above ``max_shard_bytes``)."""
    from safetensors.flax import save_file

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fam = registry.FAMILIES[config.family]
    table = fam.weights(config)
    state = nnx.state(model, nnx.Param)
    tensors: dict[str, jax.Array] = {}
    for p, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        name = path_str(p)
        if name not in table:
            raise ValueError(f"parameter {name!r} has no HF name in family {fam.name}")
        key, layout = table[name]
        arr = jax.device_get(leaf)
        if dtype is not None:
            arr = jnp.asarray(arr).astype(dtype)
        arr = jnp.asarray(arr)
        if "{i}" in key:
            for i in range(arr.shape[0]):
                tensors[key.format(i=i)] = _to_hf(arr[i], layout)
        else:
            tensors[key] = _to_hf(arr, layout)
    shards: list[dict[str, jax.Array]] = [{}]
    size = 0
    for k in sorted(tensors):
        nbytes = tensors[k].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = tensors[k]
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata=meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / name), metadata=meta)
            weight_map.update({k: name for k in shard})
        total = sum(t.nbytes for t in tensors.values())
        (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    hf = fam.to_hf(config)
    if dtype is not None:
        hf["dtype"] = jnp.dtype(dtype).name
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    return out

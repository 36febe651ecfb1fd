"""Weight tables between NNX modules and HF on-disk tensor names, with stacked layers and experts.

A table maps a parameter path inside a module (``"layers/fc1/kernel"``) to ``(hf_key, layout)``. The
key may hold ``{i}`` (a stacked-layer axis) and ``{e}`` (a stacked-expert axis); such a parameter's
leading axes are, in that order, the layers and the experts, one HF tensor per index. ``layout`` says
how one HF tensor becomes ours: ``linear`` (torch ``[out, in]`` -> ``[in, out]``), ``conv1d`` (torch
``[out, in, k]`` -> ``[k, in, out]``), ``conv2d`` (torch ``[out, in, kh, kw]`` -> ``[kh, kw, in, out]``) or
``same``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cogito_jax.models.layers import path_str

LINEAR, CONV1D, CONV2D, SAME = "linear", "conv1d", "conv2d", "same"
STACK_AXES = ("i", "e")  # placeholder names of stacked leading axes, outermost first
# layout -> perm with ours = hf.transpose(perm) (None: same layout)
LAYOUTS: dict[str, tuple[int, ...] | None] = {
    SAME: None,
    LINEAR: (1, 0),  # torch Linear [out, in] -> [in, out]
    CONV1D: (2, 1, 0),  # torch Conv1d [out, in, k] -> [k, in, out]
    CONV2D: (2, 3, 1, 0),  # torch Conv2d [out, in, kh, kw] -> [kh, kw, in, out]
}


def layout_perm(layout: str) -> tuple[int, ...] | None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown weight layout {layout!r}; expected one of {sorted(LAYOUTS)}")
    return LAYOUTS[layout]


def to_ours(t: np.ndarray, layout: str) -> np.ndarray:
    perm = layout_perm(layout)
    return t if perm is None else t.transpose(perm)


def to_hf(t: np.ndarray, layout: str) -> np.ndarray:
    perm = layout_perm(layout)
    return t if perm is None else t.transpose(np.argsort(perm))


def stack_names(key: str) -> list[str]:
    """The stacked-axis placeholders a key holds, outermost first."""
    return [n for n in STACK_AXES if "{" + n + "}" in key]


def read(get: Callable[[str], np.ndarray], key: str, layout: str, shape: tuple[int, ...]) -> np.ndarray:
    """Our array for ``key``: HF tensors stacked over the key's ``{i}``/``{e}`` placeholders."""
    names = stack_names(key)

    def rec(idx: dict[str, int]) -> np.ndarray:
        if len(idx) == len(names):
            return to_ours(np.asarray(get(key.format(**idx))), layout)
        return np.stack([rec({**idx, names[len(idx)]: j}) for j in range(shape[len(idx)])])

    return rec({})


def write(arr: np.ndarray, key: str, layout: str) -> dict[str, np.ndarray]:
    """HF tensors (name -> array) for our stacked array ``arr``."""
    names = stack_names(key)
    out: dict[str, np.ndarray] = {}

    def rec(a: np.ndarray, idx: dict[str, int]) -> None:
        if len(idx) == len(names):
            out[key.format(**idx)] = to_hf(a, layout)
            return
        for j in range(a.shape[0]):
            rec(a[j], {**idx, names[len(idx)]: j})

    rec(np.asarray(arr), {})
    return out


def load_table(module: nnx.Module, table: Mapping[str, tuple[str, str]], get: Callable[[str], np.ndarray]) -> None:
    """Fills every parameter of ``module`` in place from HF tensors (``get(name)``) through ``table``."""
    state = nnx.state(module, nnx.Param)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    missing = [path_str(p) for p, _ in leaves if path_str(p) not in table]
    if missing:
        raise ValueError(f"no HF tensor mapped for parameters {missing}")
    out = []
    for p, leaf in leaves:
        key, layout = table[path_str(p)]
        arr = read(get, key, layout, leaf.shape)
        if arr.shape != leaf.shape:
            raise ValueError(f"{key}: HF shape (as ours) {arr.shape} != parameter shape {leaf.shape}")
        out.append(jnp.asarray(arr, leaf.dtype))
    nnx.update(module, jax.tree_util.tree_unflatten(treedef, out))


def export_table(module: nnx.Module, table: Mapping[str, tuple[str, str]]) -> dict[str, np.ndarray]:
    """HF tensors (name -> array) for every parameter of ``module``."""
    out: dict[str, np.ndarray] = {}
    for p, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(module, nnx.Param))[0]:
        name = path_str(p)
        if name not in table:
            raise ValueError(f"parameter {name!r} has no HF name")
        out.update(write(np.asarray(jax.device_get(leaf)), *table[name]))
    return out

"""Weight tables between NNX modules and HF on-disk tensor names, with stacked layers and experts.

A table maps a parameter path inside a module (``"layers/fc1/kernel"``) to ``(hf_key, layout)``. The
key may hold ``{i}`` (a stacked-layer axis) and ``{e}`` (a stacked-expert axis); such a parameter's
leading axes are, in that order, the layers and the experts, one HF tensor per index. ``layout`` says
how one HF tensor becomes ours: ``linear`` (torch ``[out, in]`` -> ``[in, out]``), ``conv1d`` (torch
``[out, in, k]`` -> ``[k, in, out]``), ``conv2d`` (torch ``[out, in, kh, kw]`` -> ``[kh, kw, in, out]``) or
``same``. ``cogito_jax.convert`` reads and writes parameters through such tables (``load_hf`` / ``save_hf``
for a model's checkpoint folder, ``load_params`` / ``export_params`` for tensors in memory).
"""

from __future__ import annotations

import numpy as np

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

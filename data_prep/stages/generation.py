"""Running a checkpoint over prompts with the sampling driver and engine, resumably.

A model stage hands the driver its prompts and an output file; the driver appends each prompt's samples
as soon as its batch finishes and, on a re-run, skips the prompts already there (a torn tail is dropped),
so the file is the stage's append-only generation cache.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cogito_jax.config import ConfigError
from cogito_jax.data import chat
from cogito_jax.sampling.driver import LazyMelPrompt

SYSTEMS = {"challenge": chat.CHALLENGE_SYSTEM, "default": "default", "none": None}


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    path: str
    model: Any
    tokenizer: Any
    config: Any  # AudioLMConfig

    @property
    def family(self) -> str:
        return self.config.family


_LOADED: dict[str, LoadedModel] = {}


def _check_folder(path: str, who: str) -> pathlib.Path:
    p = pathlib.Path(path)
    if not (p / "config.json").is_file():
        raise ConfigError(f"{who}={path!r} has no config.json (give a checkpoint folder: HF safetensors or Orbax)")
    return p


def load_model(path: str, who: str) -> LoadedModel:
    """The checkpoint folder ``path`` (HF safetensors or Orbax, with config.json and its tokenizer), loaded
    once per process; ``who`` names the config key in errors."""
    p = _check_folder(path, who)
    key = str(p.resolve())
    if key not in _LOADED:
        from cogito_jax import convert
        from cogito_jax.data import tokenizer as toklib

        if not (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
            raise ConfigError(f"{who}={path!r} has no tokenizer (tokenizer.json / tokenizer_config.json)")
        try:
            model, mcfg = convert.load(p)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"{who}={path!r}: {e}") from None
        _LOADED[key] = LoadedModel(path, model, toklib.load(p), mcfg)
    return _LOADED[key]


@functools.lru_cache(maxsize=16)
def family_of(path: str, who: str) -> str:
    """The model family of a checkpoint folder, read from its config.json."""
    from cogito_jax import convert
    from cogito_jax.models import registry

    try:
        return registry.family_of(convert.read_config(_check_folder(path, who))).name
    except ValueError as e:
        raise ConfigError(f"{who}={path!r}: {e}") from None


class MelItem(LazyMelPrompt):
    """A driver prompt whose log-mel (a cached ``[frames, n_mels]`` .npy file) is read only when its batch is built."""

    def __init__(self, fields: Mapping[str, Any], mel_path: pathlib.Path, n_frames: int):
        super().__init__(fields)
        self.mel_path, self.n_frames = mel_path, int(n_frames)

    def load_mel(self) -> np.ndarray:
        return np.load(self.mel_path)

    def num_frames(self) -> int:
        return self.n_frames


def generate(lm: LoadedModel, prompts: Sequence[Mapping[str, Any]], out: pathlib.Path, *, num_samples: int,
             temperature: float, max_new_tokens: int, batch_size: int, seed: int, system: str | None,
             top_p: float = 1.0, who: str = "") -> dict[str, list[dict]]:
    """``{prompt id: its num_samples driver rows, by sample}`` for ``prompts`` (driver items), generating only
    those not yet in ``out``."""
    from cogito_jax.eval import predict
    from cogito_jax.sampling import driver

    a = lm.config.audio
    dcfg = driver.DriverConfig(
        family=lm.family, batch_size=batch_size, num_samples=num_samples, max_new_tokens=max_new_tokens,
        temperature=float(temperature), top_p=float(top_p), seed=seed, max_frames=a.num_frames,
        n_mels=a.num_mel_bins, n_window=getattr(a, "n_window", 50), system=system)
    if prompts:
        try:
            driver.run(prompts, out, generate_fn=predict.model_generate_fn(lm.model), tokenizer=lm.tokenizer,
                       cfg=dcfg, eos_token_ids=predict.stop_ids(lm.tokenizer), pad_token_id=lm.tokenizer.pad_token_id)
        except driver.PromptError as e:
            raise ConfigError(f"{who}: {e}") from None
    return read_outputs(out, [p["id"] for p in prompts], num_samples)


def read_outputs(path: pathlib.Path, ids: Sequence[str], num_samples: int) -> dict[str, list[dict]]:
    """The driver rows of ``ids`` in ``path``; raises if one lacks any of its ``num_samples`` samples."""
    want = set(ids)
    rows: dict[str, dict[int, dict]] = collections.defaultdict(dict)
    if want and path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("id") in want:
                rows[r["id"]][int(r["sample"])] = r
    short = [i for i in ids if len(rows.get(i, ())) != num_samples]
    if short:
        raise RuntimeError(f"{path}: {len(short)} prompts lack some of their {num_samples} samples, e.g. {short[:3]}")
    return {i: [rows[i][s] for s in range(num_samples)] for i in ids}

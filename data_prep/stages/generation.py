"""Running a checkpoint over prompts with the sampling driver and engine, resumably.

A model stage hands the driver its prompts and an output file; the driver appends each prompt's samples
as soon as its batch finishes and, on a re-run, skips the prompts already there (a torn tail is dropped),
so the file is the stage's append-only generation cache.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import pathlib
import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from cogito_jax import convert, jsonl, sharding
from cogito_jax.data import tokenizer as toklib
from cogito_jax.errors import ConfigError
from cogito_jax.eval import predict
from cogito_jax.models import registry
from cogito_jax.sampling import driver


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
    try:
        return registry.family_of(convert.read_config(_check_folder(path, who))).name
    except ValueError as e:
        raise ConfigError(f"{who}={path!r}: {e}") from None


class MelItem(driver.LazyMelPrompt):
    """A driver prompt whose log-mel (a cached ``[frames, n_mels]`` .npy file) is read only when its batch is built."""

    def __init__(self, fields: Mapping[str, Any], mel_path: pathlib.Path, n_frames: int):
        super().__init__(fields)
        self.mel_path, self.n_frames = mel_path, int(n_frames)

    def load_mel(self) -> np.ndarray:
        return np.load(self.mel_path)

    def num_frames(self) -> int:
        return self.n_frames


def processes() -> tuple[int, int]:
    """(this process's index, the number of processes) of the JAX job."""
    return jax.process_index(), jax.process_count()


def owner(item_id: str, process_count: int) -> int:
    """The process that handles ``item_id`` in a job of ``process_count`` processes (the same on every run)."""
    return zlib.crc32(item_id.encode()) % process_count


def _own_files(path: pathlib.Path, process_count: int) -> list[pathlib.Path]:
    return [driver.shard_path(path, p, process_count) for p in range(process_count)]


def earlier_files(path: pathlib.Path, process_count: int) -> list[pathlib.Path]:
    """A stage's generation files that a job of ``process_count`` processes reads but never writes: a 1-process
    run's ``path`` (in a job of several) and the files of runs with another number of processes."""
    files = [path] if process_count > 1 and path.exists() else []
    shard = re.compile(re.escape(path.name) + r"\.process\d+-of-(\d+)")
    for f in sorted(path.parent.glob(path.name + ".process*-of-*")):
        m = shard.fullmatch(f.name)
        if m and int(m.group(1)) != process_count:
            files.append(f)
    return files


def output_files(path: pathlib.Path, process_count: int) -> list[pathlib.Path]:
    """A stage's generation files: the earlier runs' (:func:`earlier_files`) and each process's own."""
    return [*earlier_files(path, process_count), *_own_files(path, process_count)]


def _rows_by_id(path: pathlib.Path) -> dict[str, list[dict]]:
    """The driver rows of one generation file by prompt id: a torn last line is dropped (its prompt is generated
    again); any other bad line raises :class:`cogito_jax.jsonl.JsonlError` naming ``file:line``."""
    rows: dict[str, list[dict]] = collections.defaultdict(list)
    for r in jsonl.read(path, require=("id",)):
        rows[r["id"]].append(r)
    return rows


def _complete(files: Sequence[pathlib.Path], num_samples: int) -> set[str]:
    return {i for f in files for i, rows in _rows_by_id(f).items() if len(rows) == num_samples}


def _done_before(path: pathlib.Path, num_samples: int) -> set[str]:
    """The prompt ids with all their samples in any of the stage's files before this run generates, whatever
    process count wrote them; in a job of several processes every process reads them before any writes (a
    barrier follows)."""
    index, count = processes()
    done = _complete(earlier_files(path, count), num_samples)
    if count == 1:
        return done | driver.resume_file(path, num_samples)
    done |= _complete(_own_files(path, count), num_samples)
    sharding.barrier(f"{path.name}: outputs read")
    return done


def generate(lm: LoadedModel, prompts: Sequence[Mapping[str, Any]], out: pathlib.Path, *, num_samples: int,
             temperature: float, max_new_tokens: int, batch_size: int, seed: int, system: str | None,
             top_p: float = 1.0, who: str = "") -> tuple[dict[str, list[dict]], set[str]]:
    """(``{prompt id: its num_samples driver rows, by sample}``, the ids finished before this run) for ``prompts``
    (driver items), generating only those not yet in the stage's files. In a job of several processes each
    process generates its share of the prompts into its own file (see :func:`cogito_jax.sampling.driver.run`),
    and after a barrier every process reads the merged outputs, checked to hold each prompt exactly once."""
    index, count = processes()
    a = lm.config.audio
    dcfg = driver.DriverConfig(
        family=lm.family, batch_size=batch_size, num_samples=num_samples, max_new_tokens=max_new_tokens,
        temperature=float(temperature), top_p=float(top_p), seed=seed, max_frames=a.num_frames,
        n_mels=a.num_mel_bins, n_window=getattr(a, "n_window", 50), system=system)
    done = _done_before(out, num_samples)
    if any(p["id"] not in done for p in prompts):
        try:
            driver.run(list(prompts), out, model=lm.model, tokenizer=lm.tokenizer,
                       cfg=dcfg, eos_token_ids=predict.stop_ids(lm.tokenizer), pad_token_id=lm.tokenizer.pad_token_id,
                       process_index=index, process_count=count, done_elsewhere=done)
        except driver.PromptError as e:
            raise ConfigError(f"{who}: {e}") from None
    sharding.barrier(f"{who}: generated")
    return read_outputs(out, [p["id"] for p in prompts], num_samples, count), done


def read_outputs(path: pathlib.Path, ids: Sequence[str], num_samples: int, process_count: int = 1
                 ) -> dict[str, list[dict]]:
    """The driver rows of ``ids`` in the stage's files (``path`` and, with several processes, each one's file);
    raises naming the prompts that are missing, lack samples, or were generated more than once."""
    want = set(ids)
    earlier = earlier_files(path, process_count)
    found: dict[str, list[tuple[pathlib.Path, list[dict]]]] = collections.defaultdict(list)
    for f in output_files(path, process_count):
        for i, rows in _rows_by_id(f).items():
            if i in want and not (f in earlier and len(rows) != num_samples):
                found[i].append((f, rows))  # (an earlier run's torn prompt is generated again by this one)
    missing = [i for i in ids if i not in found]
    twice = {i: [f.name for f, _ in v] for i, v in found.items() if len(v) > 1}
    by_sample = {i: {int(r["sample"]): r for r in v[0][1]} for i, v in found.items() if len(v) == 1}
    short = [i for i, v in found.items() if len(v) == 1 and (len(v[0][1]) != num_samples
                                                             or set(by_sample[i]) != set(range(num_samples)))]
    if missing or twice or short:
        raise RuntimeError(
            f"{path}: every prompt must be generated exactly once with its {num_samples} samples: "
            f"{len(missing)} missing {missing[:5]}, {len(twice)} in several files {dict(list(twice.items())[:5])}, "
            f"{len(short)} lack some samples or repeat one {short[:5]}")
    return {i: [by_sample[i][s] for s in range(num_samples)] for i in ids}

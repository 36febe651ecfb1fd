"""Sample: `python -m cogito_jax.sample --config CONFIG.py[:arg] --input PROMPTS --out results.jsonl [--config.a.b=v]`.

The model is the HF checkpoint folder ``model.checkpoint`` (config.json, safetensors, tokenizer) or, when
``sample.workdir`` is set, the newest checkpoint of a run trained with this config in that folder. Generation
settings come from the config's ``sample`` section (num_samples, temperature, top_k, top_p, max_new_tokens,
batch_size, seed, system, length_buckets).

``--input`` is a JSONL file or a dataset folder written by ``data_prep.build`` (TFDS ArrayRecord; ``--split``).
A JSONL line holds ``id`` and ``question``, optionally ``choices`` (the challenge's multiple-choice prompt) or
``prompt_text`` (the user text as is), and optionally audio: ``audio_path`` (relative paths resolve against
the file's folder) or ``mel`` (log-mel ``[frames, n_mels]``). Results are appended to ``--out``, one line per
sample: ``id``, ``sample``, ``text``, ``thinking``, ``answer``, ``n_tokens``, ``finish_reason``. A rerun
skips the prompts already written; in a multi-process job each process writes
``<out>.process<i>-of-<n>``. Bad input exits with code 2 and one line on stderr.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from absl import flags

from cogito_jax import audio, cli, errors, sharding
from cogito_jax.data import chat, prepare, records
from cogito_jax.errors import ConfigError
from cogito_jax.eval import predict
from cogito_jax.eval.predict import load_model
from cogito_jax.sampling import driver
from cogito_jax.sampling.driver import LazyMelPrompt

_INPUT = flags.DEFINE_string("input", None, "Prompts: a JSONL file or a dataset folder written by data_prep.build.")
_OUT = flags.DEFINE_string("out", None, "Results JSONL (appended to; a rerun resumes).")
_SPLIT = flags.DEFINE_string("split", "train", "Split of a dataset --input.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Sample only the first N prompts (0: all).")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show a progress bar with tokens/s.")
cli.define_config_flag()



class AudioFileItem(LazyMelPrompt):
    """A prompt whose log-mel is computed from its audio file whenever it is read, and never kept."""

    def __init__(self, fields: Mapping[str, Any], path: pathlib.Path, n_mels: int, max_frames: int):
        super().__init__(fields)
        self.path, self.n_mels, self.max_frames = path, n_mels, max_frames
        self._n_frames: int | None = None

    def _wave(self) -> np.ndarray:
        try:
            wave, _ = audio.decode(self.path)
        except audio.AudioError as e:
            raise ConfigError(f"prompt {self._fields['id']!r}: {e}") from None
        return wave[: self.max_frames * audio.HOP]

    def load_mel(self) -> np.ndarray:
        mel = audio.log_mel_frames(self._wave(), self.n_mels).T
        self._n_frames = mel.shape[0]
        return mel

    def num_frames(self) -> int:
        if self._n_frames is None:
            self._n_frames = audio.num_frames(len(self._wave()))
        return self._n_frames


class RecordItem(Mapping):
    """One record of a dataset: its text fields are read once and kept, its ``mel`` is read whenever used."""

    TEXT = ("id", "question", "choices", "n_frames")

    def __init__(self, source: Any, index: int):
        self.source, self.index = source, index
        self._fields: dict[str, Any] | None = None

    def _text(self) -> dict[str, Any]:
        if self._fields is None:
            rec = self.source[self.index]
            if "mel" not in rec:
                raise ConfigError(f"record {rec.get('id')!r} of {self.source.dataset_dir}: holds "
                                  f"{'audio_embeds' if 'audio_embeds' in rec else 'no audio'}; only log-mel "
                                  "('mel') datasets can be sampled")
            self._fields = {k: rec[k] for k in self.TEXT}
        return self._fields

    def __getitem__(self, key: str) -> Any:
        if key == "mel":
            return self.source[self.index]["mel"]
        return self._text()[key]

    def __contains__(self, key: object) -> bool:
        return key == "mel" or key in self.TEXT

    def __iter__(self) -> Iterator[str]:
        return iter([*self.TEXT, "mel"])

    def __len__(self) -> int:
        return len(self.TEXT) + 1


def read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
    """The prompts of a JSONL file (audio paths resolved); ConfigError naming the line for anything malformed."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: malformed JSON: {e.msg}") from None
        if not isinstance(rec, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        rid = rec.get("id")
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
            raise ConfigError(f"{where}: needs an 'id' (a string), got {rid!r}")
        rid = str(rid)
        if rid in seen:
            raise ConfigError(f"{where}: duplicate id {rid!r}")
        seen.add(rid)
        row: dict[str, Any] = {"id": rid, "where": where}
        text = rec.get("prompt_text") or rec.get("question")
        if not isinstance(text, str) or not text:
            raise ConfigError(f"{where}: prompt {rid!r} needs a 'question' (or 'prompt_text') string")
        row["question"] = str(rec.get("question") or "")
        if rec.get("prompt_text"):
            row["prompt_text"] = str(rec["prompt_text"])
        choices = rec.get("choices") or []
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise ConfigError(f"{where}: prompt {rid!r}: 'choices' must be a list of strings, got {choices!r}")
        row["choices"] = choices
        if "mel" in rec and "audio_path" in rec:
            raise ConfigError(f"{where}: prompt {rid!r} gives both 'mel' and 'audio_path'; give one")
        if "audio_path" in rec:
            audio_path = pathlib.Path(str(rec["audio_path"]))
            audio_path = audio_path if audio_path.is_absolute() else path.parent / audio_path
            if not audio_path.is_file():
                raise ConfigError(f"{where}: prompt {rid!r}: audio_path {str(audio_path)!r} does not exist")
            row["audio_path"] = audio_path
        if "mel" in rec:
            try:
                mel = np.asarray(rec["mel"], np.float32)
            except (TypeError, ValueError):
                mel = np.zeros(0)
            if mel.ndim != 2 or not mel.shape[0]:
                raise ConfigError(f"{where}: prompt {rid!r}: 'mel' must be a [frames, n_mels] array, got shape "
                                  f"{mel.shape}")
            row["mel"] = mel
        rows.append(row)
    if not rows:
        raise ConfigError(f"{path}: no prompts")
    return rows


def jsonl_items(rows: list[dict[str, Any]], n_mels: int, max_frames: int) -> list[Mapping[str, Any]]:
    """Driver items of :func:`read_jsonl` rows for a model taking ``n_mels``-bin log-mel of ``max_frames``."""
    items: list[Mapping[str, Any]] = []
    for row in rows:
        fields = {k: v for k, v in row.items() if k not in ("where", "audio_path")}
        if "audio_path" in row:
            items.append(AudioFileItem(fields, row["audio_path"], n_mels, max_frames))
            continue
        if "mel" in row and row["mel"].shape[1] != n_mels:
            raise ConfigError(f"{row['where']}: prompt {row['id']!r}: 'mel' has {row['mel'].shape[1]} bins, the "
                              f"model takes {n_mels}")
        items.append(fields)
    return items


def open_records(path: pathlib.Path, split: str) -> Any:
    """The RecordSource of a dataset folder written by ``data_prep.build``."""
    try:
        source = records.RecordSource(prepare.dataset_dir(path), split)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from None
    if not len(source):
        raise ConfigError(f"{path}: split {split!r} holds no records")
    return source


def record_items(source: Any, n_mels: int) -> list[Mapping[str, Any]]:
    """Lazy driver items over the records of ``source``."""
    first = source[0]
    if "mel" in first and np.asarray(first["mel"]).shape[1] != n_mels:
        raise ConfigError(f"{source.dataset_dir}: records hold {np.asarray(first['mel']).shape[1]}-bin log-mel, "
                          f"the model takes {n_mels}")
    return [RecordItem(source, i) for i in range(len(source))]


def load(cfg: Any) -> tuple[Any, Any, Any]:
    """(model, tokenizer, model config) the config names: ``sample.workdir`` or ``model.checkpoint``."""
    workdir, checkpoint = cfg.sample.workdir, cfg.model.get("checkpoint", "")
    if workdir and not (pathlib.Path(workdir) / "checkpoints").is_dir():
        raise ConfigError(f"sample.workdir={workdir!r} holds no checkpoints/ (not a run of python -m cogito_jax.train)")
    if not workdir and not checkpoint:
        raise ConfigError("no model: set model.checkpoint=HF_DIR or sample.workdir=RUN (a run trained with "
                          "this config)")
    if not workdir:
        cp = pathlib.Path(checkpoint)
        if not (cp / "config.json").is_file():
            raise ConfigError(f"model.checkpoint={checkpoint!r} has no config.json")
        if not (cp / "tokenizer.json").is_file() and not (cp / "tokenizer_config.json").is_file():
            raise ConfigError(f"model.checkpoint={checkpoint!r} has no tokenizer")
    try:
        return load_model(checkpoint=checkpoint, workdir=workdir, cfg=cfg,
                          dtype=cfg.model.get("param_dtype", "float32"), compute_dtype=cfg.model.get("dtype"))
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None


def sample(cfg: Any, input_spec: str, out: str, *, split: str = "train", limit: int = 0,
           progress: bool = True) -> dict[str, Any]:
    """Reads the prompts, loads the model and runs the driver; returns its statistics and the output path."""
    import jax

    path = pathlib.Path(input_spec)
    if not path.exists():
        raise ConfigError(f"--input {input_spec!r} does not exist")
    source = open_records(path, split) if path.is_dir() else read_jsonl(path)
    s = cfg.sample
    model, tok, mcfg = load(cfg)
    max_frames, n_mels = mcfg.audio.num_frames, mcfg.audio.num_mel_bins
    items = record_items(source, n_mels) if path.is_dir() else jsonl_items(source, n_mels, max_frames)
    if limit:
        items = items[:limit]
    dcfg = driver.DriverConfig(
        family=mcfg.family, batch_size=s.batch_size, num_samples=s.num_samples, max_new_tokens=s.max_new_tokens,
        temperature=float(s.temperature), top_k=s.top_k, top_p=float(s.top_p), seed=s.seed, max_frames=max_frames,
        n_mels=n_mels, n_window=getattr(mcfg.audio, "n_window", 50), length_buckets=tuple(s.length_buckets),
        system=chat.SYSTEMS[s.system], slots=s.slots, kv_pages=s.kv_pages, page_size=s.page_size,
        steps_per_sync=s.steps_per_sync, max_steps_per_sync=s.max_steps_per_sync,
    )
    try:
        stats = driver.run(items, out, model=model, tokenizer=tok, cfg=dcfg,
                           eos_token_ids=predict.stop_ids(tok), pad_token_id=tok.pad_token_id,
                           process_index=jax.process_index(), process_count=jax.process_count(), progress=progress)
    except driver.PromptError as e:
        hint = " (raise sample.length_buckets)" if "length bucket" in str(e) else ""
        raise ConfigError(f"{e}{hint}") from None
    stats["out"] = str(driver.shard_path(out, jax.process_index(), jax.process_count()))
    return stats


def main(cfg) -> int:
    if not _INPUT.value:
        errors.usage_error("--input is required (a prompts JSONL file or a data_prep dataset folder)")
    if not _OUT.value:
        errors.usage_error("--out is required (the results JSONL)")
    if _LIMIT.value < 0:
        errors.usage_error(f"--limit={_LIMIT.value} must be >= 0")
    sharding.maybe_initialize_distributed(cfg.distributed)
    stats = sample(cfg, _INPUT.value, _OUT.value, split=_SPLIT.value, limit=_LIMIT.value, progress=_PROGRESS.value)
    rate = stats["tokens"] / max(stats["seconds"], 1e-9)
    print(f"sampled {stats['prompts']} prompts x {cfg.sample.num_samples} ({stats['tokens']} tokens, {rate:.0f} "
          f"tokens/s); {stats['skipped_done']} already done; wrote {stats['out']}")
    return 0


if __name__ == "__main__":
    cli.run_main(main, uses_devices=False)

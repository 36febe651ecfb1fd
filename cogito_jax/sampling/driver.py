"""Streams a set of prompts through the generation engine and writes results as JSONL, resumably.

Two engines. ``model=`` runs the continuous-batching engine (:mod:`cogito_jax.sampling.continuous`, the default
everywhere generation happens): every sample's line is appended the moment it finishes, so a killed job loses
only the samples in flight, and a re-run generates exactly the samples its files lack (a sample's tokens depend
on its prompt id and sample index, not on what ran beside it). In a multi-process job process ``p`` takes the
prompts ``p, p + n, ...`` of the input order. ``generate_fn=`` runs a contract-4 ``generate`` over static
batches, as described next (the reference the continuous engine is measured against).

Static batches: prompts are grouped into static shapes so a long job compiles a handful of programs: the batch is
always ``batch_size`` rows (short batches are padded with copies of a real row and their outputs
dropped), prompt lengths are rounded up to a bucket, audio is padded to ``max_frames``. Output lines
are appended as soon as a batch finishes and each prompt's lines are written together, so a crashed
job resumes by skipping the prompt ids already in the file. In a multi-process job every process plans
the batches of all prompts alike (those of a fresh 1-process run, with the same seeds), runs every
``process_count``-th batch and writes its own file, ``<out>.process<i>-of-<n>``; :func:`merge_outputs`
joins them and checks every prompt was done exactly once.

An item is a mapping with ``id``, ``question`` and ``choices`` (the challenge's multiple-choice text; with no
choices the question alone) or ``prompt_text`` (the user text as is), and optionally ``mel`` (float
``[frames, n_mels]``). An item may also give ``n_frames`` beside ``mel``: then ``mel`` is read only when its
batch is built, so a mapping that loads features on access keeps none of them in memory.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cogito_jax import jsonl
from cogito_jax.data import chat
from cogito_jax.errors import ConfigError, check_choice, check_number
from cogito_jax.sampling import continuous

# Prompt lengths batches are left-padded to: one compiled program per bucket, not per prompt length.
LENGTH_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096)


@dataclasses.dataclass(frozen=True)
class DriverConfig:
    family: str
    batch_size: int = 8
    num_samples: int = 1
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    max_frames: int = 3000
    n_mels: int = 128
    n_window: int = 50
    length_buckets: tuple[int, ...] = LENGTH_BUCKETS
    system: str | None = chat.CHALLENGE_SYSTEM
    # the continuous engine (driver.run(model=...)); 0 slots: batch_size * num_samples, 0 pages: the default pool
    slots: int = 0
    kv_pages: int = 0
    page_size: int = 16
    prefill_chunk: int = 128
    steps_per_sync: int = 8
    max_steps_per_sync: int = 0  # decode steps one call may run while a host check would change nothing (0: 4x)
    logprobs: bool = False  # add each sample's token ids and their log-probs to its line

    def slot_config(self) -> continuous.SlotConfig:
        return continuous.SlotConfig(
            slots=self.slots or self.batch_size * self.num_samples, page_size=self.page_size,
            max_context=max(self.length_buckets) + self.max_new_tokens, num_pages=self.kv_pages,
            prefill_chunk=self.prefill_chunk, steps_per_sync=self.steps_per_sync,
            max_steps_per_sync=self.max_steps_per_sync, share_rows=max(1, self.num_samples))


class PromptError(ValueError):
    """A prompt the driver cannot run (longer than every length bucket, features of the wrong width)."""


class LazyMelPrompt(Mapping):
    """A prompt whose ``mel`` (``[frames, n_mels]``) is made only when its batch is built, so a long job never
    holds every clip's features: subclasses give :meth:`load_mel` and :meth:`num_frames`; the other keys
    (``id``, ``question``, ``choices``, ...) come from ``fields``."""

    def __init__(self, fields: Mapping[str, Any]):
        self._fields = dict(fields)

    def load_mel(self) -> np.ndarray:
        raise NotImplementedError

    def num_frames(self) -> int:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        if key == "mel":
            return self.load_mel()
        if key == "n_frames":
            return self.num_frames()
        return self._fields[key]

    def __contains__(self, key: object) -> bool:
        return key in ("mel", "n_frames") or key in self._fields

    def __iter__(self):
        return iter([*self._fields, "mel", "n_frames"])

    def __len__(self) -> int:
        return len(self._fields) + 2


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n; raises if the prompt is longer than every bucket."""
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"prompt of {n} tokens is longer than the largest length bucket {max(buckets)}")


def shard_path(out: str | pathlib.Path, process_index: int, process_count: int) -> pathlib.Path:
    out = pathlib.Path(out)
    return out if process_count == 1 else out.with_name(f"{out.name}.process{process_index}-of-{process_count}")


def resume_file(path: pathlib.Path, num_samples: int) -> set[str]:
    """Keeps only prompts with all ``num_samples`` lines in an existing output (a crash can leave a torn
    or partial tail), rewriting the file atomically if anything was dropped; returns the finished ids. Any line
    but a torn last one that is not a row with an ``id`` raises :class:`~cogito_jax.jsonl.JsonlError` naming it."""
    rows: dict[str, list[dict]] = {}
    found = jsonl.read(path, require=("id",))
    for r in found:
        rows.setdefault(r["id"], []).append(r)
    done = {i for i, v in rows.items() if len(v) == num_samples}
    kept = [r for i in rows if i in done for r in rows[i]]
    if len(kept) != len(found):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(path)
    return done


def prepare_prompt(item: Mapping[str, Any], tokenizer: Any, cfg: DriverConfig) -> dict[str, Any]:
    fmt = chat.chat_format(cfg.family)
    if "mel" in item and item.get("n_frames") is not None:
        n_frames = int(item["n_frames"])
    else:
        mel = item.get("mel")
        n_frames = 0 if mel is None else int(np.asarray(mel).shape[0])
    n_frames = min(n_frames, cfg.max_frames)
    n_audio = chat.num_audio_tokens(cfg.family, n_frames, cfg.n_window) if n_frames else 0
    text = item.get("prompt_text") or (chat.mcq_text(item["question"], item["choices"]) if item.get("choices")
                                       else item["question"])
    ids = chat.encode_prompt(tokenizer, fmt, text, n_audio, cfg.system)
    return {"item": item, "ids": ids, "n_frames": n_frames}


def _batch_arrays(group: list[dict], cfg: DriverConfig, pad_id: int) -> dict[str, np.ndarray]:
    t = bucket_length(max(len(g["ids"]) for g in group), cfg.length_buckets)
    b = cfg.batch_size
    rows = group + [group[0]] * (b - len(group))  # pad the batch with copies; their outputs are dropped
    ids = np.full((b, t), pad_id, np.int32)
    for i, g in enumerate(rows):  # left padding: prompts end where generation starts
        ids[i, t - len(g["ids"]):] = g["ids"]
    out = {"input_ids": ids}
    if any(g["n_frames"] for g in rows):
        feats = np.zeros((b, cfg.n_mels, cfg.max_frames), np.float32)
        fmask = np.zeros((b, cfg.max_frames), np.int32)
        for i, g in enumerate(group):
            n = g["n_frames"]
            if n:
                mel = _checked_mel(g["item"], n, cfg)
                feats[i, :, :n] = mel[:n].T
                fmask[i, :n] = 1
        feats[len(group):], fmask[len(group):] = feats[0], fmask[0]
        out.update(input_features=feats, feature_attention_mask=fmask)
    return out


def run(
    items: Iterable[Mapping[str, Any]],
    out: str | pathlib.Path,
    *,
    generate_fn: Callable[..., Any] | None = None,
    model: Any = None,
    tokenizer: Any,
    cfg: DriverConfig,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    process_index: int = 0,
    process_count: int = 1,
    progress: bool = True,
    done_elsewhere: Collection[str] = (),
) -> dict[str, Any]:
    """Generates ``cfg.num_samples`` continuations for every not-yet-done prompt; returns run statistics.

    Done prompts are those complete in this process's output file and ``done_elsewhere`` (ids finished in
    other files, e.g. by an earlier run with another process count). Batches and their seeds are planned over
    all ``items`` whatever is done, so a resumed run generates what an uninterrupted one would have.

    ``model``: generate with the continuous engine. ``generate_fn(input_ids, input_features=,
    feature_attention_mask=, num_samples=, max_new_tokens=, temperature=, top_k=, top_p=, eos_token_id=,
    pad_token_id=, seed=)`` instead: static batches; it returns int32 ``[B, num_samples, max_new_tokens]``
    (contract 4, with the model bound).
    """
    if (model is None) == (generate_fn is None):
        raise ValueError("give exactly one of model= (continuous batching) or generate_fn= (static batches)")
    if model is not None:
        return _run_continuous(items, out, model=model, tokenizer=tokenizer, cfg=cfg, eos_token_ids=eos_token_ids,
                               process_index=process_index, process_count=process_count, progress=progress,
                               done_elsewhere=done_elsewhere)
    path = shard_path(out, process_index, process_count)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = resume_file(path, cfg.num_samples) | set(done_elsewhere)
    prepared = sorted((prepare_prompt(it, tokenizer, cfg) for it in items), key=lambda g: len(g["ids"]))
    if prepared and len(prepared[-1]["ids"]) > max(cfg.length_buckets):
        g = prepared[-1]
        raise PromptError(f"prompt {g['item']['id']!r} has {len(g['ids'])} tokens, more than the largest length "
                          f"bucket {max(cfg.length_buckets)}")
    # (seed offset, batch): every process plans all prompts the same way and runs every process_count-th batch,
    # so a job makes exactly the batches (and seeds) of one process, fresh or resumed
    batches = [(start, [g for g in prepared[start:start + cfg.batch_size] if g["item"]["id"] not in done])
               for k, start in enumerate(range(0, len(prepared), cfg.batch_size)) if k % process_count == process_index]
    batches = [(start, group) for start, group in batches if group]
    stats = {"prompts": sum(len(g) for _, g in batches), "skipped_done": sum(g["item"]["id"] in done for g in prepared),
             "tokens": 0, "seconds": 0.0}
    bar = tqdm(total=stats["prompts"], desc=f"sampling (process {process_index})", disable=not progress, unit="prompt")
    eos = set(int(e) for e in eos_token_ids)
    t0 = time.time()
    with jsonl.open_append(path) as f:  # a torn last line is cut off first
        for start, group in batches:
            arrays = _batch_arrays(group, cfg, pad_token_id)
            toks = np.asarray(generate_fn(
                arrays["input_ids"], input_features=arrays.get("input_features"),
                feature_attention_mask=arrays.get("feature_attention_mask"), num_samples=cfg.num_samples,
                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                eos_token_id=list(eos), pad_token_id=pad_token_id, seed=cfg.seed + start,
            ))
            lines = []
            for row, g in enumerate(group):
                for s in range(cfg.num_samples):
                    seq = toks[row, s].tolist()
                    end = next((i for i, t in enumerate(seq) if t in eos), None)
                    emitted = seq[: end + 1 if end is not None else len(seq)]
                    stats["tokens"] += len(emitted)
                    lines.append(json.dumps(_line(g["item"]["id"], s, emitted, None, eos, tokenizer, False)))
            f.write("\n".join(lines) + "\n")
            f.flush()
            elapsed = time.time() - t0
            bar.update(len(group))
            bar.set_postfix(tok_per_s=f"{stats['tokens'] / max(elapsed, 1e-9):.0f}")
    bar.close()
    stats["seconds"] = time.time() - t0
    return stats


def _line(prompt_id: str, sample: int, emitted: Sequence[int], logprobs: Sequence[float] | None, eos: Collection[int],
          tokenizer: Any, with_logprobs: bool) -> dict[str, Any]:
    """One output line: the text up to (not including) the end token, split into thinking and answer."""
    ended = bool(emitted) and emitted[-1] in eos
    gen = list(emitted[:-1] if ended else emitted)
    text = tokenizer.decode(gen, skip_special_tokens=False)
    thinking, answer = chat.split_thinking(text)
    row = {"id": prompt_id, "sample": sample, "text": text, "thinking": thinking, "answer": answer,
           "n_tokens": len(gen), "finish_reason": "eos" if ended else "length"}
    if with_logprobs:
        row.update(token_ids=[int(t) for t in emitted], logprobs=[float(x) for x in logprobs])
    return row


def done_samples(path: pathlib.Path) -> dict[str, set[int]]:
    """The samples already in an output file, ``{prompt id: {sample index}}`` (a torn last line is not one; any
    other bad line raises :class:`~cogito_jax.jsonl.JsonlError` naming it)."""
    done: dict[str, set[int]] = {}
    for r in jsonl.read(path, require=("id", "sample")):
        done.setdefault(r["id"], set()).add(int(r["sample"]))
    return done


def _run_continuous(items: Iterable[Mapping[str, Any]], out: str | pathlib.Path, *, model: Any, tokenizer: Any,
                    cfg: DriverConfig, eos_token_ids: Sequence[int], process_index: int, process_count: int,
                    progress: bool, done_elsewhere: Collection[str]) -> dict[str, Any]:
    path = shard_path(out, process_index, process_count)
    path.parent.mkdir(parents=True, exist_ok=True)
    have = done_samples(path)
    elsewhere = set(done_elsewhere)
    scfg = cfg.slot_config()
    eos = tuple(int(e) for e in eos_token_ids)
    requests, skipped = [], 0
    for k, item in enumerate(items):
        if k % process_count != process_index:
            continue
        if item["id"] in elsewhere:
            skipped += 1
            continue
        todo = [s for s in range(cfg.num_samples) if s not in have.get(item["id"], ())]
        if not todo:
            skipped += 1
            continue
        g = prepare_prompt(item, tokenizer, cfg)
        if len(g["ids"]) > max(cfg.length_buckets):
            raise PromptError(f"prompt {item['id']!r} has {len(g['ids'])} tokens, more than the largest length "
                              f"bucket {max(cfg.length_buckets)}")
        n = g["n_frames"]
        if n:
            mel_of = (lambda it=item, n=n: _checked_mel(it, n, cfg))
        requests.append(continuous.Request(
            id=item["id"], ids=g["ids"], samples=todo, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
            top_k=cfg.top_k, top_p=cfg.top_p, stop_ids=eos, mel=mel_of if n else None, n_frames=n))
    total = sum(len(r.samples) for r in requests)
    stats = {"prompts": len(requests), "samples": total, "skipped_done": skipped, "tokens": 0, "seconds": 0.0}
    bar = tqdm(total=total, desc=f"sampling (process {process_index})", disable=not progress, unit="sample")
    engine = continuous.engine_for(model, scfg)
    with jsonl.open_append(path) as f:  # a torn last line is cut off first
        def write(fin: continuous.Finished) -> None:
            jsonl.write_row(f, _line(fin.id, fin.sample, fin.tokens, fin.logprobs, eos, tokenizer, cfg.logprobs))
            bar.update(1)

        def step(s: dict[str, Any]) -> None:
            bar.set_postfix(tok_per_s=f"{s['decode_tokens'] / max(s['seconds'], 1e-9):.0f}",
                            live=f"{s['live']}/{scfg.slots}")

        t0 = time.time()
        engine_stats = engine.run(requests, write, seed=cfg.seed, max_frames=cfg.max_frames, on_step=step)
    bar.close()
    stats.update(tokens=engine_stats["tokens"], seconds=time.time() - t0,
                 engine={k: v for k, v in engine_stats.items() if k != "live"})
    return stats


def _checked_mel(item: Mapping[str, Any], n: int, cfg: DriverConfig) -> np.ndarray:
    mel = np.asarray(item["mel"], np.float32)
    if mel.ndim != 2 or mel.shape[1] != cfg.n_mels or mel.shape[0] < n:
        raise PromptError(f"prompt {item['id']!r}: audio features of shape {mel.shape}, the model takes "
                          f"[frames >= {n}, {cfg.n_mels}]")
    return mel


def merge_outputs(out: str | pathlib.Path, expected_ids: Iterable[str], process_count: int,
                  num_samples: int) -> list[dict[str, Any]]:
    """Joins the per-process files; raises if a prompt is missing, duplicated or has the wrong sample count
    (:class:`~cogito_jax.jsonl.JsonlError` naming the line if a line other than a torn last one is not a row)."""
    rows: dict[str, list[dict]] = {}
    for p in range(process_count):
        shard = shard_path(out, p, process_count)
        for r in jsonl.parse(shard.read_text(), str(shard), require=("id",)):
            rows.setdefault(r["id"], []).append(r)
    expected = list(expected_ids)
    missing = [i for i in expected if i not in rows]
    bad = {i: len(v) for i, v in rows.items() if len(v) != num_samples}
    extra = sorted(set(rows) - set(expected))
    if missing or bad or extra:
        raise ValueError(f"merge of {out}: missing {missing[:5]} ({len(missing)}), wrong sample counts "
                         f"{dict(list(bad.items())[:5])}, unexpected ids {extra[:5]}")
    return [r for i in expected for r in sorted(rows[i], key=lambda r: r["sample"])]


def validate(s: Mapping[str, Any]) -> None:
    """Checks the ``sample`` section (generation settings of ``python -m cogito_jax.sample``)."""
    for key in ("num_samples", "max_new_tokens", "batch_size"):
        if s[key] < 1:
            raise ConfigError(f"sample.{key}={s[key]} must be >= 1")
    if not 0 <= s.seed < 2**32:
        raise ConfigError(f"sample.seed={s.seed} must be in [0, 2**32)")
    check_number("sample.temperature", s.temperature, lambda v: v >= 0, ">= 0 (0 = greedy)")
    if s.top_k < 0:
        raise ConfigError(f"sample.top_k={s.top_k} must be >= 0 (0 = no top-k)")
    check_number("sample.top_p", s.top_p, lambda v: 0 < v <= 1, "in (0, 1]")
    check_choice("sample.system", s.system, tuple(chat.SYSTEMS))
    b = list(s.length_buckets)
    if not b or any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in b) or b != sorted(set(b)):
        raise ConfigError(f"sample.length_buckets={tuple(b)} must be increasing positive integers")
    for key in ("slots", "kv_pages", "max_steps_per_sync"):
        if s[key] < 0:
            raise ConfigError(f"sample.{key}={s[key]} must be >= 0 (0 = the default)")
    for key in ("page_size", "steps_per_sync"):
        if s[key] < 1:
            raise ConfigError(f"sample.{key}={s[key]} must be >= 1")
    if s.max_steps_per_sync and s.max_steps_per_sync < s.steps_per_sync:
        raise ConfigError(f"sample.max_steps_per_sync={s.max_steps_per_sync} must be 0 (4 x steps_per_sync) or >= "
                          f"sample.steps_per_sync={s.steps_per_sync}")
    try:
        DriverConfig(family="", batch_size=s.batch_size, num_samples=s.num_samples, max_new_tokens=s.max_new_tokens,
                     length_buckets=tuple(b), slots=s.slots, kv_pages=s.kv_pages, page_size=s.page_size,
                     steps_per_sync=s.steps_per_sync, max_steps_per_sync=s.max_steps_per_sync).slot_config()
    except ValueError as e:
        raise ConfigError(f"sample.kv_pages={s.kv_pages}: {e}") from e

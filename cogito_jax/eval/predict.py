"""Answer the questions of a records dataset with a model and score them with the MMAR rule.

Prompts come from the records (question + choices, and the log-mel), go through the sampling driver
and engine, and come back as challenge-format predictions (``id``, ``thinking_prediction``,
``answer_prediction``) plus per-item verdicts and accuracy with breakdowns.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from cogito_jax.convert import load_hf
from cogito_jax.data import chat, records, tokenizer as toklib
from cogito_jax.eval import benchmarks, score
from cogito_jax.sampling import driver
from cogito_jax.train import trained


def items_from_records(source: Any, limit: int | None = None, order_seed: int | None = None) -> list[dict]:
    """Driver items from a RecordSource; ``order_seed`` shuffles each item's choices deterministically."""
    n = len(source) if limit is None else min(limit, len(source))
    return [item_from_record(source[i], i, order_seed) for i in range(n)]


def item_from_record(r: dict, i: int = 0, order_seed: int | None = None) -> dict:
    """The driver item of record ``r`` (number ``i`` of its dataset; ``order_seed`` shuffles its choices)."""
    choices = list(r["choices"])
    if order_seed is not None:
        perm = np.random.default_rng([order_seed, i]).permutation(len(choices))
        choices = [choices[j] for j in perm]
    return {"id": r["id"], "question": r["question"], "choices": choices, "mel": r["mel"], "answer": r["answer"],
            "modality": r.get("modality", ""), "category": r.get("category", ""),
            "sub-category": r.get("sub_category", "")}


def load_model(*, checkpoint: str | None = None, workdir: str | None = None, cfg: Any = None,
               dtype: str = "float32", compute_dtype: str | None = None) -> tuple[Any, Any, Any]:
    """(model, tokenizer, model config) from a run trained here (``workdir`` with its config ``cfg``) or an HF
    checkpoint folder holding config.json, safetensors and the tokenizer (parameters in ``dtype``)."""
    if workdir:
        if cfg is None:
            raise ValueError(f"loading the run in {workdir!r} needs its config")
        return trained.load(cfg, workdir)
    if not checkpoint:
        raise ValueError("no model: give an HF checkpoint folder or a trained run's workdir")
    model, mcfg = load_hf(checkpoint, dtype, compute_dtype=compute_dtype)
    return model, toklib.load(checkpoint), mcfg


def stop_ids(tokenizer: Any) -> list[int]:
    """The end-of-turn and end-of-text ids generation stops on (those the tokenizer has)."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (chat.IM_END, "<|endoftext|>")]
    return [i for i in dict.fromkeys(ids) if i is not None and i != tokenizer.unk_token_id]


def predict(model: Any, tokenizer: Any, family: str, items: Sequence[dict], out: str | pathlib.Path, *,
            max_frames: int, n_mels: int, batch_size: int = 16, num_samples: int = 1, max_new_tokens: int = 128,
            temperature: float = 0.0, seed: int = 0, system: str | None = "default",
            progress: bool = True) -> list[dict]:
    """Runs the driver (resumable) and returns its rows (``num_samples`` per item, in item order)."""
    cfg = driver.DriverConfig(family=family, batch_size=batch_size, num_samples=num_samples,
                              max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, max_frames=max_frames,
                              n_mels=n_mels, system=system, length_buckets=(64, 128, 192, 256, 384, 512, 1024))
    driver.run(items, out, model=model, tokenizer=tokenizer, cfg=cfg,
               eos_token_ids=stop_ids(tokenizer),
               pad_token_id=tokenizer.pad_token_id, progress=progress)
    return driver.merge_outputs(out, [it["id"] for it in items], 1, num_samples)


def evaluate_run(cfg: Any, run_dir: str | pathlib.Path, heldout: str | pathlib.Path, out: str | pathlib.Path, *,
                 limit: int = 0, batch_size: int = 32, max_new_tokens: int = 128) -> dict[str, Any]:
    """Greedy MMAR-rule accuracy of the run trained with ``cfg`` in ``run_dir`` on a held-out records dataset
    (its first ``limit`` items; 0 = all), answers in ``out``: ``accuracy``, ``n``, ``ci`` and per ``category``."""
    model, tok, mcfg = trained.load(cfg, run_dir)
    items = items_from_records(records.RecordSource(heldout, "train"), limit=limit or None)
    rows = predict(model, tok, mcfg.family, items, out, max_frames=mcfg.audio.num_frames,
                   n_mels=mcfg.audio.num_mel_bins, batch_size=batch_size, max_new_tokens=max_new_tokens)
    summary = score_predictions(items, rows)
    o = summary["overall"]
    return {"accuracy": o["accuracy"], "n": o["total"], "ci": summary["ci"]["overall"],
            "category": {k: v["accuracy"] for k, v in summary["category"].items()}}


def score_predictions(items: Sequence[dict], rows: Sequence[dict], resamples: int = 1000) -> dict[str, Any]:
    """MMAR-rule accuracy (overall, per modality / category / sub-category, with CIs) of sample 0."""
    summary, _ = score.score(*_scorable(items, rows), benchmarks.get("mmar").rule, resamples, 0)
    return summary


def item_verdicts(items: Sequence[dict], rows: Sequence[dict]) -> list[score.Verdict]:
    """Each item's MMAR-rule verdict on sample 0 (in item order; an item without a row is wrong)."""
    bench_items, preds = _scorable(items, rows)
    return score.verdicts(bench_items, preds, benchmarks.get("mmar").rule, score.DEFAULT_KEYS)


def _scorable(items: Sequence[dict], rows: Sequence[dict]) -> tuple[list[benchmarks.Item], dict[str, dict]]:
    preds = {r["id"]: {"answer_prediction": r["answer"], "thinking_prediction": r["thinking"]}
             for r in rows if r["sample"] == 0}
    bench_items = [benchmarks.Item(id=it["id"], audio_path="", question=it["question"], choices=list(it["choices"]),
                                   answer=it["answer"], modality=it.get("modality", ""),
                                   category=it.get("category", ""), sub_category=it.get("sub-category", ""),
                                   meta={}) for it in items]
    return bench_items, preds

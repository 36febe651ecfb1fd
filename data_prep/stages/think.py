"""The think stage: the thinker answers every question ``think.num_samples`` times, never seeing the key.

The prompt is the challenge's (question, "Select one option from the provided choices:", one choice per line)
with the clip's cached log-mel; the model reasons freely in ``<think>...</think>`` and then answers. Samples
go to ``cache/think_samples.jsonl`` (the driver's resumable output), one line per sample.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from cogito_jax.data import chat
from cogito_jax.errors import ConfigError
from data_prep.stages import generation
from data_prep.stages.cache import mel_path


def check_features(cfg: Any, lm: Any) -> None:
    """Raises ConfigError when the build's log-mel is not what the thinker takes."""
    n = lm.config.audio.num_mel_bins
    if n != cfg.features.n_mels:
        raise ConfigError(f"features.n_mels={cfg.features.n_mels} but think.model={cfg.think.model!r} takes {n}-bin "
                          f"log-mel: set --config.features.n_mels={n}")


def run(items: Sequence[dict], cfg: Any, out: pathlib.Path, lm: Any, audio_rows: Mapping[str, dict]
        ) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """``({question id: its samples (driver rows, by sample)}, stage report)``."""
    t = cfg.think
    check_features(cfg, lm)
    path = out / "cache" / "think_samples.jsonl"
    prompts = [generation.MelItem({"id": it["id"], "question": it["question"], "choices": it["choices"]},
                                  mel_path(out, it["clip_id"]), audio_rows[it["clip_id"]]["n_frames"])
               for it in items]
    samples, before = generation.generate(lm, prompts, path, num_samples=t.num_samples, temperature=t.temperature,
                                          top_p=t.top_p, max_new_tokens=t.max_new_tokens, batch_size=t.batch_size,
                                          seed=cfg.seed, system=chat.SYSTEMS[t.system], who="think.model")
    finish = [r["finish_reason"] for rows in samples.values() for r in rows]
    stats = {"questions": len(items), "samples": len(finish), "generated_this_run": len(set(samples) - before),
             "cut_at_max_new_tokens": finish.count("length")}
    return samples, stats

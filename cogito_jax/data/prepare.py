"""Makes sure a run has its dataset and tokenizer: a dataset written by ``data_prep.build``, or the
synthetic corpus built (once) into the workdir by :func:`cogito_jax.data.synthetic.build_dataset`."""

from __future__ import annotations

import pathlib
from typing import Any

from cogito_jax import audio
from cogito_jax.data import chat, records, synthetic, tokenizer as toklib
from cogito_jax.errors import ConfigError
from cogito_jax.log import logger
from cogito_jax.models import registry


def dataset_dir(root: str | pathlib.Path) -> pathlib.Path:
    """The folder holding ``dataset_info.json`` under ``root`` (as written by ``records.write_dataset``)."""
    root = pathlib.Path(root)
    if (root / "dataset_info.json").exists():
        return root
    found = sorted(root.rglob("dataset_info.json")) if root.exists() else []
    if not found:
        raise ConfigError(f"no dataset (dataset_info.json) under {str(root)!r}")
    return found[0].parent


def tokenizer_texts(source: records.RecordSource, family: str, limit: int = 2000) -> list[str]:
    """Rendered training conversations, to train a small tokenizer that covers the chat template."""
    fmt = chat.chat_format(family)
    texts = []
    for i in range(min(len(source), limit)):
        r = source[i]
        texts.append(fmt.prompt(chat.mcq_text(r["question"], r["choices"]), 1)
                     + fmt.response(r["answer"], r.get("thinking") or None))
    return texts


def ensure_data(cfg: Any, workdir: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """``{"train": dataset dir, "heldout": dataset dir or None, "tokenizer": folder}`` for the run."""
    d = cfg.data
    workdir = pathlib.Path(workdir)
    if d.source == "records":
        if not d.dir:
            raise ConfigError("data.source='records' needs data.dir (a folder written by data_prep.build)")
        train = dataset_dir(d.dir)
        heldout = dataset_dir(d.heldout_dir) if d.get("heldout_dir") else None
    elif d.source == "synthetic":
        root = workdir / "data"
        n_mels, max_seconds = audio_window(cfg)
        train = synthetic.build_dataset(root / "train", d.num_train, seed=d.seed, split="train",
                                        n_mels=n_mels, max_seconds=max_seconds)
        heldout = synthetic.build_dataset(root / "heldout", d.num_heldout, seed=d.seed + 1, split="heldout",
                                          n_mels=n_mels, max_seconds=max_seconds) if d.num_heldout else None
    else:
        raise ConfigError(f"data.source={d.source!r} must be 'synthetic' or 'records'")
    tok = pathlib.Path(d.tokenizer) if d.tokenizer else workdir / "tokenizer"
    if not (tok / "tokenizer.json").exists():
        if d.tokenizer:
            raise ConfigError(f"data.tokenizer={d.tokenizer!r} has no tokenizer.json")
        logger.info("training a %d-token BPE tokenizer on the training conversations", d.vocab_size)
        texts = tokenizer_texts(records.RecordSource(train, "train"), cfg.model.family)
        toklib.train_bpe(texts, vocab_size=d.vocab_size, out_dir=tok)
    return {"train": train, "heldout": heldout, "tokenizer": tok}


def audio_window(cfg: Any) -> tuple[int, float]:
    """(mel bins, seconds) the run's audio encoder takes, for extracting features that fit it."""
    enc = registry.config_for(cfg.model).audio
    return enc.num_mel_bins, enc.num_frames * audio.HOP / audio.SAMPLE_RATE

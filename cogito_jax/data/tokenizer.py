"""Tokenizers: the checkpoint's own (a local HF folder) or a small byte-level BPE trained here.

A trained tokenizer is what tests and the demo use: nothing is fetched from a hub. It carries the
special tokens of every chat format (``<|im_start|>``, audio markers, ``<think>``, ...), each one id.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable

from cogito_jax.data.chat import CHAT_FORMATS


def all_special_tokens() -> list[str]:
    """The union of every family's special tokens, in a fixed order."""
    out: list[str] = []
    for fmt in CHAT_FORMATS.values():
        out += [t for t in fmt.special_tokens if t not in out]
    return out


def train_bpe(texts: Iterable[str], vocab_size: int = 512, out_dir: str | pathlib.Path | None = None):
    """Trains a byte-level BPE on ``texts``; returns a ``PreTrainedTokenizerFast`` (saved if ``out_dir``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = all_special_tokens()
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in specials if t not in ("<|im_end|>", "<|endoftext|>")],
    )
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def load(path: str | pathlib.Path):
    """The tokenizer saved in a local folder (a checkpoint's, or one made by ``train_bpe``)."""
    from transformers import AutoTokenizer

    p = pathlib.Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"tokenizer folder {str(p)!r} does not exist")
    return AutoTokenizer.from_pretrained(str(p), local_files_only=True)

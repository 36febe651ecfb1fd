"""Chat formatting for the audio LMs: Qwen chat template with audio placeholders, loss masks, and
splitting a model's output into thinking and answer.

The prompt text is the one the family's HF processor + chat template produce: one placeholder token
per encoder output frame between the audio begin/end markers. Training examples are tokenised piece
by piece so the loss mask covers exactly the assistant's ``<think>…</think>`` + answer + end token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

CHALLENGE_SYSTEM = "You are a multi-task audio understanding and reasoning model."
# The system prompts a sampling config names: the challenge baseline's, the chat template's own, or none.
SYSTEMS = {"challenge": CHALLENGE_SYSTEM, "default": "default", "none": None}
MCQ_INSTRUCTION = "\nSelect one option from the provided choices:\n"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """The audio markers and layout of one model family's chat template."""

    family: str
    audio_bos: str
    audio_token: str
    audio_eos: str
    audio_prefix: str  # text before the audio markers inside the user turn
    audio_suffix: str  # text between the audio markers and the question
    default_system: str | None

    @property
    def special_tokens(self) -> tuple[str, ...]:
        return (IM_START, IM_END, self.audio_bos, self.audio_token, self.audio_eos, "<|endoftext|>",
                THINK_OPEN, THINK_CLOSE)

    def prompt(self, user_text: str, num_audio_tokens: int = 0, system: str | None = "default") -> str:
        """Everything up to and including the assistant header (what generation starts from)."""
        system = self.default_system if system == "default" else system
        parts = []
        if system:
            parts.append(f"{IM_START}system\n{system}{IM_END}\n")
        audio = ""
        if num_audio_tokens:
            audio = f"{self.audio_prefix}{self.audio_bos}{self.audio_token * num_audio_tokens}{self.audio_eos}"
            audio += self.audio_suffix
        parts.append(f"{IM_START}user\n{audio}{user_text}{IM_END}\n{IM_START}assistant\n")
        return "".join(parts)

    @staticmethod
    def response(answer: str, thinking: str | None = None) -> str:
        """The assistant turn: optional ``<think>`` block, the answer, the end-of-turn token."""
        think = f"{THINK_OPEN}\n{thinking.strip()}\n{THINK_CLOSE}\n\n" if thinking is not None else ""
        return f"{think}{answer}{IM_END}"


CHAT_FORMATS: dict[str, ChatFormat] = {
    "qwen2_audio": ChatFormat(
        family="qwen2_audio", audio_bos="<|audio_bos|>", audio_token="<|AUDIO|>", audio_eos="<|audio_eos|>",
        audio_prefix="Audio 1: ", audio_suffix="\n", default_system="You are a helpful assistant.",
    ),
    "qwen3_omni_thinker": ChatFormat(
        family="qwen3_omni_thinker", audio_bos="<|audio_start|>", audio_token="<|audio_pad|>",
        audio_eos="<|audio_end|>", audio_prefix="", audio_suffix="", default_system=None,
    ),
}


def chat_format(family: str) -> ChatFormat:
    if family not in CHAT_FORMATS:
        raise ValueError(f"no chat format for model family {family!r}; known: {sorted(CHAT_FORMATS)}")
    return CHAT_FORMATS[family]


def _conv_out(n: int) -> int:
    """Length after one kernel-3, stride-2, padding-1 convolution."""
    return (n - 1) // 2 + 1


def num_audio_tokens(family: str, n_frames: int, n_window: int = 50) -> int:
    """Audio placeholder tokens for a clip of ``n_frames`` mel frames (what the HF processor inserts).

    qwen2_audio: one stride-2 conv then stride-2 average pooling. qwen3_omni_thinker: the AuT encoder
    cuts the mel into chunks of ``2 * n_window`` frames, each reduced by three stride-2 convolutions.
    """
    if n_frames < 0:
        raise ValueError(f"n_frames={n_frames} must be >= 0")
    if family == "qwen2_audio":
        return (_conv_out(n_frames) - 2) // 2 + 1
    if family == "qwen3_omni_thinker":
        chunk = 2 * n_window
        per_chunk = _conv_out(_conv_out(_conv_out(chunk)))
        rest = n_frames % chunk
        tail = _conv_out(_conv_out(_conv_out(rest))) if rest else 0
        return (n_frames // chunk) * per_chunk + tail
    raise ValueError(f"no audio token count for model family {family!r}; known: {sorted(CHAT_FORMATS)}")


def mcq_text(question: str, choices: Sequence[str]) -> str:
    """The challenge's baseline user text: question, instruction, one choice per line."""
    return question + MCQ_INSTRUCTION + "\n".join(choices)


def split_thinking(text: str) -> tuple[str, str]:
    """(thinking, answer): split at the last ``</think>``; no ``</think>`` means no thinking."""
    head, sep, tail = text.rpartition(THINK_CLOSE)
    if not sep:
        return "", text.replace(IM_END, "").strip()
    thinking = head.split(THINK_OPEN, 1)[-1] if THINK_OPEN in head else head
    return thinking.strip(), tail.replace(IM_END, "").strip()


def encode_example(
    tokenizer: Any,
    fmt: ChatFormat,
    user_text: str,
    answer: str,
    thinking: str | None = None,
    num_audio_tokens: int = 0,
    system: str | None = "default",
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``[T]`` int32 and a loss mask ``[T]`` (1 on the assistant's tokens, incl. the end token)."""
    prompt_ids = tokenizer.encode(fmt.prompt(user_text, num_audio_tokens, system), add_special_tokens=False)
    answer_ids = tokenizer.encode(fmt.response(answer, thinking), add_special_tokens=False)
    ids = np.asarray(prompt_ids + answer_ids, np.int32)
    mask = np.concatenate([np.zeros(len(prompt_ids), np.int32), np.ones(len(answer_ids), np.int32)])
    return ids, mask


def answer_mask(ids: np.ndarray, loss_mask: np.ndarray, think_close_id: int) -> np.ndarray:
    """1 on the assistant's tokens after its last ``</think>`` (all of them without one), 0 elsewhere."""
    mask = np.asarray(loss_mask) > 0
    closes = np.flatnonzero(mask & (np.asarray(ids) == think_close_id))
    out = mask.copy()
    if closes.size:
        out[: closes[-1] + 1] = False
    return out.astype(np.float32)


def encode_prompt(tokenizer: Any, fmt: ChatFormat, user_text: str, num_audio_tokens: int = 0,
                  system: str | None = "default") -> np.ndarray:
    """Token ids ``[T]`` of the prompt a generation starts from."""
    return np.asarray(tokenizer.encode(fmt.prompt(user_text, num_audio_tokens, system), add_special_tokens=False),
                      np.int32)

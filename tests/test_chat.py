"""Chat template text, loss masks on the assistant turn only, thinking/answer splitting."""

import numpy as np
import pytest

from cogito_jax.data import chat, tokenizer as toklib

CORPUS = ["How many beeps do you hear? Select one option from the provided choices: three beeps",
          "The pitch rises then falls. I count four clicks, so the answer is four clicks."] * 20


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    toklib.train_bpe(CORPUS, vocab_size=300, out_dir=out)
    return toklib.load(out)


def test_qwen2_audio_prompt_matches_hf_template_layout():
    fmt = chat.chat_format("qwen2_audio")
    text = fmt.prompt("Q?", num_audio_tokens=3)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "Audio 1: <|audio_bos|><|AUDIO|><|AUDIO|><|AUDIO|><|audio_eos|>\nQ?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    omni = chat.chat_format("qwen3_omni_thinker").prompt("Q?", 2, system=chat.CHALLENGE_SYSTEM)
    assert omni == (f"<|im_start|>system\n{chat.CHALLENGE_SYSTEM}<|im_end|>\n<|im_start|>user\n"
                    "<|audio_start|><|audio_pad|><|audio_pad|><|audio_end|>Q?<|im_end|>\n<|im_start|>assistant\n")


def test_mcq_text_is_the_challenge_prompt():
    assert chat.mcq_text("What?", ["a b", "c"]) == "What?\nSelect one option from the provided choices:\na b\nc"


def test_special_tokens_are_single_ids(tok):
    for t in toklib.all_special_tokens():
        ids = tok.encode(t, add_special_tokens=False)
        assert len(ids) == 1, (t, ids)


def test_loss_mask_covers_exactly_the_assistant_turn(tok):
    fmt = chat.chat_format("qwen3_omni_thinker")
    ids, mask = chat.encode_example(tok, fmt, "How many beeps?", "three beeps", thinking="I count three.",
                                    num_audio_tokens=5)
    assert ids.dtype == np.int32 and ids.shape == mask.shape
    assert (ids == tok.convert_tokens_to_ids("<|audio_pad|>")).sum() == 5
    n_masked = int(mask.sum())
    assert mask[-n_masked:].all() and not mask[:-n_masked].any()  # one contiguous span at the end
    assert tok.decode(ids[mask == 1]) == "<think>\nI count three.\n</think>\n\nthree beeps<|im_end|>"
    assert tok.decode(ids[mask == 0]).endswith("<|im_start|>assistant\n")


def test_answer_mask_is_the_text_after_the_last_think_close(tok):
    fmt = chat.chat_format("qwen2_audio")
    close = tok.convert_tokens_to_ids(chat.THINK_CLOSE)
    ids, mask = chat.encode_example(tok, fmt, "How many beeps?", "three beeps", thinking="I count three.")
    answer = chat.answer_mask(ids, mask, close)
    assert tok.decode(ids[answer == 1]) == "\n\nthree beeps<|im_end|>"
    ids, mask = chat.encode_example(tok, fmt, "How many beeps?", "three beeps")  # no thinking: all of the turn
    np.testing.assert_array_equal(chat.answer_mask(ids, mask, close), mask.astype(np.float32))


@pytest.mark.parametrize(
    "text, thinking, answer",
    [
        ("<think>\na\n</think>\n\nthree beeps<|im_end|>", "a", "three beeps"),
        ("<think>x</think> mid </think>final", "x</think> mid", "final"),  # split at the LAST </think>
        ("no thinking here", "", "no thinking here"),
        ("reasoning without open tag</think>B", "reasoning without open tag", "B"),
        ("<think>unfinished", "", "<think>unfinished"),
    ],
)
def test_split_thinking(text, thinking, answer):
    assert chat.split_thinking(text) == (thinking, answer)


def test_unknown_family():
    with pytest.raises(ValueError, match="no chat format for model family 'llama'"):
        chat.chat_format("llama")


def test_audio_token_counts_match_hf_processors():
    import torch
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder
    from transformers.models.qwen3_omni_moe import processing_qwen3_omni_moe as omni

    lengths = [1, 2, 3, 99, 100, 101, 150, 199, 200, 777, 3000]
    for n in lengths:
        _, hf = Qwen2AudioEncoder._get_feat_extract_output_lengths(None, torch.tensor(n))
        assert chat.num_audio_tokens("qwen2_audio", n) == int(hf), n
        assert chat.num_audio_tokens("qwen3_omni_thinker", n) == int(omni._get_feat_extract_output_lengths(n)), n

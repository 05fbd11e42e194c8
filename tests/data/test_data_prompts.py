"""Prompt styles: plain, the tokenizer's chat template, and the instruction suffix."""

import pytest

from entropy_rl.data import INSTRUCTION, Problem, format_prompt, load_tokenizer

PROBLEM = Problem("p1", "Compute 2+3.", "5")


def test_plain_with_and_without_instruction():
    assert INSTRUCTION == "Please reason step by step, and put your final answer within \\boxed{}."
    assert format_prompt(PROBLEM, style="plain") == "Compute 2+3.\n" + INSTRUCTION
    assert format_prompt(PROBLEM, style="plain", instruction="") == "Compute 2+3."
    assert format_prompt("raw text", style="plain", instruction="Answer.") == "raw text\nAnswer."


def test_chat_uses_the_tokenizer_template():
    tokenizer = load_tokenizer("builtin")
    assert format_prompt(PROBLEM, tokenizer, style="chat", instruction="") == (
        "<|im_start|>user\nCompute 2+3.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert format_prompt(PROBLEM, tokenizer) == (
        f"<|im_start|>user\nCompute 2+3.\n{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
    )


def test_bad_style_and_missing_tokenizer():
    with pytest.raises(ValueError, match="unknown prompt style"):
        format_prompt(PROBLEM, load_tokenizer("builtin"), style="fancy")
    with pytest.raises(ValueError, match="needs a tokenizer"):
        format_prompt(PROBLEM, style="chat")

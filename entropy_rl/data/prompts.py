"""Prompt formatting: the text a policy is conditioned on for one problem.

Styles: "plain" = the problem (then the instruction on a new line); "chat" = the same text as
one user message in the tokenizer's chat template, ending with the assistant header.
The instruction defaults to the Qwen2.5-Math one; pass `instruction=""` for none, or
`instruction="dapo"` for DAPO-Math-17k's own wrapper (`entropy_rl.data.dapo`).
"""

from __future__ import annotations

from typing import Any

from entropy_rl.data.dapo import dapo_prompt
from entropy_rl.data.problem import Problem

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
STYLES = ("plain", "chat")
# Instructions given by name: the problem inside a dataset's own wrapper.
NAMED_INSTRUCTIONS = {"dapo": dapo_prompt}


def default_instruction(source: str) -> str:
    """The instruction for problems from `source` when none is configured: none for the
    built-in "synthetic" task (its answer format is taught by the warm start, and short
    prompts keep CPU runs fast), `INSTRUCTION` for every other dataset or benchmark."""
    return "" if source == "synthetic" else INSTRUCTION


def format_prompt(
    problem: Problem | str, tokenizer: Any = None, *, style: str = "chat", instruction: str = INSTRUCTION, **template_kwargs: Any
) -> str:
    """The prompt text of `problem`.

    plain: `"{problem}\\n{instruction}"` (just the problem when instruction is ""; the
           problem inside a wrapper when instruction names one of `NAMED_INSTRUCTIONS`).
    chat:  `tokenizer.apply_chat_template([{"role": "user", "content": <plain text>}],
           add_generation_prompt=True, **template_kwargs)` (e.g. `enable_thinking=False`).
    """
    text = problem.problem if isinstance(problem, Problem) else str(problem)
    if instruction in NAMED_INSTRUCTIONS:
        content = NAMED_INSTRUCTIONS[instruction](text)
    else:
        content = f"{text}\n{instruction}" if instruction else text
    if style == "plain":
        return content
    if style == "chat":
        if tokenizer is None:
            raise ValueError("style='chat' needs a tokenizer (its chat template)")
        messages = [{"role": "user", "content": content}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, **template_kwargs)
    raise ValueError(f"unknown prompt style {style!r}; known: {STYLES}")

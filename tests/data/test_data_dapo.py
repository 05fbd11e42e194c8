"""DAPO-Math-17k as published: its wrapper stripped on load (the boxed instruction and the
"math" verifier then apply), or kept by name (`instruction="dapo"`) with the "answer_line"
verifier; repeated problems removed and counted. Prompts use the real Qwen3 tokenizer."""

import json
import pathlib

import pytest

from entropy_rl.data import (DAPO_PREFIX, DAPO_SUFFIX, INSTRUCTION, Problem, deduplicate, format_prompt,
                             load_problems, load_tokenizer, strip_dapo_wrapper)
from entropy_rl.rewards import extract_answer_line, get_verifier

QWEN3_TOKENIZER = pathlib.Path(__file__).parent / "qwen3_tokenizer"
PROBLEM = "If $x + 3 = 37$, what is $x$?"


def _dapo_row(index: int, problem: str = PROBLEM, answer: str = "34") -> dict:
    """A row in the published layout (verl's RL dataset schema)."""
    return {"data_source": "math_dapo", "ability": "MATH",
            "prompt": [{"role": "user", "content": DAPO_PREFIX + problem + DAPO_SUFFIX}],
            "reward_model": {"ground_truth": answer, "style": "rule-lighteval/MATH_v2"},
            "extra_info": {"index": f"dapo-{index}"}}


@pytest.fixture(scope="module")
def qwen3():
    return load_tokenizer(str(QWEN3_TOKENIZER))


@pytest.fixture
def dapo_file(tmp_path):
    path = tmp_path / "dapo-math-17k.jsonl"
    rows = [_dapo_row(0), _dapo_row(1), _dapo_row(2, "Compute $2 + 2$.", "4"), _dapo_row(3)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_loader_strips_the_wrapper_and_keeps_the_answer(dapo_file):
    problems = load_problems(str(dapo_file))
    assert [p.problem for p in problems] == [PROBLEM, PROBLEM, "Compute $2 + 2$.", PROBLEM]
    assert [p.answer for p in problems] == ["34", "34", "4", "34"]
    assert problems[0].source == "math_dapo" and problems[0].id == "dapo-0"


def test_stripped_row_gets_the_boxed_prompt_and_a_boxed_response_is_rewarded(dapo_file, qwen3):
    problem = load_problems(str(dapo_file))[0]
    prompt = format_prompt(problem, qwen3, style="chat", instruction=INSTRUCTION)
    assert "Answer:" not in prompt and "\\boxed{}" in prompt and PROBLEM in prompt
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    followed = "x + 3 = 37, so x = 37 - 3.\nThe answer is \\boxed{34}."
    result = get_verifier("math")([followed, "x = 34\nAnswer: 34"], [problem.answer] * 2, timeout_s=5)
    assert result.rewards.tolist() == [1.0, 0.0]  # the boxed instruction was given: a bare Answer line earns 0


def test_dapo_instruction_by_name_with_the_answer_line_verifier(dapo_file, qwen3):
    problem = load_problems(str(dapo_file))[0]
    prompt = format_prompt(problem, qwen3, style="chat", instruction="dapo")
    user = prompt.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    assert user == DAPO_PREFIX + PROBLEM + DAPO_SUFFIX  # the published content, byte for byte
    followed = "37 - 3 = 34.\nAnswer: 34"
    verdict = get_verifier("answer_line")([followed, "Answer: 35", "no answer line"], ["34"] * 3, timeout_s=5)
    assert verdict.rewards.tolist() == [1.0, 0.0, 0.0]
    assert get_verifier("math")([followed], ["34"], timeout_s=5).rewards.tolist() == [0.0]


@pytest.mark.parametrize("text, answer", [
    ("work\nAnswer: 34", "34"),
    ("Answer: 1\nmore work\nanswer:  $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("Answer: \\boxed{7}", "7"),
    ("**Answer:** 12", "12"),  # markdown bold, as chat models write it
    ("Answer:\n", None),
    ("no line at all", None),
])
def test_extract_answer_line(text, answer):
    assert extract_answer_line(text) == answer


def test_strip_is_exact_about_the_wrapper():
    assert strip_dapo_wrapper(DAPO_PREFIX + PROBLEM + DAPO_SUFFIX) == (PROBLEM, True)
    assert strip_dapo_wrapper("  " + DAPO_PREFIX + PROBLEM + DAPO_SUFFIX + "\n") == (PROBLEM, True)
    assert strip_dapo_wrapper(DAPO_PREFIX + PROBLEM) == (DAPO_PREFIX + PROBLEM, False)
    assert strip_dapo_wrapper(PROBLEM) == (PROBLEM, False)


def test_duplicates_are_removed_and_counted(dapo_file):
    problems, removed = deduplicate(load_problems(str(dapo_file)))
    assert removed == 2
    assert [(p.id, p.problem) for p in problems] == [("dapo-0", PROBLEM), ("dapo-2", "Compute $2 + 2$.")]
    spaced, removed = deduplicate([Problem("a", "x  +\n1", "1"), Problem("b", "x + 1", "1"), Problem("c", "x+1", "1")])
    assert [p.id for p in spaced] == ["a", "c"] and removed == 1

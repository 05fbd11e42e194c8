"""The built-in reasoning-chain task (level lineq2, verifier "chains"): generation, split,
demonstrations, tokenizer coverage and the exact chain verifier."""

import numpy as np
import pytest

from entropy_rl.data import load_tokenizer, synthetic_problems
from entropy_rl.data.synthetic import LEVELS, split_of
from entropy_rl.rewards import get_verifier

VERIFIER = get_verifier("chains")


def _problems(num, seed=0, split="train"):
    return synthetic_problems(num, seed=seed, levels=("lineq2",), split=split)


def _solve(text: str) -> int:
    """Independent solution of `Solve a x+b=c x+d.` by trying every x in 0..100."""
    left, right = text.removeprefix("Solve ").removesuffix(".").split("=")
    (a, b), (c, d) = (map(int, side.split("x+")) for side in (left, right))
    return next(x for x in range(101) if a * x + b == c * x + d)


def test_level_is_registered_after_the_existing_ones():
    assert list(LEVELS).index("lineq2") + 1 == 11


def test_generation_is_deterministic_per_seed():
    first = _problems(300, seed=4)
    assert first == _problems(300, seed=4)
    assert first[:40] == _problems(40, seed=4)
    assert [p.problem for p in first] != [p.problem for p in _problems(300, seed=5)]


def test_held_out_split_is_disjoint():
    train = {p.problem for seed in range(3) for p in _problems(2000, seed=seed)}
    test = {p.problem for p in _problems(400, split="test")}
    assert test and not train & test
    assert all(split_of(text) == "test" for text in test)


def test_every_demonstration_is_a_true_chain_to_the_right_answer():
    problems = _problems(1000) + _problems(200, split="test")
    assert [int(p.answer) for p in problems] == [_solve(p.problem) for p in problems]
    solutions = [p.meta["solution"] for p in problems]
    assert VERIFIER(solutions, [p.answer for p in problems]).rewards.tolist() == [1.0] * len(problems)


def test_every_character_is_in_the_builtin_tokenizer_and_chains_are_long():
    tokenizer = load_tokenizer("builtin")
    problems = _problems(1000)
    texts = [p.problem for p in problems] + [p.meta["solution"] for p in problems]
    assert all(tokenizer.unk_token_id not in tokenizer.encode(text) for text in texts)
    assert all(tokenizer.decode(tokenizer.encode(text)) == text for text in texts)
    lengths = [len(tokenizer.encode(p.meta["solution"])) + 1 for p in problems]  # + eos
    assert 30 <= np.median(lengths) <= 150


CORRECT = "7x-3x=43-15\n4x=28\nx=28/4\nx=7\n\\boxed{7}"


@pytest.mark.parametrize(("response", "reward"), [
    (CORRECT, 1.0),
    ("  " + CORRECT + "\n", 1.0),                                   # surrounding whitespace
    (CORRECT.replace("{7}", "{8}").replace("x=7", "x=8"), 0.0),     # wrong answer, chain broken
    ("9x-5x=40-8\n4x=32\nx=32/4\nx=8\n\\boxed{8}", 0.0),            # true chain, wrong answer
    ("7x-3x=43-15\n4x=29\nx=29/4\nx=7\n\\boxed{7}", 0.0),           # false subtraction, right box
    ("7x-3x=43-15\n5x=28\nx=28/5\nx=7\n\\boxed{7}", 0.0),           # false coefficient
    ("7x-3x=43-15\n4x=28\nx=28/7\nx=7\n\\boxed{7}", 0.0),           # miscopied divisor
    ("7x-3x=43-15\n4x=28\nx=28/4\nx=7\n\\boxed{07}", 0.0),          # leading zero
    ("7x-3x=43-15\n4x=28\nx=28/4\n\\boxed{7}", 0.0),                # a step left out
    ("\\boxed{7}", 0.0),                                            # no chain
    (CORRECT + " so 7", 0.0),                                       # text after the box
    ("7x-3x=43-15\n4x=28\nx=28/4\nx=7\n\\boxed{7", 0.0),            # unclosed box
    ("2x-2x=5-5\n0x=0\nx=0/0\nx=7\n\\boxed{7}", 0.0),               # division by zero
    ("7x-3x=43-15 4x=28 x=28/4 x=7 \\boxed{7}", 0.0),               # steps not on lines
    ("11x-3x=71-15\n8x=56\nx=56/8\nx=7\n\\boxed{7}", 1.0),          # line 1 is not checked against the problem
])
def test_verifier_on_hand_written_chains(response, reward):
    result = VERIFIER([response], ["7"])
    assert result.rewards.tolist() == [reward] and result.num_errors == 0


def test_verifier_counts_a_non_integer_ground_truth_and_checks_lengths():
    result = VERIFIER([CORRECT, CORRECT], ["7", "\\frac{7}{1}"])
    assert result.rewards.tolist() == [1.0, 0.0] and result.num_errors == 1
    with pytest.raises(ValueError, match="2 responses but 1 ground truths"):
        VERIFIER([CORRECT, CORRECT], ["7"])

"""The built-in synthetic task: determinism per seed, disjoint held-out split, short texts."""

import pytest

from entropy_rl.data import DEFAULT_LEVELS, LEVELS, load_tokenizer, synthetic_problems
from entropy_rl.data.synthetic import split_of


def test_deterministic_per_seed_and_prefix_stable():
    first = synthetic_problems(200, seed=7)
    assert first == synthetic_problems(200, seed=7)
    assert first[:50] == synthetic_problems(50, seed=7)
    assert [p.problem for p in first] != [p.problem for p in synthetic_problems(200, seed=8)]
    assert len({p.id for p in first}) == 200


def test_held_out_split_is_disjoint_from_training_problems():
    train = {p.problem for seed in range(3) for p in synthetic_problems(2000, seed=seed, levels=tuple(LEVELS))}
    test = {p.problem for p in synthetic_problems(500, seed=0, levels=tuple(LEVELS), split="test")}
    assert test and not (train & test)
    assert all(split_of(text) == "test" for text in test)


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_levels_answer_ranges_and_solution(level):
    problems = synthetic_problems(200, seed=1, levels=(level,))
    answers = [int(p.answer) for p in problems]
    bounds = {"add1": (0, 18), "add2": (20, 198), "sub2": (0, 89), "mul1": (4, 81), "add3": (200, 1998),
              "linear": (0, 12), "add21": (10, 108), "sub21": (1, 99), "rev3": (111, 999), "max3": (10, 99),
              "lineq2": (0, 12)}
    low, high = bounds[level]
    assert low <= min(answers) and max(answers) <= high
    chain = level == "lineq2"  # its solution writes steps before the box (tests/data/test_data_chains.py)
    assert all(p.meta["level"] == level and p.source == "synthetic" for p in problems)
    assert all(p.meta["solution"].endswith(f"\n\\boxed{{{p.answer}}}") if chain
               else p.meta["solution"] == f"\\boxed{{{p.answer}}}" for p in problems)


def test_level_numbers_are_stable():
    # Configs select levels by 1-based number: new levels may only be appended.
    assert list(LEVELS)[:10] == ["add1", "add2", "sub2", "mul1", "add3", "linear", "add21", "sub21", "rev3", "max3"]


def test_default_levels_are_short_for_the_builtin_tokenizer():
    tokenizer = load_tokenizer("builtin")
    problems = synthetic_problems(500, seed=0, levels=DEFAULT_LEVELS)
    assert {p.meta["level"] for p in problems} == set(DEFAULT_LEVELS)
    assert max(len(tokenizer.encode(p.problem)) for p in problems) <= 24
    assert max(len(tokenizer.encode(p.meta["solution"])) for p in problems) <= 6


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown synthetic levels"):
        synthetic_problems(3, seed=0, levels=("calculus",))
    with pytest.raises(ValueError, match="split"):
        synthetic_problems(3, seed=0, split="valid")

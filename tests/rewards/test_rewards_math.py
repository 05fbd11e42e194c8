"""math_rewards / answers_equivalent on real ground truths (tests/data/verifier_pairs.jsonl:
answers of math500, olympiadbench and minerva with hand-rewritten equivalent and
non-equivalent forms) and on the integer answers of the AIME/AMC layouts."""

import json
import pathlib

import pytest
import numpy as np

from entropy_rl.rewards import (
    RewardResult,
    answers_equivalent,
    answers_equivalent_batch,
    get_verifier,
    math_reward,
    math_rewards,
    register_verifier,
    verifier_names,
)

DATA = pathlib.Path(__file__).parents[1] / "data"
PAIRS = [json.loads(line) for line in (DATA / "verifier_pairs.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_real_pairs_with_text_around_the_answer():
    responses = [f"Let me think. Hence the answer is $\\boxed{{{row['answer']}}}$. Done." for row in PAIRS]
    result = math_rewards(responses, [row["gold"] for row in PAIRS], num_workers=2)
    expected = np.array([row["equivalent"] for row in PAIRS], np.float32)
    wrong = [row for row, got, want in zip(PAIRS, result.rewards, expected) if got != want]
    assert wrong == []
    assert result.rewards.dtype == np.float32 and result.rewards.shape == (len(PAIRS),)
    assert (result.num_errors, result.num_timeouts) == (0, 0)
    assert 30 < expected.sum() < len(PAIRS) - 30  # both kinds well represented


def test_answers_equivalent_on_real_pairs():
    pairs = [(row["gold"], row["answer"]) for row in PAIRS]
    verdicts = answers_equivalent_batch(pairs, num_workers=2)
    assert verdicts.tolist() == [row["equivalent"] for row in PAIRS]
    assert answers_equivalent("\\frac{1}{2}", "0.5") and not answers_equivalent("\\frac{1}{2}", "0.6")


def test_integer_answers_of_the_shared_layouts():
    rows = [json.loads(line) for name in ("aime24", "aime25", "amc23", "amc83", "aime_1983_2023")
            for line in (DATA / "shared_layouts" / f"{name}.jsonl").read_text().splitlines()]
    golds = [row["answer"] for row in rows]
    right = [f"\\boxed{{{int(gold):,}}}" if int(gold) >= 1000 else f"so \\boxed{{{gold}}}" for gold in golds]
    wrong = [f"\\boxed{{{int(gold) + 1}}}" for gold in golds]
    result = math_rewards(right + wrong, golds + golds, num_workers=2)
    assert result.rewards.tolist() == [1.0] * len(golds) + [0.0] * len(golds)


def test_no_box_earns_zero_without_error():
    result = math_rewards(["The answer is 5.", "\\boxed{5"], ["5", "5"])
    assert result.rewards.tolist() == [0.0, 0.0] and result.num_errors == 0


def test_math_reward_single_and_length_mismatch():
    assert math_reward("\\boxed{50\\%}", "\\frac{1}{2}") == 1.0
    assert math_reward("\\boxed{\\{3, 1, 2\\}}", "\\{1,2,3\\}") == 1.0
    try:
        math_rewards(["a"], ["1", "2"])
    except ValueError as error:
        assert "1 responses but 2" in str(error)
    else:
        raise AssertionError("length mismatch accepted")


def test_overlong_answer_is_a_counted_error():
    result = math_rewards(["\\boxed{" + "1+" * 5000 + "1}"], ["10001"])
    assert result.rewards.tolist() == [0.0] and result.num_errors == 1


def test_registry():
    assert {"math", "synthetic"} <= set(verifier_names())
    assert get_verifier("math")(["\\boxed{0.5}"], ["\\frac12"]).rewards.tolist() == [1.0]
    assert get_verifier("math")(["\\boxed{0.5}"], ["\\frac13"], timeout_s=2.0).rewards.tolist() == [0.0]

    @register_verifier("test-always-one")
    def always_one(responses, ground_truths):
        return RewardResult(np.ones(len(responses), np.float32))

    assert get_verifier("test-always-one") is always_one
    try:
        get_verifier("no-such-verifier")
    except KeyError as error:
        assert "math" in str(error)
    else:
        raise AssertionError("unknown verifier accepted")

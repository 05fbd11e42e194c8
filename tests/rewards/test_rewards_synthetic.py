"""The synthetic task's exact verifier against the generator's own arithmetic."""

import numpy as np

from entropy_rl.data import synthetic_problems
from entropy_rl.data.synthetic import LEVELS
from entropy_rl.rewards import get_verifier, parse_integer


def _true_answer(text: str) -> int:
    """Independent solution of a synthetic statement: eval for arithmetic, algebra for a*x+b=c*x+d,
    string reversal, max of a list."""
    verb, expression = text.rstrip(".").split(" ", 1)
    if verb == "Reverse":
        return int(expression[::-1])
    if verb == "Max":
        return max(int(n) for n in expression.removeprefix("of ").split(","))
    if "=" in expression:  # a*x+b=d or a*x+b=c*x+d
        left, right = expression.split("=")
        a, b = left.split("x+")
        c, d = right.split("x+") if "x" in right else ("0", right)
        return (int(d) - int(b)) // (int(a) - int(c))
    return eval(expression)  # noqa: S307 - digits and one operator, generated above


def test_accepts_exactly_the_right_answers():
    problems = synthetic_problems(300, seed=3, levels=tuple(LEVELS))
    verifier = get_verifier("synthetic")
    truths = [p.answer for p in problems]
    assert [int(t) for t in truths] == [_true_answer(p.problem) for p in problems]
    responses, expected = [], []
    for p in problems:
        value = int(p.answer)
        for response, ok in [
            (p.meta["solution"], True),
            (f"thinking... \\boxed{{ {value} }}", True),
            (f"\\boxed{{+{value}}}", True),
            (f"\\boxed{{{value + 1}}}", False),
            (f"\\boxed{{{value}.0}}", False),
            (f"\\boxed{{{value}}}0", True),  # text after the box does not matter
            (f"{value}", False),  # no box
            (f"\\boxed{{x={value}}}", False),
        ]:
            responses.append(response)
            expected.append(ok)
    result = verifier(responses, [t for t in truths for _ in range(8)])
    assert result.rewards.tolist() == np.array(expected, np.float32).tolist()
    assert result.num_errors == 0 and result.num_timeouts == 0


def test_non_integer_ground_truth_is_a_counted_error():
    result = get_verifier("synthetic")(["\\boxed{1}", "\\boxed{2}"], ["\\frac{1}{2}", "2"], timeout_s=1.0)
    assert result.rewards.tolist() == [0.0, 1.0] and result.num_errors == 1


def test_parse_integer():
    assert [parse_integer(s) for s in ["12", " -3 ", "+4", "1.0", "1e3", "", None, "١٢"]] == [12, -3, 4, None, None, None, None, None]

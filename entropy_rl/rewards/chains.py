"""The exact verifier of the built-in reasoning-chain task (verifier "chains").

The task (`entropy_rl.data.chains`) asks `Solve 7x+15=3x+43.` and its responses write the
steps out, one per line, before the boxed answer:

    7x-3x=43-15
    4x=28
    x=28/4
    x=7
    \\boxed{7}

A response earns 1.0 exactly when it has this shape (non-negative integers without leading
zeros, nothing before or after but surrounding whitespace), every step is arithmetically
true (line 2 = line 1 evaluated, line 3 copies line 2, line 4 is an exact division, the box
copies line 4) and the boxed integer equals the ground truth. Anything else, a right answer
after a wrong or malformed step included, earns 0.0.

Line 1 is not compared with the problem: a verifier sees the response and the answer only,
so a chain that miscopies a coefficient yet reaches the right answer (any coefficients when
x = 0) earns 1.0.
"""

from __future__ import annotations

import re
from typing import Sequence


from entropy_rl.rewards.registry import RewardResult, register_verifier
from entropy_rl.rewards.synthetic import integer_rewards

_NUMBER = r"(0|[1-9][0-9]*)"
CHAIN_PATTERN = re.compile(
    rf"{_NUMBER}x-{_NUMBER}x={_NUMBER}-{_NUMBER}\n"  # a x - c x = d - b
    rf"{_NUMBER}x={_NUMBER}\n"                         # k x = m
    rf"x={_NUMBER}/{_NUMBER}\n"                        # x = m / k
    rf"x={_NUMBER}\n"                                  # x = q
    rf"\\boxed\{{{_NUMBER}\}}"                         # \boxed{q}
)


def write_chain(a: int, b: int, c: int, d: int) -> str:
    """The demonstration chain of `a x + b = c x + d` (a > c, (d - b) divisible by a - c)."""
    k, m = a - c, d - b
    return f"{a}x-{c}x={d}-{b}\n{k}x={m}\nx={m}/{k}\nx={m // k}\n\\boxed{{{m // k}}}"


def chain_answer(response: str) -> int | None:
    """The boxed integer of a well-formed chain whose every step is true, else None."""
    match = CHAIN_PATTERN.fullmatch(response.strip())
    if match is None:
        return None
    a, c, d, b, k, m, m_copy, k_copy, q, boxed = map(int, match.groups())
    steps_true = (k == a - c and m == d - b and (m_copy, k_copy) == (m, k) and k > 0
                  and m == q * k and boxed == q)
    return boxed if steps_true else None


@register_verifier("chains")
def chain_rewards(
    responses: Sequence[str], ground_truths: Sequence[str], *, timeout_s: float | None = None
) -> RewardResult:
    """Rewards [N] float32: 1.0 exactly when `responses[i]` is a true chain (`chain_answer`)
    whose boxed integer equals the integer `ground_truths[i]`.

    `timeout_s` is accepted for the common verifier signature and unused (no workers). A
    ground truth that is not an integer gives 0.0 and counts as an error.
    """
    return integer_rewards(responses, ground_truths, chain_answer)

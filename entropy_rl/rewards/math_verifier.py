"""Math rewards: the last `\\boxed{}` answer of a response judged against the ground truth by
math-verify, in worker processes with a deadline per item (see pool.py).

Fast paths that need no worker: a response without a box earns 0.0; an answer whose
normalised string equals the ground truth's earns 1.0; when both are plain integers, their
values decide (math-verify compares integers exactly too).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from entropy_rl.rewards.extract import extract_answer_line, extract_boxed, normalize_answer, parse_integer
from entropy_rl.rewards.pool import ERROR, OK, TIMEOUT, VerifierPool, shared_pool
from entropy_rl.rewards.registry import RewardResult, register_verifier

EQUIVALENCE_CHECK = "entropy_rl.rewards.math_check:math_equivalent"
# Longer extracted answers are rejected (reward 0, one counted error) without parsing:
# no benchmark answer comes close, and parsing megabytes of LaTeX only burns the deadline.
MAX_ANSWER_CHARS = 4096


def _fast_verdict(gold: str, answer: str) -> bool | None:
    """The verdict when strings alone settle it, else None (ask math-verify)."""
    gold_normal, answer_normal = normalize_answer(gold), normalize_answer(answer)
    if gold_normal and gold_normal == answer_normal:
        return True
    gold_integer, answer_integer = parse_integer(gold_normal), parse_integer(answer_normal)
    if gold_integer is not None and answer_integer is not None:
        return gold_integer == answer_integer
    return None


def _judge_pairs(
    pairs: Sequence[tuple[str, str]], *, timeout_s: float, num_workers: int | None, pool: VerifierPool | None = None
) -> RewardResult:
    """Equivalence of (gold, answer) pairs of extracted answers -> RewardResult."""
    rewards = np.zeros(len(pairs), np.float32)
    num_errors = 0
    to_check: list[int] = []
    for index, (gold, answer) in enumerate(pairs):
        if len(answer) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
            num_errors += 1
            continue
        verdict = _fast_verdict(gold, answer)
        if verdict is None:
            to_check.append(index)
        else:
            rewards[index] = float(verdict)
    outcomes = []
    if to_check:
        pool = pool or shared_pool(num_workers)
        outcomes = pool.map(EQUIVALENCE_CHECK, [pairs[i] for i in to_check], timeout_s=timeout_s)
    num_timeouts = 0
    for index, (status, verdict) in zip(to_check, outcomes):
        rewards[index] = float(status == OK and verdict)
        num_errors += status == ERROR
        num_timeouts += status == TIMEOUT
    return RewardResult(rewards, int(num_errors), int(num_timeouts))


def math_rewards(
    responses: Sequence[str],
    ground_truths: Sequence[str],
    *,
    timeout_s: float = 5.0,
    num_workers: int | None = None,
    pool: VerifierPool | None = None,
    extract: Callable[[str], str | None] = extract_boxed,
) -> RewardResult:
    """Rewards [N] float32: 1.0 where the last boxed answer of `responses[i]` (or what
    `extract` takes from it) equals `ground_truths[i]` (an answer string, no `\\boxed`) under
    math-verify, else 0.0.

    Each check is bounded by `timeout_s` (plus a kill grace); checks run in parallel over
    `num_workers` processes of the shared pool (default: all cores), or in `pool` when given.
    Errors and timeouts give 0.0 and are counted.
    """
    if len(responses) != len(ground_truths):
        raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
    answers = [extract(response) for response in responses]
    boxed = [index for index, answer in enumerate(answers) if answer is not None]
    pairs = [(str(ground_truths[i]), answers[i]) for i in boxed]
    judged = _judge_pairs(pairs, timeout_s=timeout_s, num_workers=num_workers, pool=pool)
    rewards = np.zeros(len(responses), np.float32)
    rewards[boxed] = judged.rewards
    return RewardResult(rewards, judged.num_errors, judged.num_timeouts)


def math_reward(response: str, ground_truth: str, *, timeout_s: float = 5.0) -> float:
    """The reward (0.0 or 1.0) of one response; see `math_rewards`."""
    return float(math_rewards([response], [ground_truth], timeout_s=timeout_s).rewards[0])


def answers_equivalent_batch(
    pairs: Sequence[tuple[str, str]], *, timeout_s: float = 5.0, num_workers: int | None = None
) -> np.ndarray:
    """bool [N]: `pairs[i] = (a, b)` are equivalent extracted answers (math-verify with `a` as
    the reference; a timeout or error counts as not equivalent). Parallel over the workers."""
    return _judge_pairs([(str(a), str(b)) for a, b in pairs], timeout_s=timeout_s, num_workers=num_workers).rewards > 0


def answers_equivalent(a: str, b: str, *, timeout_s: float = 5.0) -> bool:
    """True when extracted answers `a` and `b` are equivalent (semantic-entropy clustering)."""
    return bool(answers_equivalent_batch([(a, b)], timeout_s=timeout_s)[0])


@register_verifier("math")
def math_verifier(responses: Sequence[str], ground_truths: Sequence[str], *, timeout_s: float = 5.0) -> RewardResult:
    """The registered "math" verifier: `math_rewards` on the shared pool (all cores)."""
    return math_rewards(responses, ground_truths, timeout_s=timeout_s)


@register_verifier("answer_line")
def answer_line_verifier(responses: Sequence[str], ground_truths: Sequence[str], *, timeout_s: float = 5.0) -> RewardResult:
    """The registered "answer_line" verifier: `math_rewards` on the last `Answer: ...` line
    (`extract_answer_line`), the form DAPO-Math-17k's own instruction asks for."""
    return math_rewards(responses, ground_truths, timeout_s=timeout_s, extract=extract_answer_line)

"""Answer extraction and verifiable rewards.

- `extract_boxed(text)`: the last complete `\\boxed{...}` answer; `extract_answer_line(text)`:
  the last `Answer: ...` line (DAPO's form).
- `math_rewards(responses, ground_truths, timeout_s=5.0)`: math-verify equivalence in worker
  processes with a deadline per item -> `RewardResult` (rewards, num_errors, num_timeouts).
- `answers_equivalent(a, b)`: equivalence of two extracted answers (semantic entropy).
- A verifier registry: `get_verifier("math" | "answer_line" | "synthetic" | "chains")`, `register_verifier(name)`.
"""

from entropy_rl.rewards.chains import chain_rewards
from entropy_rl.rewards.extract import extract_answer_line, extract_boxed, normalize_answer, parse_integer
from entropy_rl.rewards.math_verifier import (
    answer_line_verifier,
    answers_equivalent,
    answers_equivalent_batch,
    math_reward,
    math_rewards,
    math_verifier,
)
from entropy_rl.rewards.pool import VerifierPool, close_all_pools, shared_pool
from entropy_rl.rewards.registry import RewardResult, Verifier, get_verifier, register_verifier, verifier_names
from entropy_rl.rewards.synthetic import synthetic_rewards

__all__ = [
    "RewardResult",
    "answer_line_verifier",
    "Verifier",
    "VerifierPool",
    "answers_equivalent",
    "answers_equivalent_batch",
    "chain_rewards",
    "close_all_pools",
    "extract_answer_line",
    "extract_boxed",
    "get_verifier",
    "math_reward",
    "math_rewards",
    "math_verifier",
    "normalize_answer",
    "parse_integer",
    "register_verifier",
    "shared_pool",
    "synthetic_rewards",
    "verifier_names",
]

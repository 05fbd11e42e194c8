"""Held-out accuracy of a policy during training: `heldout_eval`, `eval_log`, `bootstrap_interval`.

The trainer evaluates before its first step, every eval.every_steps and after its last step
on the same problems with the same PRNG key, so "before" and "after" differ only by the
policy. Sampling and verification go through the per-host data plane
(`entropy_rl.rollout.scoring`): on several hosts each verifies its share and the per-row
results are gathered, so every host returns the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import numpy as np

from entropy_rl.config import DataConfig, EvalConfig, RolloutConfig
from entropy_rl.data import Problem
from entropy_rl.eval.metrics import benchmark_metrics
from entropy_rl.rollout.scoring import gather_scores, score_batch

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000


class HeldoutSettings(Protocol):
    """The sections a held-out evaluation reads (a training config has them): `eval` (samples,
    temperature, top-p, length), `rollout` (the rest of the sampling) and `data` (the verifier
    and its timeout)."""

    eval: EvalConfig
    rollout: RolloutConfig
    data: DataConfig


def bootstrap_interval(per_problem: np.ndarray, *, seed: int = 0, paired_with: np.ndarray | None = None
                       ) -> tuple[float, float]:
    """95% percentile bootstrap interval over problems of mean(per_problem) (or of the mean
    paired difference per_problem - paired_with)."""
    values = per_problem if paired_with is None else per_problem - paired_with
    rng = np.random.default_rng(seed)
    resamples = values[rng.integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    return float(np.percentile(resamples, tail)), float(np.percentile(resamples, 100 - tail))


def heldout_eval(model, tokenizer, problems: Sequence[Problem], encode: Callable[[Problem], list[int]],
                 key: jax.Array, *, config: HeldoutSettings, mesh: jax.sharding.Mesh | None) -> dict[str, Any]:
    """Held-out accuracy: eval.n samples per problem at eval.temperature, prompts encoded as
    in training. {"accuracy", "ci" (95% bootstrap over problems), "per_problem", "scores"
    (avg@k / pass@k), "num_problems", "distinct_problems", "n", "temperature",
    "response_length"}."""
    e = config.eval
    sampling = config.rollout.sampling_config(stop_token_ids=tokenizer.stop_token_ids, pad_token_id=tokenizer.pad_token_id,
                                              temperature=e.temperature, top_p=e.top_p, n=e.n,
                                              max_new_tokens=e.max_new_tokens or config.rollout.max_new_tokens)
    scored = score_batch(model, problems, encode, tokenizer, sampling, key, verifier=config.data.verifier,
                         timeout_s=config.data.reward_timeout_s, mesh=mesh)
    gathered = gather_scores(scored, mesh)
    correct = gathered.rewards.reshape(len(problems), e.n)
    per_problem = correct.mean(axis=1)
    return {"accuracy": float(per_problem.mean()), "ci": bootstrap_interval(per_problem),
            "scores": benchmark_metrics(correct.astype(int).tolist()),
            "per_problem": per_problem.tolist(), "num_problems": len(problems), "n": e.n,
            "distinct_problems": len({p.problem for p in problems}),
            "temperature": e.temperature, "response_length": float(gathered.lengths.mean())}


def eval_log(result: dict[str, Any], benchmark: str) -> dict[str, float]:
    """`eval/accuracy` and `eval/<benchmark>/{accuracy, avg@k, pass@k}` of a `heldout_eval`."""
    scores = {f"eval/{benchmark}/{key}": value for key, value in result["scores"].items()
              if "@" in key or key == "accuracy"}
    return {"eval/accuracy": result["accuracy"], **scores}

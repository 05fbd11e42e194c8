"""`score_batch`: the per-host data plane, encode -> generate -> decode -> verify.

One pipeline for everything that samples and checks responses (the trainer's rollouts,
held-out evaluation, the semantic-entropy ranking). Given the GLOBAL list of a batch's
problems (the same on every host, e.g. from a deterministic data iterator), each JAX process

    takes its share:  problems[host_share(len(problems))]   (a problem's n samples stay together)
    encodes:          only its own prompts
    generates:        one global batch over the mesh (every host's rows), reading back its rows
    decodes/verifies: only its own rows

so host work (tokenizing, detokenizing, verification) is split, not repeated. Row r of the
batch (problem r // n) draws from fold_in(key, r) whatever the number of processes, so the
samples are those of one process given every problem. `gather_scores` makes the small
per-row results (rewards, answers, lengths) global when a caller needs all of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import numpy as np

from entropy_rl.data import Problem
from entropy_rl.parallel.hosts import allgather_rows, allgather_strings, host_share
from entropy_rl.rewards import extract_answer_line, extract_boxed, get_verifier
from entropy_rl.rollout.config import SamplingConfig
from entropy_rl.rollout.result import Rollout
from entropy_rl.rollout.sampler import generate


@dataclasses.dataclass(frozen=True)
class ScoredBatch:
    """This host's rows of a sampled and verified batch (host numpy).

    problems: the global indices of this host's problems (a slice of the batch's list);
    rollout: their n samples each, row i answering problem problems.start + i // n;
    responses: [rows] decoded texts (special tokens left out); answers: [rows] the
    extracted \\boxed{} answers (None = none); rewards: float32 [rows], the verifier's
    reward (1.0 = correct); verifier_failures: checks that raised or timed out (reward 0).
    """

    problems: slice
    rollout: Rollout
    responses: list[str]
    answers: list[str | None]
    rewards: np.ndarray
    verifier_failures: int


def decode_responses(rollout: Rollout, tokenizer) -> list[str]:
    """Response texts of a rollout, [N] strings, special tokens (the stop token) left out."""
    return [tokenizer.decode(row[:int(length)], skip_special_tokens=True)
            for row, length in zip(rollout.tokens, rollout.lengths)]


def score_batch(model, problems: Sequence[Problem], encode: Callable[[Problem], list[int]], tokenizer,
                sampling: SamplingConfig, key: jax.Array, *, verifier: str, timeout_s: float | None = None,
                mesh: jax.sharding.Mesh | None = None, progress: bool = False) -> ScoredBatch:
    """Sample sampling.n responses per problem and verify this host's rows (see the module doc).

    problems: the batch's global list (the same on every process); encode: problem -> prompt
    token ids; verifier: a registered verifier's name, called with timeout_s when given.
    Every process must call it (the generation is one global computation).
    """
    share = host_share(len(problems), mesh)
    mine = problems[share]
    rollout = generate(model, [encode(p) for p in mine], sampling, key, mesh=mesh, progress=progress)
    responses = decode_responses(rollout, tokenizer)
    truths = [p.answer for p in mine for _ in range(sampling.n)]
    check = get_verifier(verifier)
    verdict = check(responses, truths) if timeout_s is None else check(responses, truths, timeout_s=timeout_s)
    extract = extract_answer_line if verifier == "answer_line" else extract_boxed  # the form the verifier reads
    return ScoredBatch(share, rollout, responses, [extract(r) for r in responses],
                       np.asarray(verdict.rewards, np.float32), verdict.num_errors + verdict.num_timeouts)


@dataclasses.dataclass(frozen=True)
class GatheredScores:
    """Every host's per-row results of a `ScoredBatch`, in the batch's row order (global).

    rewards: float32 [N]; answers: [N]; lengths: int32 [N]; stopped: bool [N];
    verifier_failures: the sum over hosts.
    """

    rewards: np.ndarray
    answers: list[str | None]
    lengths: np.ndarray
    stopped: np.ndarray
    verifier_failures: int


def gather_scores(scored: ScoredBatch, mesh: jax.sharding.Mesh | None) -> GatheredScores:
    """The small per-row results of every host (a few small allgathers; none on one process)."""
    failures = allgather_rows(np.asarray([scored.verifier_failures], np.int64), mesh)
    return GatheredScores(rewards=allgather_rows(scored.rewards, mesh),
                          answers=allgather_strings(scored.answers, mesh),
                          lengths=allgather_rows(scored.rollout.lengths, mesh),
                          stopped=allgather_rows(scored.rollout.stopped, mesh),
                          verifier_failures=int(failures.sum()))

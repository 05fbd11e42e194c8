"""Answer clustering and semantic entropy (SENT's difficulty signal).

For one prompt, K sampled responses are reduced to their final answers (``\\boxed{...}``),
answers that are mathematically equivalent are put in one cluster, and

    SE = - sum_k p_k log p_k

over the clusters k. Discrete SE uses p_k = |cluster k| / K, so K identical answers give 0
and K pairwise different answers give log K. The likelihood-weighted variant uses the
sequence probabilities: p_k = sum_{i in k} exp(logp_i) / sum_i exp(logp_i).

Clustering is union-find over pairwise equivalence: answers whose normalised strings are
identical are merged without calling the verifier; other pairs go through
``entropy_rl.rewards.answers_equivalent`` (math-verify), cached across calls. A response
with no extractable answer is a cluster of its own (it agrees with nothing, not even
another missing answer).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from entropy_rl.rewards import answers_equivalent, extract_boxed

# Pairwise verifier results are kept across calls: the online metric sees the same small
# set of answers (e.g. "12", "\\frac{1}{2}") step after step.
_EQUIVALENCE_CACHE_SIZE = 1 << 16


def normalize_answer(answer: str) -> str:
    """Cheap canonical form used for the fast path: no whitespace, no ``$``, no ``\\left``/``\\right``."""
    text = "".join(answer.split()).strip("$")
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\displaystyle"):
        text = text.replace(token, "")
    return text.rstrip(".")


@functools.lru_cache(maxsize=_EQUIVALENCE_CACHE_SIZE)
def _equivalent_sorted(first: str, second: str, timeout_s: float) -> bool:
    return bool(answers_equivalent(first, second, timeout_s=timeout_s))


def cached_answers_equivalent(a: str, b: str, *, timeout_s: float = 5.0) -> bool:
    """Symmetric, cached ``answers_equivalent``; identical normalised strings short-cut to True."""
    a, b = normalize_answer(a), normalize_answer(b)
    if a == b:
        return True
    first, second = sorted((a, b))
    return _equivalent_sorted(first, second, timeout_s)


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


def cluster_extracted_answers(
    answers: Sequence[str | None], *, exact_match_only: bool = False, timeout_s: float = 5.0
) -> list[int]:
    """Cluster ids (0, 1, ... in order of first appearance) for already-extracted answers.

    ``None`` (no answer) is always a singleton. Identical normalised strings are merged
    first; then one representative per distinct string is compared pairwise (skipping pairs
    already joined) with the cached verifier, unless ``exact_match_only``.
    """
    parent = list(range(len(answers)))
    first_index: dict[str, int] = {}
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        key = normalize_answer(answer)
        if key in first_index:
            parent[i] = first_index[key]
        else:
            first_index[key] = i
    if not exact_match_only:
        representatives = list(first_index.values())
        for pos, i in enumerate(representatives):
            for j in representatives[:pos]:
                root_i, root_j = _find(parent, i), _find(parent, j)
                if root_i != root_j and cached_answers_equivalent(answers[i], answers[j], timeout_s=timeout_s):
                    parent[max(root_i, root_j)] = min(root_i, root_j)
    roots = [_find(parent, i) for i in range(len(answers))]
    relabel: dict[int, int] = {}
    return [relabel.setdefault(root, len(relabel)) for root in roots]


def cluster_answers(responses: Sequence[str], *, exact_match_only: bool = False, timeout_s: float = 5.0) -> list[int]:
    """Cluster ids for full response texts: extract each ``\\boxed{}`` answer, then cluster.

    Example: ["... \\boxed{1/2}", "... \\boxed{0.5}", "no answer", "\\boxed{3}"] -> [0, 0, 1, 2].
    """
    answers = [extract_boxed(response) for response in responses]
    return cluster_extracted_answers(answers, exact_match_only=exact_match_only, timeout_s=timeout_s)


def cluster_entropy(cluster_ids: Sequence[int], *, sequence_logprobs: Sequence[float] | np.ndarray | None = None) -> float:
    """Entropy (nats) of the cluster distribution.

    cluster_ids: [K] ints. Without log-probs p_k = count_k / K; with ``sequence_logprobs`` [K]
    (sum of token log-probs of each response) p_k = softmax over clusters of
    logsumexp_{i in k} logp_i, i.e. proportional to the summed sequence probabilities.
    """
    ids = np.asarray(cluster_ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"cluster_ids must be a non-empty 1-D sequence, got shape {ids.shape}")
    if sequence_logprobs is None:
        probs = np.bincount(ids) / ids.size
    else:
        logp = np.asarray(sequence_logprobs, dtype=np.float64)
        if logp.shape != ids.shape:
            raise ValueError(f"sequence_logprobs shape {logp.shape} != cluster_ids shape {ids.shape}")
        weights = np.exp(logp - logp.max())  # rescaling cancels in the normalisation
        probs = np.bincount(ids, weights=weights)
        probs = probs / probs.sum()
    probs = probs[probs > 0]
    return float(-(probs * np.log(probs)).sum())


def semantic_entropy(
    responses: Sequence[str],
    *,
    sequence_logprobs: Sequence[float] | np.ndarray | None = None,
    exact_match_only: bool = False,
    timeout_s: float = 5.0,
) -> float:
    """Semantic entropy (nats) of K responses to one prompt; see the module docstring."""
    ids = cluster_answers(responses, exact_match_only=exact_match_only, timeout_s=timeout_s)
    return cluster_entropy(ids, sequence_logprobs=sequence_logprobs)


def group_semantic_entropy(
    answers_per_group: Sequence[Sequence[str | None]], *, exact_match_only: bool = False, timeout_s: float = 5.0
) -> np.ndarray:
    """Discrete semantic entropy of each GRPO group: the online metric, free from rollouts.

    answers_per_group: G groups, each the extracted answers (``None`` = no answer) of the n
    samples of one prompt. Returns float32 [G]. Verifier calls are cached across steps;
    ``exact_match_only`` skips them entirely (normalised string equality only).
    """
    return np.asarray(
        [
            cluster_entropy(cluster_extracted_answers(group, exact_match_only=exact_match_only, timeout_s=timeout_s))
            for group in answers_per_group
        ],
        dtype=np.float32,
    )

"""Answer clustering and semantic entropy (SENT's difficulty signal).

For one prompt, K sampled responses are reduced to their final answers (``\\boxed{...}``),
answers that are mathematically equivalent are put in one cluster, and

    SE = - sum_k p_k log p_k

over the clusters k. Discrete SE uses p_k = |cluster k| / K, so K identical answers give 0
and K pairwise different answers give log K. The likelihood-weighted variant uses the
sequence probabilities: p_k = sum_{i in k} exp(logp_i) / sum_i exp(logp_i).

Clustering is union-find over pairwise equivalence. Answers with the same normalised string
(``rewards.normalize_answer``) are merged without a verifier call; every remaining pair of
distinct strings within a group is checked by math-verify
(``rewards.answers_equivalent_batch``: all groups' pairs in one parallel call), and verdicts
are cached across calls (the online metric sees the same few answers step after step). A
response with no extractable (or an empty) answer is a cluster of its own: it agrees with
nothing, not even another missing answer.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from entropy_rl.rewards import answers_equivalent_batch, extract_boxed, normalize_answer

# (normalised a, normalised b) with a < b -> verdict. Bounded: cleared when full.
_EQUIVALENCE_CACHE: dict[tuple[str, str], bool] = {}
_EQUIVALENCE_CACHE_SIZE = 1 << 18


def clear_equivalence_cache() -> None:
    """Forget every cached verifier verdict."""
    _EQUIVALENCE_CACHE.clear()


def _check_pairs(pairs: dict[tuple[str, str], tuple[str, str]], timeout_s: float) -> None:
    """Fill the cache for normalised-key pairs; ``pairs`` maps a key pair to raw answers to verify."""
    unknown = [key for key in pairs if key not in _EQUIVALENCE_CACHE]
    if not unknown:
        return
    verdicts = answers_equivalent_batch([pairs[key] for key in unknown], timeout_s=timeout_s)
    if len(_EQUIVALENCE_CACHE) + len(unknown) > _EQUIVALENCE_CACHE_SIZE:
        _EQUIVALENCE_CACHE.clear()
    _EQUIVALENCE_CACHE.update(zip(unknown, (bool(v) for v in verdicts)))


def _representatives(answers: Sequence[str | None]) -> dict[str, str]:
    """Normalised key -> first raw answer with that key (missing and empty answers left out)."""
    firsts: dict[str, str] = {}
    for answer in answers:
        key = normalize_answer(answer) if answer is not None else ""
        if key:
            firsts.setdefault(key, answer)
    return firsts


def _union_find_ids(answers: Sequence[str | None], equivalent: dict[tuple[str, str], bool]) -> list[int]:
    """Cluster ids (0, 1, ... by first appearance) from the key-pair verdicts ``equivalent``."""
    keys = [normalize_answer(a) if a is not None else "" for a in answers]
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    first_with_key: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key:
            parent[i] = first_with_key.setdefault(key, i)
    for (key_a, index_a), (key_b, index_b) in itertools.combinations(first_with_key.items(), 2):
        if equivalent.get(tuple(sorted((key_a, key_b))), False):
            root_a, root_b = find(index_a), find(index_b)
            parent[max(root_a, root_b)] = min(root_a, root_b)
    relabel: dict[int, int] = {}
    return [relabel.setdefault(find(i), len(relabel)) for i in range(len(keys))]


def cluster_answer_groups(
    answers_per_group: Sequence[Sequence[str | None]], *, exact_match_only: bool = False, timeout_s: float = 5.0
) -> list[list[int]]:
    """Cluster ids of each group of extracted answers (``None`` = no answer).

    All groups' verifier checks go out in one parallel batch; ``exact_match_only`` skips the
    verifier (normalised string equality only).
    """
    if not exact_match_only:
        pairs: dict[tuple[str, str], tuple[str, str]] = {}
        for group in answers_per_group:
            for (key_a, raw_a), (key_b, raw_b) in itertools.combinations(sorted(_representatives(group).items()), 2):
                pairs.setdefault((key_a, key_b), (raw_a, raw_b))
        _check_pairs(pairs, timeout_s)
    verdicts = {} if exact_match_only else _EQUIVALENCE_CACHE
    return [_union_find_ids(group, verdicts) for group in answers_per_group]


def cluster_answers(responses: Sequence[str], *, exact_match_only: bool = False, timeout_s: float = 5.0) -> list[int]:
    """Cluster ids for full response texts: extract each ``\\boxed{}`` answer, then cluster.

    Example: ["... \\boxed{1/2}", "... \\boxed{0.5}", "no answer", "\\boxed{3}"] -> [0, 0, 1, 2].
    """
    answers = [extract_boxed(response) for response in responses]
    return cluster_answer_groups([answers], exact_match_only=exact_match_only, timeout_s=timeout_s)[0]


def cluster_entropy(cluster_ids: Sequence[int], *, sequence_logprobs: Sequence[float] | np.ndarray | None = None) -> float:
    """Entropy (nats) of the cluster distribution.

    cluster_ids: [K] ints. Without log-probs p_k = count_k / K; with ``sequence_logprobs`` [K]
    (sum of token log-probs of each response) p_k = sum_{i in k} exp(logp_i) / sum_i exp(logp_i),
    computed after subtracting max_i logp_i so long sequences do not underflow.
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
        probs = np.bincount(ids, weights=np.exp(logp - logp.max()))
        probs = probs / probs.sum()
    probs = probs[probs > 0]
    return max(0.0, float(-(probs * np.log(probs)).sum()))  # one cluster: 0.0, not -0.0


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
    samples of one prompt. Returns float32 [G]. One batched, cached verifier call for all
    groups; ``exact_match_only`` makes no verifier call at all.
    """
    clusters = cluster_answer_groups(answers_per_group, exact_match_only=exact_match_only, timeout_s=timeout_s)
    return np.asarray([cluster_entropy(ids) for ids in clusters], dtype=np.float32)

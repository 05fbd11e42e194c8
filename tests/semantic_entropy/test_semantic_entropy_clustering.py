"""Clustering and semantic entropy on hand-made groups, checked against hand-derived values."""

import math

import numpy as np
import pytest

from entropy_rl import semantic_entropy as se


def boxed(answer: str) -> str:
    return f"Some reasoning. The answer is \\boxed{{{answer}}}."


def test_all_equal_answers_have_zero_entropy():
    responses = [boxed("42")] * 8
    assert se.cluster_answers(responses) == [0] * 8
    assert se.semantic_entropy(responses) == 0.0
    assert str(se.semantic_entropy(responses)) == "0.0"  # not -0.0 in the ranking file


def test_all_different_answers_have_log_k_entropy():
    responses = [boxed(str(i)) for i in range(8)]
    assert se.cluster_answers(responses) == list(range(8))
    assert se.semantic_entropy(responses) == pytest.approx(math.log(8))


def test_equivalent_forms_share_a_cluster():
    responses = [boxed("1/2"), boxed("0.5"), boxed("\\frac{1}{2}"), boxed("3"), boxed(" 3 ")]
    assert se.cluster_answers(responses) == [0, 0, 0, 1, 1]
    expected = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4))
    assert se.semantic_entropy(responses) == pytest.approx(expected)


def test_missing_answers_are_singletons():
    responses = ["no answer here", boxed("7"), "still nothing", boxed("7")]
    assert se.cluster_answers(responses) == [0, 1, 2, 1]
    expected = -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))
    assert se.semantic_entropy(responses) == pytest.approx(expected)


def test_likelihood_weighting_by_hand():
    responses = [boxed("2"), boxed("2.0"), boxed("5")]
    logprobs = np.log([0.2, 0.3, 0.1])
    # p = (0.2 + 0.3, 0.1) / 0.6
    p = np.array([0.5, 0.1]) / 0.6
    expected = float(-(p * np.log(p)).sum())
    assert se.semantic_entropy(responses, sequence_logprobs=logprobs) == pytest.approx(expected)
    # very negative log-probs (long sequences) must not underflow to 0/0
    assert se.semantic_entropy(responses, sequence_logprobs=logprobs - 5000.0) == pytest.approx(expected)


def test_cluster_entropy_rejects_mismatched_logprobs():
    with pytest.raises(ValueError, match="shape"):
        se.cluster_entropy([0, 1], sequence_logprobs=[0.0])


def test_verifier_is_not_called_for_identical_strings_and_is_cached(monkeypatch):
    calls = []

    def counting(pairs, *, timeout_s):
        calls.extend(pairs)
        return np.array([set(pair) == {"1/2", "0.5"} for pair in pairs])

    monkeypatch.setattr(se, "answers_equivalent_batch", counting)
    se.clear_equivalence_cache()
    answers = ["0.5", "1/2", "0.5", " 0.5", "1/2", None, None, "", "$0.5$"]
    assert se.cluster_answer_groups([answers]) == [[0, 0, 0, 0, 0, 1, 2, 3, 0]]
    assert len(calls) == 1  # one pair of distinct normalised strings
    se.cluster_answer_groups([["1/2", "0.5"], ["0.5", "1/2"]])
    assert len(calls) == 1  # cached, symmetric
    se.clear_equivalence_cache()


def test_group_semantic_entropy_matches_per_group_entropy():
    groups = [["4"] * 4, ["1", "2", "3", "4"], ["0.5", "1/2", None, "9"]]
    values = se.group_semantic_entropy(groups)
    assert values.dtype == np.float32 and values.shape == (3,)
    expected = [0.0, math.log(4), -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))]
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    # string-only clustering does not merge 0.5 and 1/2
    exact = se.group_semantic_entropy(groups, exact_match_only=True)
    np.testing.assert_allclose(exact[2], math.log(4), rtol=1e-6)

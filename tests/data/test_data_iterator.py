"""PromptIterator: epochs are permutations fixed by (seed, epoch); a restored state resumes
exactly where the uninterrupted run would be."""

import json

import numpy as np
import pytest

from entropy_rl.data import PromptIterator, synthetic_problems

PROBLEMS = synthetic_problems(23, seed=0)


def _ids(batches):
    return [[p.id for p in batch] for batch in batches]


@pytest.mark.parametrize("stop_after", [0, 1, 4, 5, 11])
def test_exact_resume_through_json(stop_after):
    reference = PromptIterator(PROBLEMS, 5, seed=3)
    expected = _ids(reference.next_batch() for _ in range(15))
    interrupted = PromptIterator(PROBLEMS, 5, seed=3)
    seen = _ids(interrupted.next_batch() for _ in range(stop_after))
    state = json.loads(json.dumps(interrupted.state_dict()))
    resumed = PromptIterator(PROBLEMS, 5, seed=3)
    resumed.load_state_dict(state)
    assert seen + _ids(resumed.next_batch() for _ in range(15 - stop_after)) == expected


def test_epochs_are_seeded_permutations():
    iterator = PromptIterator(PROBLEMS, 23, seed=9)
    index = {p.id: i for i, p in enumerate(PROBLEMS)}
    for epoch in range(3):
        order = [index[p.id] for p in iterator.next_batch()]
        assert order == np.random.default_rng([9, epoch]).permutation(23).tolist()
    assert iterator.state_dict()["epoch"] == 2


def test_batches_cross_epoch_boundaries_and_unshuffled_order():
    iterator = PromptIterator(PROBLEMS[:3], 2, seed=0, shuffle=False)
    assert _ids(iterator.next_batch() for _ in range(3)) == _ids([PROBLEMS[0:2], [PROBLEMS[2], PROBLEMS[0]], PROBLEMS[1:3]])
    big = PromptIterator(PROBLEMS[:3], 7, seed=0)
    assert sorted(p.id for p in next(iter(big))[:3]) == sorted(p.id for p in PROBLEMS[:3])


def test_state_of_other_problems_is_refused():
    state = PromptIterator(PROBLEMS, 4, seed=0).state_dict()
    with pytest.raises(ValueError, match="other problems"):
        PromptIterator(PROBLEMS[:-1], 4, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="other problems"):
        PromptIterator(synthetic_problems(23, seed=1), 4, seed=0).load_state_dict(state)
    with pytest.raises(ValueError):
        PromptIterator([], 4, seed=0)

"""The semantic-entropy curriculum sampler: stage order, epoch coverage, exact resume."""

import json
import math

import numpy as np
import pytest

from entropy_rl.data import Problem
from entropy_rl.data.curriculum import CurriculumIterator, read_ranking


def make_problems(num: int) -> list[Problem]:
    return [Problem(id=f"p{i}", problem=f"q{i}", answer=str(i), source="test", meta={}) for i in range(num)]


def write_ranking(path, entropies: dict[str, float]) -> None:
    with open(path, "w") as file:
        for problem_id, value in entropies.items():
            file.write(json.dumps({"id": problem_id, "semantic_entropy": value, "n_clusters": 1, "accuracy": 0.5}) + "\n")


@pytest.fixture
def ranked(tmp_path):
    problems = make_problems(11)
    values = np.random.default_rng(0).permutation(11) / 4.0  # distinct entropies in random order
    entropies = {p.id: float(v) for p, v in zip(problems, values)}
    path = tmp_path / "ranking.jsonl"
    write_ranking(path, entropies)
    return problems, entropies, path


def test_every_stage_one_item_comes_before_any_stage_two_item(ranked):
    problems, entropies, path = ranked
    curriculum = CurriculumIterator(problems, path, batch_size=3, seed=1, num_stages=2, epochs_per_stage=2)
    low = {pid for pid, _ in sorted(entropies.items(), key=lambda kv: kv[1])[:6]}  # array_split: 6 + 5
    assert curriculum.total_steps == math.ceil(2 * 6 / 3) + math.ceil(2 * 5 / 3)
    seen, stages, changed = [], [], []
    for _ in range(curriculum.total_steps):
        seen.append([p.id for p in curriculum.next_batch()])
        stages.append(curriculum.stage)
        changed.append(curriculum.stage_changed)
    assert curriculum.finished
    assert stages == [0] * 4 + [1] * 4
    assert changed == [False] * 4 + [True] + [False] * 3
    first, second = sum(seen[:4], []), sum(seen[4:], [])
    assert set(first) == low and not set(second) & low
    # each epoch of a stage is a permutation of the stage: first 6 items of stage 1 are all distinct
    assert sorted(first[:6]) == sorted(low) and sorted(first[6:12]) == sorted(low)
    assert first[:6] != first[6:12]  # reshuffled per epoch (seeded; fixed outcome)
    assert len(set(second[:5])) == 5


def test_resume_mid_stage_continues_exactly(ranked):
    problems, _, path = ranked
    def make():
        return CurriculumIterator(problems, path, batch_size=4, seed=7, num_stages=3, steps_per_stage=3)
    reference = make()
    expected = [[p.id for p in reference.next_batch()] for _ in range(12)]
    for stop in (2, 4, 7):  # mid-stage, right after a stage change, mid-epoch of stage 3
        first = make()
        for _ in range(stop):
            first.next_batch()
        state = json.loads(json.dumps(first.state_dict()))
        resumed = make()
        resumed.load_state_dict(state)
        assert resumed.stage == first.stage and resumed.stage_changed == first.stage_changed
        assert [[p.id for p in resumed.next_batch()] for _ in range(12 - stop)] == expected[stop:]
    assert reference.finished and reference.stage == 2  # beyond the budget it keeps serving the last stage


def test_state_from_another_curriculum_is_refused(ranked):
    problems, entropies, path = ranked
    state = CurriculumIterator(problems, path, batch_size=4, seed=7).state_dict()
    with pytest.raises(ValueError, match="does not match"):
        CurriculumIterator(problems, path, batch_size=2, seed=7).load_state_dict(state)
    reversed_ranking = {pid: -value for pid, value in entropies.items()}
    with pytest.raises(ValueError, match="does not match"):
        CurriculumIterator(problems, reversed_ranking, batch_size=4, seed=7).load_state_dict(state)


def test_unranked_problems_error_or_drop(ranked):
    problems, entropies, _ = ranked
    partial = {pid: v for pid, v in entropies.items() if pid != "p3"}
    with pytest.raises(ValueError, match="no ranking row"):
        CurriculumIterator(problems, partial, batch_size=2, seed=0)
    curriculum = CurriculumIterator(problems, partial, batch_size=2, seed=0, num_stages=1, on_missing="drop")
    ids = sum(([p.id for p in curriculum.next_batch()] for _ in range(curriculum.total_steps)), [])
    assert "p3" not in ids and len(set(ids)) == 10


def test_bad_ranking_row_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "semantic_entropy": 0.1}\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field"):
        read_ranking(path)

"""Host-side batching (left padding, row padding), SamplingConfig checks and Rollout
assembly."""

import numpy as np
import pytest

from entropy_rl.rollout import SamplingConfig
from entropy_rl.rollout.batching import left_pad_prompts, round_up
from entropy_rl.rollout.decoding import batch_rows
from entropy_rl.rollout.result import assemble_rollout


def test_round_up():
    assert [round_up(v, 8) for v in (0, 1, 8, 9, 16)] == [8, 8, 8, 16, 16]


def test_batch_rows_are_a_multiple_of_the_shards_with_two_per_shard_at_least():
    assert [batch_rows(rows, 4) for rows in (1, 7, 8, 9, 13)] == [8, 8, 8, 12, 16]
    assert [batch_rows(rows, 1) for rows in (1, 2, 3)] == [2, 2, 3]


def test_left_pad_prompts_and_pad_rows():
    ids, mask = left_pad_prompts([[5, 6, 7], [9]], pad_token_id=0, prompt_bucket=4, rows=8)
    assert ids.shape == mask.shape == (8, 4) and ids.dtype == np.int32
    np.testing.assert_array_equal(ids[:2], [[0, 5, 6, 7], [0, 0, 0, 9]])
    np.testing.assert_array_equal(mask[:2], [[0, 1, 1, 1], [0, 0, 0, 1]])
    np.testing.assert_array_equal(mask[2:], [[0, 0, 0, 1]] * 6)  # filler rows: one token each


def test_prompt_length_is_bucketed():
    ids, _ = left_pad_prompts([list(range(1, 10))], pad_token_id=3, prompt_bucket=8)
    assert ids.shape == (1, 16) and (ids[0, :7] == 3).all()


def test_empty_prompts_are_rejected():
    with pytest.raises(ValueError, match="prompts is empty"):
        left_pad_prompts([], pad_token_id=0, prompt_bucket=8)


@pytest.mark.parametrize(
    "field,value", [("max_new_tokens", 0), ("temperature", -1.0), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -1), ("n", 0)]
)
def test_bad_sampling_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingConfig(**{field: value})


def test_stop_token_ids_become_a_hashable_tuple():
    config = SamplingConfig(stop_token_ids=[3, 4])
    assert config.stop_token_ids == (3, 4)
    hash(config)


def test_assemble_rollout_masks_after_length_and_drops_filler_rows():
    tokens = np.arange(4 * 6, dtype=np.int32).reshape(4, 6)
    rollout = assemble_rollout(
        prompt_tokens=np.ones((4, 2), np.int32), prompt_mask=np.ones((4, 2), np.int32), tokens=tokens,
        logprobs=-np.ones((4, 6), np.float32), lengths=np.array([2, 5, 5, 5]), stopped=np.array([1, 1, 0, 0], bool),
        num_rows=3, n=3, max_new_tokens=5, pad_token_id=99,
    )
    assert rollout.tokens.shape == (3, 5) and rollout.num_rows == 3
    np.testing.assert_array_equal(rollout.tokens[0], [0, 1, 99, 99, 99])
    np.testing.assert_array_equal(rollout.mask.sum(1), [2, 5, 5])
    np.testing.assert_array_equal(rollout.logprobs[0], [-1, -1, 0, 0, 0])
    np.testing.assert_array_equal(rollout.prompt_index, [0, 0, 0])
    np.testing.assert_array_equal(rollout.stopped, [True, True, False])

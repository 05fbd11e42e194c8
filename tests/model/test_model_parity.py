"""Parity of entropy_rl.model.Qwen with transformers' PyTorch Qwen2/Qwen3 (float32)."""

import numpy as np
import pytest

from entropy_rl.model import load_hf
from tests.model.model_testing import hf_logits, jit_forward, make_hf_model, padded_batch

CASES = {
    "qwen3": dict(model_type="qwen3", head_dim=24),  # head_dim != hidden / heads
    "qwen3-tied": dict(model_type="qwen3", head_dim=16, tie_word_embeddings=True),
    "qwen2": dict(model_type="qwen2"),
    "qwen2-tied-sharded-files": dict(model_type="qwen2", tie_word_embeddings=True,
                                     max_shard_size="40KB"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers_with_left_and_right_padding(case, tmp_path):
    hf_model = make_hf_model(path=tmp_path, **CASES[case])
    input_ids, attention_mask = padded_batch(hf_model.config.vocab_size)
    if CASES[case].get("max_shard_size"):
        assert (tmp_path / "model.safetensors.index.json").exists()
    model = load_hf(str(tmp_path))
    ours = np.asarray(jit_forward(model)(input_ids, attention_mask))
    expected = hf_logits(hf_model, input_ids, attention_mask)
    real = attention_mask.astype(bool)
    assert ours.dtype == np.float32
    np.testing.assert_array_less(np.abs(ours[real] - expected[real]).max(), 1e-4)
    # A wrong mapping would differ by O(logit scale), so the tolerance really tests parity.
    assert np.abs(expected[real]).max() > 1e-2

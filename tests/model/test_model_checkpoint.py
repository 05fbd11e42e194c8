"""save_hf round trip through transformers, dtypes, and clear errors on bad input."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from entropy_rl.model import Qwen, QwenConfig, load_hf, save_hf, tiny_config
from tests.model.model_testing import hf_logits, jit_forward, make_hf_model, padded_batch


@pytest.mark.parametrize("model_type,tied", [("qwen3", False), ("qwen2", True)])
def test_save_hf_round_trip_through_transformers(model_type, tied, tmp_path):
    hf_model = make_hf_model(model_type, tmp_path / "src", tie_word_embeddings=tied)
    input_ids, attention_mask = padded_batch(hf_model.config.vocab_size, seed=1)
    model = load_hf(str(tmp_path / "src"))
    save_hf(model, str(tmp_path / "out"), max_shard_bytes=60_000)
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == model_type and config["tie_word_embeddings"] == tied
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "out", attn_implementation="eager", dtype=torch.float32)
    assert type(reloaded) is type(hf_model)
    real = attention_mask.astype(bool)
    expected = hf_logits(hf_model, input_ids, attention_mask)[real]
    np.testing.assert_allclose(hf_logits(reloaded, input_ids, attention_mask)[real], expected,
                               atol=1e-6)
    ours_again = np.asarray(jit_forward(load_hf(str(tmp_path / "out")))(input_ids, attention_mask))[real]
    np.testing.assert_allclose(ours_again, expected, atol=1e-4)


def test_bfloat16_params_and_compute(tmp_path):
    model = Qwen(tiny_config(), rngs=nnx.Rngs(1))
    save_hf(model, str(tmp_path))
    bf16 = load_hf(str(tmp_path), dtype=jnp.bfloat16)
    assert bf16.embed_tokens[...].dtype == jnp.bfloat16
    assert bf16.config.dtype == "bfloat16" and bf16.config.param_dtype == "bfloat16"
    ids = np.arange(12, dtype=np.int32).reshape(2, 6)
    logits = jit_forward(bf16)(ids)
    assert logits.dtype == jnp.float32  # logits are float32 whatever the compute dtype
    np.testing.assert_allclose(np.asarray(logits), np.asarray(jit_forward(model)(ids)), atol=0.05)
    mixed = load_hf(str(tmp_path), dtype=jnp.bfloat16, param_dtype=jnp.float32, remat=True)
    assert mixed.embed_tokens[...].dtype == jnp.float32 and mixed.config.remat


def test_presets_and_config_round_trip():
    config = QwenConfig.preset("qwen3-1.7b")
    assert (config.hidden_size, config.num_hidden_layers, config.head_dim) == (2048, 28, 128)
    assert QwenConfig.preset("Qwen2.5-7B").attention_bias
    assert QwenConfig.from_hf_dict(config.to_hf_dict()) == config
    qwen2 = QwenConfig.preset("qwen2.5-math-7b", dtype="bfloat16")
    assert QwenConfig.from_hf_dict(qwen2.to_hf_dict(), dtype="bfloat16") == qwen2


def test_bad_input_gives_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown Qwen preset 'qwen9-1b'.*qwen3-8b"):
        QwenConfig.preset("qwen9-1b")
    hf = tiny_config().to_hf_dict()
    del hf["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match=r"config.json: missing required key\(s\) \['hidden_size'\]"):
        QwenConfig.from_hf(str(tmp_path))
    with pytest.raises(ValueError, match="model_type 'llama'"):
        QwenConfig.from_hf_dict(dict(tiny_config().to_hf_dict(), model_type="llama"))
    with pytest.raises(ValueError, match="num_key_value_heads"):
        tiny_config(num_key_value_heads=3)
    with pytest.raises(ValueError, match="attention_block_size must be a positive int"):
        tiny_config(attention_block_size=0)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf(str(tmp_path / "missing"))
    # A checkpoint whose config claims untied embeddings but has no lm_head tensor.
    save_hf(Qwen(tiny_config(tie_word_embeddings=True), rngs=nnx.Rngs(0)), str(tmp_path / "t"))
    hf = json.loads((tmp_path / "t" / "config.json").read_text())
    (tmp_path / "t" / "config.json").write_text(json.dumps(dict(hf, tie_word_embeddings=False)))
    with pytest.raises(KeyError, match="no tensor 'lm_head.weight'"):
        load_hf(str(tmp_path / "t"))
    (tmp_path / "t" / "config.json").write_text(json.dumps(dict(hf, intermediate_size=64)))
    with pytest.raises(ValueError, match="does not fit the config"):
        load_hf(str(tmp_path / "t"))

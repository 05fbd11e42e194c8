"""`entropy-rl export`: a run's checkpoint becomes an HF checkpoint that transformers loads and
that computes the same logits; an HF tokenizer travels with it."""

import json
import os
import pathlib

import pytest
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx
from tokenizers import Tokenizer, models, pre_tokenizers

from entropy_rl import cli as top_cli
from entropy_rl.policy import build_policy
from entropy_rl.train import checkpoint as ck
from entropy_rl.train import export
from entropy_rl.train.config import load_config

SMALL_MODEL = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=2",
               "model.num_attention_heads=2", "model.num_key_value_heads=1", "model.head_dim=16"]


def _hf_tokenizer_dir(path) -> str:
    """A tiny word-level HF tokenizer (no hub access), saved like any checkpoint's tokenizer."""
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<unk>"] + list("0123456789+-*=") + ["x", "is"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<pad>",
                                                unk_token="<unk>")
    fast.save_pretrained(path)
    return str(path)


def _saved_run(tmp_path, *overrides):
    config = load_config(overrides=[f"run_dir={tmp_path / 'run'}", *SMALL_MODEL, *overrides])
    policy, tokenizer = build_policy(config.model, seed=1)
    _, params = nnx.split(policy)
    with ck.Checkpointer(config.run_dir, async_save=False) as saver:
        for step in (2, 4):
            saver.save(step, params=params, train_state={"step": jnp.int32(step)}, data_state={}, config=config)
    return config, policy, tokenizer


def test_export_writes_an_hf_checkpoint_with_the_same_logits(tmp_path, capsys):
    config, policy, tokenizer = _saved_run(tmp_path)
    out = tmp_path / "hf"
    assert top_cli.main(["export", config.run_dir, str(out), "--step", "2"]) == 0
    assert "wrote step 2" in capsys.readouterr().out
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    assert isinstance(hf, transformers.Qwen3ForCausalLM)
    ids = np.asarray([tokenizer.encode("12+34=46")], np.int32)
    with torch.no_grad():
        expected = hf(torch.from_numpy(ids).long()).logits.numpy()
    logits = nnx.jit(lambda model, x: model(x))(policy, jnp.asarray(ids))  # one compiled program
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=1e-4)
    # the built-in tokenizer travels as HF tokenizer files: the same ids, specials and chat text
    reloaded = transformers.AutoTokenizer.from_pretrained(out)
    text = "<|im_start|>user\nCompute 12+34. \u00e9<|im_end|>\n\\boxed{46}<|im_end|><pad>"
    assert reloaded.encode(text) == tokenizer.encode(text) and len(reloaded) == tokenizer.vocab_size
    assert (reloaded.eos_token_id, reloaded.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert reloaded.decode(tokenizer.encode(text)) == tokenizer.decode(tokenizer.encode(text))
    chat = [{"role": "user", "content": "Compute 1+2."}]
    assert reloaded.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        tokenizer.apply_chat_template(chat)


def test_export_copies_an_hf_tokenizer(tmp_path):
    tokenizer_dir = _hf_tokenizer_dir(tmp_path / "tok")
    config, _, _ = _saved_run(tmp_path, f"model.tokenizer={tokenizer_dir}")
    out = tmp_path / "hf"
    assert export.export(config.run_dir, out) == 4  # the latest step by default
    reloaded = transformers.AutoTokenizer.from_pretrained(out)
    assert reloaded.encode("1 + 2 = 3") == transformers.AutoTokenizer.from_pretrained(tokenizer_dir).encode("1 + 2 = 3")
    assert transformers.AutoConfig.from_pretrained(out).vocab_size == len(reloaded)


def test_export_of_a_directory_without_checkpoints_fails_clearly(tmp_path, capsys):
    assert export.main([str(tmp_path), str(tmp_path / "out")]) == 1
    assert "not a run directory" in capsys.readouterr().err
    (tmp_path / "checkpoints").mkdir()
    assert export.main([str(tmp_path), str(tmp_path / "out")]) == 1
    assert "no checkpoint yet" in capsys.readouterr().err


QWEN3_TOKENIZER = pathlib.Path(__file__).parents[1] / "data" / "qwen3_tokenizer"


def _always_says(hf: transformers.PreTrainedModel, token_id: int) -> None:
    """Weights under which greedy decoding emits `token_id` at every step: every token embeds
    as the all-ones vector, the blocks add nothing, and only `token_id`'s unembedding row is
    non-zero (an untied model)."""
    with torch.no_grad():
        for name, parameter in hf.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                parameter.zero_()
        hf.model.embed_tokens.weight.fill_(1.0)
        hf.model.norm.weight.fill_(1.0)
        hf.lm_head.weight.zero_()
        hf.lm_head.weight[token_id] = 1.0


@pytest.mark.slow
def test_export_is_ready_to_serve(tmp_path):
    config, _, tokenizer = _saved_run(tmp_path, f"model.tokenizer={QWEN3_TOKENIZER}", "model.tie_word_embeddings=false")
    out = tmp_path / "hf"
    assert top_cli.main(["export", config.run_dir, str(out), "--dtype", "bfloat16"]) == 0
    im_end = tokenizer.tokenizer.convert_tokens_to_ids("<|im_end|>")
    saved = json.loads((out / "config.json").read_text())
    assert (saved["eos_token_id"], saved["pad_token_id"], saved["torch_dtype"]) == (im_end, tokenizer.pad_token_id, "bfloat16")
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == list(tokenizer.stop_token_ids)
    assert {oct(path.stat().st_mode & 0o777) for path in out.iterdir()} == {oct(0o666 & ~_umask())}
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert hf.dtype == torch.bfloat16
    _always_says(hf, im_end)
    prompt = torch.tensor([tokenizer.encode("1 + 2 =")])
    stopped = hf.generate(prompt, max_new_tokens=8, do_sample=False)  # the export's generation_config
    assert stopped[0, prompt.shape[1]:].tolist() == [im_end]
    unstopped = hf.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert unstopped.shape[1] == prompt.shape[1] + 8  # without the stop tokens it runs to the limit


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask

"""Tokenizers: the built-in character tokenizer and HF tokenizers from a local directory (a
tiny one built here with `tokenizers`, carrying the real Qwen3 chat template)."""

import json
import pathlib

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from entropy_rl.data import BuiltinTokenizer, HFTokenizer, load_tokenizer

QWEN3_CONFIG = pathlib.Path(__file__).parent / "qwen3_tokenizer_config.json"


def test_builtin_vocabulary_is_fixed_and_small():
    tokenizer = load_tokenizer("builtin")
    assert isinstance(tokenizer, BuiltinTokenizer)
    assert tokenizer.vocab_size == 102 < 128
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 3)
    # ids by hand: 5 specials, `\boxed{` = 5, newline = 6, then printable ASCII from '0' (= 7).
    assert tokenizer.encode("0") == [7]
    assert tokenizer.encode("\\boxed{12}") == [5, 8, 9, tokenizer.encode("}")[0]]
    assert tokenizer.encode("<|im_end|>\n") == [3, 6]
    assert tokenizer.encode("é") == [tokenizer.unk_token_id]


def test_builtin_round_trip_and_chat_template():
    tokenizer = load_tokenizer("builtin")
    text = "Compute 47+38.\nSolve 3x+4=19. \\boxed{85} ~`|"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Compute 1+1."}])
    assert chat == "<|im_start|>user\nCompute 1+1.<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer.encode(chat + "\\boxed{2}<|im_end|>")
    assert tokenizer.decode(ids) == chat + "\\boxed{2}<|im_end|>"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nCompute 1+1.\nassistant\n\\boxed{2}"
    assert tokenizer.apply_chat_template([{"role": "user", "content": "a"}], add_generation_prompt=False).endswith("<|im_end|>\n")


def _tiny_hf_tokenizer(directory: pathlib.Path) -> pathlib.Path:
    """A word-level tokenizer with Qwen's special tokens and the real Qwen3 chat template."""
    words = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]", "hello", "world", "user", "assistant", "2", "+"]
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="[UNK]",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = json.loads(QWEN3_CONFIG.read_text())["chat_template"]
    tokenizer.save_pretrained(directory)
    return directory


def test_hf_tokenizer_from_local_directory(tmp_path):
    tokenizer = load_tokenizer(_tiny_hf_tokenizer(tmp_path))
    assert isinstance(tokenizer, HFTokenizer)
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.vocab_size) == (2, 0, 10)
    assert tokenizer.stop_token_ids == (2, 0)
    assert tokenizer.encode("hello world 2 + 2") == [4, 5, 8, 9, 8]
    assert tokenizer.decode([4, 5]) == "hello world"
    assert tokenizer.encode("zebra") == [3]


def test_qwen3_chat_template_from_tokenizer_config(tmp_path):
    tokenizer = load_tokenizer(_tiny_hf_tokenizer(tmp_path))
    messages = [{"role": "user", "content": "hello"}]
    assert tokenizer.apply_chat_template(messages) == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    no_thinking = tokenizer.apply_chat_template(messages, enable_thinking=False)
    assert no_thinking == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_load_tokenizer_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'builtin' nor a directory"):
        load_tokenizer(tmp_path / "absent")


def test_a_directory_without_tokenizer_files_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a checkpoint directory without its tokenizer
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}.*has no tokenizer files.*model.tokenizer"):
        load_tokenizer(tmp_path)

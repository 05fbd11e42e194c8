"""Tokenizers with one interface: the built-in character tokenizer of the synthetic task and
any Hugging Face tokenizer saved in a local directory.

Interface: `encode(text) -> list[int]`, `decode(ids, skip_special_tokens=False) -> str`,
`eos_token_id`, `pad_token_id`, `bos_token_id` (None: no bos), `stop_token_ids`, `vocab_size`,
`apply_chat_template(messages, add_generation_prompt=True, **kwargs) -> str`.
"""

from __future__ import annotations

import os
import re
import string
from typing import Any, Sequence

# Built-in vocabulary, fixed in code so every run builds the same ids. Specials first
# (pad = 0, the SamplingConfig default), then `\boxed{` as one token (answers stay short),
# then newline and the 95 printable ASCII characters. 102 tokens in all.
BUILTIN_SPECIAL_TOKENS = ("<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>")
BUILTIN_TOKENS = BUILTIN_SPECIAL_TOKENS + ("\\boxed{", "\n") + tuple(
    char for char in string.printable if char not in "\t\n\r\x0b\x0c"
)


class BuiltinTokenizer:
    """Character-level tokenizer with ChatML-style specials (`<|im_start|>`, `<|im_end|>`).

    Unknown characters encode to `<unk>`. eos = `<|im_end|>` (ends an assistant turn),
    pad = `<pad>` = 0. The chat template is Qwen's ChatML:
    `<|im_start|>user\\n{content}<|im_end|>\\n<|im_start|>assistant\\n`.
    """

    def __init__(self):
        self.tokens = BUILTIN_TOKENS
        self._ids = {token: index for index, token in enumerate(self.tokens)}
        multi_char = sorted((token for token in self.tokens if len(token) > 1), key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, multi_char)) + "|.", re.DOTALL)
        self.pad_token_id = self._ids["<pad>"]
        self.eos_token_id = self._ids["<|im_end|>"]
        self.unk_token_id = self._ids["<unk>"]
        self.bos_token_id = None  # prompts start with the problem text
        self.stop_token_ids = (self.eos_token_id, self._ids["<|endoftext|>"])
        self._special_ids = frozenset(self._ids[token] for token in BUILTIN_SPECIAL_TOKENS)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`: special strings and `\\boxed{` as one token each, else chars."""
        return [self._ids.get(piece, self.unk_token_id) for piece in self._pattern.findall(text)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; with `skip_special_tokens`, specials (pad, eos, chat markers) are dropped."""
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        return "".join(self.tokens[i] for i in ids)

    def apply_chat_template(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True, **_: Any) -> str:
        """ChatML text of `messages` (dicts with role and content), ending with the assistant
        header when `add_generation_prompt`."""
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    def save_pretrained(self, directory: str) -> None:
        """Write this tokenizer as Hugging Face tokenizer files (`AutoTokenizer.from_pretrained`
        loads it: the same ids both ways, the same specials and ChatML template)."""
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        tokenizer = Tokenizer(models.WordLevel(dict(self._ids), unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token a character
        tokenizer.decoder = decoders.Fuse()
        tokenizer.add_special_tokens([AddedToken(t, normalized=False) for t in BUILTIN_SPECIAL_TOKENS])
        tokenizer.add_tokens([AddedToken("\\boxed{", normalized=False)])
        chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
        PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<pad>",
                                unk_token="<unk>", chat_template=chat_template).save_pretrained(directory)


# Any one of these makes a directory loadable by transformers' AutoTokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


class HFTokenizer:
    """A Hugging Face tokenizer from a local directory (`AutoTokenizer`), with its chat template.

    `encode` adds no special tokens (chat templates write their own). pad falls back to eos
    when the tokenizer has none. `stop_token_ids` = eos plus `<|endoftext|>` when present.
    """

    def __init__(self, path: str | os.PathLike):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(os.fspath(path), local_files_only=True)
        self.eos_token_id = self.tokenizer.eos_token_id
        self.bos_token_id = self.tokenizer.bos_token_id
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = self.eos_token_id if pad is None else pad
        endoftext = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        extra = () if endoftext in (None, self.eos_token_id, self.tokenizer.unk_token_id) else (endoftext,)
        self.stop_token_ids = (self.eos_token_id,) + extra

    @property
    def vocab_size(self) -> int:
        """All ids the tokenizer can produce, added tokens included."""
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The tokenizer's own template as text; kwargs go to it (e.g. `enable_thinking=False`)."""
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )


def load_tokenizer(name_or_path: str | os.PathLike = "builtin") -> BuiltinTokenizer | HFTokenizer:
    """`"builtin"` -> the synthetic task's character tokenizer; a directory -> its HF tokenizer."""
    if os.fspath(name_or_path) == "builtin":
        return BuiltinTokenizer()
    if not os.path.isdir(name_or_path):
        raise FileNotFoundError(f"tokenizer: {os.fspath(name_or_path)!r} is neither 'builtin' nor a directory")
    if not any(os.path.exists(os.path.join(name_or_path, name)) for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"tokenizer: {os.fspath(name_or_path)!r} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); "
            "copy the model's tokenizer there or set model.tokenizer to a directory that has them")
    return HFTokenizer(name_or_path)

"""samples.jsonl's token pieces: joined they are the decoded response exactly (Qwen3's real
tokenizer, a character split over three byte-level tokens, a special token)."""

import pathlib

import numpy as np
import pytest

from entropy_rl.data.tokenizer import load_tokenizer
from entropy_rl.train.samples import token_pieces

QWEN3_TOKENIZER = pathlib.Path(__file__).parents[1] / "data" / "qwen3_tokenizer"
TEXT = "Answer: 中文 🙂 naïve 𝚗 x² ≥ 3\n\tdone"  # 𝚗 (4 UTF-8 bytes) is three tokens in Qwen3's vocabulary


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(QWEN3_TOKENIZER)


def test_pieces_join_to_the_decoded_text_and_the_completing_token_carries_a_split_character(tokenizer):
    ids = tokenizer.encode(TEXT) + [tokenizer.eos_token_id]
    pieces, special = token_pieces(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True) == TEXT
    assert special == {str(len(ids) - 1): "<|im_end|>"} and pieces[-1] == ""
    split = [i for i, token in enumerate(ids) if tokenizer.decode([token]).endswith("\ufffd")]
    assert len(split) == 3  # the three tokens of 𝚗, each alone an incomplete character
    assert [pieces[i] for i in split] == ["", "", " 𝚗"]  # the token that completes it carries it
    for i in range(len(ids)):  # every prefix that decodes to whole characters is the pieces' prefix
        prefix = tokenizer.decode(ids[:i + 1], skip_special_tokens=True)
        if not prefix.endswith("\ufffd"):
            assert "".join(pieces[:i + 1]) == prefix


def test_random_token_ids_join_exactly_or_give_no_pieces(tokenizer):
    rng = np.random.default_rng(0)
    joined = 0
    for _ in range(40):
        ids = rng.integers(0, tokenizer.vocab_size, 24).tolist()
        pieces, _ = token_pieces(tokenizer, ids)
        if pieces is not None:
            assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
            assert len(pieces) == len(ids)
            joined += 1
    assert joined >= 30  # random byte tokens rarely leave a character open past 4 tokens


class LeadingSpaceStripper:
    """A tokenizer whose decode strips the text's leading space (as SentencePiece's does)."""

    words = ["<eos>", " a", " b"]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.words[i] for i in ids if not (skip_special_tokens and i == 0)).removeprefix(" ")


def test_pieces_that_do_not_join_to_the_decode_are_none():
    pieces, special = token_pieces(LeadingSpaceStripper(), [1, 2, 0])
    assert pieces is None and special == {"2": "<eos>"}

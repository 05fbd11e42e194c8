"""Host-side batching: left-pad prompts to a bucketed length, pad the row count.

Bucketing keeps array shapes to a handful of values, so a run compiles a handful of programs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= value (and >= multiple)."""
    return max(multiple, -(-value // multiple) * multiple)


def geometric_bucket(length: int, base: int) -> int:
    """Smallest base * 2**k (k >= 0) that is >= length: a batch's padded prompt length, so
    prompts of 1..L tokens use about log2(L / base) + 1 distinct shapes."""
    bucket = base
    while bucket < length:
        bucket *= 2
    return bucket


def left_pad_prompts(
    prompts: Sequence[Sequence[int]], *, pad_token_id: int, prompt_bucket: int, rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Prompt batch: a row per prompt, left-padded.

    Returns ids int32 [R, P] and mask int32 [R, P] with P = round_up(longest prompt,
    prompt_bucket) and R = rows (>= len(prompts); None = len(prompts)). Rows past
    len(prompts) are filler (a single pad token), e.g. so the batch splits evenly over
    devices; callers drop them.
    """
    if not prompts:
        raise ValueError("generate: prompts is empty")
    for index, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"generate: prompt {index} is empty (a response needs at least one prompt token)")
    length = round_up(max(len(p) for p in prompts), prompt_bucket)
    ids = np.full((len(prompts) if rows is None else rows, length), pad_token_id, np.int32)
    mask = np.zeros(ids.shape, np.int32)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = np.asarray(prompt, np.int32)
        mask[row, length - len(prompt) :] = 1
    mask[len(prompts):, -1] = 1  # filler rows: one pad token, so attention always has a key
    return ids, mask

"""Packing an update batch on the host: sequences (prompt + response) first-fit into rows of
a token budget, so the update's forwards and backwards compute on tokens, not padding.

An `UpdateBatch` row b has a left-padded prompt of p_b real tokens (of P columns) and a
right-padded response of r_b tokens (of T columns). The padded forward reads the W = P + T - 1
columns concat(prompt, response[:-1]), and the hidden state at column P - 1 + j predicts
response token j. Its real inputs are one sequence of L_b = p_b + r_b - 1 tokens (none
when r_b = 0) at positions 0 .. L_b - 1 (`Qwen.default_positions`); sequence offset
p_b - 1 + j predicts response token j.

`pack_update_batch` places the sequences, longest first, each into the first row with room
(first-fit decreasing) in rows of S tokens, and splits the rows into M micro-batches of R
rows. Its `PackedLayout` holds int32 index arrays only (the tokens stay on the devices and
are gathered there): every real input token is placed exactly once, a sequence's tokens are
contiguous and in order within one row, with segment id k (1, 2, ... in the row; 0 =
padding) and its own positions 0 .. L_b - 1, so the packed forward computes what the padded
one computes at every real token. Shapes come from small sets, so a run compiles a handful
of programs: S = pack_tokens * 2^k (the smallest holding the longest sequence), R = the
rows of a micro-batch's token budget (micro_tokens // S, rounded up to row_multiple), M
and (without a budget) R from 1, 2, 3, 4, 6, 8, 12, ... (`half_octave_bucket`).
"""

from __future__ import annotations

import numpy as np
from flax import struct

from entropy_rl.rollout.batching import geometric_bucket


@struct.dataclass
class PackedLayout:
    """Where each sequence of a [B, P] + [B, T] update batch sits in M x R packed rows of S tokens.

    source: int32 [M, R, S], the packed token's column in the flattened padded inputs
      concat(prompt_tokens, tokens[:, :-1]) [B * W] (0 on padding).
    segment_ids: int32 [M, R, S], 1, 2, ... per sequence in a row, 0 on padding.
    positions: int32 [M, R, S], the token's position in its sequence (0 on padding).
    targets: int32 [M, R, S], the index in the flattened responses [B * T] of the token the
      packed token's hidden state predicts (0 where it predicts none).
    gather: int32 [B, T], the index in the flattened packed tokens [M * R * S] whose hidden
      state predicts response token (b, j) (0 past the response).
    micro: int32 [B], the micro-batch holding row b (0 for an empty response: no tokens).
    """

    source: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    targets: np.ndarray
    gather: np.ndarray
    micro: np.ndarray

    @property
    def num_micro_batches(self) -> int:
        return self.source.shape[0]

    @property
    def packed_tokens(self) -> int:
        """M * R * S, the tokens the packed forward computes on."""
        return self.source.size

    @property
    def real_tokens(self) -> int:
        return int(np.count_nonzero(self.segment_ids))


def half_octave_bucket(n: int) -> int:
    """Smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (2^k and 3 * 2^k) that is >= n >= 1."""
    power = 1
    while power < n:
        if power >= 2 and power * 3 // 2 >= n:
            return power * 3 // 2
        power *= 2
    return power


def sequence_lengths(prompt_mask: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(prompt lengths p [B], response lengths r [B]) from the left-padded prompt mask [B, P]
    and the right-padded response mask [B, T]."""
    return np.asarray(prompt_mask).sum(1).astype(np.int64), np.asarray(mask).sum(1).astype(np.int64)


def first_fit_decreasing(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Rows of item indices: items (lengths <= capacity; 0-length items left out) longest
    first (ties by index), each into the first row with room."""
    if len(lengths) and lengths.max() > capacity:
        raise ValueError(f"a sequence of {lengths.max()} tokens does not fit a row of {capacity}")
    order = np.argsort(-lengths, kind="stable")
    free = np.zeros(0, np.int64)
    rows: list[list[int]] = []
    for item in order:
        if lengths[item] == 0:
            break
        fits = np.flatnonzero(free >= lengths[item])
        if len(fits):
            free[fits[0]] -= lengths[item]
            rows[fits[0]].append(int(item))
        else:
            free = np.append(free, capacity - lengths[item])
            rows.append([int(item)])
    return rows


def pack_update_batch(prompt_lengths: np.ndarray, response_lengths: np.ndarray, *, prompt_columns: int,
                      response_columns: int, pack_tokens: int, micro_tokens: int | None = None,
                      row_multiple: int = 1) -> PackedLayout:
    """The `PackedLayout` of B sequences (see the module docstring).

    prompt_lengths, response_lengths: int [B], p_b <= P = prompt_columns (p_b >= 1 where
    r_b >= 1) and r_b <= T = response_columns. pack_tokens: the row budget's base (S =
    pack_tokens * 2^k); micro_tokens: a micro-batch's token budget (R = micro_tokens // S
    rows, at least one; None = every row in one micro-batch); row_multiple: R is a multiple
    of it (the devices the rows are split over).
    """
    p = np.asarray(prompt_lengths, np.int64)
    r = np.asarray(response_lengths, np.int64)
    if p.shape != r.shape or p.ndim != 1:
        raise ValueError(f"prompt and response lengths must be [B] alike, got {p.shape} and {r.shape}")
    if (p > prompt_columns).any() or (r > response_columns).any() or (r < 0).any():
        raise ValueError(f"lengths out of range: prompts <= {prompt_columns}, responses 0..{response_columns}")
    if ((r > 0) & (p < 1)).any():
        raise ValueError(f"rows {np.flatnonzero((r > 0) & (p < 1)).tolist()} have a response but no prompt token")
    lengths = np.where(r > 0, p + r - 1, 0)
    width = prompt_columns + response_columns - 1
    budget = geometric_bucket(max(int(lengths.max(initial=1)), 1), pack_tokens)
    rows = first_fit_decreasing(lengths, budget)
    if micro_tokens is None:
        per_micro = row_multiple * half_octave_bucket(-(-max(len(rows), 1) // row_multiple))
        num_micro = 1
    else:
        per_micro = -(-max(micro_tokens // budget, 1) // row_multiple) * row_multiple
        num_micro = half_octave_bucket(-(-max(len(rows), 1) // per_micro))
    shape = (num_micro * per_micro, budget)
    source, segment_ids, positions, targets = (np.zeros(shape, np.int32) for _ in range(4))
    gather = np.zeros((len(p), response_columns), np.int32)
    micro = np.zeros(len(p), np.int32)
    for row, items in enumerate(rows):
        start = 0
        for segment, b in enumerate(items, start=1):
            length = lengths[b]
            span = slice(start, start + length)
            columns = np.arange(prompt_columns - p[b], prompt_columns + r[b] - 1)  # real input columns
            source[row, span] = b * width + columns
            segment_ids[row, span] = segment
            positions[row, span] = np.arange(length)
            predicting = start + p[b] - 1 + np.arange(r[b])  # offsets p_b - 1 + j in the row
            targets[row, predicting] = b * response_columns + np.arange(r[b])
            gather[b, :r[b]] = row * budget + predicting
            micro[b] = row // per_micro
            start += length
    to_micro = lambda x: x.reshape(num_micro, per_micro, budget)  # noqa: E731
    return PackedLayout(to_micro(source), to_micro(segment_ids), to_micro(positions), to_micro(targets), gather,
                        micro)


def lognormal_lengths(rng: np.random.Generator, rows: int, cap: int, *, median: float, sigma: float = 0.8
                      ) -> np.ndarray:
    """int [rows] response lengths ~ ceil(LogNormal(log median, sigma)) clipped to [1, cap]: the
    long-tailed RLVR length model of `entropy-rl plan` and tools/bench/packing.py (median
    0.2 x cap, sigma 0.8: median 3k of the paper configs' 15,360-token cap)."""
    return np.clip(np.ceil(rng.lognormal(np.log(median), sigma, rows)), 1, cap).astype(np.int64)


def padded_tokens(batch_rows: int, prompt_columns: int, response_columns: int) -> int:
    """B * W: the tokens the padded forward computes on."""
    return batch_rows * (prompt_columns + response_columns - 1)

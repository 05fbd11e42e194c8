"""`Rollout`: the sampled responses (a pytree: host numpy arrays, or jax arrays once placed)."""

from __future__ import annotations

import numpy as np
from flax import struct


@struct.dataclass
class Rollout:
    """N = len(prompts) * n sampled responses; row i answers prompt i // n.

    Attributes:
      prompt_tokens: int32 [N, P], left-padded with pad_token_id.
      prompt_mask: int32 [N, P], 1 on prompt tokens.
      tokens: int32 [N, T] (T = max_new_tokens), right-padded with pad_token_id.
      mask: int32 [N, T], 1 on response tokens, stop token included.
      logprobs: float32 [N, T], log-prob of each sampled token under the sampling
        distribution (temperature, top-k, top-p applied; 0 when greedy); 0 on padding.
      lengths: int32 [N], response length = mask.sum(1).
      stopped: bool [N], True if the row emitted a stop token, False if it hit max_new_tokens.
      prompt_index: int32 [N], the prompt each row answers.
    """

    prompt_tokens: np.ndarray
    prompt_mask: np.ndarray
    tokens: np.ndarray
    mask: np.ndarray
    logprobs: np.ndarray
    lengths: np.ndarray
    stopped: np.ndarray
    prompt_index: np.ndarray

    @property
    def num_rows(self) -> int:
        return self.tokens.shape[0]


def assemble_rollout(
    *,
    prompt_tokens: np.ndarray,
    prompt_mask: np.ndarray,
    tokens: np.ndarray,
    logprobs: np.ndarray,
    lengths: np.ndarray,
    stopped: np.ndarray,
    num_rows: int,
    n: int,
    max_new_tokens: int,
    pad_token_id: int,
) -> Rollout:
    """Rollout from the sampler's padded batch: keep the first num_rows rows and
    max_new_tokens columns, build the mask from lengths, pad tokens and log-probs after it."""
    lengths = np.asarray(lengths[:num_rows], np.int32)
    mask = (np.arange(max_new_tokens)[None, :] < lengths[:, None]).astype(np.int32)
    return Rollout(
        prompt_tokens=np.asarray(prompt_tokens[:num_rows], np.int32),
        prompt_mask=np.asarray(prompt_mask[:num_rows], np.int32),
        tokens=np.where(mask == 1, np.asarray(tokens[:num_rows, :max_new_tokens]), pad_token_id).astype(np.int32),
        mask=mask,
        logprobs=np.where(mask == 1, np.asarray(logprobs[:num_rows, :max_new_tokens]), 0.0).astype(np.float32),
        lengths=lengths,
        stopped=np.asarray(stopped[:num_rows], bool),
        prompt_index=(np.arange(num_rows) // n).astype(np.int32),
    )

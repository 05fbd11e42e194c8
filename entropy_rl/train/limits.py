"""Lengths a run can hold: a prompt's bucket plus the longest response within the model's
positions (`max_position_embeddings`), checked before anything is allocated.

`check_lengths(config)` runs with the config (the smallest prompt bucket, or that of
data.max_prompt_length); `check_lengths(config, longest_prompt=...)` again once the prompts
are tokenized, naming the longest one and data.max_prompt_length as the remedy.
"""

from __future__ import annotations

import os

from entropy_rl.rollout.batching import geometric_bucket
from entropy_rl.train.config import ConfigError, TrainConfig


def model_positions(config: TrainConfig) -> int | None:
    """The policy's max_position_embeddings (None: an HF checkpoint not there yet)."""
    model = config.model
    if model.hf_path is not None and not os.path.isfile(os.path.join(model.hf_path, "config.json")):
        return None
    return model.qwen_config(1).max_position_embeddings


def check_lengths(config: TrainConfig, longest_prompt: tuple[str, int] | None = None) -> None:
    """ConfigError when a padded prompt plus max(rollout, eval) max_new_tokens exceeds the
    model's positions. longest_prompt: (problem id, tokens) of the longest training prompt."""
    positions = model_positions(config)
    if positions is None:
        return
    r, d = config.rollout, config.data
    response = max(r.max_new_tokens, config.eval.max_new_tokens)
    key = "rollout.max_new_tokens" if r.max_new_tokens >= config.eval.max_new_tokens else "eval.max_new_tokens"
    if longest_prompt is not None:
        bucket = geometric_bucket(longest_prompt[1], r.prompt_bucket)
        what = f"the longest prompt ({longest_prompt[0]!r}, {longest_prompt[1]} tokens, padded to {bucket})"
    elif d.max_prompt_length is not None:
        bucket = geometric_bucket(d.max_prompt_length, r.prompt_bucket)
        what = f"a prompt of data.max_prompt_length={d.max_prompt_length} tokens (padded to {bucket})"
    else:
        bucket = r.prompt_bucket
        what = f"the shortest prompt bucket (rollout.prompt_bucket={bucket})"
    if bucket + response <= positions:
        return
    remedies = [f"lower {key} to {positions - bucket} or less"] if positions > bucket else []
    fitting = r.prompt_bucket  # the largest bucket that fits beside the responses
    while fitting * 2 + response <= positions:
        fitting *= 2
    if bucket > r.prompt_bucket and fitting + response <= positions:
        remedies.append(f"set data.max_prompt_length={fitting} (longer prompts are left out)")
    remedy = ", or ".join(remedies) or "use a model with more positions"
    raise ConfigError(f"{key}={response} + {what} = {bucket + response} positions, more than the model's "
                      f"max_position_embeddings={positions}: {remedy}")

"""Lengths a run can hold: a prompt's bucket plus the longest response within the model's
positions (`max_position_embeddings`), checked before anything is allocated.

`check_lengths(config)` runs with the config (the smallest prompt bucket, or that of
data.max_prompt_length); `check_lengths(config, longest_prompt=...)` again once the prompts
are tokenized, naming the longest one and data.max_prompt_length as the remedy.

`check_memory(config, jax.local_devices())` refuses a run whose lower-bound memory estimate exceeds all
the memory of its devices (`ENTROPY_RL_NO_MEMORY_CHECK=1` skips it).
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


def memory_estimate(config: TrainConfig) -> dict[str, int]:
    """A lower bound of the bytes a run holds at once, by part: the parameters with their
    gradients and two AdamW moments (4 float32 copies), and the rollout's KV cache
    (data.batch_size x rollout.n rows x (prompt bucket + max_new_tokens) positions x layers
    x keys and values x kv heads x head_dim, in the compute dtype)."""
    import jax.numpy as jnp

    q = config.model.qwen_config(1)
    vocab = q.vocab_size if q.vocab_size > 1 else 0  # the tokenizer's, unknown here: left out of the bound
    attention = q.hidden_size * q.head_dim * (2 * q.num_attention_heads + 2 * q.num_key_value_heads)
    layer = attention + 3 * q.hidden_size * q.intermediate_size
    params = q.num_hidden_layers * layer + vocab * q.hidden_size * (1 if q.tie_word_embeddings else 2)
    r, d = config.rollout, config.data
    prompt = geometric_bucket(d.max_prompt_length, r.prompt_bucket) if d.max_prompt_length else r.prompt_bucket
    positions = prompt + r.max_new_tokens
    itemsize = jnp.dtype(q.dtype).itemsize
    kv_cache = d.batch_size * r.n * positions * q.num_hidden_layers * 2 * q.num_key_value_heads * q.head_dim * itemsize
    return {"parameters, gradients and AdamW moments": 4 * 4 * params, "KV cache of the rollout": kv_cache}


def _available_bytes(local_devices) -> int:
    """All the memory of the job: this process's devices' bytes_limit (this machine's RAM for
    the CPU) times the number of processes."""
    import jax

    limits = [(device.memory_stats() or {}).get("bytes_limit") for device in local_devices]
    if all(limits) and local_devices[0].platform != "cpu":
        return sum(limits) * jax.process_count()
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * jax.process_count()


def check_memory(config: TrainConfig, local_devices) -> None:
    """ConfigError when `memory_estimate` exceeds the memory of the job (`local_devices`: this
    process's), naming the parts."""
    if os.environ.get("ENTROPY_RL_NO_MEMORY_CHECK"):
        return
    parts, available = memory_estimate(config), _available_bytes(local_devices)
    if sum(parts.values()) <= available:
        return
    gib = lambda n: f"{n / 2**30:,.1f} GiB"  # noqa: E731
    shown = ", ".join(f"{name} {gib(size)}" for name, size in parts.items())
    raise ConfigError(f"this run needs at least {gib(sum(parts.values()))} ({shown}), more than the "
                      f"{gib(available)} of its devices: lower data.batch_size, rollout.n or "
                      "rollout.max_new_tokens, or use more devices (ENTROPY_RL_NO_MEMORY_CHECK=1 skips this check)")

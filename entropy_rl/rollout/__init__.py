"""Batched sampling with a KV cache: `generate(model, prompts, SamplingConfig(...), rng) -> Rollout`."""

from entropy_rl.rollout.config import SamplingConfig
from entropy_rl.rollout.decoding import compile_counts
from entropy_rl.rollout.sampler import generate
from entropy_rl.rollout.result import Rollout
from entropy_rl.rollout.sampling import filter_logits, sample_tokens, sampling_logprobs

__all__ = [
    "Rollout",
    "SamplingConfig",
    "compile_counts",
    "filter_logits",
    "generate",
    "sample_tokens",
    "sampling_logprobs",
]

"""Batched sampling with a KV cache: `generate(model, prompts, SamplingConfig(...), rng) -> Rollout`."""

from entropy_rl.rollout import refill, sampler
from entropy_rl.rollout.config import SamplingConfig
from entropy_rl.rollout.refill import RefillSchedule
from entropy_rl.rollout.sampler import RolloutPrograms, generate, rollout_programs
from entropy_rl.rollout.result import Rollout
from entropy_rl.rollout.sampling import filter_logits, sample_tokens, sampling_logprobs


def compile_counts() -> dict[str, int]:
    """{kind: programs of that kind compiled in this process}, read from jax's cache of each
    jitted program: the static scheduler's "prefill", "decode" and "grow", the refill
    scheduler's "slots", "refill_prefill" and "refill_decode"."""
    return {kind: program._cache_size() for kind, program in {**sampler.PROGRAMS, **refill.PROGRAMS}.items()}


__all__ = [
    "RefillSchedule",
    "Rollout",
    "RolloutPrograms",
    "SamplingConfig",
    "compile_counts",
    "filter_logits",
    "generate",
    "rollout_programs",
    "sample_tokens",
    "sampling_logprobs",
]

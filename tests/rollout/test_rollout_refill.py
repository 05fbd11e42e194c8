"""The refill scheduler against the static one (the reference) on a random tiny Qwen3: the same
tokens, log-probs, lengths and stop flags for every row with fewer slots than rows, n = 1 and
n = 4, on one device and over 8; compile counts over varied shapes; the counts of a request's
programs; the slot count under a KV-cache budget against XLA's own buffer sizes."""

import dataclasses

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from entropy_rl.model import load_hf
from entropy_rl.parallel import MeshConfig, make_mesh
from entropy_rl.rollout import SamplingConfig, compile_counts, generate, sampler
from entropy_rl.rollout.decoding import Program
from entropy_rl.rollout.refill import kv_bytes_per_slot, slot_count
from entropy_rl.rollout.sampler import request_rows, rollout_programs
from entropy_rl.config import RolloutConfig

VOCAB = 128
# 7 prompts x 4 samples, and 28 prompts x 1: 28 rows either way, so both share the decode programs.
_PROMPT_RNG = np.random.default_rng(0)
PROMPTS = [_PROMPT_RNG.integers(1, VOCAB, length).tolist() for length in (3, 17, 1, 9, 12, 5, 20)]
MORE_PROMPTS = [_PROMPT_RNG.integers(1, VOCAB, length).tolist() for length in _PROMPT_RNG.integers(1, 21, 28)]
# Three stop tokens of a 128-token vocabulary: rows stop at steps spread over 1..24 or run to the end.
STATIC = SamplingConfig(max_new_tokens=24, temperature=1.0, top_k=50, top_p=0.95, n=4, stop_token_ids=(3, 11, 60),
                        prompt_bucket=32, response_bucket=8, decode_segments=1, scheduler="static")


def _refill(config: SamplingConfig, **fields) -> SamplingConfig:
    return dataclasses.replace(config, scheduler="refill", **fields)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=128, tie_word_embeddings=False,
        initializer_range=0.1,
    )
    path = tmp_path_factory.mktemp("qwen3_refill")
    transformers.Qwen3ForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_hf(checkpoint)


def assert_same_rows(refill, static):
    """Every row equal, bitwise: tokens, lengths, stop flags, prompts and log-probs."""
    np.testing.assert_array_equal(refill.tokens, static.tokens)
    np.testing.assert_array_equal(refill.lengths, static.lengths)
    np.testing.assert_array_equal(refill.stopped, static.stopped)
    np.testing.assert_array_equal(refill.mask, static.mask)
    np.testing.assert_array_equal(refill.prompt_tokens, static.prompt_tokens)
    np.testing.assert_array_equal(refill.logprobs, static.logprobs)
    np.testing.assert_array_equal(refill.logprobs[refill.mask == 0], 0.0)


@pytest.mark.parametrize("prompts, n", [(PROMPTS, 4), (MORE_PROMPTS, 1)], ids=["n4", "n1"])
@pytest.mark.slow
def test_refill_equals_static_for_every_row(model, prompts, n, monkeypatch):
    static = generate(model, prompts, dataclasses.replace(STATIC, n=n), jax.random.key(1))
    # Stops at different steps, and long rows: slots are freed and refilled many times.
    assert len(set(static.lengths.tolist())) >= 5 and static.stopped.any() and not static.stopped.all()
    slots_used = []
    refill_path = sampler.generate_refill
    monkeypatch.setattr(sampler, "generate_refill", lambda *args, **kw: slots_used.append(args[0].slots) or refill_path(*args, **kw))
    # 5 slots for 28 rows: with n = 4 a prompt's samples are also split over two admissions.
    refill = generate(model, prompts, _refill(STATIC, n=n, max_slots=5), jax.random.key(1))
    assert slots_used == [5]
    assert_same_rows(refill, static)


@pytest.mark.slow
def test_refill_equals_static_over_several_attention_chunks(model):
    """Responses of up to 120 tokens in 192-slot caches: a step's attention reads 1 to 3
    chunks of 64 slots, up to the longest live row's (which differs between the slot batch
    and the static batch); the rows are equal bitwise."""
    config = dataclasses.replace(STATIC, max_new_tokens=120, stop_token_ids=(3, 11))
    assert Program.from_config(config, None).cache_slots(32) == 192
    static = generate(model, PROMPTS, config, jax.random.key(5))
    assert static.lengths.max() > 96 and len(set(static.lengths.tolist())) >= 10
    assert_same_rows(generate(model, PROMPTS, _refill(config, max_slots=6), jax.random.key(5)), static)


@pytest.mark.slow
def test_progress_chunks_give_the_same_rows_without_recompiling(model):
    """progress=True ends a decode call every 2 steps (rows are admitted at other steps than
    without it): the same rows, and no new program."""
    static = generate(model, PROMPTS, STATIC, jax.random.key(2))
    config = _refill(STATIC, max_slots=5, progress_chunk=2)
    generate(model, PROMPTS, config, jax.random.key(2))
    before = compile_counts()
    assert_same_rows(generate(model, PROMPTS, config, jax.random.key(2), progress=True), static)
    assert compile_counts() == before


def test_compile_counts_bounded_over_varied_prompt_and_response_lengths(model):
    """Prompt lengths within one prompt bucket and max_new_tokens within one response bucket
    reuse one decode program and a prefill program per prefill-batch bucket (powers of 2)."""
    config = _refill(STATIC, max_slots=5)
    before = compile_counts()
    rng = np.random.default_rng(1)
    for max_new_tokens in (24, 17, 20, 23):
        prompts = [rng.integers(1, VOCAB, length).tolist() for length in rng.integers(1, 33, len(PROMPTS))]
        generate(model, prompts, dataclasses.replace(config, max_new_tokens=max_new_tokens), jax.random.key(0))
    compiled = {kind: count - before[kind] for kind, count in compile_counts().items()}
    # One slot state and one decode program; admissions of at most 5 rows (n = 4) span 1 or 2
    # prompts: prefill batches of 1 or 2 prompts.
    assert compiled["slots"] <= 1 and compiled["refill_decode"] <= 1 and compiled["refill_prefill"] <= 2
    assert compiled["prefill"] == compiled["decode"] == 0  # the static path did not run


@pytest.mark.slow
def test_refill_over_8_devices_equals_static_on_them(model, checkpoint):
    """On a data=2 x fsdp=4 mesh refill equals static on the same mesh bitwise; against one
    device the log-probs agree to float32 rounding (the sampling view splits the MLP over
    fsdp: its down projection sums partial products across devices)."""
    assert jax.device_count() == 8
    mesh = make_mesh(MeshConfig(data=2, fsdp=4))
    sharded_model = load_hf(checkpoint, mesh=mesh)
    static = generate(sharded_model, PROMPTS, STATIC, jax.random.key(3), mesh=mesh)
    # 16 slots (two per batch shard, the fewest allowed) for 28 rows.
    refill = generate(sharded_model, PROMPTS, _refill(STATIC, max_slots=16), jax.random.key(3), mesh=mesh)
    assert_same_rows(refill, static)
    one_device = generate(model, PROMPTS, STATIC, jax.random.key(3))
    np.testing.assert_array_equal(refill.tokens, one_device.tokens)
    np.testing.assert_allclose(refill.logprobs, one_device.logprobs, atol=1e-5, rtol=0)


def test_rollout_programs_count_a_request_once(model):
    """The record generate runs and `entropy-rl plan` lowers, for 7 prompts x 4 samples of
    32 prompt slots: 5 slots of 64 cache slots (32 + 24 in whole 64-slot chunks), the first
    admission's 2 prompts padded to MIN_ROWS_PER_SHARD; or all 28 rows at once."""
    graphdef = nnx.split(model)[0]
    assert request_rows(7, 4, None) == (7, 28)
    refill = rollout_programs(graphdef, model.config, _refill(STATIC, max_slots=5), None, prompt_slots=32, rows=28)
    assert (refill.refilling, refill.slots, refill.cache_slots, refill.largest_prefill) == (True, 5, 64, 2)
    static = rollout_programs(graphdef, model.config, STATIC, None, prompt_slots=32, rows=28)
    assert (static.refilling, static.slots, static.cache_sizes) == (False, 28, (64,))


def test_slot_count_respects_the_kv_cache_budget(model):
    """The slots' cache (model.init_cache, as the refill state holds it) compiled by XLA
    fits the budget, and one more slot would not."""
    cache_slots = 32 + 24
    per_slot = kv_bytes_per_slot(model.config, cache_slots)
    budget_gb = 10.5 * per_slot / 1e9
    config = _refill(STATIC, kv_cache_budget_gb=budget_gb)
    slots = slot_count(config, model.config, cache_slots, rows=28, row_multiple=1)
    assert slots == 10
    # the budget is per chip: 2 batch shards hold 10 slots each, 4 would hold 40 (> the 28 rows)
    assert slot_count(config, model.config, cache_slots, rows=28, row_multiple=2) == 20
    assert slot_count(config, model.config, cache_slots, rows=28, row_multiple=4) == 28
    assert slot_count(_refill(config, max_slots=6), model.config, cache_slots, rows=28, row_multiple=1) == 6

    def cache_bytes(num_slots):
        compiled = jax.jit(lambda: model.init_cache(num_slots, cache_slots)).lower().compile()
        return compiled.memory_analysis().output_size_in_bytes

    assert cache_bytes(slots) <= budget_gb * 1e9 < cache_bytes(slots + 1)
    with pytest.raises(ValueError, match="allow 0 slots"):
        slot_count(_refill(config, kv_cache_budget_gb=per_slot / 2e9), model.config, cache_slots, 28, 1)
    # two slots per batch shard at least: a one-row decode batch rounds differently
    with pytest.raises(ValueError, match="allow 4 slots, fewer than 2 for each of the mesh's 4 batch shards"):
        slot_count(_refill(config, max_slots=4), model.config, cache_slots, 28, 4)


@pytest.mark.parametrize("slots", [2, 3])
@pytest.mark.slow
def test_the_fewest_slots_and_lone_prompt_admissions_give_the_static_bits(model, slots):
    """Two slots (the fewest) and three (admissions of a single prompt, n = 1): prefill and
    decode batches are padded to two rows at least (`MIN_ROWS_PER_SHARD`), whose bits a
    row shares with every larger batch; a lone static prompt too."""
    config = dataclasses.replace(STATIC, n=1)
    static = generate(model, PROMPTS, config, jax.random.key(4))
    assert_same_rows(generate(model, PROMPTS, _refill(config, max_slots=slots), jax.random.key(4)), static)
    alone = generate(model, PROMPTS[:1], config, jax.random.key(4))
    np.testing.assert_array_equal(alone.logprobs, static.logprobs[:1])


def test_bad_scheduler_settings_raise():
    with pytest.raises(ValueError, match="scheduler must be"):
        SamplingConfig(scheduler="paged")
    with pytest.raises(ValueError, match="max_slots must be >= 0"):
        SamplingConfig(max_slots=-1)


def test_train_rollout_config_passes_the_scheduler_fields():
    sampling = RolloutConfig(max_slots=16, kv_cache_budget_gb=2.5).sampling_config(stop_token_ids=[7], pad_token_id=0)
    assert (sampling.scheduler, sampling.max_slots, sampling.kv_cache_budget_gb) == ("refill", 16, 2.5)
    assert RolloutConfig(scheduler="static").sampling_config(stop_token_ids=[], pad_token_id=0).scheduler == "static"

"""generate() on a random tiny Qwen3 checkpoint saved by transformers: greedy vs full-forward
argmax and vs transformers' generate, log-probs vs a forward pass, sampled frequencies,
stop tokens, padding invariance, n samples, compile counts, sharding, progress chunks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
import transformers
from flax import nnx

from entropy_rl.model import load_hf
from entropy_rl.parallel import MeshConfig, make_mesh
from entropy_rl.rollout import SamplingConfig, compile_counts, generate, sampling_logprobs
from entropy_rl.rollout.decoding import Program

VOCAB = 128
PROMPTS = [[5, 17, 99, 3], [42], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]]
# 20 new tokens: one 64-slot cache (segments are whole chunks of the decode attention, 64 slots).
GREEDY = SamplingConfig(max_new_tokens=20, temperature=0.0, prompt_bucket=16, response_bucket=8, decode_segments=3)
SAMPLED = SamplingConfig(
    max_new_tokens=20, temperature=0.8, top_k=40, top_p=0.9, n=2, stop_token_ids=(3, 11, 60), prompt_bucket=16,
    response_bucket=8, decode_segments=3,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random transformers Qwen3 (float32), saved with save_pretrained; weights are scaled
    up from the 0.02 init so next-token distributions are peaked (no near-ties in argmax)."""
    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, tie_word_embeddings=False,
        initializer_range=0.1,
    )
    config._attn_implementation = "eager"
    hf_model = transformers.Qwen3ForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("qwen3_tiny")
    hf_model.save_pretrained(path)
    return path, hf_model


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_hf(str(checkpoint[0]))


@nnx.jit
def _forward(model, ids, mask):
    return model(ids, mask)


def _greedy(model):
    return generate(model, PROMPTS, GREEDY, jax.random.key(0))


@pytest.mark.slow
def test_greedy_equals_stepwise_argmax_of_full_forward(model):
    rollout = _greedy(model)
    width = 16 + GREEDY.max_new_tokens
    for row, prompt in enumerate(PROMPTS):
        sequence = list(prompt)
        for _ in range(GREEDY.max_new_tokens):
            ids = np.zeros((1, width), np.int32)
            ids[0, : len(sequence)] = sequence  # right-padded: causal attention never sees the padding
            mask = (np.arange(width) < len(sequence)).astype(np.int32)[None]
            logits = _forward(model, jnp.asarray(ids), jnp.asarray(mask))
            sequence.append(int(jnp.argmax(logits[0, len(sequence) - 1])))
        np.testing.assert_array_equal(rollout.tokens[row], sequence[len(prompt) :])
    np.testing.assert_array_equal(rollout.mask, 1)
    np.testing.assert_array_equal(rollout.logprobs, 0.0)
    assert not rollout.stopped.any()


def test_greedy_equals_transformers_generate(model, checkpoint):
    hf_model = checkpoint[1]
    rollout = _greedy(model)
    for row, prompt in enumerate(PROMPTS):
        with torch.no_grad():
            out = hf_model.generate(
                torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                do_sample=False, max_new_tokens=GREEDY.max_new_tokens, pad_token_id=0,
            )
        np.testing.assert_array_equal(rollout.tokens[row], out[0, len(prompt) :].numpy())


@pytest.mark.slow
def test_logprobs_equal_a_forward_pass_over_prompt_and_response(model):
    config = SAMPLED
    rollout = generate(model, PROMPTS, config, jax.random.key(1))
    ids = np.concatenate([rollout.prompt_tokens, rollout.tokens], axis=1)
    mask = np.concatenate([rollout.prompt_mask, rollout.mask], axis=1)
    logits = _forward(model, jnp.asarray(ids), jnp.asarray(mask))
    prompt_width = rollout.prompt_tokens.shape[1]
    response_logits = logits[:, prompt_width - 1 : -1]
    expected = sampling_logprobs(
        response_logits, jnp.asarray(rollout.tokens), temperature=config.temperature, top_k=config.top_k, top_p=config.top_p
    )
    expected = np.where(rollout.mask == 1, np.asarray(expected), 0.0)
    np.testing.assert_allclose(rollout.logprobs, expected, atol=1e-4)
    assert np.all(rollout.logprobs[rollout.mask == 1] < 0.0)


@pytest.mark.slow
def test_first_token_frequencies_match_softmax_of_logits_over_temperature(model):
    prompt, temperature, num = [5, 17, 99, 3], 1.5, 2000
    config = SamplingConfig(max_new_tokens=1, temperature=temperature, n=num, prompt_bucket=16, response_bucket=8)
    rollout = generate(model, [prompt], config, jax.random.key(2))
    logits = _forward(model, jnp.asarray([prompt]), jnp.ones((1, len(prompt)), jnp.int32))[0, -1]
    probs = np.asarray(jax.nn.softmax(logits.astype(jnp.float64) / temperature) if jax.config.x64_enabled
                       else jax.nn.softmax(logits / temperature), np.float64)
    probs /= probs.sum()
    expected = num * probs
    counts = np.bincount(rollout.tokens[:, 0], minlength=VOCAB)
    big = expected >= 5  # chi-square needs expected counts >= 5: lump the rare tokens together
    observed_bins = np.append(counts[big], counts[~big].sum())
    expected_bins = np.append(expected[big], expected[~big].sum())
    assert big.sum() >= 5
    assert scipy.stats.chisquare(observed_bins, expected_bins).pvalue > 1e-3
    np.testing.assert_allclose(rollout.logprobs[:, 0], np.log(probs[rollout.tokens[:, 0]]), atol=1e-4)


def test_stop_tokens_end_sequences_and_mask_after_them(model):
    free = _greedy(model)
    stop = (int(free.tokens[0, 2]), int(free.tokens[2, 12]))
    config = SamplingConfig(**{**GREEDY.__dict__, "stop_token_ids": stop, "pad_token_id": 1})
    rollout = generate(model, PROMPTS, config, jax.random.key(0))
    for row in range(len(PROMPTS)):
        hits = np.flatnonzero(np.isin(free.tokens[row], stop))
        length = hits[0] + 1 if len(hits) else GREEDY.max_new_tokens
        assert rollout.lengths[row] == length
        assert rollout.stopped[row] == bool(len(hits))
        np.testing.assert_array_equal(rollout.mask[row], np.arange(GREEDY.max_new_tokens) < length)
        np.testing.assert_array_equal(rollout.tokens[row, :length], free.tokens[row, :length])
        np.testing.assert_array_equal(rollout.tokens[row, length:], 1)
    assert rollout.stopped[0] and rollout.lengths[0] <= 3


@pytest.mark.slow
def test_left_padding_does_not_change_outputs(model):
    narrow = generate(model, PROMPTS, SAMPLED, jax.random.key(3))
    padded = generate(model, PROMPTS, SamplingConfig(**{**SAMPLED.__dict__, "prompt_bucket": 32}), jax.random.key(3))
    assert padded.prompt_tokens.shape[1] == 32 and narrow.prompt_tokens.shape[1] == 16
    np.testing.assert_array_equal(padded.prompt_tokens[:, 16:], narrow.prompt_tokens)
    np.testing.assert_array_equal(padded.tokens, narrow.tokens)
    np.testing.assert_array_equal(padded.lengths, narrow.lengths)
    np.testing.assert_allclose(padded.logprobs, narrow.logprobs, atol=1e-5)


def test_n_samples_per_prompt_are_adjacent_and_differ(model):
    rollout = generate(model, PROMPTS, SAMPLED, jax.random.key(4))
    np.testing.assert_array_equal(rollout.prompt_index, [0, 0, 1, 1, 2, 2])
    for prompt in range(len(PROMPTS)):
        first, second = 2 * prompt, 2 * prompt + 1
        np.testing.assert_array_equal(rollout.prompt_tokens[first], rollout.prompt_tokens[second])
        assert rollout.prompt_mask[first].sum() == len(PROMPTS[prompt])
        assert not np.array_equal(rollout.tokens[first], rollout.tokens[second])


def test_n_samples_share_one_prefill_and_equal_repeated_prompts(model):
    """The prompts are prefilled once and their caches copied to their n rows: the same
    rollout as listing each prompt n times with n = 1 (row r draws from fold_in(key, r))."""
    shared = generate(model, PROMPTS, SAMPLED, jax.random.key(7))
    repeated = generate(model, [prompt for prompt in PROMPTS for _ in range(2)],
                        SamplingConfig(**{**SAMPLED.__dict__, "n": 1}), jax.random.key(7))
    np.testing.assert_array_equal(shared.prompt_tokens, repeated.prompt_tokens)
    np.testing.assert_array_equal(shared.tokens, repeated.tokens)
    np.testing.assert_allclose(shared.logprobs, repeated.logprobs, atol=1e-5)


def test_one_compilation_per_bucket(model):
    config = SamplingConfig(max_new_tokens=5, temperature=0.0, prompt_bucket=24, response_bucket=8)
    before = compile_counts()
    for prompt_lengths, max_new_tokens in [((3, 20), 5), ((1, 24), 8), ((13, 2), 6)]:
        prompts = [list(range(1, 1 + length)) for length in prompt_lengths]
        generate(model, prompts, SamplingConfig(**{**config.__dict__, "max_new_tokens": max_new_tokens}), jax.random.key(0))
    after = compile_counts()
    assert after["prefill"] - before["prefill"] == 1
    assert after["decode"] - before["decode"] == 1


@pytest.mark.slow
def test_decode_segments_compile_once_each_and_equal_one_segment(model):
    """120 new tokens in 3 segments (caches of 64, 128 and 192 slots): one decode program
    each, two growths, and the rows of one 192-slot segment (log-probs to float32 rounding:
    these programs' fusions round differently in the last bit; see decode_segments)."""
    config = SamplingConfig(**{**SAMPLED.__dict__, "n": 3, "max_new_tokens": 120, "stop_token_ids": ()})
    before = compile_counts()
    segmented = generate(model, PROMPTS, config, jax.random.key(6))
    after = compile_counts()
    assert {kind: after[kind] - before[kind] for kind in ("prefill", "decode", "grow")} == {"prefill": 1, "decode": 3, "grow": 2}
    whole = generate(model, PROMPTS, SamplingConfig(**{**config.__dict__, "decode_segments": 1}), jax.random.key(6))
    np.testing.assert_array_equal(segmented.tokens, whole.tokens)
    np.testing.assert_allclose(segmented.logprobs, whole.logprobs, atol=1e-5, rtol=0)


def test_segment_cache_sizes():
    """P + ceil(R i / n) rounded up to whole 64-slot chunks, duplicates merged."""
    issue_benchmark = SamplingConfig(max_new_tokens=256, response_bucket=64, decode_segments=4)
    assert Program.from_config(issue_benchmark, None).cache_sizes(128) == [192, 256, 320, 384]
    short = SamplingConfig(max_new_tokens=5, response_bucket=8, decode_segments=4)
    assert Program.from_config(short, None).cache_sizes(16) == [64]
    uneven = SamplingConfig(max_new_tokens=100, response_bucket=100, decode_segments=3)
    assert Program.from_config(uneven, None).cache_sizes(0) == [64, 128]
    assert Program.from_config(uneven, None).cache_slots(30) == 192


def test_progress_chunks_give_the_same_rollout_without_recompiling(model):
    plain = generate(model, PROMPTS, SAMPLED, jax.random.key(5))
    before = compile_counts()
    chunked = generate(model, PROMPTS, SamplingConfig(**{**SAMPLED.__dict__, "progress_chunk": 3}), jax.random.key(5), progress=True)
    assert compile_counts() == before
    np.testing.assert_array_equal(chunked.tokens, plain.tokens)
    np.testing.assert_array_equal(chunked.logprobs, plain.logprobs)


@pytest.mark.slow
def test_sharded_over_8_devices_equals_one_device(model, checkpoint):
    assert jax.device_count() == 8
    mesh = make_mesh(MeshConfig(data=2, fsdp=4))
    sharded_model = load_hf(str(checkpoint[0]), mesh=mesh)
    single = _greedy(model)
    sharded = generate(sharded_model, PROMPTS, GREEDY, jax.random.key(0), mesh=mesh)
    np.testing.assert_array_equal(sharded.tokens, single.tokens)
    np.testing.assert_array_equal(sharded.lengths, single.lengths)
    # n = 2: 3 prompts prefilled in 8 rows, copied to 16, the first 8 decoded.
    single = generate(model, PROMPTS, SAMPLED, jax.random.key(8))
    sharded = generate(sharded_model, PROMPTS, SAMPLED, jax.random.key(8), mesh=mesh)
    np.testing.assert_array_equal(sharded.tokens, single.tokens)
    np.testing.assert_allclose(sharded.logprobs, single.logprobs, atol=1e-5)


def test_bad_prompts_raise_clear_errors(model):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, [[1], []], GREEDY, jax.random.key(0))
    with pytest.raises(ValueError, match=r"\[0, 128\)"):
        generate(model, [[1, VOCAB]], GREEDY, jax.random.key(0))

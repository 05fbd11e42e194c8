"""KV-cache decoding reproduces the full forward (left-padded prompts, 1-token steps)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropy_rl.model import KVCache, Qwen, tiny_config
from tests.model.model_testing import jit_forward


@pytest.fixture(scope="module")
def model():
    return Qwen(tiny_config(attention_bias=True), rngs=nnx.Rngs(0))  # bias and q/k-norm paths


@pytest.mark.parametrize("prefill", ["cached call", "model.prefill"])
@pytest.mark.slow
def test_prefill_then_decode_steps_equal_full_forward(model, prefill):
    rng = np.random.default_rng(0)
    prompt_len, steps = 6, 5
    prompt = rng.integers(1, 256, (3, prompt_len)).astype(np.int32)
    prompt_mask = np.ones_like(prompt)
    prompt_mask[1, :2] = 0  # left padding
    prompt_mask[2, :5] = 0
    response = rng.integers(1, 256, (3, steps)).astype(np.int32)
    response_mask = np.ones_like(response)
    response_mask[0, 3:] = 0  # row 0 stopped: right-padded response
    full_ids = np.concatenate([prompt, response], axis=1)
    full_mask = np.concatenate([prompt_mask, response_mask], axis=1)
    call = jit_forward(model)
    full = np.asarray(call(full_ids, full_mask))
    if prefill == "cached call":
        logits, cache = call(prompt, prompt_mask, model.init_cache(3, prompt_len + steps + 2))
    else:
        hidden, cache = jax.jit(model.prefill, static_argnums=2)(prompt, prompt_mask, prompt_len + steps + 2)
        logits = model.logits(hidden)
    real = prompt_mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[real], full[:, :prompt_len][real], atol=1e-5)
    for t in range(steps):
        logits, cache = call(response[:, t:t + 1], response_mask[:, t:t + 1], cache)
        rows = response_mask[:, t].astype(bool)
        np.testing.assert_allclose(np.asarray(logits)[rows, 0], full[rows, prompt_len + t],
                                   atol=1e-5)
    assert int(cache.length) == prompt_len + steps
    np.testing.assert_array_equal(np.asarray(cache.valid)[:, :prompt_len + steps], full_mask)
    assert not np.asarray(cache.valid)[:, prompt_len + steps:].any()


@pytest.mark.slow
def test_prompt_prefilled_in_chunks_equals_one_prefill(model):
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 256, (2, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # left padding, all inside the first chunk
    call = jit_forward(model)
    whole, _ = call(ids, mask, model.init_cache(2, 12))
    cache = model.init_cache(2, 12)
    chunks = []
    for start, stop in [(0, 4), (4, 5), (5, 9)]:
        logits, cache = call(ids[:, start:stop], mask[:, start:stop], cache)
        chunks.append(np.asarray(logits))
    real = mask.astype(bool)
    np.testing.assert_allclose(np.concatenate(chunks, axis=1)[real], np.asarray(whole)[real], atol=1e-5)


def test_cache_layout_and_default_positions(model):
    cache = model.init_cache(2, 8)
    c = model.config
    assert isinstance(cache, KVCache)
    assert len(cache.k) == len(cache.v) == c.num_hidden_layers
    for keys, values in zip(cache.k, cache.v):
        assert keys.shape == (2, c.num_key_value_heads, c.head_dim, 8)
        assert values.shape == (2, c.num_key_value_heads, 8, c.head_dim)
    assert cache.valid.dtype == jnp.bool_ and cache.length.dtype == jnp.int32
    # The same tokens left-padded with a cache give the unpadded logits at the real positions.
    ids = np.array([[0, 0, 7, 8, 9]], np.int32)
    mask = np.array([[0, 0, 1, 1, 1]], np.int32)
    call = jit_forward(model)
    logits, _ = call(ids, mask, model.init_cache(1, 5))
    unpadded = call(ids[:, 2:])
    np.testing.assert_allclose(np.asarray(logits)[0, 2:], np.asarray(unpadded)[0], atol=1e-5)


def test_grow_appends_empty_slots(model):
    prompt = np.array([[0, 4, 5], [6, 7, 8]], np.int32)
    mask = np.array([[0, 1, 1], [1, 1, 1]], np.int32)
    _, cache = jax.jit(model.prefill, static_argnums=2)(prompt, mask, 4)
    grown = cache.grow(7)
    assert grown.max_length == 7 and int(grown.length) == 3
    slot_axes = [3] * len(cache.k) + [2] * len(cache.v)  # keys [B, KV, D, S], values [B, KV, S, D]
    for old, new, axis in zip(cache.k + cache.v, grown.k + grown.v, slot_axes):
        old, new = np.asarray(old), np.asarray(new)
        np.testing.assert_array_equal(np.take(new, np.arange(4), axis=axis), old)
        assert not np.take(new, np.arange(4, 7), axis=axis).any()
    np.testing.assert_array_equal(grown.valid, np.pad(mask.astype(bool), ((0, 0), (0, 4))))
    # Decoding into the grown cache equals decoding into a cache that had 7 slots throughout.
    call = jit_forward(model)
    _, roomy = jax.jit(model.prefill, static_argnums=2)(prompt, mask, 7)
    token, token_mask = np.array([[9], [10]], np.int32), np.ones((2, 1), np.int32)
    np.testing.assert_array_equal(call(token, token_mask, grown)[0], call(token, token_mask, roomy)[0])
    with pytest.raises(ValueError, match="cannot shrink"):
        cache.grow(3)


def test_repeat_rows_copies_each_row_to_adjacent_rows(model):
    prompt = np.array([[0, 4, 5], [6, 7, 8]], np.int32)
    mask = np.array([[0, 1, 1], [1, 1, 1]], np.int32)
    _, cache = jax.jit(model.prefill, static_argnums=2)(prompt, mask, 4)
    repeated = cache.repeat_rows(3, 5)  # rows 0, 0, 0, 1, 1
    assert int(repeated.length) == int(cache.length)
    for old, new in zip(cache.k + cache.v + (cache.valid,), repeated.k + repeated.v + (repeated.valid,)):
        np.testing.assert_array_equal(new, np.asarray(old)[[0, 0, 0, 1, 1]])

"""`_grow_cache`, the static sampler's cache growth between decode segments: layer by layer,
each old layer deleted once its grown copy exists (peak: the cache and one layer)."""

import jax
import jax.numpy as jnp
import numpy as np

from entropy_rl.model import KVCache
from entropy_rl.rollout import sampler

LAYERS, ROWS, KV_HEADS, HEAD_DIM, SLOTS = 3, 2, 2, 4, 6


def _decode_state() -> sampler.DecodeState:
    """A DecodeState whose cache holds random keys/values in its first SLOTS slots."""
    rng = np.random.default_rng(0)
    cache = KVCache(k=tuple(jnp.asarray(rng.normal(size=(ROWS, KV_HEADS, HEAD_DIM, SLOTS))) for _ in range(LAYERS)),
                    v=tuple(jnp.asarray(rng.normal(size=(ROWS, KV_HEADS, SLOTS, HEAD_DIM))) for _ in range(LAYERS)),
                    valid=jnp.asarray(rng.random((ROWS, SLOTS)) < 0.5), length=jnp.int32(SLOTS))
    rows = jnp.zeros((ROWS,), jnp.int32)
    return sampler.DecodeState(cache=cache, last_tokens=rows, tokens=rows[:, None], logprobs=rows[:, None] * 1.0,
                               lengths=rows, stopped=rows > 0, step=jnp.int32(1), row_keys=rows,
                               stop_token_ids=rows, pad_token_id=jnp.int32(0))


def test_grow_cache_deletes_each_old_layer_once_grown():
    state = _decode_state()
    old = state.cache
    expected = jax.tree.map(np.asarray, old.grow(SLOTS + 8))

    deleted_at_each_call = []
    grow_layer = sampler._grow_layer

    def recording_grow_layer(keys, values, *, slots):
        deleted_at_each_call.append([array.is_deleted() for array in old.k + old.v])
        return grow_layer(keys, values, slots=slots)

    grown = sampler._grow_cache(state, recording_grow_layer, slots=SLOTS + 8)
    # growing layer i, layers 0..i-1 (keys and values) are gone: never two caches at once
    assert deleted_at_each_call == [[layer < i for layer in range(LAYERS)] * 2 for i in range(LAYERS)]
    assert all(array.is_deleted() for array in old.k + old.v)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, grown.cache), expected)
    assert grown.step is state.step  # the rest of the state unchanged

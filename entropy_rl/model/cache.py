"""KVCache: the key/value cache of a Qwen decoder, a pytree that passes through jit.

Slots are filled left to right: a call with T tokens writes slots [length, length + T),
marks them `valid` where its attention_mask is 1, and advances `length` by T. A token at
slot j attends to the valid slots s <= j. Its default rotary position is the number of
valid slots before j, so a left-padded prompt followed by 1-token decode steps gets the
same positions as one full forward over the unpadded sequence.

Each layer has its own k and v arrays (not one stacked [L, ...] array): a decode step reads
a layer's cache and then writes one slot of it, which XLA does in place in that layer's
buffer; slicing a stacked cache per layer makes a copy of each layer's slice every step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
    """k, v: tuples of L arrays [B, S, KV_heads, head_dim]; valid: bool [B, S]; length: int32 scalar."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    valid: jax.Array
    length: jax.Array

    @classmethod
    def zeros(cls, num_layers: int, batch_size: int, max_length: int, num_kv_heads: int,
              head_dim: int, dtype) -> "KVCache":
        """An empty cache with `max_length` slots per row."""
        shape = (batch_size, max_length, num_kv_heads, head_dim)
        return cls(k=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
                   v=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
                   valid=jnp.zeros((batch_size, max_length), bool),
                   length=jnp.zeros((), jnp.int32))

    @property
    def max_length(self) -> int:
        return self.valid.shape[1]

    def write_mask(self, attention_mask: jax.Array) -> jax.Array:
        """`valid` after writing T tokens with attention_mask [B, T] at slots [length, length+T)."""
        return jax.lax.dynamic_update_slice(self.valid, attention_mask.astype(bool),
                                            (0, self.length))

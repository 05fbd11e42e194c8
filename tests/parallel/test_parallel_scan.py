"""Layers under jax.lax.scan: the same values, gradients and prefill cache as the unrolled
layers, and a traced program whose size does not grow with depth."""

import pytest
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from entropy_rl.model import Qwen, tiny_config


def _inputs():
    ids = np.random.default_rng(0).integers(1, 256, (2, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, :2] = 0  # left padding
    return ids, mask


def _loss_grads_and_prefill(config):
    ids, mask = _inputs()
    graphdef, state = nnx.split(Qwen(config, rngs=nnx.Rngs(0)))

    def loss(s):
        return jnp.sum(nnx.merge(graphdef, s)(ids, mask) ** 2)

    value, grads = jax.jit(jax.value_and_grad(loss))(state)
    prefill = jax.jit(lambda s: nnx.merge(graphdef, s).prefill(ids, mask, 10))(state)
    return value, grads, prefill


@pytest.mark.slow
def test_scanned_layers_equal_unrolled_layers():
    # remat on: the scan body under jax.checkpoint, the unrolled layers under nnx.remat.
    config = tiny_config(num_hidden_layers=2, hidden_size=32, intermediate_size=64, remat=True)
    unrolled = _loss_grads_and_prefill(config.replace(scan_layers=False))
    scanned = _loss_grads_and_prefill(config.replace(scan_layers=True))
    assert jax.tree.structure(unrolled) == jax.tree.structure(scanned)
    for a, b in zip(jax.tree.leaves(unrolled), jax.tree.leaves(scanned)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def _num_equations(num_layers, scan_layers):
    ids, mask = _inputs()
    config = tiny_config(num_hidden_layers=num_layers, hidden_size=32, intermediate_size=64,
                         scan_layers=scan_layers)
    graphdef, state = nnx.split(Qwen(config, rngs=nnx.Rngs(0)))
    jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s).hidden_states(ids, mask))(state)
    return sum(1 for _ in jax.extend.core.subjaxprs(jaxpr.jaxpr)) + len(jaxpr.eqns)


def test_scanned_program_does_not_grow_with_depth():
    # Only the stacking of the parameters (one op per parameter per layer) grows with L.
    scanned_growth = _num_equations(4, True) - _num_equations(2, True)
    unrolled_growth = _num_equations(4, False) - _num_equations(2, False)
    assert scanned_growth < unrolled_growth / 2, (scanned_growth, unrolled_growth)

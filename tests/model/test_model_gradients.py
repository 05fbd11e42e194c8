"""The hand-written gradients (grouped_attention, swiglu, unembed) against autodiff of
plain jnp formulas, for every input, under jit and vmap, with masked rows and in bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropy_rl.model.layers import NEG_INF, grouped_attention, swiglu, unembed


def plain_attention(q, k, v, mask):
    """Repeats the kv heads; where-masked float32 softmax, as autodiff sees it."""
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) / np.sqrt(q.shape[-1])
    probs = jax.nn.softmax(jnp.where(mask[:, None], scores, NEG_INF), axis=-1)
    return jnp.einsum("bhts,bshd->bthd", probs.astype(v.dtype), v)


def plain_swiglu(x, w_gate, w_up, w_down):
    return (jax.nn.silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T


def plain_unembed(hidden, weight):
    return jnp.einsum("...d,vd->...v", hidden, weight, preferred_element_type=jnp.float32)


def attention_case(rng, batch=2, length=5, heads=4, kv_heads=2, head_dim=8):
    q = rng.normal(size=(batch, length, heads, head_dim))
    k, v = (rng.normal(size=(batch, length, kv_heads, head_dim)) for _ in range(2))
    mask = np.tril(np.ones((length, length), bool))[None] & (rng.random((batch, 1, length)) < 0.8)
    mask[1, 0] = False  # a fully masked (padding) query row
    return [np.float32(a) for a in (q, k, v)] + [mask]


def mlp_case(rng, shape=(2, 3), hidden=6, mlp=10):
    return [np.float32(rng.normal(size=s) * 0.5) for s in
            (shape + (hidden,), (mlp, hidden), (mlp, hidden), (hidden, mlp))]


def unembed_case(rng, shape=(2, 3), hidden=6, vocab=11):
    return [np.float32(rng.normal(size=s)) for s in (shape + (hidden,), (vocab, hidden))]


CASES = {
    "attention": (grouped_attention, plain_attention, attention_case, 3),
    "swiglu": (swiglu, plain_swiglu, mlp_case, 4),
    "unembed": (unembed, plain_unembed, unembed_case, 2),
}


def vjp_of(function, args, differentiable, cotangent):
    """Gradients of <function(*args), cotangent> with respect to the first `differentiable` args."""
    def objective(*diff_args):
        return jnp.sum(function(*diff_args, *args[differentiable:]).astype(jnp.float32) * cotangent)
    return jax.jit(jax.grad(objective, argnums=tuple(range(differentiable))))(*args[:differentiable])


@pytest.mark.parametrize("name", CASES)
def test_hand_written_gradient_equals_autodiff(name):
    function, plain, make_case, differentiable = CASES[name]
    args = make_case(np.random.default_rng(0))
    out = jax.jit(function)(*args)
    np.testing.assert_allclose(out, plain(*args), atol=1e-5)
    cotangent = np.random.default_rng(1).normal(size=out.shape).astype(np.float32)
    for got, expected in zip(vjp_of(function, args, differentiable, cotangent),
                             vjp_of(plain, args, differentiable, cotangent), strict=True):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_hand_written_gradient_under_vmap(name):
    """vmap over a leading axis of the first input equals a loop over it."""
    function, _, make_case, _ = CASES[name]
    rng = np.random.default_rng(2)
    cases = [make_case(rng) for _ in range(3)]
    shared = cases[0][1:]
    stacked = np.stack([case[0] for case in cases])

    def first_input_gradient(first):
        return jax.grad(lambda x: jnp.sum(jnp.sin(function(x, *shared))))(first)

    batched = jax.jit(jax.vmap(first_input_gradient))(stacked)
    for row, first in zip(batched, stacked):
        np.testing.assert_allclose(row, first_input_gradient(first), atol=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_hand_written_gradient_in_bfloat16_is_close_to_float32(name):
    function, _, make_case, differentiable = CASES[name]
    args = make_case(np.random.default_rng(3))
    low = [jnp.asarray(a, jnp.bfloat16) if a.dtype == np.float32 else a for a in args]
    cotangent = np.ones(jax.eval_shape(function, *args).shape, np.float32)
    for got, expected in zip(vjp_of(function, low, differentiable, cotangent),
                             vjp_of(function, args, differentiable, cotangent), strict=True):
        assert got.dtype == jnp.bfloat16
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(np.float32(got), expected, atol=0.03 * scale)

"""Qwen module API: hidden_states / unembedding consistency, remat, blockwise attention,
explicit positions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropy_rl.model import Qwen, tiny_config
from entropy_rl.model.qwen import default_positions


@pytest.fixture(scope="module")
def batch():
    input_ids = np.random.default_rng(0).integers(1, 256, (2, 7)).astype(np.int32)
    attention_mask = np.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]], np.int32)
    return input_ids, attention_mask


def _loss_and_grads(config, input_ids, attention_mask):
    graphdef, state = nnx.split(Qwen(config, rngs=nnx.Rngs(0)))

    def loss(state):
        model = nnx.merge(graphdef, state)
        hidden = model.hidden_states(input_ids, attention_mask)
        logits = hidden @ model.unembedding().T
        np.testing.assert_equal(logits.shape, (2, 7, config.vocab_size))
        return jnp.sum(jnp.where(attention_mask[..., None] == 1, logits, 0) ** 2)

    return jax.jit(jax.value_and_grad(loss))(state)


@pytest.mark.slow
def test_remat_gives_the_same_loss_and_gradients(batch):
    plain = _loss_and_grads(tiny_config(tie_word_embeddings=True), *batch)
    remat = _loss_and_grads(tiny_config(tie_word_embeddings=True, remat=True), *batch)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def _checkpoint_policies(config, input_ids, attention_mask) -> list:
    """The `policy` of every rematerialised region in the gradient's jaxpr."""
    from entropy_rl.plan import _jaxprs

    graphdef, state = nnx.split(Qwen(config, rngs=nnx.Rngs(0)))
    loss = lambda state: jnp.sum(nnx.merge(graphdef, state).hidden_states(input_ids, attention_mask))  # noqa: E731
    jaxpr = jax.make_jaxpr(jax.grad(loss))(state).jaxpr
    return [eqn.params["policy"] for sub in _jaxprs(jaxpr) for eqn in sub.eqns
            if eqn.primitive.name in ("checkpoint", "remat2")]  # jax.checkpoint's primitive


@pytest.mark.parametrize(("policy", "scan_layers"), [("dots_saveable", False),
                                                     ("dots_with_no_batch_dims_saveable", True)])
@pytest.mark.slow
def test_remat_policy_is_the_configured_one_and_keeps_gradients(batch, policy, scan_layers):
    config = tiny_config(tie_word_embeddings=True, remat=True, remat_policy=policy, scan_layers=scan_layers)
    assert set(_checkpoint_policies(config, *batch)) == {getattr(jax.checkpoint_policies, policy)}
    default = tiny_config(tie_word_embeddings=True, remat=True, scan_layers=scan_layers)
    assert set(_checkpoint_policies(default, *batch)) == {jax.checkpoint_policies.nothing_saveable}
    plain = _loss_and_grads(tiny_config(tie_word_embeddings=True), *batch)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(_loss_and_grads(config, *batch))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_an_unknown_remat_policy_is_refused():
    with pytest.raises(ValueError, match="remat_policy must be one of"):
        tiny_config(remat_policy="save_everything")


@pytest.mark.slow
def test_blockwise_attention_gives_the_same_loss_and_gradients(batch):
    """7 tokens in blocks of 2 (padded to 8 inside), rematerialised, against dense attention,
    with left and right padding."""
    dense = _loss_and_grads(tiny_config(), *batch)
    blockwise = _loss_and_grads(tiny_config(attention_block_size=2, remat=True), *batch)
    for a, b in zip(jax.tree.leaves(dense), jax.tree.leaves(blockwise)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_tied_unembedding_is_the_embedding_and_logits_match_hidden_states(batch):
    model = Qwen(tiny_config(tie_word_embeddings=True), rngs=nnx.Rngs(0))
    assert not hasattr(model, "lm_head")
    np.testing.assert_array_equal(np.asarray(model.unembedding()), np.asarray(model.embed_tokens[...]))

    @nnx.jit
    def both(model, input_ids, attention_mask):
        hidden = model.hidden_states(input_ids, attention_mask)
        return model(input_ids, attention_mask), hidden @ model.unembedding().T

    logits, from_hidden = both(model, *batch)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(from_hidden), atol=1e-5)


def test_default_positions_count_real_tokens():
    mask = np.array([[0, 0, 1, 1, 1, 0], [1, 1, 0, 1, 1, 1]])
    np.testing.assert_array_equal(np.asarray(default_positions(mask)),
                                  [[0, 0, 0, 1, 2, 2], [0, 1, 1, 2, 3, 4]])
